"""Issue 2's done-when, as a new user runs it: two identities, a network, a commit over real
PEFT adapter files, `medforge verify` accepting it and refusing every tampered variant."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crypto import canonical
from crypto.records import Commit, Revocation, decode_record
from node.cli import main
from node.shell.home import Home
from tests.conftest import BASE, TINY_SHAPES, write_distilled


def base_file(directory: Path) -> Path:
    """What `medforge fingerprint --out` writes for TinyBase."""
    path = directory / "base.json"
    info = {"backend": "text", "base": "", "fingerprint": BASE, "shapes": TINY_SHAPES.to_dict()}
    path.write_text(json.dumps(info))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def create_network(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, *argv: str
) -> tuple[int, str]:
    """Alice creates network ``name`` on TinyBase, writing ``tmp_path/genesis.cbor``."""
    base, out = base_file(tmp_path), tmp_path / "genesis.cbor"
    home = str(tmp_path / "alice")
    return run(
        capsys, "network", "create", "--home", home, "--name", name, *argv,
        "--base-file", str(base), "--out", str(out),
    )  # fmt: skip


@pytest.fixture
def network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    for name in ("alice", "bob"):
        assert run(capsys, "init", "--home", str(tmp_path / name), "--name", name)[0] == 0
    code, out = run(capsys, "id", "--home", str(tmp_path / "bob"), "--json")
    (tmp_path / "bob.json").write_text(out)
    code, out = create_network(
        capsys, tmp_path, "oncology", "--member", str(tmp_path / "bob.json"), "--threshold", "2"
    )
    assert code == 0, out
    assert (
        run(
            capsys,
            "network",
            "join",
            "--home",
            str(tmp_path / "bob"),
            str(tmp_path / "genesis.cbor"),
        )[0]
        == 0
    )
    return tmp_path


@pytest.fixture
def bundle(
    network: Path, make_adapter: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> Path:
    distilled = write_distilled(
        network / "distilled.safetensors", ("benign", "malignant"), task="breast"
    )
    code, out = run(
        capsys,
        "commit",
        "--home",
        str(network / "alice"),
        "--adapter",
        str(make_adapter()),
        "--distilled",
        str(distilled),
        "--task",
        "breast",
        "--coeffs",
        "1.0",
        "0.5",
        "--out",
        str(network / "bundle"),
    )
    assert code == 0, out
    return network / "bundle"


def verify(capsys: pytest.CaptureFixture[str], bundle: Path, *extra: str) -> tuple[int, str]:
    home = bundle.parent / "bob"
    return run(capsys, "verify", str(bundle), "--home", str(home), *extra)


def test_verify_accepts_a_fresh_commit(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify(capsys, bundle)
    assert code == 0
    assert out.startswith("valid: commit")
    commit = decode_record((bundle / "commit.cbor").read_bytes())
    assert isinstance(commit, Commit)
    assert commit.classes == ("benign", "malignant")
    assert commit.seq == 0


def test_sequence_numbers_are_never_reused(network: Path) -> None:
    home = Home(network / "alice")
    assert [home.next_seq() for _ in range(3)] == [0, 1, 2]


def _copy(bundle: Path, name: str) -> Path:
    target = bundle.parent / name
    shutil.copytree(bundle, target)
    return target


def _blob(bundle: Path, kind: str) -> Path:
    commit = decode_record((bundle / "commit.cbor").read_bytes())
    assert isinstance(commit, Commit)
    return bundle / "blobs" / commit.blobs[kind].sha256.hex()


@pytest.mark.parametrize("kind", ["adapter_config", "adapter_model", "distilled"])
def test_a_tampered_blob_byte_is_refused(
    bundle: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _copy(bundle, f"tampered-{kind}")
    path = _blob(bad, kind)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = verify(capsys, bad)
    assert code == 2
    assert "BlobRefMismatch" in out
    assert "does not hash" in out


def test_a_truncated_blob_is_refused(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _copy(bundle, "truncated")
    path = _blob(bad, "adapter_model")
    path.write_bytes(path.read_bytes()[:-7])
    code, out = verify(capsys, bad)
    assert code == 2
    assert "bytes, the commit says" in out


def test_a_tampered_record_byte_is_refused(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _copy(bundle, "tampered-record")
    record = bytearray((bad / "commit.cbor").read_bytes())
    record[len(record) - 80] ^= 0x01  # inside the signature or the body: caught either way
    (bad / "commit.cbor").write_bytes(bytes(record))
    code, out = verify(capsys, bad)
    assert code == 2
    assert "error:" in out


def test_a_truncated_record_is_refused(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _copy(bundle, "truncated-record")
    (bad / "commit.cbor").write_bytes((bad / "commit.cbor").read_bytes()[:100])
    code, out = verify(capsys, bad)
    assert code == 2
    assert "TruncatedEncoding" in out


def test_mallory_an_unknown_signer_is_refused(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_adapter: Callable[..., Path],
) -> None:
    # Mallory joins the genesis file (she can read it) and signs a perfectly formed commit.
    run(capsys, "init", "--home", str(tmp_path / "mallory"), "--name", "mallory")
    run(
        capsys,
        "network",
        "join",
        "--home",
        str(tmp_path / "mallory"),
        str(tmp_path / "genesis.cbor"),
    )
    code, out = run(
        capsys,
        "commit",
        "--home",
        str(tmp_path / "mallory"),
        "--adapter",
        str(make_adapter("m")),
        "--distilled",
        str(tmp_path / "distilled.safetensors"),
        "--task",
        "breast",
        "--coeffs",
        "1.0",
        "1.5",
        "--out",
        str(tmp_path / "evil"),
    )
    assert code == 0
    code, out = verify(capsys, tmp_path / "evil")
    assert code == 2
    assert "UnknownSigner" in out


def test_a_commit_for_another_network_is_refused(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "init", "--home", str(tmp_path / "carol"), "--name", "carol")
    run(
        capsys,
        "network",
        "create",
        "--home",
        str(tmp_path / "carol"),
        "--name",
        "other",
        "--base-file",
        str(base_file(tmp_path)),
    )
    code, out = run(capsys, "verify", str(bundle), "--home", str(tmp_path / "carol"))
    assert code == 2
    assert "WrongNetwork" in out


def test_a_revoked_commit_is_refused(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = decode_record((bundle / "commit.cbor").read_bytes())
    code, out = revoke(capsys, network, "alice", "--commit", commit.id.hex())
    assert code == 0, out
    assert "1 signature(s) by 1 member(s) (alice)" in out
    # No node runs here, so the CLI cannot tell alice wrote the commit: it says so.
    assert "or the commit's author's own signature (not known here)" in out
    rev = decode_record((network / "alice.rev").read_bytes())
    assert isinstance(rev, Revocation)
    assert (rev.commit, rev.subject, rev.from_seq) == (commit.id, None, None)
    code, out = verify(capsys, bundle, "--records", str(network / "alice.rev"))
    assert code == 2
    assert "revoked" in out


def revoke(
    capsys: pytest.CaptureFixture[str], network: Path, who: str, *target: str
) -> tuple[int, str]:
    home, out = str(network / who), str(network / f"{who}.rev")
    return run(capsys, "revoke", "--home", home, *target, "--out", out)


def test_a_revocation_by_a_member_other_than_the_author_is_below_the_threshold(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = decode_record((bundle / "commit.cbor").read_bytes())
    code, out = revoke(capsys, network, "bob", "--commit", commit.id.hex())
    assert code == 0, out
    assert "1 signature(s) by 1 member(s) (bob); threshold 2 of 2: not met" in out
    code, out = verify(capsys, bundle, "--records", str(network / "bob.rev"))
    assert code == 0, out  # bob alone changes nothing


def test_two_members_revocations_combine_and_meet_the_threshold(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = decode_record((bundle / "commit.cbor").read_bytes())
    for who in ("bob", "alice"):  # independently: neither sees the other's file
        assert revoke(capsys, network, who, "--commit", commit.id.hex())[0] == 0
    bob_rev = decode_record((network / "bob.rev").read_bytes())
    alice_rev = decode_record((network / "alice.rev").read_bytes())
    assert bob_rev.id == alice_rev.id
    combined = network / "both.rev"
    code, out = run(
        capsys,
        "roster",
        "combine",
        str(network / "bob.rev"),
        str(network / "alice.rev"),
        "--out",
        str(combined),
        "--home",
        str(network / "bob"),
    )
    assert code == 0, out
    assert "revocation" in out
    assert "2 signature(s) by 2 member(s) (alice, bob); threshold 2 of 2: met" in out
    code, out = verify(capsys, bundle, "--records", str(combined))
    assert code == 2
    assert "revoked" in out
    # Co-signing bob's file gives the very same record as combining the two files.
    code, out = run(
        capsys,
        "roster",
        "sign",
        "--home",
        str(network / "alice"),
        str(network / "bob.rev"),
        "--out",
        str(network / "signed.rev"),
    )
    assert code == 0, out
    assert "threshold 2 of 2: met" in out
    assert (network / "signed.rev").read_bytes() == combined.read_bytes()
    # Without --home, combine still combines, and says it cannot judge the threshold.
    code, out = run(
        capsys,
        "roster",
        "combine",
        str(combined),
        str(network / "bob.rev"),
        "--out",
        str(network / "again.rev"),
        "--json",
    )
    assert code == 0, out
    info = json.loads(out)
    assert (info["kind"], info["signatures"], info["meets_threshold"]) == ("revocation", 2, None)
    assert (network / "again.rev").read_bytes() == combined.read_bytes()


def test_a_key_revocation_from_seq(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = json.loads(run(capsys, "id", "--home", str(network / "alice"), "--json")[1])
    code, out = revoke(capsys, network, "bob", "--from-seq", "0", "--key", alice["public_key"])
    assert code == 0, out
    assert "not met (1 more member signature(s) needed, or the revoked key's own signature)" in out
    assert verify(capsys, bundle, "--records", str(network / "bob.rev"))[0] == 0
    code, out = revoke(capsys, network, "alice", "--from-seq", "0")  # default: her own key
    assert code == 0, out
    assert "signed by the revoked key: counts" in out
    rev = decode_record((network / "alice.rev").read_bytes())
    assert isinstance(rev, Revocation)
    assert rev.subject is not None
    assert rev.subject.hex() == alice["public_key"]
    code, out = verify(capsys, bundle, "--records", str(network / "alice.rev"))
    assert code == 2
    assert "RevokedKey" in out


def test_revoke_and_roster_errors_are_typed(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = decode_record((bundle / "commit.cbor").read_bytes())
    code, out = revoke(capsys, network, "bob", "--commit", "abc")
    assert (code, out.strip()) == (
        2,
        "error: UsageError: --commit 'abc': a commit id is 64 hex characters",
    )
    code, out = revoke(capsys, network, "bob", "--commit", commit.id.hex(), "--key", "00" * 32)
    assert code == 2
    assert out.startswith("error: UsageError: --key")
    code, out = revoke(capsys, network, "bob", "--from-seq", "-1")
    assert code == 2
    assert out.startswith("error: UsageError:")
    assert revoke(capsys, network, "bob", "--commit", commit.id.hex())[0] == 0
    assert revoke(capsys, network, "alice", "--commit", "ab" * 32)[0] == 0
    code, out = run(
        capsys,
        "roster",
        "combine",
        str(network / "bob.rev"),
        str(network / "alice.rev"),
        "--out",
        str(network / "x.rev"),
    )
    assert code == 2
    assert out.startswith("error: SchemaError: cannot combine signatures of two different records")
    code, out = run(
        capsys,
        "roster",
        "sign",
        "--home",
        str(network / "bob"),
        str(network / "genesis.cbor"),
        "--out",
        str(network / "x.rev"),
    )
    assert code == 2
    assert "error: UsageError:" in out
    assert "is a genesis, not a roster update or a revocation" in out
    tampered = bytearray((network / "bob.rev").read_bytes())
    tampered[-1] ^= 1
    (network / "bad.rev").write_bytes(bytes(tampered))
    code, out = run(
        capsys,
        "roster",
        "sign",
        "--home",
        str(network / "alice"),
        str(network / "bad.rev"),
        "--out",
        str(network / "x.rev"),
    )
    assert code == 2
    assert out.startswith("error: BadSignature:")
    assert not (network / "x.rev").exists()


def test_a_removed_member_is_refused(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # alice and bob (threshold 2) remove alice, keeping none of her commits.
    alice_id = json.loads(run(capsys, "id", "--home", str(network / "alice"), "--json")[1])
    member = f"alice:{alice_id['public_key']}"
    run(
        capsys,
        "roster",
        "propose",
        "--home",
        str(network / "alice"),
        "--op",
        "remove",
        "--epoch",
        "1",
        "--member",
        member,
        "--out",
        str(network / "u1.cbor"),
    )
    run(
        capsys,
        "roster",
        "sign",
        "--home",
        str(network / "bob"),
        str(network / "u1.cbor"),
        "--out",
        str(network / "u2.cbor"),
    )
    code, out = verify(capsys, bundle, "--records", str(network / "u2.cbor"))
    assert code == 2
    assert "RemovedMember" in out


def test_unknown_schema_version_is_refused(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _copy(bundle, "v3")
    envelope = canonical.decode((bad / "commit.cbor").read_bytes())
    envelope["v"] = 3  # commits are versions 1 and 2
    (bad / "commit.cbor").write_bytes(canonical.encode(envelope))
    code, out = verify(capsys, bad)
    assert code == 2
    assert "UnknownSchemaVersion" in out


def test_init_refuses_to_overwrite(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "init", "--home", str(network / "alice"), "--name", "again")
    assert code == 2
    assert "refusing to overwrite" in out


def _signed_bundle_with(network: Path, name: str, weights: bytes) -> Path:
    """What a careless or malicious member could sign by bypassing `medforge commit`."""
    from crypto.records import Commit
    from node.forge.bundle import blob_ref, write_bundle

    source = network / "bundle"
    home = Home(network / "alice")
    genesis = home.genesis()
    blobs = {
        "adapter_config": _blob(source, "adapter_config").read_bytes(),
        "adapter_model": weights,
        "distilled": _blob(source, "distilled").read_bytes(),
    }
    commit = Commit.create(
        home.identity(),
        network=genesis.network_id,
        seq=home.next_seq(),
        task="breast",
        classes=("benign", "malignant"),
        base=BASE,
        blobs={k: blob_ref(v) for k, v in blobs.items()},
        parent=b"\0" * 32,
        coeffs=(1.0, 0.5),
        objective={},
    )
    return write_bundle(network / name, commit, blobs, genesis).path


def _safetensors(tensors: dict[str, torch.Tensor], base: str = BASE) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"base": base})


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(_blob(bundle, "adapter_model").read_bytes())


def test_a_safetensors_header_claiming_1e15_bytes_is_refused(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct

    header = json.dumps(
        {
            "x.lora_A.weight": {
                "dtype": "F32",
                "shape": [10**7, 10**8],
                "data_offsets": [0, 4 * 10**15],
            }
        }
    ).encode()
    absurd = struct.pack("<Q", len(header)) + header + b"\0" * 16
    code, out = verify(capsys, _signed_bundle_with(bundle.parent, "absurd", absurd))
    assert code == 2
    assert "AdapterFormatError" in out or "LimitError" in out


def test_non_finite_adapter_weights_are_refused(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = _weights(bundle)
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    code, out = verify(capsys, _signed_bundle_with(bundle.parent, "nan", _safetensors(tensors)))
    assert code == 2
    assert "NonFiniteError" in out
    assert "tensor 'q.lora_A.weight'" in out


def test_an_adapter_for_another_base_is_refused(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _safetensors(_weights(bundle), base="cd" * 32)
    code, out = verify(capsys, _signed_bundle_with(bundle.parent, "other-base", other))
    assert code == 2
    assert "BaseMismatchError" in out


def test_commit_refuses_to_sign_a_bad_adapter(
    network: Path, make_adapter: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = make_adapter("wrong-base", base="cd" * 32)
    code, out = run(
        capsys,
        "commit",
        "--home",
        str(network / "alice"),
        "--adapter",
        str(adapter),
        "--distilled",
        str(adapter / "adapter_model.safetensors"),
        "--classes",
        "a,b",
        "--task",
        "t",
        "--coeffs",
        "1",
        "1",
        "--out",
        str(network / "never"),
    )
    assert code == 2
    assert "BaseMismatchError" in out
    assert not (network / "never").exists()


def test_offline_merge_digest_is_reproducible_and_order_sensitive(
    bundle: Path,
    network: Path,
    make_adapter: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(
        capsys,
        "commit",
        "--home",
        str(network / "bob"),
        "--adapter",
        str(make_adapter("bob-plugin", seed=7, rank=3)),
        "--distilled",
        str(network / "distilled.safetensors"),
        "--task",
        "lung",
        "--coeffs",
        "0.75",
        "0.5",
        "--out",
        str(network / "bob-bundle"),
    )
    assert code == 0, out

    def merge(*bundles: Path) -> str:
        code, out = run(
            capsys, "merge", *map(str, bundles), "--home", str(network / "alice"), "--json"
        )
        assert code == 0, out
        return str(json.loads(out)["digest"])

    first = merge(bundle, network / "bob-bundle")
    assert merge(bundle, network / "bob-bundle") == first
    assert merge(network / "bob-bundle", bundle) != first


def test_status_without_a_running_node_says_so(
    network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "status", "--home", str(network / "alice"))
    assert code == 3  # Exit.NO_NODE: told apart from bad input (2) and a refusal (4)
    assert "no node is running" in out


def test_a_plain_peft_adapter_commits_without_any_edit(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PEFT writes ``base_model_name_or_path: null`` and no medforge metadata: the shape
    table decides, not a hand edit."""
    from peft import LoraConfig, get_peft_model

    from tests.conftest import TinyBase

    out = network / "plain"
    get_peft_model(TinyBase(), LoraConfig(r=2, target_modules=["q", "v"])).save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    code, text = run(
        capsys,
        "commit",
        "--home",
        str(network / "alice"),
        "--adapter",
        str(out),
        "--distilled",
        str(network / "distilled.safetensors"),
        "--task",
        "breast",
        "--coeffs",
        "1",
        "1",
        "--out",
        str(network / "plain-bundle"),
    )
    assert code == 0, text
    assert verify(capsys, network / "plain-bundle")[0] == 0


def test_an_exported_composite_commits_again(
    bundle: Path, network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(
        capsys,
        "merge",
        str(bundle),
        "--home",
        str(network / "alice"),
        "--export",
        str(network / "exported"),
    )
    assert code == 0, text
    config = json.loads((network / "exported" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE  # it names the base it was merged on
    code, text = run(
        capsys,
        "commit",
        "--home",
        str(network / "bob"),
        "--adapter",
        str(network / "exported"),
        "--distilled",
        str(network / "distilled.safetensors"),
        "--task",
        "again",
        "--coeffs",
        "1",
        "1",
        "--out",
        str(network / "again"),
    )
    assert code == 0, text


def test_a_refused_commit_uses_up_no_sequence_number(
    bundle: Path,
    network: Path,
    make_adapter: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = network / "bob"
    for bad in (["--coeffs", "9", "1"], ["--coeffs", "1", "1", "--classes", "a,b,c"]):
        code, text = run(
            capsys,
            "commit",
            "--home",
            str(home),
            "--adapter",
            str(make_adapter()),
            "--distilled",
            str(network / "distilled.safetensors"),
            "--task",
            "t",
            "--out",
            str(network / "never"),
            *bad,
        )
        assert code == 2
        assert text.splitlines()[-1].startswith("error: InvalidCommit: ")
    assert not (home / "seq").exists()  # seq 0 is still free
    garbage = network / "garbage.safetensors"
    garbage.write_bytes(b"\x10\0\0\0\0\0\0\0{not a header}")
    code, text = run(
        capsys,
        "commit",
        "--home",
        str(home),
        "--adapter",
        str(make_adapter()),
        "--distilled",
        str(garbage),
        "--task",
        "t",
        "--out",
        str(network / "never"),
    )
    assert code == 2
    assert "Traceback" not in text
    assert text.splitlines()[-1].startswith("error: ")


def test_the_fingerprint_file_gives_the_network_its_base_shape_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`medforge fingerprint --out` on the real (shipped) MiniLM, then `network create`."""
    code, out = run(capsys, "fingerprint", "--out", str(tmp_path / "base.json"), "--json")
    assert code == 0, out
    info = json.loads((tmp_path / "base.json").read_text())
    modules = info["shapes"]["modules"]
    assert modules["encoder.layer.0.attention.self.query"] == [384, 384]
    assert info["shapes"]["input"] == {"kind": "text-embeds", "shape": [-1, 384]}
    run(capsys, "init", "--home", str(tmp_path / "h"), "--name", "h")
    code, out = run(
        capsys,
        "network",
        "create",
        "--home",
        str(tmp_path / "h"),
        "--name",
        "n",
        "--base-file",
        str(tmp_path / "base.json"),
        "--json",
    )
    assert code == 0, out
    spec = json.loads(out)["spec"]
    assert spec["base"] == info["fingerprint"]
    assert spec["shapes"]["modules"] == modules
    # The old spelling, --base FINGERPRINT: the base is loaded to read the table, and warned.
    run(capsys, "init", "--home", str(tmp_path / "h2"), "--name", "h2")
    code = main(
        ["network", "create", "--home", str(tmp_path / "h2"), "--name", "n"]
        + ["--base", info["fingerprint"], "--json"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "`network create --base FINGERPRINT` is deprecated, use --base PATH" in captured.err
    shown, _ = json.JSONDecoder().raw_decode(captured.out)  # loading the base logs after it
    assert shown["spec"]["shapes"] == spec["shapes"]


def test_the_cli_does_not_load_torch_to_parse_or_answer_id() -> None:
    """`medforge --help`, `id` and `status` should answer at once: the tensor side (torch,
    nevergrad) is imported only by the commands that compute."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from node.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'nevergrad', 'transformers', 'peft') "
        "if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("medforge ")


def test_joining_a_network_named_with_terminal_escapes_prints_them_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A genesis's name is its author's choice: `network join` must not hand an escape
    sequence (clear screen, a right-to-left override) raw to the joiner's terminal."""
    for name in ("alice", "bob"):
        assert run(capsys, "init", "--home", str(tmp_path / name), "--name", name)[0] == 0
    hostile = "onco\x1b[2J\u202elogy"
    code, out = create_network(capsys, tmp_path, hostile)
    assert code == 0, out
    code, out = run(
        capsys, "network", "join", "--home", str(tmp_path / "bob"), str(tmp_path / "genesis.cbor")
    )
    assert code == 0, out
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "joined network onco\\x1b[2J\\u202elogy" in out
