"""What a genesis document's ``spec`` says, read in one place.

Layout (canonical CBOR map inside the genesis)::

    {"base": <base model fingerprint hex>,
     "shapes": <merge.base_shapes.BaseShapes.to_dict()>,   # what every adapter must fit
     "backend": {"kind": "text" | "clip", "model": <path or id>},   # how members load the base
     "merge": <merge.spec.MergeSpec.to_dict()>}
"""

from __future__ import annotations

from typing import Any

from crypto.records import Genesis
from merge.base_shapes import BaseShapes
from merge.errors import SpecError
from merge.spec import MergeSpec


def make_spec(
    mode: str, base: str, shapes: BaseShapes, *, backend: str = "text", model: str = ""
) -> dict[str, Any]:
    return {
        "base": base,
        "shapes": shapes.to_dict(),
        "backend": {"kind": backend, "model": model},
        "merge": MergeSpec(mode=mode).to_dict(),
    }


def merge_spec(genesis: Genesis) -> MergeSpec:
    return MergeSpec.from_dict(genesis.spec["merge"])


def base_fingerprint(genesis: Genesis) -> str:
    return str(genesis.spec["base"])


def base_shapes(genesis: Genesis) -> BaseShapes:
    """The base's shape table. A genesis without one cannot check any adapter: refused."""
    if "shapes" not in genesis.spec:
        raise SpecError(
            f"network {genesis.name!r} names no base shape table: recreate it with "
            "`medforge network create --base FILE` (FILE from `medforge fingerprint --out`)"
        )
    return BaseShapes.from_dict(genesis.spec["shapes"])


def backend(genesis: Genesis) -> tuple[str, str]:
    raw = genesis.spec.get("backend", {})
    return str(raw.get("kind", "text")), str(raw.get("model", ""))
