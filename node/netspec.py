"""What a genesis document's ``spec`` says, read in one place.

Layout (canonical CBOR map inside the genesis)::

    {"base": <base model fingerprint hex>,
     "backend": {"kind": "text" | "clip", "model": <path or id>},   # how members load the base
     "merge": <merge.spec.MergeSpec.to_dict()>}
"""

from __future__ import annotations

from typing import Any

from crypto.records import Genesis
from merge.spec import MergeSpec


def make_spec(mode: str, base: str, *, backend: str = "text", model: str = "") -> dict[str, Any]:
    return {
        "base": base,
        "backend": {"kind": backend, "model": model},
        "merge": MergeSpec(mode=mode).to_dict(),
    }


def merge_spec(genesis: Genesis) -> MergeSpec:
    return MergeSpec.from_dict(genesis.spec["merge"])


def base_fingerprint(genesis: Genesis) -> str:
    return str(genesis.spec["base"])


def backend(genesis: Genesis) -> tuple[str, str]:
    raw = genesis.spec.get("backend", {})
    return str(raw.get("kind", "text")), str(raw.get("model", ""))
