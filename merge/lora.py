"""LoRA adapters as the merge engine sees them, and the loader that admits them.

A ``LoraModule`` holds ``A [r, in]`` and ``B [out, r]`` (float32) with PEFT's scale already
folded into ``B``, so ``ΔW = B @ A`` whatever ``lora_alpha``, rsLoRA or rank patterns said.
An adapter is keyed by the base model's module paths (``encoder.layer.0.attention.self.query``),
with PEFT's ``base_model.model.`` prefix stripped.

Loading is validation: the bytes come from peers, and everything a node merges must be a
function of those bytes alone, so every check here is exact and deterministic (including the
norm bound, which is summed in a fixed order rather than by a threaded reduction).
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from merge.errors import (
    AdapterFormatError,
    BaseMismatchError,
    LimitError,
    MissingTensorError,
    NonFiniteError,
    ShapeError,
    UnexpectedTensorError,
)
from merge.lora_blob import read_safetensors
from merge.lora_config import CONFIG_NAME, MAX_CONFIG_BYTES, WEIGHTS_NAME, LoraScales, parse_config
from merge.spec import Limits

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Limits",
    "DeferredModules",
    "LoraAdapter",
    "LoraModule",
    "adapter_nbytes",
    "load_adapter",
    "load_adapter_bytes",
]

PEFT_PREFIX = "base_model.model."
FACTOR_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
_NORM_CHUNK = 1 << 16
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted Linear: ``ΔW = B @ A``. Compare with ``torch.equal`` or digests, not ``==``."""

    A: torch.Tensor
    B: torch.Tensor

    def __post_init__(self) -> None:
        a, b = self.A, self.B
        if a.dtype != torch.float32 or b.dtype != torch.float32:
            raise TypeError(f"LoRA factors must be float32, got {a.dtype}, {b.dtype}")
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"A {tuple(a.shape)} and B {tuple(b.shape)} do not compose")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in)`` of the base weight this module adapts."""
        return int(self.B.shape[0]), int(self.A.shape[1])


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A validated adapter. ``name`` only labels errors; it is not part of any digest."""

    base: str
    modules: Mapping[str, LoraModule]
    name: str = field(default="adapter")

    def __post_init__(self) -> None:
        if isinstance(self.modules, DeferredModules):
            return  # read when used: sorted and read-only already (the loaded adapter's)
        # Sorted and read-only: iteration order never depends on how the file listed tensors.
        object.__setattr__(
            self, "modules", MappingProxyType({k: self.modules[k] for k in sorted(self.modules)})
        )

    @property
    def deferred(self) -> bool:
        """Whether the modules are read when used rather than held (``DeferredModules``)."""
        return isinstance(self.modules, DeferredModules)


class DeferredModules(Mapping[str, LoraModule]):
    """An adapter's modules read again when used, not held (issue 13).

    A mixture keeps its members whole and they accumulate with the network's commits: held in
    memory, 1000 CLIP-sized members are 2.3 GiB, and a restart that reads and validates every
    one takes half a minute. A deferred adapter carries only what the fold, the digest and
    ``status`` need (its adapter digest and tensor bytes) and ``load``, which gives the
    validated adapter again (the node: its blobs through the validity function). The last
    ``DEFERRED_CACHE`` adapters loaded stay in memory, so one pass over the members (export,
    evaluation) reads each once. ``load`` is trusted to give the adapter whose digest is
    ``digest``: the node's loader checks it (``node.forge.composer``).

    Equality and hashing are by identity: comparing two by content would read both."""

    def __init__(self, digest: str, nbytes: int, load: Callable[[], LoraAdapter]) -> None:
        self.digest, self.nbytes, self._load = digest, nbytes, load

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<DeferredModules {self.digest[:12]} {self.nbytes} bytes>"

    def __getitem__(self, name: str) -> LoraModule:
        return self.loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.loaded())

    def __len__(self) -> int:
        return len(self.loaded())

    def loaded(self) -> Mapping[str, LoraModule]:
        """The modules themselves: from the recent ones, or ``load`` again."""
        with _RECENT_LOCK:
            hit = _RECENT.get(self)
            if hit is not None:
                _RECENT.move_to_end(self)
                return hit
        modules = self._load().modules  # outside the lock: a load reads and validates files
        if isinstance(modules, DeferredModules):
            raise TypeError("a deferred adapter's load gave another deferred adapter")
        with _RECENT_LOCK:
            _RECENT[self] = modules
            while len(_RECENT) > DEFERRED_CACHE:
                _RECENT.popitem(last=False)
        return modules


DEFERRED_CACHE = 4  # deferred adapters' modules held at once (CLIP-sized: 2.3 MiB each)
_RECENT: OrderedDict[DeferredModules, Mapping[str, LoraModule]] = OrderedDict()
_RECENT_LOCK = threading.Lock()  # the node's composer and its control ops use other threads


def adapter_nbytes(a: LoraAdapter) -> int:
    """The bytes of an adapter's factors (a deferred one's, without reading it)."""
    if isinstance(a.modules, DeferredModules):
        return a.modules.nbytes
    return sum(t.numel() * t.element_size() for m in a.modules.values() for t in (m.A, m.B))


def load_adapter(
    path: Path,
    *,
    base: str | None,
    limits: Limits,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    name: str | None = None,
) -> LoraAdapter:
    """Load a PEFT adapter directory; sizes are checked before a file is read."""
    label = name or path.name
    blobs = []
    for fname, cap in ((CONFIG_NAME, MAX_CONFIG_BYTES), (WEIGHTS_NAME, limits.max_blob_bytes)):
        file = path / fname
        if not file.is_file():
            raise AdapterFormatError(label, None, f"missing {fname} in {path}")
        if file.stat().st_size > cap:
            raise LimitError(label, None, f"{fname} is {file.stat().st_size} bytes > {cap}")
        blobs.append(file.read_bytes())
    return load_adapter_bytes(*blobs, base=base, limits=limits, shapes=shapes, name=label)


def load_adapter_bytes(
    config_json: bytes,
    safetensors: bytes,
    *,
    base: str | None,
    limits: Limits,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    name: str = "adapter",
) -> LoraAdapter:
    """Validate an adapter given as the two files' bytes (as a node receives them).

    ``base``: the network's base fingerprint. ``shapes``: ``{module path: (out, in)}`` of the
    base's Linear weights (the network's shape table).

    What decides "trained on this base" is the shape table: every module must exist in the
    base with exactly the shape the factors compose to. A declared base (medforge's
    safetensors metadata ``"base"``, or a config ``base_model_name_or_path`` that is a
    fingerprint) must also equal ``base``; an undeclared one (PEFT writes a path, a hub id or
    null) is accepted when the shape table is given, and refused without one.
    """
    scales = parse_config(config_json, name)
    tensors, metadata = read_safetensors(safetensors, name, limits)
    declared = _declared_base(metadata.get("base"), scales.declared_base)
    if base is not None and declared is not None and declared != base:
        raise BaseMismatchError(name, None, f"trained on {declared!r}, network base is {base!r}")
    if base is not None and declared is None and shapes is None:
        raise BaseMismatchError(name, None, "declares no base and no shape table can check it")
    pairs = _pair_factors(tensors, name)
    modules = {
        module: _admit_module(name, module, a, b, scales, limits, shapes)
        for module, (a, b) in sorted(pairs.items())
    }
    return LoraAdapter(base=base or declared or "", modules=modules, name=name)


def _declared_base(metadata_base: str | None, config_base: str | None) -> str | None:
    """The fingerprint an adapter claims, if any. A config's base name counts only when it
    is a fingerprint (64 hex digits): PEFT writes the path or hub id it loaded from."""
    if metadata_base:
        return metadata_base
    if config_base and _FINGERPRINT.fullmatch(config_base):
        return config_base
    return None


def _pair_factors(
    tensors: Mapping[str, torch.Tensor], adapter: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, B)}`` from PEFT keys; anything else is an unexpected tensor."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted(tensors):
        suffix = next((s for s in FACTOR_SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(PEFT_PREFIX) or key == PEFT_PREFIX + suffix:
            raise UnexpectedTensorError(adapter, key, "not a PEFT LoRA factor")
        module = key[len(PEFT_PREFIX) : -len(suffix)]
        found.setdefault(module, {})[FACTOR_SUFFIXES[suffix]] = tensors[key]
    if not found:
        raise MissingTensorError(adapter, None, "the adapter holds no LoRA tensors")
    for module, factors in found.items():
        for side in "AB":
            if side not in factors:
                raise MissingTensorError(adapter, f"{module}.lora_{side}.weight", "missing")
    return {m: (f["A"], f["B"]) for m, f in found.items()}


def _admit_module(
    adapter: str,
    module: str,
    a: torch.Tensor,
    b: torch.Tensor,
    scales: LoraScales,
    limits: Limits,
    shapes: Mapping[str, tuple[int, int]] | None,
) -> LoraModule:
    _check_shapes(adapter, module, a, b, scales.rank(module), limits, shapes)
    for side, t in (("A", a), ("B", b)):
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(adapter, f"{module}.lora_{side}.weight", "NaN or Inf")
    # The scale is cast to float32 once and applied elementwise: one correctly rounded
    # multiply per element, identical on every IEEE machine.
    scaled_b = torch.mul(b, torch.tensor(scales.scale(module), dtype=torch.float32))
    for side, t in (("A", a), ("B", scaled_b)):
        tensor = f"{module}.lora_{side}.weight"
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(adapter, tensor, "overflows float32 once scaled")
        norm = exact_norm(t)
        if norm > limits.max_norm:
            raise LimitError(adapter, tensor, f"norm {norm:.6g} > {limits.max_norm}")
    return LoraModule(A=a, B=scaled_b)


def _check_shapes(
    adapter: str,
    module: str,
    a: torch.Tensor,
    b: torch.Tensor,
    rank: int,
    limits: Limits,
    shapes: Mapping[str, tuple[int, int]] | None,
) -> None:
    tensor = f"{module}.lora_A.weight"
    if a.shape[0] != rank or b.shape[1] != rank:
        raise ShapeError(adapter, tensor, f"A {list(a.shape)}, B {list(b.shape)} vs rank {rank}")
    if rank > limits.max_rank:
        raise LimitError(adapter, tensor, f"rank {rank} > {limits.max_rank}")
    if shapes is not None:
        want = shapes.get(module)
        got = (int(b.shape[0]), int(a.shape[1]))
        if want is None:
            raise ShapeError(adapter, tensor, "the base model has no such Linear module")
        if tuple(want) != got:
            raise ShapeError(adapter, tensor, f"ΔW would be {got}, base weight is {tuple(want)}")


def exact_norm(t: torch.Tensor) -> float:
    """Frobenius norm, the same on every machine and thread count.

    Squares of float32 values are exact in float64; they are summed with ``math.fsum`` in
    fixed-size chunks (a fixed order), never with torch's threaded reduction.
    """
    squares = t.detach().reshape(-1).to(torch.float64).square()
    partials = [
        math.fsum(squares[i : i + _NORM_CHUNK].tolist())
        for i in range(0, squares.numel(), _NORM_CHUNK)
    ]
    return math.sqrt(math.fsum(partials))
