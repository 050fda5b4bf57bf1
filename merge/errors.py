"""Errors raised by the merge engine: every refusal names the adapter and, where one is at
fault, the tensor or module.

A node calls the loader on bytes a peer sent, so any of the ``AdapterError`` branches is the
peer's garbage (count it, log it, reject the commit); ``CoefficientError`` and ``ModeError``
are a caller's misuse of the fold; ``SpecError`` is a malformed merge spec.

Tree::

    MergeError
    ├── AdapterError                 an adapter that cannot be merged exactly
    │   ├── AdapterFormatError       unreadable JSON / safetensors, absurd header, bad dtype
    │   ├── UnsupportedAdapterError  a PEFT variant we cannot merge exactly (DoRA, lora_bias, ...)
    │   ├── BaseMismatchError        trained on another base model
    │   ├── MissingTensorError       a module with lora_A but no lora_B (or the reverse)
    │   ├── UnexpectedTensorError    a tensor that is not a LoRA factor
    │   ├── ShapeError               factors that do not fit each other, the config or the base
    │   ├── NonFiniteError           NaN or Inf in a tensor
    │   └── LimitError               over a size/rank/norm bound of the merge spec
    ├── DistilledError               a distilled set that does not fit the base or its commit
    ├── CoefficientError             a merge coefficient that is not a finite float
    ├── ModeError                    an operation on a composite of the wrong mode
    ├── SpecError                    a merge spec that is malformed or out of range
    └── CheckpointError              bytes that are not a whole composite checkpoint
"""

from __future__ import annotations


class MergeError(Exception):
    """Base of every error raised by ``merge`` on purpose."""


class AdapterError(MergeError):
    """An adapter is refused. ``adapter`` names it; ``tensor`` the tensor/module at fault."""

    def __init__(self, adapter: str, tensor: str | None, reason: str) -> None:
        self.adapter = adapter
        self.tensor = tensor
        self.reason = reason
        where = f"adapter {adapter!r}" + (f", tensor {tensor!r}" if tensor else "")
        super().__init__(f"{where}: {reason}")


class AdapterFormatError(AdapterError):
    """The bytes are not a well-formed adapter config / safetensors file."""


class UnsupportedAdapterError(AdapterError):
    """A PEFT option whose semantics the merge cannot reproduce exactly."""


class BaseMismatchError(AdapterError):
    """The adapter declares another base model than the network's."""


class MissingTensorError(AdapterError):
    """A LoRA factor is missing."""


class UnexpectedTensorError(AdapterError):
    """A tensor that is not ``<path>.lora_A.weight`` / ``<path>.lora_B.weight``."""


class ShapeError(AdapterError):
    """Shapes do not fit: A vs B, the configured rank, the base module or the composite."""


class NonFiniteError(AdapterError):
    """A tensor holds NaN or Inf."""


class LimitError(AdapterError):
    """A size, rank or norm bound of the merge spec is exceeded."""


class DistilledError(MergeError):
    """A distilled summary set whose bytes, shapes, dtypes or labels are not what the
    network's base takes and the commit's classes say."""


class CoefficientError(MergeError):
    """A merge coefficient is not a finite python float."""


class ModeError(MergeError):
    """The composite's mode does not allow the operation (e.g. exporting a mixture)."""


class SpecError(MergeError):
    """A merge spec is malformed (unknown key, wrong type, value out of range)."""


class CheckpointError(MergeError):
    """A checkpoint's bytes do not parse into a composite (truncated, damaged, another
    version): a local cache that is discarded, never a peer's fault."""
