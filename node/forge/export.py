"""Write the node's composite for users: a PEFT adapter directory, a mixture of them, or the
base model with the composite merged into its weights.

Fusion and stack export one standard PEFT adapter (``merge.export``; ``max_rank`` caps every
module's rank, and a compacted stack module is factored by the SVD of its own ``ΔW``). A
mixture exports one PEFT adapter per member under ``members/NNN`` and ``mixture.json`` with the
weights, each also as an exact float in hex, so a reader can rebuild the composite bit for bit.

``export_merged`` writes fusion and stack as a full Hugging Face checkpoint of the network's
base with ``W + ΔW`` (``merge.pipeline.merged``): the base is loaded as the genesis names it
and refused unless its fingerprint is the network's. A mixture has no merged weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from crypto.records import Genesis
from merge.errors import ModeError
from merge.export import export_peft
from merge.fold import Composite, single_task

MIXTURE_FILE = "mixture.json"


def export_composite(
    composite: Composite, out: Path, base: str, *, max_rank: int | None = None
) -> None:
    if composite.mode != "mixture":
        export_peft(composite, out, base=base, max_rank=max_rank)
        return
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for k, (member, weight) in enumerate(zip(composite.members, composite.weights, strict=True)):
        member_dir = out / "members" / f"{k:03d}"
        export_peft(single_task("stack", member), member_dir, base=base, max_rank=max_rank)
        members.append(
            {
                "dir": f"members/{k:03d}",
                "weight": weight,
                "weight_hex": weight.hex(),
                "name": member.name,
            }
        )
    (out / MIXTURE_FILE).write_text(json.dumps({"base": base, "members": members}, indent=2))


def export_merged(composite: Composite, out: Path, genesis: Genesis) -> None:
    """The network's base with ``composite`` merged in, as ``save_pretrained`` writes it."""
    if composite.mode == "mixture":
        raise ModeError(
            "a mixture has no merged weights (its members' outputs are mixed): export it "
            "without --merged (one PEFT adapter per member)"
        )
    from merge.pipeline.merged import save_merged
    from node.forge.author import network_encoder  # loads the base: only when asked to

    save_merged(network_encoder(genesis), composite, out)
