"""Real tiny models and real PEFT adapters for the merge tests (no mocks).

Every tensor comes from a ``torch.Generator`` seeded by the caller, never the global RNG.
Imported by the test files in this folder (pytest puts the folder on ``sys.path``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save as st_save
from torch import nn

from merge.lora import LoraAdapter, LoraModule
from merge.spec import Limits

TARGETS = ("enc.q", "enc.v", "head")
BASE = "7e" * 32  # a fingerprint-shaped name: a config naming it declares it


class TinyNet(nn.Module):  # type: ignore[misc]
    """Three Linear layers, nested so module paths look like a real model's."""

    def __init__(self, seed: int = 0, width: int = 12, out: int = 5) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.enc = nn.Module()
        self.enc.q = nn.Linear(width, width)
        self.enc.v = nn.Linear(width, width)
        self.head = nn.Linear(width, out)
        with torch.no_grad():
            for _, p in sorted(self.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc.q(x)) + self.enc.v(x)
        return self.head(torch.tanh(h))


def base_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def make_peft_adapter(
    out_dir: Path, seed: int, *, r: int = 4, targets: Sequence[str] = TARGETS, **config: Any
) -> Path:
    """Train-free real adapter: get_peft_model on TinyNet, LoRA factors drawn from ``seed``."""
    config.setdefault("lora_alpha", 2 * r)
    model = get_peft_model(TinyNet(), LoraConfig(r=r, target_modules=list(targets), **config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(str(out_dir))
    return out_dir


def adapter_files(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> tuple[bytes, bytes]:
    """Hand-built (config bytes, safetensors bytes), for inputs PEFT would never write."""
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "base_model_name_or_path": BASE}
    cfg.update(config or {})
    clones = {k: v.clone() for k, v in tensors.items()}  # safetensors refuses shared storage
    return json.dumps(cfg).encode(), st_save(clones, metadata=dict(metadata) if metadata else None)


def lora_keys(module: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    p = f"base_model.model.{module}"
    return {f"{p}.lora_A.weight": a, f"{p}.lora_B.weight": b}


def random_adapter(
    seed: int, shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], base: str = BASE
) -> LoraAdapter:
    """An adapter built directly (already validated form), for fold/digest tests."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name in sorted(ranks):
        out, inp = shapes[name]
        r = ranks[name]
        a = torch.randn(r, inp, generator=gen)
        b = torch.randn(out, r, generator=gen)
        modules[name] = LoraModule(A=a, B=b)
    return LoraAdapter(base=base, modules=modules, name=f"seed{seed}")


LIMITS = Limits()
