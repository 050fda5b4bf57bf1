"""Distil a small synthetic summary set by distribution matching on the frozen input encoder.

Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution Matching"):
learn ``ipc`` synthetic inputs per class so that the mean feature of each class's synthetic
inputs matches the mean feature of its real records, under the *frozen* base encoder (as in
MedForge). Text learns synthetic word embeddings; images learn pixels, with the same random
differentiable augmentation applied to the real and synthetic batch of a step (DSA), so the
pixels must match under every view rather than one.

Synthetic inputs start from seeded noise. Starting from real records would copy patient data
into a file that is gossiped to every peer: it needs ``init_from_real=True`` and warns.

Devices: matching runs where the backend's model is (``backend.device``;
``merge.pipeline.device``), in float32 (the synthetic inputs are what is optimised: no
autocast). The seeded draws (noise, class samples, augmentation views) come from a CPU
generator whatever the device, and the distilled set returned and saved is CPU float32.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm import tqdm

from merge.base_shapes import INPUT_KINDS
from merge.distilled_blob import DISTILLED_FORMAT
from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.datasets import Examples, require_every_class
from merge.pipeline.device import device_of
from merge.pipeline.errors import DataFormatError, LabelError
from merge.safetensors_io import write_canonical


class RealRecordsWarning(UserWarning):
    """Synthetic data initialised from real records: the file then contains patient data."""


@dataclass(frozen=True)
class DistillConfig:
    ipc: int = 10  # synthetic inputs per class
    steps: int = 20
    lr: float | None = None  # None: 0.3 x the spread of the noise init (scale-free default)
    max_real_per_class: int = 32
    init_from_real: bool = False
    augment: bool = True  # pixels only: differentiable siamese augmentation
    seed: int = 0
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> DistillConfig:
        return cls(**{"steps": 5, "max_real_per_class": 16, "progress": False, **overrides})


@dataclass(frozen=True, eq=False)
class Distilled:
    """A summary set as stored: ``inputs`` float32, ``labels`` int64 indexing ``classes``."""

    inputs: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    task: str
    kind: str
    base: str


def widened(d: Distilled, classes: tuple[str, ...]) -> Distilled:
    """``d`` over ``classes``, a superset of its own (labels re-indexed); ``d`` itself when
    ``classes`` are its own or not a superset of them."""
    if d.classes == classes or not set(d.classes) <= set(classes):
        return d
    where = torch.tensor([classes.index(c) for c in d.classes], dtype=torch.int64)
    return replace(d, labels=where[d.labels], classes=classes)


def over_whole_tasks(sets: Sequence[Distilled]) -> list[Distilled]:
    """Each set over the classes of every set of its task, in order of first appearance.
    Institutions that share a task may each hold only some of its classes (label skew); the
    composite answers over all of them, so that is where its coefficients are scored."""
    union: dict[str, dict[str, None]] = {}
    for d in sets:
        union.setdefault(d.task, {}).update(dict.fromkeys(d.classes))
    return [widened(d, tuple(union[d.task])) for d in sets]


@dataclass(frozen=True)
class DistillReport:
    distilled: Distilled
    seconds: float
    losses: tuple[float, ...]
    step_seconds: tuple[float, ...] = field(default=(), repr=False)  # each step's wall time


def distill(
    backend: DualEncoder, records: Examples, *, task: str, config: DistillConfig
) -> DistillReport:
    """Distil ``records`` into ``config.ipc`` synthetic inputs per class (seeded), on
    ``backend.device``; the result is on the CPU in float32 whatever the device."""
    if config.ipc < 1:
        raise LabelError(f"ipc must be >= 1, got {config.ipc}")
    require_every_class(records, "distillation data")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(config.seed)
    real = _real_inputs(backend, records, config, g)
    syn, labels = _init(backend, records, real, config, g)
    syn, losses, times = _match(backend, real, syn, labels, config, g)
    out = Distilled(
        syn.detach().float().cpu().contiguous(),
        labels,
        records.classes,
        task,
        backend.input_kind,
        backend.fingerprint,
    )
    return DistillReport(out, time.perf_counter() - t0, tuple(losses), tuple(times))


def _real_inputs(
    backend: DualEncoder, records: Examples, config: DistillConfig, g: torch.Generator
) -> list[torch.Tensor]:
    """Per class, up to ``max_real_per_class`` real records, prepared (ids or pixels), on the
    backend's device."""
    device = device_of(backend)
    out = []
    for c in range(len(records.classes)):
        idx = [i for i, y in enumerate(records.labels) if y == c]
        pick = torch.randperm(len(idx), generator=g)[: config.max_real_per_class]
        items = [records.items[idx[int(j)]] for j in sorted(pick.tolist())]
        out.append(backend.prepare(items).to(device))
    return out


def _init(
    backend: DualEncoder,
    records: Examples,
    real: list[torch.Tensor],
    config: DistillConfig,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    n_classes = len(records.classes)
    labels = torch.arange(n_classes).repeat_interleave(config.ipc)
    if not config.init_from_real:
        return backend.synthetic_noise(n_classes * config.ipc, g), labels
    warnings.warn(
        "initialising distilled data from real records: the output file starts as copies "
        "of patient records and is shared with every peer",
        RealRecordsWarning,
        stacklevel=3,
    )
    rows = []
    for r in real:
        pick = (
            torch.randint(len(r), (config.ipc,), generator=g)
            if len(r) < config.ipc
            else (torch.randperm(len(r), generator=g)[: config.ipc])
        )
        rows.append(_fit_length(backend.to_synthetic(r[pick.to(r.device)]), backend))
    return torch.cat(rows), labels


def _fit_length(x: torch.Tensor, backend: DualEncoder) -> torch.Tensor:
    """Real text embeddings are as long as the longest record: pad/cut to the noise length."""
    if backend.input_kind != "text-embeds":
        return x
    target = backend.synthetic_noise(1, torch.Generator().manual_seed(0)).shape[1]
    if x.shape[1] >= target:
        return x[:, :target]
    pad = x[:, -1:].expand(-1, target - x.shape[1], -1)
    return torch.cat([x, pad], dim=1)


def _match(
    backend: DualEncoder,
    real: list[torch.Tensor],
    syn0: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
    g: torch.Generator,
) -> tuple[torch.Tensor, list[float], list[float]]:
    """Adam on the synthetic inputs, minimising :func:`_dm_loss` against the real features
    (on the backend's device; ``syn0`` and ``labels`` may come from the CPU)."""
    device = device_of(backend)
    syn0, labels = syn0.to(device), labels.to(device)
    syn = syn0.clone().requires_grad_(True)
    lr = config.lr if config.lr is not None else 0.3 * float(syn0.std())
    opt = torch.optim.Adam([syn], lr=lr)
    augment = config.augment and backend.input_kind == "pixels"
    fixed = None if augment else _real_features(backend, real)
    losses: list[float] = []
    times: list[float] = []
    # disable=None: a bar on a terminal, none in a log file (its \r updates are noise there)
    bar = tqdm(
        range(config.steps), desc="distill", disable=None if config.progress else True, leave=False
    )
    for _ in bar:
        t0 = time.perf_counter()
        params = _aug_params(g) if augment else None
        targets = fixed if fixed is not None else _real_features(backend, real, params)
        feats = backend.features(backend.model, _augment(syn, params))
        loss = _dm_loss(feats, labels, targets)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
        losses.append(float(loss.detach()))  # reading the loss waits for the step's kernels
        times.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return syn.detach(), losses, times


@torch.no_grad()
def _real_features(
    backend: DualEncoder, real: list[torch.Tensor], params: dict[str, float] | None = None
) -> list[torch.Tensor]:
    """Per class, the frozen features ``[n_c, d]`` of its real inputs (under one view)."""
    return [backend.features(backend.model, _augment(r, params)) for r in real]


def _dm_loss(feats: torch.Tensor, labels: torch.Tensor, real: list[torch.Tensor]) -> torch.Tensor:
    """Σ_c MMD² between real and synthetic features of class c, kernel ``k = xy + (xy)²``.

    The linear part is plain DM (match the class means). The quadratic part matches the
    second moments ``E[f fᵀ]``: with the mean alone, synthetic points reach the right mean
    while spreading in directions real data never takes, and the base then classifies them
    at chance. Computed from Gram matrices, never a ``d x d`` matrix.
    """
    total = feats.new_zeros(())
    for c, r in enumerate(real):
        s = feats[labels == c]
        mean_gap = ((r.mean(0) - s.mean(0)) ** 2).sum()
        second = (s @ s.T).pow(2).mean() - 2 * (r @ s.T).pow(2).mean() + (r @ r.T).pow(2).mean()
        total = total + mean_gap + second
    return total


# --- differentiable siamese augmentation (pixels) ----------------------------------------


def _aug_params(g: torch.Generator) -> dict[str, float]:
    """One random view, shared by the real and synthetic batch of a step."""
    u = torch.rand(6, generator=g).tolist()
    return {
        "flip": float(u[0] < 0.5),
        "scale": 0.8 + 0.4 * u[1],
        "dx": 0.25 * (u[2] - 0.5),
        "dy": 0.25 * (u[3] - 0.5),
        "brightness": u[4] - 0.5,
        "contrast": 0.5 + u[5],
    }


def _augment(x: torch.Tensor, params: dict[str, float] | None) -> torch.Tensor:
    """Flip, scale+translate (affine resampling) and brightness/contrast: all differentiable."""
    if params is None or x.dim() != 4:
        return x
    if params["flip"]:
        x = torch.flip(x, dims=[3])
    s = params["scale"]
    rows = [[s, 0.0, params["dx"]], [0.0, s, params["dy"]]]
    theta = torch.tensor(rows, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * params["contrast"] + mean + params["brightness"]


# --- the file format (docs/CONTRACTS.md) ---------------------------------------------------


def save_distilled(d: Distilled, path: Path) -> None:
    """Safetensors with ``inputs`` (float32), ``labels`` (int64) and the contract's metadata."""
    metadata = {
        "format": DISTILLED_FORMAT,
        "task": d.task,
        "classes": json.dumps(list(d.classes)),
        "kind": d.kind,
        "base": d.base,
    }
    tensors = {
        "inputs": d.inputs.float().cpu().contiguous(),
        "labels": d.labels.long().cpu().contiguous(),
    }
    write_canonical(path, tensors, metadata)


def load_distilled(path: Path) -> Distilled:
    """Read and check a distilled file (format, kinds, label range, finite inputs)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            inputs, labels = f.get_tensor("inputs"), f.get_tensor("labels")
    except Exception as e:  # safetensors raises several unrelated types for a bad file
        raise DataFormatError(f"{path}: not a distilled safetensors file ({e})") from e
    return _checked(path, meta, inputs, labels)


def _checked(
    path: Path, meta: dict[str, str], inputs: torch.Tensor, labels: torch.Tensor
) -> Distilled:
    if meta.get("format") != DISTILLED_FORMAT or meta.get("kind") not in INPUT_KINDS:
        raise DataFormatError(f"{path}: format/kind {meta.get('format')}/{meta.get('kind')}")
    classes = tuple(json.loads(meta.get("classes", "[]")))
    if inputs.dtype != torch.float32 or labels.dtype != torch.int64:
        raise DataFormatError(f"{path}: dtypes {inputs.dtype}/{labels.dtype}")
    if len(labels) != len(inputs) or not all(0 <= int(y) < len(classes) for y in labels):
        raise LabelError(f"{path}: labels do not index the {len(classes)} classes")
    if not math.isfinite(float(inputs.abs().sum())):
        raise DataFormatError(f"{path}: non-finite inputs")
    return Distilled(
        inputs, labels, classes, meta.get("task", ""), meta["kind"], meta.get("base", "")
    )
