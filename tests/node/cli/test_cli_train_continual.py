"""`medforge train --home`: continual plugins on the running node's composite, their
provenance signed into the commit, shown by `medforge log`; `--independent` and plain PEFT
adapters as before. A real tiny encoder is the network's base, so searches really run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from crypto import canonical
from crypto.records import Commit, Genesis, Member, decode_record
from merge.base_shapes import shapes_of
from merge.pipeline.datasets import Examples, write_table
from merge.pipeline.search import SearchResult
from merge.pipeline.train import TrainConfig, read_plugin_meta, train_plugin
from node.cli import main
from node.core.order import chain_item, root_item
from node.forge import author
from node.forge.netspec import make_spec
from node.shell.home import Home
from tests.merge.pipeline_fixtures import TOY_WORDS, save_tiny_text, tiny_text_backend, toy_records
from tests.node import procs

FIRST = tuple(TOY_WORDS)
SECOND = ("break", "germ", "growth")  # the toy words again, under another task's class names


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_text(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture
def home(tmp_path: Path, model: Path) -> Home:
    """alice, sole member of a stack network whose base is the tiny encoder at ``model``."""
    backend = tiny_text_backend()
    alice = Home.init(tmp_path / "alice", "alice")
    spec = make_spec("stack", backend.fingerprint, shapes_of(backend), model=str(model))
    members = (Member("alice", alice.identity().public),)
    alice.join(Genesis(name="continual", members=members, threshold=1, spec=spec, nonce="c"))
    for name, classes in (("first", FIRST), ("second", SECOND)):
        records = toy_records()
        write_table(Examples(records.items, records.labels, classes), tmp_path / f"{name}.csv")
    return alice


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, str]:
    """Run a command with --json; its parsed stdout and its stderr."""
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    return json.loads(captured.out), captured.err


def train_args(home: Home, task: str) -> list[str]:
    classes = FIRST if task == "first" else SECOND
    data, out = home.path.parent / f"{task}.csv", home.path.parent / f"plugin-{task}"
    argv = ["--task", task, "--classes", *classes, "--data", str(data), "--out", str(out)]
    return [*argv, "--home", str(home.path)]


def train(
    capsys: pytest.CaptureFixture[str], home: Home, task: str, *extra: str
) -> tuple[dict[str, Any], str]:
    argv = train_args(home, task)
    argv[argv.index("--out") + 1] += "".join(extra)
    report, err = cli(capsys, "train", *argv, "--quick", "--batch-size", "8", *extra)
    assert read_plugin_meta(Path(report["out"]))["training"] == report["training"]
    return report, err


def distill(capsys: pytest.CaptureFixture[str], home: Home, task: str, model: Path) -> Path:
    out = home.path.parent / f"{task}.safetensors"
    data = home.path.parent / f"{task}.csv"
    argv = ["distill", "--task", task, "--data", str(data), "--ipc", "2", "--out", str(out)]
    assert main([*argv, "--base", str(model), "--quick"]) == 0
    capsys.readouterr()
    return out


def commit(
    capsys: pytest.CaptureFixture[str],
    home: Home,
    adapter: str,
    distilled: Path,
    name: str,
    *extra: str,
) -> tuple[Commit, dict[str, Any], str]:
    bundle = home.path.parent / name
    argv = ["commit", "--home", str(home.path), "--adapter", adapter, "--distilled"]
    report, err = cli(capsys, *argv, str(distilled), "--task", name, "--out", str(bundle), *extra)
    record = decode_record((bundle / "commit.cbor").read_bytes())
    assert isinstance(record, Commit)
    return record, report, err


def test_continual_training_on_a_running_node(
    home: Home, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = procs.start(home, [])
    item0 = root_item(home.genesis().network_id).hex()

    # On the empty composite: continual, nothing to replay, trained on item_0.
    first, _ = train(capsys, home, "first")
    assert first["training"] == {"method": "continual", "replay": 0, "parent": item0}
    one = distill(capsys, home, "first", model)
    c1, report, err = commit(capsys, home, first["out"], one, "c1", "--coeffs", "1", "1")
    assert c1.training == {"method": "continual", "replay": 0, "trained_on": item0}
    assert report["training"] == dict(c1.training)
    assert report["published"]["forge_item"] == 1
    assert "warning" not in err
    item1 = chain_item(bytes.fromhex(item0), c1.id).hex()

    # On v1: the composite's ΔW under the new LoRA (each LoRA's A started on its module's
    # ΔW, a stack network's default), and c1's 6 distilled examples replayed.
    second, _ = train(capsys, home, "second")
    warm = {"init": "composite-svd"}
    assert second["training"] == {"method": "continual", "replay": 6, "parent": item1, **warm}
    assert set(second["validation"]) == {"base", "composite", "plugin"}
    assert len(second["replay_accuracy"]) == 2
    two = distill(capsys, home, "second", model)
    cold, _ = train(capsys, home, "second", "--warm-start", "off")
    assert cold["training"] == {"method": "continual", "replay": 6, "parent": item1}

    # --independent: the paper's training, and the commit says so (schema 2).
    alone, _ = train(capsys, home, "second", "--independent")
    assert alone["training"] == {"method": "independent", "replay": 0, "parent": None}
    c2, _, err = commit(capsys, home, alone["out"], two, "c2", "--coeffs", "1", "1")
    assert c2.training == {"method": "independent", "replay": 0}
    assert c2.parent.hex() == item1
    assert "warning" not in err

    # The tip moved since `second` was trained: still committed (searched against v2), warned.
    c3, report, err = commit(capsys, home, second["out"], two, "c3")
    assert c3.training == {"method": "continual", "replay": 6, "trained_on": item1, **warm}
    assert c3.parent == chain_item(bytes.fromhex(item1), c2.id)
    assert report["objective"]["evaluations"] > 0  # a real search ran
    assert f"trained on forge item {item1[:16]}" in err

    # A PEFT adapter that says nothing of its training: a schema 1 commit, as before.
    plain = home.path.parent / "plain"
    shutil.copytree(alone["out"], plain)
    (plain / "medforge.json").unlink()
    c4, report, _ = commit(capsys, home, str(plain), two, "c4", "--coeffs", "1", "1")
    envelope = canonical.decode((home.path.parent / "c4" / "commit.cbor").read_bytes())
    assert c4.training is None
    assert report["training"] is None
    assert envelope["v"] == 1
    assert "training" not in envelope["body"]

    # Trained on the tip it goes onto, in stack mode: (1, 1), the model that was trained
    # (sequential fine-tuning with rehearsal), scored but not searched.
    item4 = chain_item(chain_item(c3.parent, c3.id), c4.id)
    fifth, _ = train(capsys, home, "second", "--seed", "2")
    assert fifth["training"]["parent"] == item4.hex()
    c5, report, err = commit(capsys, home, fifth["out"], two, "c5")
    assert c5.coeffs == (1.0, 1.0)
    assert c5.parent == item4
    assert report["objective"]["evaluations"] == 0
    assert "loss_after" in report["objective"]
    assert "scoring (1, 1)" in err

    log, _ = cli(capsys, "log", "--home", str(home.path))
    assert [e["training"] for e in log["items"]] == [
        dict(c.training) if c.training is not None else None for c in (c1, c2, c3, c4, c5)
    ]
    assert main(["log", "--home", str(home.path)]) == 0
    shown = capsys.readouterr().out
    assert "continual (replay 6, composite-svd init, trained on forge item" in shown
    assert "independent" in shown
    procs.stop([node])

    # The node stopped: the home's store is read offline, and training is still continual
    # on its tip (c1's and the second task's distilled sets, each replayed once).
    offline, _ = train(capsys, home, "second", "--seed", "1")
    tip = chain_item(item4, c5.id).hex()
    assert offline["training"] == {"method": "continual", "replay": 12, "parent": tip, **warm}
    assert main(["train", *train_args(home, "second"), "--quick", "--batch-size", "8"]) == 0
    assert "(no node running: read offline)" in capsys.readouterr().out


def test_a_home_whose_node_never_ran_gives_the_empty_composite(
    home: Home, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item0 = root_item(home.genesis().network_id).hex()
    report, _ = train(capsys, home, "first")
    assert report["training"] == {"method": "continual", "replay": 0, "parent": item0}
    c1, published, err = commit(
        capsys, home, report["out"], distill(capsys, home, "first", model), "c1"
    )
    assert c1.training == {"method": "continual", "replay": 0, "trained_on": item0}
    assert c1.parent.hex() == item0
    assert "warning" not in err
    assert published["published"] is None


def test_an_offline_head_trains_continually_and_a_rebase_keeps_the_training(
    home: Home, model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The library path: a Head built from a bundle (no node), `author.continual`,
    `train_plugin`; a rebase re-searches the plugin and carries its training, not retrained."""
    report, _ = train(capsys, home, "first", "--independent")
    c1, _, _ = commit(capsys, home, report["out"], distill(capsys, home, "first", model), "c1")
    genesis = home.genesis()
    bundle = home.path.parent / "c1" / "blobs"
    files = {ref.sha256: bundle / ref.sha256.hex() for ref in c1.blobs.values()}
    tip = chain_item(root_item(genesis.network_id), c1.id)
    head = author.Head(tip, (c1,), files)
    prior = author.continual(genesis, head)
    assert prior.parent == tip.hex()
    assert prior.n_replay == 6
    assert prior.delta

    backend = author.network_encoder(genesis)
    records = toy_records()
    second = Examples(records.items, records.labels, SECOND)
    out = tmp_path / "offline-plugin"
    config = TrainConfig.quick(batch_size=8)
    train_plugin(backend, second, task="second", out=out, config=config, continual=prior)
    meta = read_plugin_meta(out)
    warm = {"init": "composite-svd"}  # a stack network's default
    assert meta["training"] == {"method": "continual", "replay": 6, "parent": tip.hex(), **warm}

    # An orphan of ours with that plugin, signed against item_0; rebased onto the tip.
    two = distill(capsys, home, "second", model)
    orphan, _, _ = commit(capsys, home, str(out), two, "orphan", "--coeffs", "1", "1")
    want = {"method": "continual", "replay": 6, "trained_on": tip.hex(), **warm}
    assert orphan.training == want
    blobs = home.path.parent / "orphan" / "blobs"
    files.update({ref.sha256: blobs / ref.sha256.hex() for ref in orphan.blobs.values()})
    seqs = iter(range(100, 200))
    rebased = author.rebase(home.identity(), genesis, orphan, head, lambda: next(seqs))
    assert rebased.supersedes == orphan.id
    assert rebased.parent == tip
    assert rebased.training == orphan.training
    assert dict(rebased.blobs) == dict(orphan.blobs)  # the same plugin: not retrained
    unsigned = author.sign_commit(
        home.identity(),
        genesis,
        seq=200,
        task="t",
        classes=SECOND,
        blobs=dict(orphan.blobs),
        parent=tip,
        result=SearchResult((1.0, 1.0), {}),
    )
    assert unsigned.training is None
    assert unsigned.version() == 1


def test_a_shared_task_under_another_name_gets_a_note(
    home: Home, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The composite holds task 'first'; a member training the same classes as 'mine' is
    told to name it 'first' (the per-task parts of the recipe key on the name), and still
    trains. Other classes, or the same name, get no note."""
    node = procs.start(home, [])
    report, _ = train(capsys, home, "first", "--independent")
    commit(capsys, home, report["out"], distill(capsys, home, "first", model), "c1")
    argv = train_args(home, "first")
    argv[argv.index("--task") + 1] = "mine"
    argv[argv.index("--out") + 1] += "-mine"
    mine, err = cli(capsys, "train", *argv, "--quick", "--batch-size", "8")
    assert "note: the composite's task 'first' has exactly these classes" in err
    assert "--task 'first'" in err
    assert mine["training"]["replay"] == 6
    for task in ("first", "second"):
        _, err = train(capsys, home, task, "--warm-start", "on")
        assert "note:" not in err
    procs.stop([node])


def test_a_base_that_is_not_the_networks_or_a_bad_replay_weight_is_refused(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = save_tiny_text(tmp_path / "other", seed=1)
    data = str(tmp_path / "first.csv")
    argv = ["train", "--task", "t", "--classes", *FIRST, "--data", data, "--home", str(home.path)]
    for extra, error in (
        (["--base", str(other)], "error: BaseMismatchError"),
        (["--replay-weight", "-1"], "error: UsageError: --replay-weight"),
    ):
        assert main([*argv, "--out", str(tmp_path / "never"), "--quick", *extra]) == 2
        assert error in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def skewed_csv(path: Path, counts: tuple[int, ...]) -> Path:
    """The first task's data with ``counts[c]`` records of class c (label skew)."""
    records = toy_records()
    keep = [
        i
        for c, n in enumerate(counts)
        for i in [j for j, y in enumerate(records.labels) if y == c][:n]
    ]
    items = tuple(records.items[i] for i in keep)
    write_table(Examples(items, tuple(records.labels[i] for i in keep), FIRST), path)
    return path


def test_a_fusion_network_under_label_skew_trains_with_the_prior_corrected_loss(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two skewed members' worth of one task on a fusion network, through `medforge train`
    and `commit` against a running node: the second plugin's local loss is adjusted by its
    own class prior (the composite already holds the task), its medforge.json and signed
    commit say so, and `medforge log` shows it; `--prior-correction off` trains without."""
    backend = tiny_text_backend()
    home = Home.init(tmp_path / "alice", "alice")
    spec = make_spec("fusion", backend.fingerprint, shapes_of(backend), model=str(model))
    members = (Member("alice", home.identity().public),)
    home.join(Genesis(name="skew", members=members, threshold=1, spec=spec, nonce="s"))
    node = procs.start(home, [])

    def train_on(data: Path, out: str, *extra: str) -> dict[str, Any]:
        argv = ["--task", "first", "--classes", *FIRST, "--data", str(data)]
        argv += ["--out", str(tmp_path / out), "--home", str(home.path)]
        report, _ = cli(capsys, "train", *argv, "--quick", "--batch-size", "8", *extra)
        assert read_plugin_meta(Path(report["out"]))["training"] == report["training"]
        return report

    def distilled(data: Path, name: str) -> Path:
        out = tmp_path / f"{name}.safetensors"
        argv = ["distill", "--task", "first", "--data", str(data), "--ipc", "2"]
        assert main([*argv, "--out", str(out), "--base", str(model), "--quick"]) == 0
        capsys.readouterr()
        return out

    one = skewed_csv(tmp_path / "one.csv", (12, 12, 5))
    two = skewed_csv(tmp_path / "two.csv", (5, 5, 12))

    # Alone on its task (an empty composite): its own prior is the task's, no correction.
    first = train_on(one, "p1")
    assert "loss" not in first["training"]
    c1, _, _ = commit(capsys, home, first["out"], distilled(one, "d1"), "c1", "--coeffs", "1", "1")
    assert c1.training is not None
    assert "loss" not in c1.training

    # The composite holds the task now: the second member's loss is prior-corrected.
    second = train_on(two, "p2")
    assert second["training"]["loss"] == "prior-corrected"
    assert second["training"]["replay"] == 6  # c1's distilled set: 2 per class
    c2, report, _ = commit(capsys, home, second["out"], distilled(two, "d2"), "c2")
    assert c2.training is not None
    assert c2.training["loss"] == "prior-corrected"
    assert report["training"] == dict(c2.training)

    # a fusion network's default: the LoRA starts as the composite's factors
    assert second["training"]["init"] == c2.training["init"] == "composite-factors"
    off = train_on(two, "p3", "--prior-correction", "off", "--warm-start", "off")
    assert "loss" not in off["training"]
    assert "init" not in off["training"]
    assert off["training"]["replay"] == 12  # on c2's composite: both members' sets

    log, _ = cli(capsys, "log", "--home", str(home.path))
    assert [e["training"] for e in log["items"]] == [dict(c1.training), dict(c2.training)]
    assert main(["log", "--home", str(home.path)]) == 0
    shown = capsys.readouterr().out
    assert "continual (replay 6, prior-corrected loss, composite-factors init, trained on" in shown
    procs.stop([node])


def test_a_task_name_with_terminal_escapes_is_shown_escaped(
    home: Home, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member names its task with an escape sequence (clear screen, set the window title)
    and a bidirectional override: `medforge log` prints them as escapes, never raw, and
    --json keeps the name exactly as signed."""
    node = procs.start(home, [])
    evil = "first\x1b[2J\x1b]0;pwned\x07\u202e"
    data = home.path.parent / "first.csv"
    plugin = home.path.parent / "plugin-evil"
    argv = ["--task", evil, "--classes", *FIRST, "--data", str(data), "--out", str(plugin)]
    cli(capsys, "train", *argv, "--home", str(home.path), "--quick", "--batch-size", "8")
    summary = home.path.parent / "evil.safetensors"
    argv = ["distill", "--task", evil, "--data", str(data), "--ipc", "2", "--out", str(summary)]
    assert main([*argv, "--base", str(model), "--quick"]) == 0
    argv = ["commit", "--home", str(home.path), "--adapter", str(plugin), "--distilled"]
    argv += [str(summary), "--task", evil, "--coeffs", "1", "1"]
    argv += ["--out", str(home.path.parent / "evil-bundle")]
    assert main(argv) == 0
    capsys.readouterr()

    assert main(["log", "--home", str(home.path)]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "\u202e" not in shown
    assert "first\\x1b[2J\\x1b]0;pwned\\x07\\u202e" in shown
    log, _ = cli(capsys, "log", "--home", str(home.path))
    assert [e["task"] for e in log["items"]] == [evil]
    procs.stop([node])
