"""The interface every base-model backend implements (CLIP image tower, text encoder, ...).

MedForge's setting is a zero-shot dual encoder: a frozen tower encodes class names, the input
tower carries the LoRA plugin, and logits are ``logit_scale * cos(f(x), g(class name))``.
The search, training, distillation and evaluation code only ever talks to this protocol.

Module paths (``lora_targets``, the keys of a ``delta``) are relative to ``model``, the whole
Hugging Face model, which is exactly what PEFT sees when it wraps ``model``.

Devices (``merge.pipeline.device``): a backend holds its model on ``device``. ``features`` and
``encode_inputs`` run there and return their result on the device the *inputs* came from (CPU
inputs give CPU features, device inputs keep the autograd graph on the device); a ``delta`` is
moved to the model's device and dtype (it is computed by the fold, on the CPU in float32).
``encode_classes`` and ``synthetic_noise`` always return CPU tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

from merge.pipeline.errors import DeltaError


class DualEncoder(Protocol):
    """A frozen base model seen as input tower + class-name tower."""

    @property
    def fingerprint(self) -> str:
        """Hex sha256 of the base model's canonical bytes (config + weights)."""
        ...

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default PEFT ``target_modules`` for a plugin on this base."""
        ...

    @property
    def logit_scale(self) -> float: ...

    @property
    def input_kind(self) -> str:
        """What distilled inputs are: ``"text-embeds"`` or ``"pixels"``."""
        ...

    def encode_inputs(
        self, inputs: torch.Tensor, delta: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Unit-norm features ``[n, d]`` of model inputs, with dense weight deltas
        ``{module path: ΔW}`` added to the named Linear weights (``None``: the base)."""
        ...

    def encode_classes(self, classes: Sequence[str]) -> torch.Tensor:
        """Unit-norm features ``[c, d]`` of class names from the frozen tower."""
        ...

    # --- what training and distillation need on top of the agreed members ---

    @property
    def kind(self) -> str:
        """Backend name for ``load_backend``: ``"text"`` or ``"clip"``."""
        ...

    @property
    def name(self) -> str:
        """The path or hub id the base was loaded from (for humans and PEFT configs)."""
        ...

    @property
    def model(self) -> nn.Module:
        """The whole frozen base model; never modified (training wraps a copy)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where ``model`` lives and every forward pass runs (``merge.pipeline.device``)."""
        ...

    def prepare(self, items: Sequence[str]) -> torch.Tensor:
        """Model inputs, on the CPU, for raw records: texts -> token ids ``[n, seq]``; image
        paths -> pixels ``[n, 3, h, w]``. ``encode_inputs`` and ``features`` accept them."""
        ...

    def features(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Unit-norm input features computed by ``model`` (``self.model`` or a PEFT-injected
        copy of it), with gradients flowing if the caller wants them."""
        ...

    def to_synthetic(self, inputs: torch.Tensor) -> torch.Tensor:
        """The distillable (float, differentiable) form of prepared inputs: text -> input
        embeddings ``[n, seq, hidden]``; pixels unchanged."""
        ...

    def synthetic_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random synthetic inputs of the distillable form, scaled like real ones."""
        ...


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (eps keeps an all-zero row finite)."""
    out: torch.Tensor = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return out


def cosine_logits(features: torch.Tensor, classes: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * cos``: both sides are already unit norm, so a matmul is the cosine."""
    return scale * features @ classes.T


class _Call(nn.Module):
    """Holds ``model`` as a submodule so ``functional_call`` can swap its weights."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._fn(self.model, inputs)


def delta_params(model: nn.Module, delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"<path>.weight": W + ΔW}`` for every module in ``delta``, checked against ``model``."""
    modules = dict(model.named_modules())
    params: dict[str, torch.Tensor] = {}
    for path in sorted(delta):
        module = modules.get(path)
        if not isinstance(module, nn.Linear):
            raise DeltaError(f"delta names {path!r}, which is not a Linear module of the base")
        if delta[path].shape != module.weight.shape:
            raise DeltaError(
                f"delta for {path!r} has shape {tuple(delta[path].shape)}, "
                f"the base weight {tuple(module.weight.shape)}"
            )
        weight = module.weight
        params[f"{path}.weight"] = weight + delta[path].to(weight.device, weight.dtype)
    return params


def call_with_delta(
    model: nn.Module,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    delta: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor:
    """``fn(model, inputs)`` as if each named weight were ``W + ΔW``.

    ``functional_call`` swaps the weights for this call only, so the shared base is never
    mutated (safe to interleave with other callers, nothing to restore on error).
    """
    if not delta:
        return fn(model, inputs)
    wrapper = _Call(model, fn)
    params = {f"model.{k}": v for k, v in delta_params(model, delta).items()}
    out = torch.func.functional_call(wrapper, params, (inputs,), strict=False)
    assert isinstance(out, torch.Tensor)
    return out
