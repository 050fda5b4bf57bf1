"""The base model's shape table: what any adapter and distilled set must fit, without the model.

A network names its base by fingerprint, but a fingerprint alone only lets a node compare what
an adapter *declares*. The shape table says what the base *is*, in the terms the merge needs:
every Linear module an adapter may target with its weight's ``(out, in)``, and the per-example
shape of a distilled input (``-1``: any length, e.g. a text sequence). It travels inside the
genesis (hashed with everything else), so every node checks every adapter against the real base
without loading a single weight of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from merge.errors import SpecError

if TYPE_CHECKING:  # torch is imported where a model is read, not by every CLI command
    from torch import nn

INPUT_KINDS = ("text-embeds", "pixels")
ANY = -1  # a distilled input dimension that may take any length
_MAX_MODULES = 1 << 16
_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")


@dataclass(frozen=True)
class BaseShapes:
    """``modules``: ``{module path: (out, in)}``; ``input``: a distilled example's shape."""

    modules: Mapping[str, tuple[int, int]]
    input_kind: str
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise SpecError(f"shapes: input kind must be one of {INPUT_KINDS}")
        if not self.modules or len(self.modules) > _MAX_MODULES:
            raise SpecError(f"shapes: 1 to {_MAX_MODULES} modules, got {len(self.modules)}")
        for path, shape in self.modules.items():
            if not isinstance(path, str) or not _MODULE_PATH.fullmatch(path):
                raise SpecError(f"shapes: {path!r} is not a module path")
            if len(shape) != 2 or not all(_dim(d) for d in shape):
                raise SpecError(f"shapes: {path} needs (out, in) positive ints, got {shape}")
        if not 1 <= len(self.input_shape) <= 4 or not all(
            _dim(d) or d == ANY for d in self.input_shape
        ):
            raise SpecError(f"shapes: bad input shape {self.input_shape}")
        table = {k: (int(v[0]), int(v[1])) for k, v in sorted(self.modules.items())}
        object.__setattr__(self, "modules", MappingProxyType(table))
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def fits_input(self, shape: tuple[int, ...]) -> bool:
        """Whether one example of shape ``shape`` is what the base takes."""
        want = self.input_shape
        if len(shape) != len(want):
            return False
        return all(w in (ANY, s) for w, s in zip(want, shape, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the canonical encoding (lists, not tuples)."""
        return {
            "modules": {k: list(v) for k, v in self.modules.items()},
            "input": {"kind": self.input_kind, "shape": list(self.input_shape)},
        }

    @classmethod
    def from_dict(cls, data: object) -> BaseShapes:
        """Inverse of ``to_dict``; strict, since it comes from a signed document or a file."""
        if not isinstance(data, Mapping) or set(data) != {"modules", "input"}:
            raise SpecError("shapes must be a mapping with exactly 'modules' and 'input'")
        modules, inp = data["modules"], data["input"]
        if not isinstance(modules, Mapping) or not isinstance(inp, Mapping):
            raise SpecError("shapes: 'modules' and 'input' must be mappings")
        if set(inp) != {"kind", "shape"} or not isinstance(inp["shape"], list | tuple):
            raise SpecError("shapes: 'input' needs 'kind' and a 'shape' list")
        table: dict[str, tuple[int, int]] = {}
        for path, shape in modules.items():
            if not isinstance(shape, list | tuple) or len(shape) != 2:
                raise SpecError(f"shapes: {path!r} needs [out, in]")
            table[path] = (shape[0], shape[1])
        return cls(table, str(inp["kind"]), tuple(inp["shape"]))


def _dim(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module path: (out, in)}`` of every ``nn.Linear`` in ``model`` (what PEFT wraps)."""
    from torch import nn

    return {
        name: (int(m.out_features), int(m.in_features))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name
    }


def shapes_of(backend: Any) -> BaseShapes:
    """The table of a loaded ``DualEncoder``: its model's Linears and its distilled inputs.

    Text inputs are ``[seq, hidden]`` with any sequence length; pixels are exact."""
    import torch

    example = tuple(backend.synthetic_noise(1, torch.Generator().manual_seed(0)).shape[1:])
    if backend.input_kind == "text-embeds":
        example = (ANY, *example[1:])
    return BaseShapes(linear_shapes(backend.model), backend.input_kind, example)
