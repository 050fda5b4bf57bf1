"""What a genesis document's ``spec`` says, read in one place.

Layout (canonical CBOR map inside the genesis)::

    {"base": <base model fingerprint hex>,
     "shapes": <merge.base_shapes.BaseShapes.to_dict()>,   # what every adapter must fit
     "backend": {"kind": "text" | "clip", "model": <path or id>},   # how members load the base
     "merge": <merge.spec.MergeSpec.to_dict()>}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from crypto.records import MAX_MODULE_GROUPS, MAX_NAME, MAX_RECORD_BYTES, Genesis
from merge.base_shapes import BaseShapes
from merge.errors import SpecError
from merge.groups import group_names
from merge.spec import MergeSpec, SearchSettings

# A base fingerprint: the hex sha256 of the model's config and weights (merge.fingerprint), as
# `medforge fingerprint` prints it. A genesis naming anything else can never take a commit.
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def is_fingerprint(text: object) -> bool:
    """64 lowercase hex characters: what ``DualEncoder.fingerprint`` gives."""
    return isinstance(text, str) and _FINGERPRINT.fullmatch(text) is not None


def make_spec(
    mode: str,
    base: str,
    shapes: BaseShapes,
    *,
    backend: str = "text",
    model: str = "",
    groups: str = "none",
    compaction: str = "off",
    compact_rank: int = 0,
    mixture_search: str = "paper",
) -> dict[str, Any]:
    """``groups`` (``merge.groups``): per-module coefficient groups; ``compaction`` /
    ``compact_rank`` (``merge.compaction``, stack only): when a stacked module turns dense;
    ``mixture_search`` (mixture only): the paper's two coefficients or the member's share.
    At their defaults ("none", "off", 0, "paper") the merge spec has the keys and bytes it
    always had."""
    merge = MergeSpec(
        mode=mode,
        search=SearchSettings(groups=groups, mixture_search=mixture_search),
        compaction=compaction,
        compact_rank=compact_rank,
    )
    return {
        "base": base,
        "shapes": shapes.to_dict(),
        "backend": {"kind": backend, "model": model},
        "merge": merge.to_dict(),
    }


_PAIR_BYTES = 24  # per group beside its name: a 2-list of float64 and the name's text header


def check_spec(spec: Mapping[str, Any]) -> None:
    """Refuse a genesis spec before anyone signs it: a base that is not a fingerprint, a
    malformed merge spec or shape table, or a module grouping under which the base has no
    group, or groups no commit could name (more than a commit carries, or names longer than
    a record allows)."""
    if not is_fingerprint(spec.get("base")):
        raise SpecError(
            f"base {spec.get('base')!r} is not a model fingerprint (64 hex characters, as "
            "`medforge fingerprint` prints): no commit could ever name it"
        )
    merge = MergeSpec.from_dict(spec["merge"])
    shapes = BaseShapes.from_dict(spec["shapes"])
    grouping = merge.search.groups
    if grouping == "none":
        return
    names = group_names(grouping, shapes.modules)
    if not names:
        raise SpecError(f"groups = {grouping!r}: no module of the base is in any group")
    # A commit carrying every group's pair must still be a record peers accept: names, two
    # float64 and the CBOR framing, within half of the record size limit.
    size = sum(len(g.encode()) + _PAIR_BYTES for g in names)
    if (
        len(names) > MAX_MODULE_GROUPS
        or any(len(g) > MAX_NAME for g in names)
        or size > MAX_RECORD_BYTES // 2
    ):
        raise SpecError(
            f"groups = {grouping!r}: {len(names)} groups ({size} bytes of pairs); a commit "
            f"names at most {MAX_MODULE_GROUPS}, each of at most {MAX_NAME} characters, in at "
            f"most {MAX_RECORD_BYTES // 2} bytes"
        )


def merge_spec(genesis: Genesis) -> MergeSpec:
    return MergeSpec.from_dict(genesis.spec["merge"])


def base_fingerprint(genesis: Genesis) -> str:
    return str(genesis.spec["base"])


def base_shapes(genesis: Genesis) -> BaseShapes:
    """The base's shape table. A genesis without one cannot check any adapter: refused."""
    if "shapes" not in genesis.spec:
        raise SpecError(
            f"network {genesis.name!r} names no base shape table: recreate it with "
            "`medforge network create --base MODEL` (or --base-file FILE, from "
            "`medforge fingerprint --out`)"
        )
    return BaseShapes.from_dict(genesis.spec["shapes"])


def backend(genesis: Genesis) -> tuple[str, str]:
    raw = genesis.spec.get("backend", {})
    return str(raw.get("kind", "text")), str(raw.get("model", ""))
