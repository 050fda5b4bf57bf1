"""The network's merge spec: which merge, how the author searches, what adapters may hold.

The spec lives in the genesis record, so it must round-trip through the canonical encoding:
``to_dict()`` gives plain python values only (str, int, float, nested dicts) and
``from_dict()`` refuses anything it would not have produced (unknown or missing keys, wrong
types, out-of-range values) with a ``SpecError``.

Settings added after the first networks were signed (``OPTIONAL``: per-module groups, the
mixture's share search, and the network-level ``compaction``/``compact_rank``) appear in
``to_dict()`` only when they differ from their default, so a spec that does not use them has
exactly the bytes, and its genesis exactly the network id, it always had; ``from_dict()``
reads them as the default when absent and refuses them written out at the default (one
encoding).

Compaction (issue 13; ``merge.compaction``): a stack composite concatenates factors, so its
rank grows with every commit; ``compaction="auto"`` turns a module into its dense ``ΔW`` once
the factors cost at least as much (``compact_rank=0``, the crossover ``r·(out+in) >= out·in``)
or once its rank exceeds ``compact_rank > 0``. Only stack compacts: a fusion's rank never
grows and fusing needs the factors themselves (a dense ``ΔW`` cannot be fused), a mixture
keeps whole members; both refuse a compaction setting rather than carry one that does nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from merge.errors import SpecError
from merge.groups import GROUPINGS

MODES = ("fusion", "stack", "mixture")
OBJECTIVES = ("paper", "logprob")
COMPACTIONS = ("off", "auto")
# how a mixture author searches: the paper's two coefficients, or the new member's share of a
# convex mixture with a prior at the uniform share (merge.pipeline.search.search_mixture_share)
MIXTURE_SEARCHES = ("paper", "shares")


@dataclass(frozen=True)
class Limits:
    """Bounds an adapter must respect; checked on bytes before anything is merged."""

    max_tensor_elements: int = 1 << 26
    max_norm: float = 1.0e4
    max_rank: int = 256
    max_blob_bytes: int = 1 << 29

    def __post_init__(self) -> None:
        for name in ("max_tensor_elements", "max_rank", "max_blob_bytes"):
            _check_int(name, getattr(self, name), low=1)
        _check_float("max_norm", self.max_norm, positive=True)
        object.__setattr__(self, "max_norm", float(self.max_norm))


@dataclass(frozen=True)
class SearchSettings:
    """The author's coefficient search (LoraHub-style, as in the paper)."""

    budget: int = 40
    init: float = 0.5
    bound: float = 1.5
    l1: float = 0.05
    objective: str = "logprob"
    seed: int = 0
    # w1 scales everything merged before: bounded below so that no member can wipe the
    # composite (w1 = 0) and above so that no run of commits can blow it up (w1 > 1 each).
    keep_min: float = 0.5
    keep_max: float = 1.0
    # Per-module coefficients (merge.groups): "none" (one pair per commit), "layer" or
    # "target"; the author refines one pair per group with group_budget evaluations
    # (0: budget x the number of groups) after the scalar search.
    groups: str = "none"
    group_budget: int = 0
    # Mixture only: "paper" (two coefficients, as above) or "shares" (one share, searched
    # with a pull towards the uniform mixture; the paper's search, scale-invariant in a
    # mixture, drifted to keep_min and lost to the plain uniform mixture)
    mixture_search: str = "paper"

    def __post_init__(self) -> None:
        _check_int("budget", self.budget, low=1)
        if self.mixture_search not in MIXTURE_SEARCHES:
            raise SpecError(
                f"mixture_search must be one of {MIXTURE_SEARCHES}, got {self.mixture_search!r}"
            )
        _check_int("group_budget", self.group_budget, low=0)
        if self.groups not in GROUPINGS:
            raise SpecError(f"groups must be one of {GROUPINGS}, got {self.groups!r}")
        _check_float("bound", self.bound, positive=True)
        _check_float("init", self.init)
        _check_float("l1", self.l1)
        _check_float("keep_min", self.keep_min)
        _check_float("keep_max", self.keep_max)
        if not 0 <= self.keep_min <= self.keep_max:
            raise SpecError(f"need 0 <= keep_min <= keep_max, got {self.keep_min}, {self.keep_max}")
        if abs(self.init) > self.bound:
            raise SpecError(f"init {self.init} lies outside the bounds ±{self.bound}")
        if self.l1 < 0:
            raise SpecError(f"l1 must be >= 0, got {self.l1}")
        if self.objective not in OBJECTIVES:
            raise SpecError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        _check_int("seed", self.seed, low=0, high=2**32 - 1)
        for name in ("init", "bound", "l1", "keep_min", "keep_max"):  # ints: the float they mean
            object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True)
class MergeSpec:
    """Mode + search settings + adapter limits, as carried by the genesis document."""

    mode: str = "fusion"
    search: SearchSettings = field(default_factory=SearchSettings)
    limits: Limits = field(default_factory=Limits)
    # When a stack module turns dense (see the module docstring): "off" or "auto", and the
    # rank that triggers it (0: the crossover where factors cost as much as the dense ΔW).
    compaction: str = "off"
    compact_rank: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SpecError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "mixture" and self.search.groups != "none":
            raise SpecError("a mixture weights whole members: module groups apply to fusion/stack")
        if self.mode != "mixture" and self.search.mixture_search != "paper":
            raise SpecError(f"mixture_search applies to mixture only, not {self.mode}")
        self._check_compaction()

    def _check_compaction(self) -> None:
        if self.compaction not in COMPACTIONS:
            raise SpecError(f"compaction must be one of {COMPACTIONS}, got {self.compaction!r}")
        _check_int("compact_rank", self.compact_rank, low=0)
        if self.compaction != "off" and self.mode != "stack":
            raise SpecError(
                f"compaction applies to stack only: a {self.mode} composite's rank never grows "
                "(fusion merges factors elementwise, a mixture keeps whole members)"
            )
        if self.compaction == "off" and self.compact_rank != 0:
            raise SpecError("compact_rank names when to compact: it needs compaction='auto'")

    def to_dict(self) -> dict[str, Any]:
        """Plain python values, ready for the canonical encoding (``OPTIONAL`` settings only
        where they differ from their default)."""
        data = {"mode": self.mode, "search": _flat(self.search), "limits": _flat(self.limits)}
        return data | _flat_optional(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeSpec:
        """Inverse of ``to_dict``; strict, since the data comes from a signed document."""
        optional = OPTIONAL[MergeSpec]
        present = {k for k in optional if isinstance(data, Mapping) and k in data}
        _expect_keys("spec", data, {"mode", "search", "limits"} | present)
        mode = data["mode"]
        if not isinstance(mode, str):
            raise SpecError(f"mode must be a string, got {type(mode).__name__}")
        search = SearchSettings(**_typed_fields(SearchSettings, data["search"]))
        limits = Limits(**_typed_fields(Limits, data["limits"]))
        extra = {k: _optional_value("spec", k, data[k], optional[k]) for k in sorted(present)}
        return cls(mode=mode, search=search, limits=limits, **extra)


# Settings newer than the first signed specs: written only when not at their default.
OPTIONAL: dict[type, dict[str, Any]] = {
    SearchSettings: {"groups": "none", "group_budget": 0, "mixture_search": "paper"},
    MergeSpec: {"compaction": "off", "compact_rank": 0},
}


def _flat(obj: SearchSettings | Limits) -> dict[str, Any]:
    optional = OPTIONAL.get(type(obj), {})
    return {
        f.name: getattr(obj, f.name)
        for f in fields(obj)
        if f.name not in optional or getattr(obj, f.name) != optional[f.name]
    }


def _flat_optional(spec: MergeSpec) -> dict[str, Any]:
    """The spec's own ``OPTIONAL`` settings that are not at their default."""
    return {k: getattr(spec, k) for k, v in OPTIONAL[MergeSpec].items() if getattr(spec, k) != v}


def _optional_value(what: str, name: str, value: object, default: object) -> Any:
    """An ``OPTIONAL`` value as written: of the default's exact type, never the default."""
    if isinstance(value, bool) or type(value) is not type(default):
        raise SpecError(f"{what}.{name} must be {type(default).__name__}, got {value!r}")
    if value == default:
        raise SpecError(f"{what}.{name} at its default is written by leaving it out")
    return value


def _expect_keys(what: str, data: object, keys: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise SpecError(f"{what} must be a mapping, got {type(data).__name__}")
    if set(data) != keys:
        raise SpecError(f"{what} keys {sorted(map(str, data))} != expected {sorted(keys)}")


def _typed_fields(cls: type[SearchSettings] | type[Limits], data: object) -> dict[str, Any]:
    """Check every field's python type against the default's; ints are accepted for floats
    because some encoders write 2.0 as 2, never the reverse."""
    defaults = cls()
    optional = OPTIONAL.get(cls, {})
    if not isinstance(data, Mapping):
        raise SpecError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
    present = {f.name for f in fields(cls) if f.name not in optional or f.name in data}
    _expect_keys(cls.__name__, data, present)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in present:
            continue  # an optional setting left out: its default
        value, want = data[f.name], type(getattr(defaults, f.name))
        if f.name in optional and value == optional[f.name] and type(value) is want:
            raise SpecError(f"{cls.__name__}.{f.name} at its default is written by leaving it out")
        if isinstance(value, bool) or not isinstance(value, (want, int) if want is float else want):
            raise SpecError(f"{cls.__name__}.{f.name} must be {want.__name__}, got {value!r}")
        out[f.name] = float(value) if want is float else value
    return out


def _check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        raise SpecError(f"{name}={value} is out of range [{low}, {high}]")


def _check_float(name: str, value: object, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{name} must be a float, got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise SpecError(f"{name} must be finite{' and > 0' if positive else ''}, got {value}")
