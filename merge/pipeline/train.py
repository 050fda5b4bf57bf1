"""Train a task's LoRA plugin on the backend's input tower (the institution's private step).

The head is not learned: logits are ``logit_scale * cos(f(x), g(class name))`` with ``g`` the
frozen class-name tower, exactly as the composite will be evaluated after merging. Training is
seeded end to end (LoRA init, dropout and batch order run under a forked, seeded RNG, so the
caller's global RNG is untouched) and writes a standard PEFT adapter directory, plus
``medforge.json`` with the task, classes, base fingerprint and validation metrics.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from merge.lora_config import CONFIG_NAME, WEIGHTS_NAME
from merge.pipeline.backends.base import DualEncoder, cosine_logits
from merge.pipeline.datasets import Examples, require_every_class, stratified_split
from merge.pipeline.errors import DatasetTooSmallError, LabelError
from merge.pipeline.metrics import Metrics, classification_metrics
from merge.safetensors_io import write_canonical

PLUGIN_META = "medforge.json"
PLUGIN_FORMAT = "medforge-plugin/1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters. Defaults: the text path (offline-data.md: r=8 on query/value,
    60 steps); :meth:`for_backend` gives the paper's CLIP defaults."""

    steps: int = 60
    batch_size: int = 16
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] | None = None  # None: the backend's lora_targets
    val_fraction: float = 0.2
    max_val: int = 256
    seed: int = 0
    progress: bool = True

    @classmethod
    def for_backend(cls, kind: str, **overrides: Any) -> TrainConfig:
        base = {"rank": 16, "alpha": 16, "dropout": 0.1} if kind == "clip" else {}
        return cls(**{**base, **overrides})

    @classmethod
    def quick(cls, **overrides: Any) -> TrainConfig:
        """A CI-sized run: few steps, small validation."""
        return cls(**{"steps": 8, "max_val": 64, "progress": False, **overrides})


@dataclass(frozen=True)
class TrainResult:
    out: Path
    base: Metrics  # zero-shot base on the validation split
    plugin: Metrics  # trained plugin on the same split
    seconds: float
    seconds_per_step: float
    losses: tuple[float, ...] = field(repr=False)


def check_trainable(records: Examples, batch_size: int) -> None:
    """Everything that must hold before a step is spent (typed errors, see pipeline_errors).
    Labels inside the class list are guaranteed by ``Examples`` itself."""
    if len(records.classes) < 2:
        raise LabelError(f"a classifier needs >= 2 classes, got {list(records.classes)}")
    require_every_class(records, "training data")
    if len(records) < batch_size:
        raise DatasetTooSmallError(f"{len(records)} training examples < batch size {batch_size}")


def train_plugin(
    backend: DualEncoder, records: Examples, *, task: str, out: Path, config: TrainConfig
) -> TrainResult:
    """Train, validate and save a plugin for ``task`` on ``records`` (see module docstring)."""
    train_set, val_set = _split(records, config)
    check_trainable(train_set, config.batch_size)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        peft_model = _wrap(backend, config)
        losses, step_s = _fit(backend, peft_model, train_set, config)
    base_m = evaluate_model(backend, backend.model, val_set, config.batch_size * 4)
    plugin_m = evaluate_model(backend, _inner(peft_model), val_set, config.batch_size * 4)
    save_adapter(peft_model, out, backend.fingerprint)
    _write_meta(out, backend, task, records.classes, config, base_m, plugin_m)
    return TrainResult(out, base_m, plugin_m, time.perf_counter() - t0, step_s, tuple(losses))


def _split(records: Examples, config: TrainConfig) -> tuple[Examples, Examples]:
    train_set, val_set = stratified_split(records, config.val_fraction, config.seed)
    return train_set, val_set.subset(range(min(len(val_set), config.max_val)))


def _wrap(backend: DualEncoder, config: TrainConfig) -> Any:
    """A PEFT model around a *copy* of the base, so the shared frozen base stays untouched."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets or backend.lora_targets),
        bias="none",
    )
    model = copy.deepcopy(backend.model)
    with warnings.catch_warnings():
        # peft 0.21.2 reads transformers' deprecated `is_gradient_checkpointing`: their
        # FutureWarning, not ours (the suite turns warnings into errors).
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, lora)


def _inner(peft_model: Any) -> nn.Module:
    """The HF model with LoRA layers injected: what ``backend.features`` expects."""
    inner: nn.Module = peft_model.get_base_model()
    return inner


def _batches(n: int, size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless seeded epochs of shuffled indices, dropping each epoch's ragged tail."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - size + 1, size):
            yield perm[i : i + size]


def _fit(
    backend: DualEncoder, peft_model: Any, data: Examples, config: TrainConfig
) -> tuple[list[float], float]:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    classes = backend.encode_classes(data.classes)
    labels = data.label_tensor()
    batches = _batches(len(data), config.batch_size, config.seed)
    peft_model.train()
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="train", disable=not config.progress, leave=False)
    t0 = time.perf_counter()
    for _ in bar:
        idx = next(batches)
        loss = _step(backend, peft_model, opt, data, idx, labels[idx], classes)
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    peft_model.eval()
    return losses, (time.perf_counter() - t0) / max(config.steps, 1)


def _step(
    backend: DualEncoder,
    peft_model: Any,
    opt: torch.optim.Optimizer,
    data: Examples,
    idx: torch.Tensor,
    y: torch.Tensor,
    classes: torch.Tensor,
) -> float:
    x = backend.prepare([data.items[int(i)] for i in idx])
    feats = backend.features(_inner(peft_model), x)
    loss = F.cross_entropy(cosine_logits(feats, classes, backend.logit_scale), y)
    opt.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate_model(
    backend: DualEncoder, model: nn.Module, data: Examples, batch_size: int = 64
) -> Metrics:
    """Metrics of ``model`` (the base or a PEFT-injected copy) on ``data``, in batches."""
    classes = backend.encode_classes(data.classes)
    chunks = [
        backend.features(model, backend.prepare(data.items[i : i + batch_size]))
        for i in range(0, len(data), batch_size)
    ]
    feats = torch.cat(chunks) if chunks else torch.empty(0, classes.shape[1])
    probs = cosine_logits(feats, classes, backend.logit_scale).softmax(dim=1)
    return classification_metrics(probs, data.label_tensor())


def save_adapter(peft_model: Any, out: Path, fingerprint: str) -> None:
    """PEFT's ``save_pretrained``, then made canonical for content addressing.

    The base fingerprint goes into the safetensors metadata (``"base"``: what
    ``merge.lora.load_adapter`` checks against the network's base), and the config is
    rewritten with sorted keys and sorted ``target_modules`` (PEFT keeps them in a ``set``,
    whose order changes with the hash seed), so one seed gives byte-identical files.
    """
    from safetensors.torch import load_file

    peft_model.save_pretrained(str(out))
    weights = out / WEIGHTS_NAME
    write_canonical(weights, load_file(str(weights)), {"format": "pt", "base": fingerprint})
    config_path = out / CONFIG_NAME
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_meta(
    out: Path,
    backend: DualEncoder,
    task: str,
    classes: tuple[str, ...],
    config: TrainConfig,
    base_m: Metrics,
    plugin_m: Metrics,
) -> None:
    meta = {
        "format": PLUGIN_FORMAT,
        "task": task,
        "classes": list(classes),
        "backend": backend.kind,
        "base": backend.fingerprint,
        "base_name": backend.name,
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "validation": {"base": base_m.as_dict(), "plugin": plugin_m.as_dict()},
    }
    (out / PLUGIN_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_plugin_meta(path: Path) -> dict[str, Any]:
    """The ``medforge.json`` written next to a trained adapter."""
    meta: dict[str, Any] = json.loads((path / PLUGIN_META).read_text())
    return meta
