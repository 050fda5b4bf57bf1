"""Where the pipeline's forward and backward passes run: one device spec, resolved once.

A spec is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``auto`` takes CUDA when
``torch.cuda.is_available()``, else MPS when available, else the CPU. A spec that names a
device this machine lacks is a :class:`~merge.pipeline.errors.DeviceUnavailableError`, raised
by :func:`resolve_device` before any model loads; a malformed one a
:class:`~merge.pipeline.errors.DeviceError`.

The device is a property of *computation*, never of what is stored: training, distillation,
the coefficient search and evaluation run on it, and everything they return or write
(adapters, distilled tensors, probabilities) is CPU float32. The fold (``merge.fold``) always
runs on the CPU in float32: bit-exactness is a property of the fold, not of training.

Mixed precision (:class:`Precision`) is for training on CUDA only: bf16 autocast where the
GPU supports it, else fp16 autocast with a gradient scaler. CPU and MPS train in float32, so a
CPU run is exactly what it was before devices existed.

This module imports torch lazily: the CLI checks a spec's syntax (:func:`check_spec`) while
building its parser, before torch loads.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from merge.pipeline.errors import DeviceError, DeviceUnavailableError

if TYPE_CHECKING:
    import torch

DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N", "mps")
DEVICE_HELP = "auto (CUDA, else MPS, else CPU; the default), cpu, cuda, cuda:N or mps"
_SPEC = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_spec(spec: str) -> str:
    """``spec`` if it is a well-formed device spec (syntax only: no torch, no probing)."""
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise DeviceError(f"device {spec!r} is not one of {', '.join(DEVICE_SPECS)}")
    return spec


def resolve_device(spec: str | torch.device = "cpu") -> torch.device:
    """The ``torch.device`` that ``spec`` names on this machine (idempotent: a resolved
    device resolves to itself). Raises :class:`DeviceUnavailableError` if it is absent."""
    import torch

    text = str(spec) if isinstance(spec, torch.device) else check_spec(spec)
    if text == "auto":
        return _auto()
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceUnavailableError("device 'mps' is not available here; use cpu or auto")
        return torch.device("mps")
    return _cuda(text)


def _auto() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cuda(text: str) -> torch.device:
    import torch

    if not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise DeviceUnavailableError(
            f"device {text!r} is not available: torch {torch.__version__} {build}; use cpu or auto"
        )
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"device {text!r} is not available: this machine has {count} CUDA device(s)"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    import torch

    backend: Any = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def device_of(obj: Any) -> torch.device:
    """The device an encoder (or anything with a ``device``) computes on; CPU if it says
    nothing (a test fake, a plain tower)."""
    import torch

    device = getattr(obj, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """How training runs its forward passes on ``device``: ``dtype`` None is float32 (CPU,
    MPS); bf16/fp16 autocast on CUDA, fp16 with a gradient scaler. The LoRA weights, the
    optimizer state and the loss stay float32 in every case."""

    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        import torch

        if device.type != "cuda":
            return cls(device)
        with torch.cuda.device(device):  # native bf16 only: emulated bf16 is slower than fp16
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls(device, torch.bfloat16 if bf16 else torch.float16)

    @property
    def name(self) -> str:
        """``"float32"``, ``"bf16-autocast"`` or ``"fp16-autocast"`` (for reports)."""
        import torch

        if self.dtype is None:
            return "float32"
        return "bf16-autocast" if self.dtype == torch.bfloat16 else "fp16-autocast"

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast on CUDA; on CPU and MPS nothing at all (the float32 path unchanged)."""
        import torch

        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def scaler(self) -> Any:
        """A ``torch.amp.GradScaler`` for fp16, else None (bf16 and float32 need none)."""
        import torch

        if self.dtype != torch.float16:
            return None
        return torch.amp.GradScaler("cuda")
