"""Export a fusion/stack composite as a standard PEFT adapter directory.

The composite's ``B`` already carries every scale, so the export sets ``lora_alpha = r`` for
every module (PEFT's scale ``alpha / r`` is then exactly 1.0) and writes the factors as is.
Ranks that differ per module go into ``rank_pattern``/``alpha_pattern`` keyed by the module's
full path, regex-escaped, which ``merge.lora`` reads back exactly as PEFT does.

``cap_rank`` shrinks a module's rank without ever forming ``ΔW``: with ``B = Q_b R_b`` and
``Aᵀ = Q_a R_a`` (thin QR), ``ΔW = Q_b (R_b R_aᵀ) Q_aᵀ``; the SVD of the small ``r×r`` core
gives the best rank-k approximation of the exact sum (Eckart–Young), in
O((out + in)·r² + r³) instead of a dense SVD's O(out·in·min(out, in)).

A compacted module (``merge.dense.DenseModule``, stack with compaction) holds ``ΔW`` itself;
it is factored by a truncated SVD of that one ``out×in`` matrix (per module: never an SVD of
the whole model's weights). Without ``max_rank`` it keeps its numerical rank (singular values
above float32's noise floor, ``σ > σ_max·max(out, in)·eps``), so an export stays the composite
itself up to float32 rounding, as the factored path is; a module of full rank then exports
``min(out, in)·(out + in)`` numbers, more than the dense ``ΔW``: pass ``max_rank`` for a
smaller, approximate file.
Exports are for people and tools, not for digests: they use BLAS and float64 freely.

The config's ``base_model_name_or_path`` is what ``from_pretrained`` should load (a path or a
hub id, ``model``); the base's fingerprint is the safetensors metadata ``"base"``, which
``merge.lora`` checks when the export is read back or committed again.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from merge.dense import DenseModule
from merge.errors import ModeError
from merge.fold import Composite, Module
from merge.lora import CONFIG_NAME, PEFT_PREFIX, WEIGHTS_NAME, LoraModule
from merge.safetensors_io import canonical_safetensors

# float32's machine epsilon: a singular value below σ_max·max(out, in)·eps is rounding noise.
_F32_EPS = float(torch.finfo(torch.float32).eps)


def export_peft(
    c: Composite,
    out_dir: Path,
    *,
    base: str | None = None,
    model: str | None = None,
    max_rank: int | None = None,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for ``c`` into
    ``out_dir`` (created; existing files are replaced). ``max_rank`` caps each module's rank
    with ``cap_rank``; without it factored modules are written as they are and dense ones at
    their numerical rank (see the module docstring). ``base`` (the base's fingerprint) is
    recorded as the safetensors metadata ``"base"``; ``model`` (a path or hub id that
    ``from_pretrained`` loads; default ``base``) as ``base_model_name_or_path``."""
    config, weights = peft_files(c, base=base, model=model, max_rank=max_rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_NAME).write_bytes(config)
    (out_dir / WEIGHTS_NAME).write_bytes(weights)
    return out_dir


def peft_files(
    c: Composite,
    *,
    base: str | None = None,
    model: str | None = None,
    max_rank: int | None = None,
) -> tuple[bytes, bytes]:
    """The two files' bytes (config JSON, safetensors), deterministic for a given input."""
    if c.mode == "mixture":
        raise ModeError("a mixture is several models; export its members one by one")
    if not c.modules:
        raise ModeError("an empty composite has nothing to export")
    modules = cap_rank(c.modules, max_rank) if max_rank is not None else factored(c.modules)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.A.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.B.contiguous()
    metadata = {"format": "pt", **({"base": base} if base is not None else {})}
    named = base if model is None else model
    config = json.dumps(_config(modules, named), indent=2, sort_keys=True).encode()
    return config, canonical_safetensors(tensors, metadata)


def _config(modules: Mapping[str, LoraModule], model: str | None) -> dict[str, object]:
    ranks = {name: m.rank for name, m in modules.items()}
    # The most common rank (ties: the smallest) is the default; the rest are patterns.
    r = min(Counter(ranks.values()).items(), key=lambda kv: (-kv[1], kv[0]))[0]
    pattern = {re.escape(name): rank for name, rank in ranks.items() if rank != r}
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": model,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "task_type": None,
    }


def factored(modules: Mapping[str, Module]) -> dict[str, LoraModule]:
    """Every module as factors: factored ones as they are, dense ones at their numerical rank
    (lossless up to float32 rounding)."""
    return {
        name: _truncate_dense(m, min(m.shape)) if isinstance(m, DenseModule) else m
        for name, m in sorted(modules.items())
    }


def cap_rank(
    modules: Mapping[str, Module], max_rank: int, *, recompress: bool = False
) -> dict[str, LoraModule]:
    """Every module with rank > ``max_rank`` replaced by its best rank-``max_rank``
    approximation (QR + small SVD); the others are returned unchanged unless ``recompress``,
    which puts every module through QR + SVD (orthogonal factors, singular values split
    evenly), dropping nothing a module's rank allows. A dense module is always factored, by
    the SVD of its own ``ΔW``, at ``max_rank`` or its numerical rank if that is lower."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    out: dict[str, LoraModule] = {}
    for name, m in sorted(modules.items()):
        if isinstance(m, DenseModule):
            out[name] = _truncate_dense(m, max_rank)
        else:
            out[name] = _truncate(m, max_rank) if recompress or m.rank > max_rank else m
    return out


def _truncate(m: LoraModule, k: int) -> LoraModule:
    q_b, r_b = torch.linalg.qr(m.B.double())  # B  = Q_b R_b
    q_a, r_a = torch.linalg.qr(m.A.double().T)  # Aᵀ = Q_a R_a
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    k = min(k, int(s.numel()))
    root = s[:k].sqrt()  # split the singular values evenly between the two factors
    b = (q_b @ u[:, :k]) * root
    a = (root[:, None] * vh[:k]) @ q_a.T
    return LoraModule(A=a.float().contiguous(), B=b.float().contiguous())


def _truncate_dense(m: DenseModule, k: int) -> LoraModule:
    # One module's out×in ΔW (768×768 for CLIP-B/16: ~0.25 s on one thread), never the whole
    # model's weights at once.
    u, s, vh = torch.linalg.svd(m.W.double(), full_matrices=False)
    k = min(k, _numerical_rank(s, m.shape))
    root = s[:k].sqrt()  # split evenly, as for factored modules
    b = u[:, :k] * root
    a = root[:, None] * vh[:k]
    return LoraModule(A=a.float().contiguous(), B=b.float().contiguous())


def _numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """Singular values above float32's noise floor (at least 1: PEFT has no rank 0)."""
    if s.numel() == 0:
        return 1
    floor = float(s[0]) * max(shape) * _F32_EPS
    return max(1, int((s > floor).sum()))
