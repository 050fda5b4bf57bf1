"""Write the node's composite for users: a PEFT adapter directory, or a mixture of them.

Fusion and stack export one standard PEFT adapter (``merge.export``). A mixture exports one
PEFT adapter per member under ``members/NNN`` and ``mixture.json`` with the weights, each also
as an exact float in hex, so a reader can rebuild the composite bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

from merge.export import export_peft
from merge.fold import Composite, single_task

MIXTURE_FILE = "mixture.json"


def export_composite(composite: Composite, out: Path, base: str) -> None:
    if composite.mode != "mixture":
        export_peft(composite, out, base=base)
        return
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for k, (member, weight) in enumerate(zip(composite.members, composite.weights, strict=True)):
        export_peft(single_task("stack", member), out / "members" / f"{k:03d}", base=base)
        members.append(
            {
                "dir": f"members/{k:03d}",
                "weight": weight,
                "weight_hex": weight.hex(),
                "name": member.name,
            }
        )
    (out / MIXTURE_FILE).write_text(json.dumps({"base": base, "members": members}, indent=2))
