"""Examples from the real offline medical data and from the user's files, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from merge.pipeline.datasets import (
    HEART_CLASSES,
    HEART_SITES,
    Examples,
    dirichlet_split,
    heart_disease,
    icd10_blocks,
    icd10_chapters,
    load_data,
    read_image_folder,
    read_table,
    stratified_split,
    write_table,
)
from merge.pipeline.errors import (
    DataFormatError,
    EmptyClassError,
    ImageDecodeError,
    LabelError,
)

CLASSES = ("fracture", "infection")


def test_icd10_chapters_are_plain_names_with_capped_samples() -> None:
    records = icd10_chapters(per_class=5, seed=0)
    assert "Neoplasms" in records.classes
    assert "Diseases of the circulatory system" in records.classes
    assert all("(" not in c for c in records.classes)
    assert max(records.counts()) == 5
    assert icd10_chapters(per_class=5, seed=0) == records
    assert icd10_chapters(per_class=5, seed=1) != records


def test_icd10_blocks_of_the_circulatory_chapter() -> None:
    records = icd10_blocks("9", per_class=40)
    assert "Ischemic heart diseases" in records.classes
    ischemic = records.classes.index("Ischemic heart diseases")
    texts = [t for t, y in zip(records.items, records.labels, strict=True) if y == ischemic]
    assert any("myocardial infarction" in t.lower() for t in texts)
    with pytest.raises(LabelError):
        icd10_blocks("99")


def test_heart_disease_has_the_four_real_hospitals() -> None:
    sizes = {site: len(heart_disease(site)) for site in HEART_SITES}
    assert sizes == {"Cleveland": 304, "Hungary": 293, "Switzerland": 123, "VA Long Beach": 200}
    cleveland = heart_disease("Cleveland")
    assert cleveland.classes == HEART_CLASSES
    assert cleveland.items[0] == (
        "age 63, male, chest pain typical angina, resting blood pressure 145, cholesterol 233, "
        "fasting blood sugar above 120 yes, resting ecg lv hypertrophy, max heart rate 150, "
        "exercise angina no, st depression 2.3, st slope downsloping, 0 major vessels, "
        "thalassemia fixed defect"
    )
    assert cleveland.labels[:3] == (0, 1, 1)
    assert len(heart_disease()) == 920
    with pytest.raises(LabelError):
        heart_disease("Mars General")


def test_missing_measurements_are_left_out() -> None:
    swiss = heart_disease("Switzerland")
    assert all("cholesterol" not in t for t in swiss.items)  # recorded as 0 = not measured


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_tables_round_trip(tmp_path: Path, suffix: str) -> None:
    records = Examples(("a, with comma", "b", "c"), (0, 1, 0), CLASSES)
    path = tmp_path / f"data{suffix}"
    write_table(records, path)
    assert read_table(path, CLASSES) == records
    assert load_data(path, CLASSES) == records
    assert read_table(path).classes == CLASSES  # sorted label set by default


def test_table_errors_name_the_problem(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,label\nx,fracture\ny,burn\n")
    with pytest.raises(LabelError, match="record 2: label 'burn'"):
        read_table(csv_path, CLASSES)
    csv_path.write_text("text,label\nx,fracture\n")
    with pytest.raises(EmptyClassError, match="infection"):
        read_table(csv_path, CLASSES)
    csv_path.write_text("words,label\nx,fracture\n")
    with pytest.raises(
        DataFormatError, match=r"missing column.*the header has \['words', 'label'\]"
    ):
        read_table(csv_path, CLASSES)
    csv_path.write_text("text,label\nx,fracture\ny,\n")  # a row without its class
    with pytest.raises(DataFormatError, match="row 3: empty label"):
        read_table(csv_path, None)
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": "x", "label": " "}) + "\n")
    with pytest.raises(DataFormatError, match="line 1: empty label"):
        read_table(blank, None)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "x", "label": "fracture"}) + "\n{oops\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_table(jsonl, CLASSES)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataFormatError, match="unknown data format"):
        read_table(tmp_path / "d.txt")
    with pytest.raises(DataFormatError, match="no such file"):
        read_table(tmp_path / "missing.csv")


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)


def test_image_folders(tmp_path: Path) -> None:
    for name in CLASSES:
        _png(tmp_path / name / "1.png", 10)
        _png(tmp_path / name / "2.png", 200)
    (tmp_path / "fracture" / "notes.txt").write_text("ignored: not an image suffix")
    records = read_image_folder(tmp_path, CLASSES)
    assert records.counts() == [2, 2]
    assert records.items[0].endswith("fracture/1.png")
    assert load_data(tmp_path, CLASSES) == records


def test_image_folder_errors(tmp_path: Path) -> None:
    _png(tmp_path / "fracture" / "1.png", 10)
    (tmp_path / "infection").mkdir()
    with pytest.raises(EmptyClassError, match="infection"):
        read_image_folder(tmp_path, CLASSES)
    _png(tmp_path / "infection" / "1.png", 10)
    _png(tmp_path / "burn" / "1.png", 10)
    with pytest.raises(LabelError, match="burn"):
        read_image_folder(tmp_path, CLASSES)
    (tmp_path / "burn" / "1.png").unlink()
    (tmp_path / "burn").rmdir()
    good = (tmp_path / "infection" / "1.png").read_bytes()
    (tmp_path / "infection" / "2.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageDecodeError, match="2.png"):
        read_image_folder(tmp_path, CLASSES)


def test_records_refuse_labels_outside_the_classes() -> None:
    with pytest.raises(LabelError):
        Examples(("a",), (2,), CLASSES)


def test_splits_partition_the_records() -> None:
    records = icd10_chapters(per_class=10, chapters=["2", "9", "10"])
    train, val = stratified_split(records, 0.2, seed=0)
    assert len(train) + len(val) == len(records)
    assert val.counts() == [2, 2, 2]
    parts = dirichlet_split(records, 3, alpha=0.3, seed=0)
    assert sorted(i for p in parts for i in p.items) == sorted(records.items)
    assert dirichlet_split(records, 3, alpha=0.3, seed=0) == parts
