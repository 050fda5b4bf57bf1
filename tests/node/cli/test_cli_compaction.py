"""Issue 13 through the real CLI: `network create --compaction`, `merge` on a compacting
network, and `export --merged` / `--max-rank` from a running node."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import trio

from merge.compaction import Compaction
from merge.dense import DenseModule
from merge.digest import composite_digest
from merge.export import export_peft
from merge.fold import delta_weights, fold, single_task
from merge.lora import LoraAdapter, LoraModule, load_adapter
from merge.spec import Limits, MergeSpec
from node.cli import main as cli
from node.forge.netspec import merge_spec
from node.shell.home import Home
from node.shell.runner import run_node
from node.shell.service import NodeService
from node.shell.transport import MemoryNetwork, MemoryTransport
from tests.conftest import BASE, write_distilled
from tests.merge.pipeline_fixtures import save_tiny_text
from tests.node.cli.test_cli_commit import base_file
from tests.node.shell.test_service import FAST, _commit


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _create(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, *flags: str
) -> tuple[int, str, str]:
    home = tmp_path / name
    assert cli(["init", "--home", str(home), "--name", name]) == 0
    capsys.readouterr()
    base = ["--base-file", str(base_file(tmp_path))]
    return _run(capsys, "network", "create", "--home", str(home), "--name", name, *base, *flags)


def test_new_stack_networks_compact_and_others_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _create(capsys, tmp_path, "auto", "--json")
    assert code == 0, err
    assert json.loads(out)["spec"]["merge"]["compaction"] == "auto"
    assert merge_spec(Home(tmp_path / "auto").genesis()).compaction == "auto"
    code, out, _ = _run(capsys, "network", "show", "--home", str(tmp_path / "auto"))
    assert "merge stack, compaction auto (at the crossover)" in out
    # The spec is readable: one key a line, the base's module table as a count.
    assert '    compaction "auto"' in out
    assert "  shapes:" in out
    assert all(len(line) < 120 for line in out.splitlines() if "public" not in line)
    # Off: exactly the spec (so the network id) a stack network had before compaction.
    code, out, err = _create(capsys, tmp_path, "off", "--compaction", "off", "--json")
    assert code == 0, err
    assert json.loads(out)["spec"]["merge"] == MergeSpec(mode="stack").to_dict()
    code, out, err = _create(capsys, tmp_path, "ranked", "--compact-rank", "32", "--json")
    assert code == 0, err
    assert json.loads(out)["spec"]["merge"]["compact_rank"] == 32
    code, out, err = _create(capsys, tmp_path, "fused", "--mode", "fusion", "--json")
    assert code == 0, err
    assert "compaction" not in json.loads(out)["spec"]["merge"]
    code, _, err = _create(capsys, tmp_path, "mixed", "--mode", "mixture", "--compaction", "auto")
    assert code == 2
    assert "stack only" in err
    code, _, err = _create(capsys, tmp_path, "odd", "--compaction", "off", "--compact-rank", "4")
    assert code == 2
    assert "compact_rank" in err


def test_offline_merge_folds_under_the_networks_compaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_adapter: Callable[..., Path]
) -> None:
    assert _create(capsys, tmp_path, "alice")[0] == 0
    home = str(tmp_path / "alice")
    distilled = write_distilled(tmp_path / "d.safetensors")
    plugins = [make_adapter(f"p{k}", seed=k + 1, rank=2) for k in range(2)]
    coeffs = [("1", "1"), ("0.75", "0.5")]
    bundles = []
    for k, (plugin, (w1, w2)) in enumerate(zip(plugins, coeffs, strict=True)):
        argv = ["commit", "--home", home, "--adapter", str(plugin), "--distilled", str(distilled)]
        argv += ["--task", f"t{k}", "--coeffs", w1, w2, "--out", str(tmp_path / f"b{k}")]
        assert _run(capsys, *argv)[0] == 0
        bundles.append(str(tmp_path / f"b{k}"))
    code, out, err = _run(capsys, "merge", *bundles, "--home", home, "--json")
    assert code == 0, err
    adapters = [load_adapter(p, base=BASE, limits=Limits()) for p in plugins]
    steps = list(zip(adapters, [(1.0, 1.0), (0.75, 0.5)], strict=True))
    compacted = fold("stack", steps, compaction=Compaction())  # q, v: rank 4 on 8×8
    assert all(isinstance(m, DenseModule) for m in compacted.modules.values())
    assert json.loads(out)["digest"] == composite_digest(compacted)
    assert json.loads(out)["digest"] != composite_digest(fold("stack", steps))
    # Another mode folds without compaction (which only stack has); --export writes PEFT.
    code, out, err = _run(capsys, "merge", *bundles, "--home", home, "--mode", "fusion", "--json")
    assert code == 0, err
    assert json.loads(out)["digest"] == composite_digest(fold("fusion", steps))
    exported = tmp_path / "exported"
    assert _run(capsys, "merge", *bundles, "--home", home, "--export", str(exported))[0] == 0
    back = load_adapter(exported, base=BASE, limits=Limits())
    for name, dw in delta_weights(back.modules).items():
        torch.testing.assert_close(dw, delta_weights(compacted.modules)[name], atol=1e-6, rtol=0)


def test_export_merged_refuses_a_mixture_before_asking_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _create(capsys, tmp_path, "mix", "--mode", "mixture")[0] == 0
    argv = ["export", "--home", str(tmp_path / "mix"), "--out", str(tmp_path / "m"), "--merged"]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "a mixture has no merged weights" in err
    assert not (tmp_path / "m").exists()


def _tiny_bert_plugin(out: Path, fingerprint: str, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    names = [f"encoder.layer.{k}.attention.self.{p}" for k in range(2) for p in ("query", "value")]
    mods = {
        n: LoraModule(torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g) * 0.05)
        for n in names
    }
    return export_peft(single_task("stack", LoraAdapter(fingerprint, mods)), out, base=fingerprint)


async def test_export_merged_and_capped_from_a_running_node(
    tmp_path: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    from merge.pipeline.backends.text import TextBackend

    model = save_tiny_text(tmp_path / "tiny")
    assert cli(["fingerprint", "--base", str(model), "--out", str(tmp_path / "base.json")]) == 0
    assert cli(["init", "--home", str(tmp_path / "alice"), "--name", "alice"]) == 0
    argv = ["network", "create", "--home", str(tmp_path / "alice"), "--name", "n"]
    assert cli([*argv, "--base-file", str(tmp_path / "base.json")]) == 0  # stack: compaction auto
    capsys.readouterr()
    home = Home(tmp_path / "alice")
    fingerprint = str(home.genesis().spec["base"])
    distilled = write_distilled(tmp_path / "d.safetensors", base=fingerprint, width=32)
    node = NodeService(
        home, transport=MemoryTransport(MemoryNetwork(), home.identity().private_bytes(), FAST)
    )
    await nursery.start(run_node, node)
    for k, coeffs in enumerate([(1.0, 1.0), (0.8, 0.6)]):
        plugin = _tiny_bert_plugin(tmp_path / f"p{k}", fingerprint, seed=k)
        commit, blobs = _commit(home, plugin, distilled, node.core.tip, coeffs)
        await node.publish(commit, blobs)
        with trio.fail_after(60):
            await node.wait_until(
                lambda n, k=k: len(n.core.order.commits) == k + 1 and n.core.digest is not None
            )
    composite = node.composer.composite
    assert all(isinstance(m, DenseModule) for m in composite.modules.values())  # 16·64 >= 32²

    out = tmp_path / "merged"
    argv = ["export", "--home", str(home.path), "--out", str(out), "--merged", "--json"]
    assert await trio.to_thread.run_sync(cli, argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["merged"], result["digest"]) == (True, node.composer.digest)
    base, merged = TextBackend.from_pretrained(str(model)), TextBackend.from_pretrained(str(out))
    ids = base.prepare(["broken femur", "fever and pus"])
    with torch.no_grad():
        want = base.encode_inputs(ids, delta_weights(composite.modules))
        torch.testing.assert_close(merged.encode_inputs(ids), want, rtol=1e-5, atol=1e-5)

    capped = tmp_path / "capped"
    argv = ["export", "--home", str(home.path), "--out", str(capped), "--max-rank", "4"]
    assert await trio.to_thread.run_sync(cli, argv) == 0
    back = load_adapter(capped, base=fingerprint, limits=Limits())
    assert {m.rank for m in back.modules.values()} == {4}
    node.stop()
