"""Issue 15 through the real CLI: `network create --base MODEL` computes the fingerprint and
shape table (``--base-file`` reads them, a malformed fingerprint is refused with exit 2), and
`medforge log` shows when each item arrived, the author's claim and its per-task accuracy,
with the warning `medforge commit` gave when a task served before drops."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from merge.base_shapes import shapes_of
from merge.fold import Composite, apply
from merge.lora import load_adapter
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.datasets import Examples, write_table
from merge.pipeline.distill import load_distilled, save_distilled
from merge.pipeline.search import predict_proba
from merge.spec import Limits
from node.cli import main
from node.forge import claim
from node.shell.home import Home
from tests.merge.pipeline_fixtures import TOY_WORDS, save_tiny_text, toy_records
from tests.node import procs

FIRST = tuple(TOY_WORDS)
SECOND = ("break", "germ", "growth")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_text(tmp_path_factory.mktemp("base") / "tiny")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def create(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, *flags: str
) -> tuple[int, str, str]:
    home = tmp_path / name
    assert main(["init", "--home", str(home), "--name", name]) == 0
    capsys.readouterr()
    return run(capsys, "network", "create", "--home", str(home), "--name", "n", *flags)


def test_network_create_base_computes_the_fingerprint_and_shape_table(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = TextBackend.from_pretrained(str(model))
    code, out, err = create(capsys, tmp_path, "alice", "--base", str(model), "--json")
    assert code == 0, err
    assert "warning" not in err
    spec = json.loads(out)["spec"]
    assert spec["base"] == backend.fingerprint
    assert spec["shapes"] == shapes_of(backend).to_dict()
    assert spec["backend"] == {"kind": "text", "model": str(model)}
    assert Home(tmp_path / "alice").genesis().spec["base"] == backend.fingerprint

    # Air-gapped: the file `medforge fingerprint --out` wrote, nothing loaded; the same spec.
    base = tmp_path / "base.json"
    assert run(capsys, "fingerprint", "--base", str(model), "--out", str(base))[0] == 0
    code, out, err = create(capsys, tmp_path, "bob", "--base-file", str(base), "--json")
    assert code == 0, err
    assert json.loads(out)["spec"] == spec

    # The old spellings still work, each with a warning naming the new one.
    for name, flags, new in (
        ("carol", ["--model", str(model)], "use --base PATH"),
        ("dave", ["--base", str(base)], "use --base-file FILE"),
        ("erin", ["--base", backend.fingerprint, "--model", str(model)], "use --base PATH"),
    ):
        code, out, err = create(capsys, tmp_path, name, *flags, "--json")
        assert code == 0, err
        assert "is deprecated" in err
        assert new in err
        assert json.loads(out)["spec"] == spec


def test_a_malformed_fingerprint_is_refused_with_exit_2(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    good = shapes_of(TextBackend.from_pretrained(str(model))).to_dict()
    bad.write_text(json.dumps({"backend": "text", "fingerprint": "abc", "shapes": good}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": "ab" * 31}))  # 62 characters
    for name, flags, error in (
        ("a", ["--base-file", str(bad)], f"UsageError: {bad}: fingerprint 'abc' is not a base "),
        ("b", ["--base", "abc", "--model", str(model)], "UsageError: --base 'abc' is not a base "),
        ("c", ["--base", "abc"], "UsageError: --base 'abc' is neither a model directory nor"),
        ("d", ["--base", str(model), "--spec", str(spec)], "SpecError: base 'abab"),
    ):
        code, out, err = create(capsys, tmp_path, name, *flags, "--json")
        assert code == 2, err
        assert f"error: {error}" in err
        assert json.loads(out)["error"]["exit"] == 2
        assert not Home(tmp_path / name).genesis_path.exists()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, str]:
    """Run a command with --json; its parsed stdout and its stderr."""
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    return json.loads(captured.out), captured.err


def plugin(
    capsys: pytest.CaptureFixture[str], home: Path, task: str, model: Path, head: Composite
) -> Path:
    """A quick independent plugin for ``task`` (a continual one onto the tip would commit at
    (1, 1) unsearched, and this test needs a search), and its distilled set labelled
    by what ``head`` + the plugin predict (so the merged head serves it perfectly: a tiny
    base trained for a few steps serves nothing, and a drop needs something served)."""
    data = home.parent / f"{task}.csv"
    records = toy_records()
    write_table(Examples(records.items, records.labels, FIRST if task == "first" else SECOND), data)
    common = ["--task", task, "--data", str(data)]
    out = home.parent / f"plugin-{task}"
    train = ["train", *common, "--out", str(out), "--home", str(home), "--independent"]
    cli(capsys, *train, "--quick")
    distilled = home.parent / f"{task}.safetensors"
    cli(capsys, "distill", *common, "--ipc", "4", "--out", str(distilled), "--base", str(model))
    d = load_distilled(distilled)
    encoder = TextBackend.from_pretrained(str(model))
    merged = apply(head, load_adapter(out, base=d.base, limits=Limits()), (1.0, 1.0))
    probs = predict_proba(encoder, merged, d.inputs, encoder.encode_classes(d.classes))
    save_distilled(replace(d, labels=probs.argmax(-1)), distilled)
    return out


def destroyer(adapter: Path) -> Path:
    """``adapter`` with its LoRA B factors scaled 200-fold: a ΔW that wrecks every task."""
    out = adapter.parent / f"{adapter.name}-destroyer"
    shutil.copytree(adapter, out)
    weights = out / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) * (200 if "lora_B" in k else 1) for k in f.keys()}
    save_file(tensors, str(weights), metadata=metadata)
    return out


def commit(
    capsys: pytest.CaptureFixture[str], home: Path, adapter: Path, task: str, *extra: str
) -> tuple[dict[str, Any], str]:
    distilled = home.parent / f"{task}.safetensors"
    argv = ["commit", "--home", str(home), "--adapter", str(adapter), "--distilled"]
    out = home.parent / f"bundle-{adapter.name}"
    return cli(capsys, *argv, str(distilled), "--task", task, "--out", str(out), *extra)


def test_log_shows_arrival_claim_and_the_warning_when_a_task_drops(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--base", str(model), "--compaction", "off")  # the composite: plain `apply`s
    assert create(capsys, tmp_path, "alice", *flags)[0] == 0
    home = tmp_path / "alice"
    node = procs.start(Home(home), [])
    started = time.time()

    # v1, onto the empty head (taken at (1, 1), not searched): its own task only.
    first = plugin(capsys, home, "first", model, Composite("stack"))
    report, err = commit(capsys, home, first, "first")
    assert "warning" not in err
    assert report["objective"]["evaluations"] == 0
    assert set(report["objective"]) == {"loss_before", "loss_after", "evaluations", *OWN}
    before = report["objective"][claim.BEFORE]
    assert report["task_accuracy"] == [
        {"task": "first", "before": before, "after": 1.0, "own": True}
    ]
    assert report["warnings"] == []

    # v2, a real search onto v1: the task served before is scored before and after.
    v1 = apply(Composite("stack"), load_adapter(first, base=None, limits=Limits()), (1.0, 1.0))
    second = plugin(capsys, home, "second", model, v1)
    report, err = commit(capsys, home, second, "second")
    assert report["objective"]["evaluations"] > 0
    served = [f for f in report["task_accuracy"] if not f["own"]]
    assert [(f["task"], f["before"]) for f in served] == [("first", 1.0)]
    assert report["warnings"] == []
    assert "falls from" not in err

    # v3, forced coefficients, scored on request: an adapter that wrecks what was served.
    argv = ("--coeffs", "0.5", "1.5", "--score")
    report, err = commit(capsys, home, destroyer(first), "first", *argv)
    [warning] = report["warnings"]
    assert warning.startswith("warning: task first falls from 1.00 to ")
    assert warning.endswith(" on its distilled set")
    assert warning in err.splitlines()
    wrecked = {f["task"]: f["after"] for f in report["task_accuracy"] if not f["own"]}
    assert wrecked["first"] < 0.5
    assert not any(k.startswith("loss") for k in report["objective"])  # scored, not searched

    # v4, forced and not scored: no claim and no figures, as before issue 15.
    report, err = commit(capsys, home, destroyer(second), "second", "--coeffs", "0.5", "1.5")
    assert (report["objective"], report["task_accuracy"], report["warnings"]) == ({}, [], [])

    log, _ = cli(capsys, "log", "--home", str(home))
    items = log["items"]
    assert [e["task"] for e in items] == ["first", "second", "first", "second"]
    assert all(started <= e["received_at"] <= time.time() for e in items)
    assert [e["warnings"] for e in items] == [[], [], [warning], []]
    assert items[1]["task_accuracy"][1:] == served
    assert main(["log", "--home", str(home)]) == 0
    shown = capsys.readouterr().out.splitlines()
    procs.stop([node])
    v3 = shown.index(next(line for line in shown if line.startswith("v3 ")))
    assert shown[v3 + 1].startswith("     received 20")
    assert shown[v3 + 1].endswith(" UTC")
    assert shown[v3 + 2] == "     claim: coefficients given and scored, not searched"
    assert shown[v3 + 3].startswith(
        "     accuracy on the distilled sets (head -> merged): first (own) 1.00 -> "
    )
    assert shown[v3 + 4] == f"     {warning}"
    assert any(line.startswith("     claim: loss ") and "40 evaluations" in line for line in shown)
    assert shown[-1] == "     claim: none (coefficients given, not searched)"


OWN = {claim.BEFORE, claim.AFTER}
