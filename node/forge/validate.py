"""The one validity function: is this commit, with these blobs, something every node merges?

Pure and deterministic: a function of the record, the bytes of its blobs and the genesis,
nothing else (no clock, no local model, no thread count: the norm bound is summed in a fixed
order). Every node runs it at receipt before a commit counts, the author runs it before
signing and ``medforge verify`` runs it offline, so a commit is valid everywhere or nowhere
and the fold is never asked to apply what has not passed.

What it checks, in order:

- the blob bytes are the ones the commit names (size, sha256): if not, the *bytes* are wrong,
  not the commit (``MissingBlobs``: fetch them again; never a verdict on the commit);
- coefficients: finite, within the network's search bound and the float32 range; per-group
  pairs (``module_coeffs``) only where the merge spec groups modules (never in a mixture), each
  naming a group of the base's shape table and within the same bounds;
- the adapter as a whole (config + weights): PEFT LoRA only, every module a Linear of the
  base with exactly its shape (the genesis' shape table), ranks, finite values, norm bounds,
  a declared base equal to the network's;
- the distilled set: format, the base's input kind and example shape, finite inputs, labels
  that index the commit's classes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crypto.records import BLOB_KINDS, BlobRef, Commit, Genesis
from merge.base_shapes import BaseShapes
from merge.errors import MergeError
from merge.groups import group_names
from merge.spec import Limits
from node.errors import InvalidCommit, MissingBlobs
from node.forge.netspec import base_fingerprint, base_shapes, merge_spec

if TYPE_CHECKING:  # the tensor side is imported when a commit is checked, not on import
    from merge.lora import LoraAdapter

_FLOAT32_MAX = 3.4028234663852886e38
# Names this validity function. A node keeps the verdicts it reached (node.shell.service) and,
# after a restart, believes a "valid" one only if it names this version, checking the blob
# bytes again but not the content. Bump it whenever any commit could be judged differently.
VALIDITY = "medforge-validity/1"


@dataclass(frozen=True)
class Rules:
    """What the genesis says a commit must satisfy, read once."""

    base: str
    shapes: BaseShapes
    limits: Limits
    bound: float  # |w2| at most
    keep: tuple[float, float]  # w1 within
    mode: str = "stack"
    groups: str = "none"  # the merge spec's module grouping (merge.groups)
    group_names: frozenset[str] = frozenset()  # the groups of the base's modules

    @classmethod
    def of(cls, genesis: Genesis) -> Rules:
        spec = merge_spec(genesis)
        search = spec.search
        keep = (search.keep_min, search.keep_max)
        shapes = base_shapes(genesis)
        names = frozenset(group_names(search.groups, shapes.modules))
        return cls(
            base_fingerprint(genesis),
            shapes,
            spec.limits,
            search.bound,
            keep,
            spec.mode,
            search.groups,
            names,
        )


def check_commit(commit: Commit, blobs: Mapping[str, bytes], rules: Rules) -> LoraAdapter:
    """The validated adapter of ``commit``; raises ``InvalidCommit`` or ``MissingBlobs``."""
    check_blobs(commit, blobs)
    return check_content(
        rules,
        classes=commit.classes,
        coeffs=commit.coeffs,
        module_coeffs=commit.module_coeffs,
        blobs=blobs,
        name=adapter_name(commit),
    )


def check_blobs(commit: Commit, blobs: Mapping[str, bytes]) -> None:
    """Raises ``MissingBlobs`` (the wrong ones) unless every blob is the bytes the commit
    names: the first check of ``check_commit``, and all a restarted node checks again of a
    commit it judged valid under this ``VALIDITY``."""
    wrong = [ref.sha256 for kind, ref in sorted(commit.blobs.items()) if not _is(blobs[kind], ref)]
    if wrong:
        raise MissingBlobs(wrong)


def adapter_name(commit: Commit) -> str:
    """The label of ``commit``'s adapter in errors and exports: ``task@id``."""
    return f"{commit.task}@{commit.id.hex()[:12]}"


def check_content(
    rules: Rules,
    *,
    classes: Sequence[str],
    coeffs: Sequence[float] | None,
    blobs: Mapping[str, bytes],
    name: str,
    module_coeffs: Mapping[str, Sequence[float]] | None = None,
) -> LoraAdapter:
    """The checks on what a commit carries, without the commit (so an author can run them
    before signing: ``coeffs=None`` skips the coefficient checks until they are known)."""
    if coeffs is not None:
        check_coeffs(rules, coeffs, module_coeffs)
    if set(blobs) != set(BLOB_KINDS):
        raise InvalidCommit("SchemaError", f"blobs {sorted(blobs)}, expected {sorted(BLOB_KINDS)}")
    if not classes:
        raise InvalidCommit("SchemaError", "a commit names at least one class")
    from merge.distilled_blob import check_distilled
    from merge.lora import load_adapter_bytes

    try:
        adapter = load_adapter_bytes(
            blobs["adapter_config"],
            blobs["adapter_model"],
            base=rules.base,
            limits=rules.limits,
            shapes=rules.shapes.modules,
            name=name,
        )
        check_distilled(blobs["distilled"], classes=classes, shapes=rules.shapes, base=rules.base)
    except MergeError as exc:
        raise InvalidCommit(type(exc).__name__, str(exc)) from exc
    return adapter


def check_coeffs(
    rules: Rules,
    coeffs: Sequence[float],
    module_coeffs: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """``w1`` (what is kept of everything merged before) within the network's keep range,
    ``w2`` within ±bound, both finite and representable in float32: no member can wipe the
    composite, blow it up, or turn it to inf or NaN on every node. ``module_coeffs`` (per
    group): see ``check_module_coeffs``."""
    _check_pair(rules, coeffs, "coefficients")
    if module_coeffs is not None:
        check_module_coeffs(rules, module_coeffs)


def check_module_coeffs(rules: Rules, module_coeffs: Mapping[str, Sequence[float]]) -> None:
    """Per-group pairs: only where the merge spec groups modules (a mixture never does: it
    weights whole members), each naming a group of the base's modules, each pair within the
    same bounds as the scalar pair."""
    if rules.mode == "mixture":
        raise InvalidCommit(
            "GroupsInMixture", "a mixture weights whole members: module_coeffs do not apply"
        )
    if rules.groups == "none":
        raise InvalidCommit(
            "GroupsDisabled", "the network's merge spec groups no modules (groups = 'none')"
        )
    unknown = sorted(set(module_coeffs) - rules.group_names)
    if unknown:
        shown = ", ".join(repr(g) for g in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise InvalidCommit(
            "UnknownGroup",
            f"module_coeffs name {len(unknown)} group(s) the base has no module in under "
            f"groups = {rules.groups!r}: {shown}",
        )
    for group in sorted(module_coeffs):
        _check_pair(rules, module_coeffs[group], f"module_coeffs[{group!r}]")


def _check_pair(rules: Rules, coeffs: Sequence[float], what: str) -> None:
    bound = min(rules.bound, _FLOAT32_MAX)
    low, high = rules.keep
    if len(coeffs) != 2 or not all(isinstance(w, float) and math.isfinite(w) for w in coeffs):
        raise InvalidCommit("CoefficientBound", f"{what} {tuple(coeffs)} are not 2 floats")
    w1, w2 = coeffs
    if not low <= w1 <= high or abs(w2) > bound:
        raise InvalidCommit(
            "CoefficientBound",
            f"{what} {tuple(coeffs)}: w1 must lie in [{low}, {high}], w2 within ±{bound}",
        )


def _is(data: bytes, ref: BlobRef) -> bool:
    return len(data) == ref.size and hashlib.sha256(data).digest() == ref.sha256
