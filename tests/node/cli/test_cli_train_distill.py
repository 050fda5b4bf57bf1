"""`medforge train`, `medforge distill` and `medforge fingerprint` on a tiny saved encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from merge.pipeline.datasets import write_table
from merge.pipeline.distill import load_distilled
from node.cli import main
from tests.merge.pipeline_fixtures import TOY_WORDS, save_tiny_text, toy_records

CLASSES = list(TOY_WORDS)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_text(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "toy.csv"
    write_table(toy_records(), path)
    return path


def test_train_writes_an_adapter_and_reports_json(
    base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plugin"
    argv = [
        "train",
        "--task",
        "toy",
        "--classes",
        *CLASSES,
        "--data",
        str(data),
        "--out",
        str(out),
        "--base",
        str(base),
        "--quick",
        "--batch-size",
        "8",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 8
    assert set(report["validation"]) == {"base", "plugin"}
    assert (out / "adapter_model.safetensors").is_file()
    assert main(["fingerprint", "--base", str(base)]) == 0
    assert capsys.readouterr().out.strip() == report["base"]


def test_distill_writes_the_contract_file(
    base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "toy.safetensors"
    argv = [
        "distill",
        "--task",
        "toy",
        "--data",
        str(data),
        "--ipc",
        "2",
        "--out",
        str(out),
        "--base",
        str(base),
        "--quick",
        "--init-from-real",
    ]
    assert main(argv) == 0
    assert "warning: --init-from-real" in capsys.readouterr().err
    d = load_distilled(out)
    assert d.classes == tuple(sorted(CLASSES))
    assert len(d.labels) == 6


def test_bad_data_exits_2_with_the_reason(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nbroken rib,fracture\nsneeze,allergy\n")
    argv = [
        "train",
        "--task",
        "toy",
        "--classes",
        *CLASSES,
        "--data",
        str(bad),
        "--out",
        str(tmp_path / "never"),
        "--base",
        str(base),
    ]
    assert main(argv) == 2
    assert "LabelError" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_train_and_distill_agree_on_class_order_without_classes(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels first seen in a non-sorted order: both commands take the sorted label set, so a
    plugin and its distilled set index the same classes (issue 15)."""
    records = toy_records()
    order = sorted(range(len(records)), key=lambda i: -records.labels[i])  # last class first
    data = tmp_path / "reversed.jsonl"
    write_table(records.subset(order), data)
    common = ["--task", "toy", "--data", str(data), "--base", str(base), "--quick"]
    assert (
        main(["train", *common, "--out", str(tmp_path / "p"), "--batch-size", "8", "--json"]) == 0
    )
    trained = json.loads(capsys.readouterr().out)["classes"]
    out = tmp_path / "d.safetensors"
    assert main(["distill", *common, "--ipc", "1", "--out", str(out), "--init-from-real"]) == 0
    assert trained == list(load_distilled(out).classes) == sorted(CLASSES)


def test_train_help_says_the_data_format(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "distill"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "columns text and label" in text
        assert "sorted label set" in text


def _train_argv(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--task",
        "toy",
        "--classes",
        *CLASSES,
        "--data",
        str(data),
        "--out",
        str(out),
        "--base",
        str(base),
        "--quick",
        "--batch-size",
        "8",
        *extra,
    ]


def test_device_cpu_and_auto_train_the_default_bytes(
    base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    weights = "adapter_model.safetensors"
    assert main(_train_argv(base, data, tmp_path / "default")) == 0
    assert "on cpu (float32)" in capsys.readouterr().out
    assert main(_train_argv(base, data, tmp_path / "cpu", "--device", "cpu", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["device"], report["precision"]) == ("cpu", "float32")
    expected = (tmp_path / "default" / weights).read_bytes()
    assert (tmp_path / "cpu" / weights).read_bytes() == expected
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert main(_train_argv(base, data, tmp_path / "auto", "--device", "auto")) == 0
        assert (tmp_path / "auto" / weights).read_bytes() == expected


def test_an_absent_device_exits_2_before_any_model_loads(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be seen")
    nowhere = tmp_path / "no-model"  # were the base read first, this would be another error
    train = _train_argv(nowhere, data, tmp_path / "never", "--device", "cuda")
    distil = ["distill", "--task", "toy", "--data", str(data), "--ipc", "1"]
    distil += ["--out", str(tmp_path / "never.safetensors"), "--base", str(nowhere)]
    for argv in (train, [*distil, "--device", "cuda:0", "--json"]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert "DeviceUnavailableError: device 'cuda" in captured.err
        assert "is not available" in captured.err
        assert "Traceback" not in captured.err
    assert json.loads(captured.out)["error"]["exit"] == 2
    assert not (tmp_path / "never").exists()
    assert not (tmp_path / "never.safetensors").exists()


def test_a_malformed_device_is_an_argument_error(
    base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(_train_argv(base, data, tmp_path / "never", "--device", "gpu"))
    assert exited.value.code == 2
    assert "argument --device: device 'gpu' is not one of" in capsys.readouterr().err
