"""`medforge evaluate` and `medforge predict` end to end on a tiny real encoder: a network of
two tasks (injury, oncology), each a plugin trained, distilled and committed through the CLI,
scored from every source; nothing read is changed, a mismatching base is refused."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from merge import fold
from merge.lora import load_adapter
from merge.pipeline.backends import load_backend
from merge.pipeline.datasets import Examples, read_table, write_table
from merge.pipeline.evaluate import model_probs, score, with_classes
from node.cli import main
from node.core.order import chain_item, root_item
from node.forge.bundle import verify_bundle
from node.forge.export import export_composite
from node.forge.sources import LOCAL_LIMITS, Task, choose_task, read_bundles
from node.shell.home import Home
from node.shell.store import Store
from tests.merge.pipeline_fixtures import save_tiny_text, toy_records
from tests.node import procs

TASKS = {"injury": ("fracture", "infection"), "oncology": ("tumour", "infection")}


@dataclass
class World:
    root: Path
    base: Path
    home: Home
    plugins: dict[str, Path]
    bundles: list[Path]
    test: dict[str, Path]  # held-out data per task

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--base", str(self.base)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        code, out, err = self.cli(capsys, *argv, "--json")
        assert code == 0, err
        return json.loads(out)


def _split(records: Examples, classes: tuple[str, ...]) -> tuple[Examples, Examples]:
    keep = [i for i, y in enumerate(records.labels) if records.classes[y] in classes]
    part = with_classes(records.subset(keep), classes, "toy")
    train = part.subset(i for i in range(len(part)) if i % 4)
    return train, part.subset(i for i in range(len(part)) if not i % 4)


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("evaluate")
    base = save_tiny_text(root / "tiny")
    _ok(["fingerprint", "--base", str(base), "--out", str(root / "base.json")])
    home = Home.init(root / "alice", "alice")
    _ok(
        ["network", "create", "--home", str(home.path), "--name", "clinic"]
        + ["--threshold", "1", "--base-file", str(root / "base.json")]
    )
    plugins, bundles, test = {}, [], {}
    parent = root_item(home.genesis().network_id)
    for task, classes in TASKS.items():
        train, held_out = _split(toy_records(per_class=16), classes)
        write_table(train, root / f"{task}-train.csv")
        write_table(held_out, root / f"{task}-test.csv")
        test[task] = root / f"{task}-test.csv"
        common = ["--task", task, "--data", str(root / f"{task}-train.csv"), "--base", str(base)]
        plugins[task] = root / f"{task}-plugin"
        quick = ["--classes", *classes, "--quick"]
        _ok(["train", *common, *quick, "--batch-size", "8", "--out", str(plugins[task])])
        distilled = root / f"{task}.safetensors"
        _ok(["distill", *common, *quick, "--ipc", "1", "--out", str(distilled)])
        bundle = root / f"{task}-bundle"
        _ok(
            ["commit", "--home", str(home.path), "--adapter", str(plugins[task])]
            + ["--distilled", str(distilled), "--task", task, "--coeffs", "1.0", "0.75"]
            + ["--parent", parent.hex(), "--out", str(bundle)]
        )
        assert read_bundles([bundle]).tasks == (Task(task, classes),)
        parent = chain_item(parent, verify_bundle(bundle, home.genesis()).commit.id)
        bundles.append(bundle)
    return World(root, base, home, plugins, bundles, test)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``directory``: its sha256 and mtime (what must not change)."""
    return {
        str(p.relative_to(directory)): (
            hashlib.sha256(p.read_bytes()).digest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# -- sources ---------------------------------------------------------------------------------


def test_evaluate_a_plugin_scores_its_own_task(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = world.plugins["injury"]
    before = snapshot(plugin)
    report = world.json(
        capsys, "evaluate", "--plugin", str(plugin), "--data", str(world.test["injury"])
    )
    assert report["source"]["kind"] == "plugin"
    assert report["source"]["tasks"] == {"injury": ["fracture", "infection"]}
    row = report["tasks"]["injury"]
    assert row["classes"] == ["fracture", "infection"]
    backend = load_backend("text", str(world.base))
    adapter = load_adapter(plugin, base=None, limits=LOCAL_LIMITS)
    data = read_table(world.test["injury"], TASKS["injury"])
    expected = score(backend, adapter, data).as_dict()
    assert {k: row[k] for k in expected} == expected
    assert report["mean"] is None
    code, out, _ = world.cli(
        capsys, "evaluate", "--plugin", str(plugin), "--data", str(world.test["injury"])
    )
    assert code == 0
    assert "| injury | " in out
    assert "macro-F1" in out
    assert "macro AUC" in out
    assert snapshot(plugin) == before


def test_predict_texts_and_an_unlabelled_file(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = world.plugins["oncology"]
    texts = ["malignant mass in the lung", "viral cough"]
    report = world.json(
        capsys,
        "predict",
        "--plugin",
        str(plugin),
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--top",
        "2",
    )
    assert report["task"] == "oncology"
    backend = load_backend("text", str(world.base))
    adapter = load_adapter(plugin, base=None, limits=LOCAL_LIMITS)
    probs = model_probs(backend, adapter, texts, TASKS["oncology"])
    for row, p in zip(report["predictions"], probs, strict=True):
        assert [t["probability"] for t in row["top"]] == sorted(p.tolist(), reverse=True)
        assert row["prediction"] == TASKS["oncology"][int(p.argmax())]
        assert row["probability"] == float(p.max())
    unlabelled = world.root / "new.jsonl"
    unlabelled.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    again = world.json(
        capsys, "predict", "--plugin", str(plugin), "--data", str(unlabelled), "--top", "2"
    )
    assert again["predictions"] == report["predictions"]
    code, out, _ = world.cli(capsys, "predict", "--plugin", str(plugin), "--text", texts[1])
    assert code == 0
    assert "viral cough" in out


def test_bundles_fold_in_order_and_each_data_set_finds_its_task(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {b: snapshot(b) for b in world.bundles}
    report = world.json(
        capsys,
        "evaluate",
        "--bundle",
        *map(str, world.bundles),
        "--data",
        str(world.test["oncology"]),
        "--data",
        str(world.test["injury"]),
    )
    for task, path in world.test.items():  # each data set matched by its labels
        assert report["tasks"][task]["data"] == str(path)
    assert report["mean"]["n"] == report["tasks"]["oncology"]["n"] + report["tasks"]["injury"]["n"]
    assert report["source"]["digest"] == read_bundles(world.bundles).digest
    assert {b: snapshot(b) for b in world.bundles} == before


def test_a_stack_export_scores_as_the_composite_it_was_written_from(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    source = read_bundles(world.bundles)
    out = world.root / "export-stack"
    assert isinstance(source.model, fold.Composite)
    export_composite(source.model, out, source.base or "")
    before = snapshot(out)
    data = ["--data", str(world.test["injury"])]
    code, _, err = world.cli(capsys, "evaluate", "--export", str(out), *data)
    assert code == 2
    assert "UsageError" in err
    assert "--classes" in err  # an export names no task
    exported = world.json(
        capsys,
        "evaluate",
        "--export",
        str(out),
        *data,
        "--task",
        "injury",
        "--classes",
        *TASKS["injury"],
    )
    folded = world.json(capsys, "evaluate", "--bundle", *map(str, world.bundles), *data)
    assert exported["tasks"] == folded["tasks"]
    assert snapshot(out) == before


def test_a_mixture_export_reads_back_exactly(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    adapters = [load_adapter(p, base=None, limits=LOCAL_LIMITS) for p in world.plugins.values()]
    mixture = fold.apply(
        fold.apply(fold.empty("mixture"), adapters[0], (1.0, 0.3)), adapters[1], (0.7, 0.55)
    )
    out = world.root / "export-mixture"
    export_composite(mixture, out, adapters[0].base)
    texts = ["broken femur", "lymphoma", "fever and pus"]
    argv = ["predict", "--export", str(out), "--classes", *TASKS["oncology"], "--top", "2"]
    report = world.json(capsys, *argv, *sum((["--text", t] for t in texts), []))
    backend = load_backend("text", str(world.base))
    probs = model_probs(backend, mixture, texts, TASKS["oncology"])
    got = [[t["probability"] for t in row["top"]] for row in report["predictions"]]
    assert got == [sorted(p.tolist(), reverse=True) for p in probs]
    assert report["source"]["mode"] == "mixture"


def test_home_offline_reads_the_store_and_changes_nothing(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = Home.init(tmp_path / "bob", "bob")
    home.join(world.home.genesis())
    with Store.open(home.path) as store:  # what a node stores once it judged both commits
        for bundle in world.bundles:
            commit = read_bundles([bundle])
            assert commit.digest is not None
            for blob in (bundle / "blobs").iterdir():
                store.put_blob(blob, bytes.fromhex(blob.name))
            data = (bundle / "commit.cbor").read_bytes()
            store.put_record(hashlib.sha256(data).digest(), "commit", data)
    before = snapshot(home.path)
    report = world.json(
        capsys, "evaluate", "--home", str(home.path), "--data", str(world.test["injury"])
    )
    assert report["source"]["forge_item"] == 2
    assert report["source"]["digest"] == read_bundles(world.bundles).digest
    assert report["source"]["notes"] == ["no node running: read from the store offline"]
    assert snapshot(home.path) == before
    assert sorted(os.listdir(home.store_path)) == ["LOCK", "blobs", "index.sqlite3"]


def test_an_empty_home_is_the_base(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = Home.init(tmp_path / "dora", "dora")  # joined, and no node has run on it yet
    home.join(world.home.genesis())
    data = ["--data", str(world.test["injury"]), "--classes", *TASKS["injury"]]
    report = world.json(capsys, "evaluate", "--home", str(home.path), *data)
    assert report["source"]["forge_item"] == 0
    backend = load_backend("text", str(world.base))
    expected = score(backend, None, read_table(world.test["injury"], TASKS["injury"]))
    assert report["tasks"]["injury-test"] == {
        **expected.as_dict(),
        "classes": list(TASKS["injury"]),
        "data": str(world.test["injury"]),
    }
    assert not home.store_path.exists()  # reading created no store


@pytest.mark.slow
def test_home_with_its_node_running(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The control socket path, and `medforge export` from the node read back the same."""
    node = procs.start(world.home, [])
    try:
        for bundle in world.bundles:
            assert main(["publish", "--home", str(world.home.path), str(bundle)]) == 0
        capsys.readouterr()
        merged = len(world.bundles)  # publish returns once stored; the fold follows
        procs.wait(
            lambda: procs.same_digest([node], merged), "the node serves the merged composite"
        )
        data = ["--data", str(world.test["oncology"])]
        online = world.json(capsys, "evaluate", "--home", str(world.home.path), *data)
        assert online["source"]["notes"] == ["node running: composed from its head"]
        assert online["source"]["digest"] == node.status()["composite_digest"]
        out = world.root / "export-node"
        assert main(["export", "--home", str(world.home.path), "--out", str(out)]) == 0
        capsys.readouterr()
        argv = ["--task", "oncology", "--classes", *TASKS["oncology"]]
        exported = world.json(capsys, "evaluate", "--export", str(out), *data, *argv)
        assert exported["tasks"] == online["tasks"]
    finally:
        procs.stop([node])
    offline = world.json(capsys, "evaluate", "--home", str(world.home.path), *data)
    assert offline["tasks"] == online["tasks"]
    assert offline["source"]["digest"] == online["source"]["digest"]


# -- refusals ----------------------------------------------------------------------------------


def test_a_base_other_than_the_composites_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    other = save_tiny_text(world.root / "other-tiny", seed=1)  # same shapes, other weights
    for source in (["--plugin", str(world.plugins["injury"])], ["--bundle", str(world.bundles[0])]):
        code = main(
            ["evaluate", *source, "--data", str(world.test["injury"]), "--base", str(other)]
        )
        err = capsys.readouterr().err
        assert code == 2
        assert "BaseMismatchError" in err
        assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--task", "cardiology"], "UsageError: the composite serves no task 'cardiology'"),
        (["--task", "injury", "--task", "oncology"], "UsageError: 1 --data but 2 --task"),
        (["--classes", "fracture"], "LabelError"),
    ],
)
def test_bad_requests_exit_2_with_the_reason(
    world: World, capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    code, _, err = world.cli(
        capsys,
        "evaluate",
        "--bundle",
        *map(str, world.bundles),
        "--data",
        str(world.test["injury"]),
        *argv,
    )
    assert code == 2
    assert error in err
    assert "Traceback" not in err


def test_device_cpu_scores_as_the_default_and_an_absent_device_exits_2(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    request = ["evaluate", "--plugin", str(world.plugins["injury"])]
    request += ["--data", str(world.test["injury"])]
    default = world.json(capsys, *request)
    assert world.json(capsys, *request, "--device", "cpu") == default
    if torch.cuda.is_available():
        return  # the refusal below cannot be seen on a machine with CUDA
    predict = ["predict", "--plugin", str(world.plugins["injury"]), "--text", "x"]
    for argv in (request, predict):
        code, _, err = world.cli(capsys, *argv, "--device", "cuda")
        assert code == 2
        assert "DeviceUnavailableError: device 'cuda' is not available" in err
    # the commit's search (here: scoring given coefficients) loads the base on --device too
    seq = (world.home.path / "seq").read_text()
    commit = ["commit", "--home", str(world.home.path), "--adapter", str(world.plugins["injury"])]
    commit += ["--distilled", str(world.root / "injury.safetensors"), "--task", "injury"]
    commit += ["--coeffs", "1.0", "0.5", "--score", "--out", str(world.root / "never")]
    assert main([*commit, "--device", "cuda"]) == 2
    assert "DeviceUnavailableError" in capsys.readouterr().err
    assert (world.home.path / "seq").read_text() == seq  # no sequence number used up
    assert not (world.root / "never").exists()


def test_a_source_is_required_and_only_one(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", str(world.test["injury"])]
    for argv in (["evaluate", *data], ["evaluate", "--plugin", "a", "--export", "b", *data]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    code, _, err = world.cli(capsys, "predict", "--bundle", *map(str, world.bundles), "--text", "x")
    assert code == 2
    assert "pass --task NAME" in err  # two tasks: which one?
    code, _, err = world.cli(capsys, "evaluate", "--plugin", str(world.root / "nowhere"), *data)
    assert code == 2
    assert "AdapterFormatError" in err


@pytest.mark.parametrize(
    ("labels", "chosen"),
    [
        ({"fracture", "infection"}, "injury"),  # exact
        ({"tumour"}, "oncology"),  # held by one task only
        ({"infection"}, None),  # held by both: ambiguous
        ({"fracture", "tumour"}, None),  # held by none
    ],
)
def test_a_data_set_finds_the_task_that_holds_its_labels(
    labels: set[str], chosen: str | None
) -> None:
    from node.errors import UsageError

    tasks = [Task(name, classes) for name, classes in TASKS.items()]
    pick = lambda: choose_task(tasks, name=None, classes=None, labels=labels, default_name="d")  # noqa: E731
    if chosen is None:
        with pytest.raises(UsageError, match="pass --task NAME"):
            pick()
    else:
        assert pick() == Task(chosen, TASKS[chosen])


def test_commit_with_parent_searches_against_that_composite(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """`commit --parent P` (no --coeffs) searches and scores against the composite at P, the
    one its claim names, not against the node's tip; a P off the main chain is refused."""

    def commit(*extra: str) -> tuple[int, str, str]:
        task = "oncology"
        code = main(
            ["commit", "--home", str(world.home.path), "--task", f"{task}-v2", "--json"]
            + ["--adapter", str(world.plugins[task])]
            + ["--distilled", str(world.root / f"{task}.safetensors"), *extra]
        )
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    node = procs.start(world.home, [])
    try:
        for bundle in world.bundles:
            assert main(["publish", "--home", str(world.home.path), str(bundle)]) == 0
        merged = len(world.bundles)
        procs.wait(lambda: procs.same_digest([node], merged), "the node holds every bundle")
        capsys.readouterr()
        first = root_item(world.home.genesis().network_id).hex()
        code, out, err = commit("--parent", first, "--out", str(world.root / "p0"))
        assert code == 0, err
        at_root = json.loads(out)
        code, out, err = commit("--out", str(world.root / "p1"))
        assert code == 0, err
        at_tip = json.loads(out)
        assert [f for f in at_root["task_accuracy"] if not f.get("own")] == []  # nothing served
        assert len([f for f in at_tip["task_accuracy"] if not f.get("own")]) == merged
        code, _, err = commit("--parent", "ab" * 32, "--out", str(world.root / "p2"))
        assert code != 0
        assert "not a forge item of this node's main chain" in err
    finally:
        procs.stop([node])
