"""Module groups: which of a base's Linears share one coefficient pair in a commit.

A network's merge spec names a *grouping* (``SearchSettings.groups``); a commit may then carry
one ``(w1, w2)`` pair per group (``Commit.module_coeffs``) beside its scalar pair, which applies
to every module of no named group. The grouping is a pure function of the module path, so every
node assigns every module to the same group:

- ``"none"`` (the default): no groups; every module takes the scalar pair (schema 1 commits);
- ``"layer"``: the path up to and including its first all-digit component, i.e. the transformer
  block the module sits in: ``encoder.layer.3.attention.self.query`` -> ``encoder.layer.3``,
  ``vision_model.encoder.layers.11.mlp.fc1`` -> ``vision_model.encoder.layers.11`` (the whole
  prefix, so two towers' blocks of one index stay apart). A path without a numeric component
  (a head, a projection) is in no group;
- ``"target"``: the last path component, PEFT's ``target_modules`` name: ``query``, ``value``.

Nothing here reads tensors; the fold (``merge.fold.apply``) takes a ``ModuleCoeffs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from merge.errors import CoefficientError, SpecError

GROUPINGS = ("none", "layer", "target")
Pair = tuple[float, float]


def group_of(grouping: str, path: str) -> str | None:
    """The group of module ``path`` under ``grouping``; ``None``: the scalar pair applies."""
    if grouping == "none":
        return None
    parts = path.split(".")
    if grouping == "target":
        return parts[-1]
    if grouping == "layer":
        for k, part in enumerate(parts):
            if k and part.isascii() and part.isdigit():
                return ".".join(parts[: k + 1])
        return None
    raise SpecError(f"unknown module grouping {grouping!r}; expected one of {GROUPINGS}")


def group_names(grouping: str, paths: Iterable[str]) -> tuple[str, ...]:
    """The distinct groups of ``paths`` (sorted): what a commit's ``module_coeffs`` may name."""
    found = {group_of(grouping, p) for p in paths}
    return tuple(sorted(g for g in found if g is not None))


@dataclass(frozen=True)
class ModuleCoeffs:
    """A commit's per-group pairs under the network's grouping: ``pair(module, scalar)``."""

    grouping: str
    pairs: Mapping[str, Pair]

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise SpecError(f"unknown module grouping {self.grouping!r}; expected {GROUPINGS}")
        checked: dict[str, Pair] = {}
        for name in sorted(self.pairs):
            pair = self.pairs[name]
            if not isinstance(name, str) or len(pair) != 2:
                raise CoefficientError(f"module group {name!r} needs a pair of coefficients")
            for x in pair:
                if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                    raise CoefficientError(f"group {name!r}: coefficient {x!r} is not finite")
            checked[name] = (float(pair[0]), float(pair[1]))
        object.__setattr__(self, "pairs", MappingProxyType(checked))

    def group(self, path: str) -> str | None:
        """The named group whose pair module ``path`` takes; ``None``: the scalar pair."""
        group = group_of(self.grouping, path)
        return group if group is not None and group in self.pairs else None

    def pair(self, path: str, scalar: Pair) -> Pair:
        """The pair module ``path`` takes: its group's if named, else ``scalar``."""
        group = self.group(path)
        return scalar if group is None else self.pairs[group]
