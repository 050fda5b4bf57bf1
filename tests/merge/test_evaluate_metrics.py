"""Macro-F1 and the per-task scores `medforge evaluate` prints; the readers of held-out data
and of inputs to predict."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from merge.pipeline.datasets import Examples, read_table
from merge.pipeline.errors import DataFormatError, ImageDecodeError, LabelError
from merge.pipeline.evaluate import model_probs, read_inputs, score, with_classes
from merge.pipeline.metrics import Scores, classification_metrics, macro_f1, mean_scores, scores
from tests.merge.pipeline_fixtures import tiny_text_backend, toy_records, write_toy_images


def one_hot(predicted: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


@pytest.mark.parametrize(
    ("labels", "predicted", "expected"),
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
        # class 0: TP 1, FP 0, FN 1 -> 2/3; class 1: TP 2, FP 1, FN 0 -> 4/5
        ([0, 0, 1, 1], [0, 1, 1, 1], (2 / 3 + 4 / 5) / 2),
        # class 2 is never true nor predicted: left out, not counted as 0
        ([0, 1], [1, 0], 0.0),
        # class 2 predicted but never true: counts 0
        ([0, 0, 1], [0, 0, 2], (1.0 + 0.0 + 0.0) / 3),
    ],
)
def test_macro_f1_by_hand(labels: list[int], predicted: list[int], expected: float) -> None:
    assert macro_f1(one_hot(predicted, 3), torch.tensor(labels)) == pytest.approx(expected)


def test_macro_f1_and_auc_agree_with_sklearn() -> None:
    from sklearn import metrics  # a dev dependency: the reference our metrics must agree with

    g = torch.Generator().manual_seed(3)
    probs = torch.rand(60, 4, generator=g).softmax(1)
    labels = torch.randint(0, 4, (60,), generator=g)
    s = scores(probs, labels)
    want_f1 = metrics.f1_score(labels.numpy(), probs.argmax(1).numpy(), average="macro")
    want_auc = metrics.roc_auc_score(labels.numpy(), probs.double().numpy(), multi_class="ovr")
    assert s.macro_f1 == pytest.approx(want_f1, abs=1e-12)
    assert s.auc == pytest.approx(want_auc, abs=1e-12)
    m = classification_metrics(probs, labels)
    assert (s.accuracy, s.auc, s.n) == (m.accuracy, m.auc, m.n)


def test_undefined_scores_are_nan_and_none_in_json() -> None:
    s = scores(one_hot([0, 0], 2), torch.tensor([0, 0]))  # one class only: no AUC
    assert math.isnan(s.auc)
    assert s.as_dict() == {"accuracy": 1.0, "macro_f1": 1.0, "auc": None, "n": 2}
    assert math.isnan(macro_f1(torch.empty(0, 2), torch.empty(0, dtype=torch.int64)))


def test_the_mean_counts_each_task_once_over_the_defined_values() -> None:
    mean = mean_scores([Scores(1.0, 0.5, math.nan, 10), Scores(0.5, 0.25, 0.8, 2)])
    assert mean == Scores(0.75, 0.375, 0.8, 12)


def test_score_is_the_scores_of_the_models_probabilities() -> None:
    backend = tiny_text_backend()
    data = toy_records(per_class=3)
    probs = model_probs(backend, None, data, data.classes)
    assert score(backend, None, data) == scores(probs, data.label_tensor())
    # raw items give the same probabilities as the records they came from
    assert torch.equal(model_probs(backend, None, list(data.items), data.classes), probs)


def test_held_out_data_is_relabelled_onto_the_tasks_classes(tmp_path: Path) -> None:
    path = tmp_path / "held.csv"
    path.write_text("text,label\nbroken rib,fracture\nflu,infection\nrib,fracture\n")
    records = with_classes(read_table(path), ("tumour", "infection", "fracture"), str(path))
    assert records == Examples(
        ("broken rib", "flu", "rib"), (2, 1, 2), ("tumour", "infection", "fracture")
    )
    with pytest.raises(LabelError, match=r"\['fracture'\] are not among"):
        with_classes(read_table(path), ("infection", "tumour"), str(path))


def test_inputs_to_predict_need_no_label(tmp_path: Path) -> None:
    csv_file = tmp_path / "new.csv"
    csv_file.write_text("id,text\n1,broken rib\n2,flu\n")
    assert read_inputs(csv_file) == ("broken rib", "flu")
    jsonl = tmp_path / "new.jsonl"
    jsonl.write_text('{"text": "lymphoma", "label": "tumour"}\n\n{"text": "flu"}\n')
    assert read_inputs(jsonl) == ("lymphoma", "flu")
    classes = write_toy_images(tmp_path / "images", per_class=2)
    found = read_inputs(tmp_path / "images")
    assert found == tuple(
        str(tmp_path / "images" / c / f"{i}.png") for c in sorted(classes) for i in (0, 1)
    )


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("a.csv", "label\nfracture\n", "missing column 'text'"),
        ("a.csv", "text\n", "no inputs"),
        ("a.jsonl", '{"label": "x"}\n', "needs a key 'text'"),
        ("a.jsonl", "{not json\n", "not JSON"),
        ("a.txt", "hello\n", "unknown input format"),
    ],
)
def test_bad_inputs_say_why(tmp_path: Path, name: str, content: str, error: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFormatError, match=error):
        read_inputs(tmp_path / name)


def test_a_folder_without_images_or_with_a_broken_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no image files"):
        read_inputs(tmp_path / "empty")
    (tmp_path / "empty" / "scan.png").write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError):
        read_inputs(tmp_path / "empty")
