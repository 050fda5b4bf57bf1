"""Write the node's composite for users: a PEFT adapter directory, a mixture of them, or the
base model with the composite merged into its weights; each with a model card.

Fusion and stack export one standard PEFT adapter (``merge.export``; ``max_rank`` caps every
module's rank, and a compacted stack module is factored by the SVD of its own ``ΔW``). Its
``base_model_name_or_path`` is the model the genesis names (a path or hub id that
``from_pretrained`` loads; the fingerprint where it names none), and the safetensors metadata
``"base"`` is the fingerprint.

A mixture exports one PEFT adapter per member under ``member0/``, ``member1/``, ... (each
loads on its own, or together through PEFT's multi-adapter API: adapter names ``m0``,
``m1``, ...) and ``mixture.json``::

    {"format": "medforge-mixture", "base": <fingerprint>, "base_model_name_or_path": ...,
     "combine": <the rule, in words>, "network": ..., "network_id": ..., "forge_item": ...,
     "digest": ..., "tasks": {task: [classes]},
     "members": [{"adapter_name": "m0", "dir": "member0", "lambda": λ_0, "weight": w_0,
                  "weight_hex": w_0.hex(), "name": ..., "task": ..., "classes": [...],
                  "author": ..., "commit": <hex>}, ...]}

``weight`` (exactly: ``weight_hex``) is the composite's own weight, so a reader rebuilds the
composite bit for bit (``node.forge.sources.read_export``); ``lambda = weight / Σ weight``
sums to 1 and makes ``P(y|x) = Σ_j λ_j softmax_j(x)_y`` a distribution (``null`` if the
weights sum to 0). The task fields come from the commits in the composite, where known.

``export_merged`` writes fusion and stack as a full Hugging Face checkpoint of the network's
base with ``W + ΔW`` (``merge.pipeline.merged``): the base is loaded as the genesis names it
and refused unless its fingerprint is the network's. A mixture has no merged weights.

Every export writes ``README.md`` (``node.forge.card``). Nothing written depends on the clock,
the host or the output path: the same composite gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crypto.records import Genesis
from merge.digest import composite_digest
from merge.errors import ModeError
from merge.export import export_peft
from merge.fold import Composite, single_task
from node.forge.card import CARD_FILE, Provenance, render

MIXTURE_FILE = "mixture.json"
MIXTURE_FORMAT = "medforge-mixture"
COMBINE = (
    "P(y|x) = sum_j lambda_j * softmax_j(x)_y: each member runs alone on the base (PEFT: "
    "set_adapter(adapter_name)) and its class probabilities are mixed with lambda_j = "
    "weight_j / sum_k weight_k"
)


def export_composite(
    composite: Composite,
    out: Path,
    base: str,
    *,
    max_rank: int | None = None,
    provenance: Provenance | None = None,
) -> Provenance:
    """``composite`` into ``out`` (created; files of the same names are replaced), with a
    card. ``base``: the base's fingerprint; ``provenance``: where the composite comes from
    (default: only the fingerprint and digest are known). Returns the provenance written."""
    prov = provenance or Provenance(base, composite_digest(composite))
    model = prov.base_model
    if composite.mode != "mixture":
        export_peft(composite, out, base=base, model=model, max_rank=max_rank)
        _write(out / CARD_FILE, render("adapter", composite.mode, prov))
        return prov
    if not composite.members:
        raise ModeError("an empty composite has nothing to export")
    members = mixture_members(composite, prov)
    for entry, member in zip(members, composite.members, strict=True):
        member_dir = out / str(entry["dir"])
        export_peft(
            single_task("stack", member), member_dir, base=base, model=model, max_rank=max_rank
        )
    _write(out / MIXTURE_FILE, _json(mixture_json(base, prov, members)))
    _write(out / CARD_FILE, render("mixture", composite.mode, prov, members))
    return prov


def mixture_members(composite: Composite, prov: Provenance) -> list[dict[str, Any]]:
    """``mixture.json``'s member entries; the task fields where ``prov`` holds one commit per
    member (a mixture's members are its commits, in fold order)."""
    total = sum(composite.weights)
    commits = prov.commits if len(prov.commits) == len(composite.members) else ()
    members: list[dict[str, Any]] = []
    for k, (member, weight) in enumerate(zip(composite.members, composite.weights, strict=True)):
        entry: dict[str, Any] = {
            "adapter_name": f"m{k}",
            "dir": f"member{k}",
            "lambda": weight / total if total != 0 else None,
            "weight": weight,
            "weight_hex": weight.hex(),
            "name": member.name,
        }
        if commits:
            c = commits[k]
            entry |= {"task": c.task, "classes": list(c.classes), "author": c.author}
            entry["commit"] = c.commit
        members.append(entry)
    return members


def mixture_json(base: str, prov: Provenance, members: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": MIXTURE_FORMAT,
        "base": base,
        "base_model_name_or_path": prov.base_model,
        "combine": COMBINE,
        "network": prov.network or None,
        "network_id": prov.network_id or None,
        "forge_item": prov.forge_item,
        "digest": prov.digest,
        "tasks": {task: list(classes) for task, classes in prov.tasks().items()},
        "members": members,
    }


def export_merged(
    composite: Composite, out: Path, genesis: Genesis, *, provenance: Provenance | None = None
) -> Provenance:
    """The network's base with ``composite`` merged in, as ``save_pretrained`` writes it,
    with a card."""
    if composite.mode == "mixture":
        raise ModeError(
            "a mixture has no merged weights (its members' outputs are mixed): export it "
            "without --merged (one PEFT adapter per member)"
        )
    from merge.pipeline.merged import save_merged
    from node.forge.author import network_encoder  # loads the base: only when asked to

    prov = provenance or Provenance.of(genesis, (), composite_digest(composite))
    save_merged(network_encoder(genesis), composite, out)
    _write(out / CARD_FILE, render("merged", composite.mode, prov))
    return prov


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))  # bytes: no newline translation on any platform
