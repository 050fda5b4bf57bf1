"""Shared fixtures: a tiny real base model and real PEFT LoRA adapters saved to disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge.base_shapes import BaseShapes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

BASE = "ab" * 32  # the fingerprint TinyBase networks name
# TinyBase's shape table, as `medforge fingerprint` would give it for a text-like base.
TINY_SHAPES = BaseShapes({"q": (8, 8), "v": (8, 8), "head": (3, 8)}, "text-embeds", (-1, 8))


def write_distilled(
    path: Path,
    classes: tuple[str, ...] = ("a", "b"),
    *,
    task: str = "t",
    base: str = BASE,
    labels: list[int] | None = None,
    width: int = 8,
) -> Path:
    """A distilled set for TinyBase in the documented format: one example per class (or per
    label given; ``width`` other than 8 does not fit TinyBase)."""
    from merge.pipeline.distill import Distilled, save_distilled

    targets = torch.tensor(labels) if labels is not None else torch.arange(len(classes))
    n = len(targets)
    inputs = torch.linspace(-1, 1, n * 4 * width).reshape(n, 4, width)
    save_distilled(Distilled(inputs, targets, tuple(classes), task, "text-embeds", base), path)
    return path


class TinyBase(torch.nn.Module):
    """Two attention-like projections and a head: enough for PEFT to target by name."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.q = torch.nn.Linear(dim, dim)
        self.v = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 3)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.q(x)) + self.v(x))
        return out


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """Save a real PEFT LoRA adapter with seeded non-zero weights; returns its directory."""
    from peft import LoraConfig, get_peft_model

    def make(name: str = "adapter", seed: int = 1, rank: int = 2, base: str = BASE) -> Path:
        model = get_peft_model(
            TinyBase(), LoraConfig(r=rank, lora_alpha=rank, target_modules=["q", "v"])
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        out = tmp_path / name
        model.save_pretrained(str(out))
        # Name the base model the way medforge's trainer does, so the merge engine can check it.
        weights = out / "adapter_model.safetensors"
        save_file(load_file(str(weights)), str(weights), metadata={"base": base})
        return out

    return make


@pytest.fixture
def distilled(tmp_path: Path) -> Path:
    """A small distilled-data file in the documented format (two classes, a and b)."""
    return write_distilled(tmp_path / "distilled.safetensors")
