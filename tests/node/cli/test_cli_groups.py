"""Issue 12 end to end: `medforge network create --groups layer`, then `medforge commit`
through a running node searches one coefficient pair per transformer layer and signs them
into a schema 2 commit; the node and every composer fold it to one digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crypto.records import Commit, decode_record
from merge.digest import composite_digest
from merge.fold import apply, empty
from merge.pipeline.distill import DistillConfig, distill, save_distilled
from merge.pipeline.train import TrainConfig, train_plugin
from node.cli import main as cli
from node.forge.author import Head
from node.forge.netspec import merge_spec
from node.shell.control import call
from node.shell.home import Home
from tests.merge.pipeline_fixtures import save_tiny_text, tiny_text_backend, toy_records
from tests.node.procs import start, stop, until

pytestmark = pytest.mark.slow
LAYERS = ["encoder.layer.0", "encoder.layer.1"]  # the tiny BERT's two blocks


def _plugin(tmp_path: Path, name: str, seed: int) -> tuple[Path, Path]:
    backend, records = tiny_text_backend(), toy_records()
    adapter = tmp_path / f"{name}-plugin"
    config = TrainConfig.quick(seed=seed, batch_size=8)
    train_plugin(backend, records, task=name, out=adapter, config=config)
    report = distill(backend, records, task=name, config=DistillConfig.quick(ipc=2, seed=seed))
    distilled = tmp_path / f"{name}-distilled.safetensors"
    save_distilled(report.distilled, distilled)
    return adapter, distilled


def _commit(
    capsys: pytest.CaptureFixture[str], home: Path, plugin: tuple[Path, Path], out: Path
) -> Commit:
    argv = ["commit", "--home", str(home), "--adapter", str(plugin[0])]
    argv += ["--distilled", str(plugin[1]), "--task", out.name, "--out", str(out), "--json"]
    code = cli(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["published"] is not None
    record = decode_record((out / "commit.cbor").read_bytes())
    assert isinstance(record, Commit)
    return record


def test_network_create_names_the_grouping_and_refuses_one_the_base_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.node.cli.test_cli_commit import base_file  # TinyBase: q, v, head

    home = tmp_path / "alice"
    assert cli(["init", "--home", str(home), "--name", "alice"]) == 0
    create = ["network", "create", "--home", str(home), "--name", "n", "--base-file"]
    assert cli([*create, str(base_file(tmp_path)), "--groups", "layer"]) == 2
    assert "no module of the base is in any group" in capsys.readouterr().err
    assert cli([*create, str(base_file(tmp_path)), "--groups", "target", "--mode", "mixture"]) == 2
    assert "mixture" in capsys.readouterr().err
    assert cli([*create, str(base_file(tmp_path)), "--groups", "target", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["spec"]["merge"]["search"]["groups"] == "target"
    assert merge_spec(Home(home).genesis()).search.groups == "target"


async def test_a_layer_grouped_network_commits_and_folds_per_layer_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_text(tmp_path / "tiny-base")
    base = tmp_path / "base.json"
    assert cli(["fingerprint", "--base", str(model), "--out", str(base)]) == 0
    alice = tmp_path / "alice"
    assert cli(["init", "--home", str(alice), "--name", "alice"]) == 0
    create = ["network", "create", "--home", str(alice), "--name", "layered"]
    create += ["--base-file", str(base)]
    assert cli([*create, "--mode", "stack", "--groups", "layer"]) == 0
    capsys.readouterr()
    home = Home(alice)
    genesis = home.genesis()
    assert merge_spec(genesis).search.groups == "layer"
    plugins = [_plugin(tmp_path, name, seed) for seed, name in enumerate(("north", "south"))]

    node = start(home, [])
    try:
        first = _commit(capsys, alice, plugins[0], tmp_path / "first")
        # Onto the empty composite: (1, 1), not searched, no per-layer pairs.
        assert (first.module_coeffs, first.coeffs) == (None, (1.0, 1.0))

        def at(items: int) -> bool:
            status = node.status()
            return bool(status["forge_item"] == items and status["composite_digest"])

        await until(lambda: at(1), "the first commit is merged")
        second = _commit(capsys, alice, plugins[1], tmp_path / "second")
        await until(lambda: at(2), "the second commit is merged")
        served = node.status()["composite_digest"]
        answer = call(home.control_path, "head", timeout=30)
    finally:
        stop([node])

    # A schema 2 commit: the scalar optimum, and one pair per layer refined from it.
    assert second.version() == 2
    assert second.module_coeffs is not None
    assert sorted(second.module_coeffs) == LAYERS
    objective = second.objective
    assert objective["evaluations"] > merge_spec(genesis).search.budget
    assert objective["loss_after"] <= objective["loss_scalar"] + 0.05  # L1 term's most
    # Two composers on the node's main chain, and the node itself: one digest.
    head = Head.from_answer(answer)
    assert [c.id for c in head.commits] == [first.id, second.id]
    one, two = head.compose(genesis), head.compose(genesis)
    assert one.digest == two.digest == served
    # ... which is the per-layer fold, not the scalar one (where the pairs differ from it).
    a1, a2 = (one.adapter(c) for c in head.commits)
    scalar = composite_digest(apply(apply(empty("stack"), a1, (1.0, 1.0)), a2, second.coeffs))
    if any(pair != second.coeffs for pair in second.module_coeffs.values()):
        assert served != scalar
    assert composite_digest(one.composite) == served
