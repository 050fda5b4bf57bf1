"""Issue 10's matrix, as a network would meet it: three real `medforge node run` processes on
loopback in a line (alice - bob - carol), and mallory, a valid member who skips
`medforge commit` and speaks libp2p herself, pushing commits every node must refuse.

Every node stays up, refuses each bad commit with the same verdict, keeps its digest, says in
`status` what was refused and from whom; a good commit afterwards still reaches every node,
and a restart of every node changes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import trio
from safetensors.torch import load, save

from crypto.records import Commit
from node.core import messages
from node.errors import TransportError
from node.forge.bundle import blob_ref
from node.shell.home import Home
from node.shell.transport.libp2p import Libp2pTransport
from tests.conftest import BASE, write_distilled
from tests.node.procs import commit_cli, same_digest, start_line, stop, until
from tests.node.shell.test_service import FAST

pytestmark = pytest.mark.slow


# --- what mallory signs --------------------------------------------------------------------


def _with_tensors(
    adapter: Path, edit: Callable[[dict[str, torch.Tensor]], None], base: str = BASE
) -> bytes:
    tensors = load((adapter / "adapter_model.safetensors").read_bytes())
    edit(tensors)
    return save(tensors, metadata={"base": base})


def _set(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[key][0, 0] = value

    return edit


def _rename(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        for k in [k for k in t if f".{old}." in k]:
            t[k.replace(f".{old}.", f".{new}.")] = t.pop(k)

    return edit


def _widen(t: dict[str, torch.Tensor]) -> None:  # factors of a 16-wide base, not TinyBase's 8
    for k in list(t):
        if k.endswith("lora_A.weight"):
            t[k] = torch.ones(2, 16)
        else:
            t[k] = torch.ones(16, 2)


def _scale(t: dict[str, torch.Tensor]) -> None:
    for k in t:
        t[k] = t[k] * 1e6


def bad_commits(adapter: Path, tmp: Path) -> dict[str, tuple[dict[str, bytes], tuple[float, ...]]]:
    """name -> (blobs, coeffs): each fails exactly one check of the validity function."""
    good = {
        "adapter_config": (adapter / "adapter_config.json").read_bytes(),
        "adapter_model": (adapter / "adapter_model.safetensors").read_bytes(),
        "distilled": write_distilled(tmp / "d-good.safetensors").read_bytes(),
    }

    def distilled(name: str, **kw: Any) -> bytes:
        return write_distilled(tmp / f"d-{name}.safetensors", **kw).read_bytes()

    q = "base_model.model.q.lora_A.weight"
    variants: dict[str, tuple[dict[str, bytes], tuple[float, ...]]] = {
        "NonFiniteError:nan": (
            {"adapter_model": _with_tensors(adapter, _set(q, float("nan")))},
            (1.0, 1.0),
        ),
        "NonFiniteError:inf": (
            {"adapter_model": _with_tensors(adapter, _set(q, float("inf")))},
            (1.0, 1.0),
        ),
        "ShapeError:wrong shapes": ({"adapter_model": _with_tensors(adapter, _widen)}, (1.0, 1.0)),
        "BaseMismatchError:wrong base": (
            {"adapter_model": _with_tensors(adapter, lambda t: None, base="cd" * 32)},
            (1.0, 1.0),
        ),
        "ShapeError:absent target": (
            {"adapter_model": _with_tensors(adapter, _rename("q", "k"))},
            (1.0, 1.0),
        ),
        "LimitError:norm": ({"adapter_model": _with_tensors(adapter, _scale)}, (1.0, 1.0)),
        "DistilledError:labels": ({"distilled": distilled("l", labels=[0, 1, 5])}, (1.0, 1.0)),
        "DistilledError:classes": (
            {"distilled": distilled("c", classes=("a", "b", "c"))},
            (1.0, 1.0),
        ),
        "DistilledError:input shape": ({"distilled": distilled("w", width=16)}, (1.0, 1.0)),
        "AdapterFormatError:truncated": ({"adapter_model": good["adapter_model"][:-9]}, (1.0, 1.0)),
        "CoefficientBound:1e39": ({}, (1e39, 1.0)),
        "CoefficientBound:wipe": ({}, (0.0, 0.0)),  # would zero every node's composite
    }
    return {name: ({**good, **blobs}, coeffs) for name, (blobs, coeffs) in variants.items()}


def sign(
    home: Home, seq: int, parent: bytes, blobs: dict[str, bytes], coeffs: tuple[float, ...]
) -> Commit:
    genesis = home.genesis()
    return Commit.create(
        home.identity(),
        network=genesis.network_id,
        seq=seq,
        task=f"mallory-{seq}",
        classes=("a", "b"),
        base=BASE,
        blobs={k: blob_ref(v) for k, v in blobs.items()},
        parent=parent,
        coeffs=(coeffs[0], coeffs[1]),
        objective={},
    )


# --- the test ------------------------------------------------------------------------------


async def test_no_commit_a_member_sends_stops_a_node(
    homes: list[Home], tmp_path: Path, make_adapter: Callable[..., Path]
) -> None:
    alice, bob, carol, mallory = homes
    distilled = write_distilled(tmp_path / "distilled.safetensors")
    nodes = start_line([alice, bob, carol])
    try:
        assert (
            commit_cli(alice, make_adapter("good1", seed=1), distilled, tmp_path / "c1", "1", "1")
            == 0
        )
        await until(lambda: same_digest(nodes, 1), "the first good commit everywhere")
        before = nodes[0].status()["composite_digest"]

        # The ordinary path refuses too, before signing, and uses up no sequence number.
        nan_dir = make_adapter("nan", seed=3)
        (nan_dir / "adapter_model.safetensors").write_bytes(
            _with_tensors(nan_dir, _set("base_model.model.q.lora_A.weight", float("nan")))
        )
        seq_before = (alice.path / "seq").read_text()
        assert commit_cli(alice, nan_dir, distilled, tmp_path / "never", "1", "1") == 2
        assert (alice.path / "seq").read_text() == seq_before

        # Mallory pushes every bad commit to both ends of the line and serves their blobs.
        variants = bad_commits(make_adapter("base-of-bad", seed=2), tmp_path)
        files: dict[bytes, Path] = {}
        records = []
        parent = bytes.fromhex(nodes[0].status()["tip"])
        for seq, (blobs, coeffs) in enumerate(variants.values()):
            commit = sign(mallory, seq, parent, blobs, coeffs)
            for kind, data in blobs.items():
                path = tmp_path / "mallory-blobs" / commit.blobs[kind].sha256.hex()
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
                files[commit.blobs[kind].sha256] = path
            records.append(commit.encode())
        # Mallory's own request cap is 4 MiB: she can send frames alice must refuse.
        hostile = Libp2pTransport(
            mallory.identity().private_bytes(), replace(FAST, max_request=4 << 20)
        )
        hostile.set_blob_provider(files.get)

        async def ignore(peer: str, payload: bytes) -> bytes:
            return b""

        hostile.set_request_handler(ignore)
        async with trio.open_nursery() as nursery:
            await nursery.start(hostile.run)
            peer0 = await hostile.connect(nodes[0].addr)
            for target in (nodes[0], nodes[2]):
                peer = await hostile.connect(target.addr)
                await hostile.request(
                    peer, messages.encode(messages.Records(tuple(records))), max_response=16
                )
            n = len(variants)
            await until(
                lambda: all(nodes[k].status()["invalid_commits"] == n for k in (0, 2)),
                "alice and carol judged every bad commit",
            )
            assert nodes[0].status()["frames"]["bans"] == 0  # invalid content blames no peer
            # Frame-level garbage is counted too: a request frame over alice's 1 MiB limit.
            with contextlib.suppress(TransportError):
                await hostile.request(peer0, b"\0" * (2 << 20), max_response=16)
            await until(
                lambda: nodes[0].status()["frames"]["oversized_frames"] == 1,
                "the oversized frame is counted",
            )
            assert nodes[0].status()["frames"]["bans"] == 1
            hostile.stop()

        for node in nodes:
            assert node.proc.poll() is None, "a node died"
        states = [n.status() for n in nodes]
        assert {s["composite_digest"] for s in states} == {before}
        for k in (0, 2):
            got = sorted(e["reason"].split(":")[0] for e in states[k]["invalid"])
            assert got == sorted(name.split(":")[0] for name in variants)
            assert states[k]["invalid_by_author"] == {"mallory": len(variants)}
            assert states[k]["merge_error"] is None
        assert states[1]["invalid_commits"] == 0  # never relayed
        assert all(s["records"] == 1 for s in states)

        # A good commit after all that still reaches every node.
        assert (
            commit_cli(bob, make_adapter("good2", seed=4), distilled, tmp_path / "c2", "0.5", "1")
            == 0
        )
        await until(lambda: same_digest(nodes, 2), "the second good commit everywhere")
        after = nodes[0].status()["composite_digest"]
    finally:
        errs = stop(nodes)
    assert not any("Traceback" in e for e in errs), errs

    # Restart every node: the same digest, the same verdicts, nothing fetched again.
    nodes = start_line([alice, bob, carol])
    try:
        await until(lambda: same_digest(nodes, 2), "the same digest after a restart")
        assert nodes[0].status()["composite_digest"] == after
        assert nodes[0].status()["invalid_commits"] == len(variants)
    finally:
        errs = stop(nodes)
    assert not any("Traceback" in e for e in errs), errs
