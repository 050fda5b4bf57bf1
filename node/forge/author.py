"""The author's side of a commit: compose the head, search coefficients against it, sign.

"Search once, apply everywhere" (shared/DESIGN.md rule 3): only the author runs forward
passes; the result travels in the signed commit. This module is the one author use case:

- ``Head``: the main chain searched against (its forge item, commits and blob files), read
  from the running node's ``head`` control answer or empty; ``Head.compose`` folds it;
- ``search``: the coefficients of a plugin onto a head, scored on the distilled sets of the
  tasks merged so far and the plugin's own (``coefficients`` is that search on in-memory
  composites, for benchmarks); ``scored`` adds to its claim the head's and the merged
  candidate's accuracy on each of those sets (``node.forge.claim``);
- ``sign_commit``: the signed ``Commit`` naming the blobs, the parent and the claim (with
  the per-group pairs where the network groups modules: a schema 2 commit);
- ``continual``: what a plugin committed onto a head trains on (the composite's ``ΔW`` and the
  replay of the head's distilled sets, ``merge.pipeline.train.Continual``); ``training_record``:
  the commit's ``training`` field from the plugin's meta;
- ``rebase``: all three for one of the node's own orphans, superseding it (re-searched, never
  retrained: it keeps the orphan's blobs and ``training``).

Callers: ``medforge commit`` (against the running node's tip), ``medforge train`` (trains on
the home's tip), the node's service (its orphans), the demo (refolds the head to check
the nodes' digest) and ``scripts/bench_forge.py``.
Publishing is the caller's: a control call, or the service's own ``publish``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from crypto.identity import Identity
from crypto.records import BlobRef, Commit, Genesis, decode_record
from merge.errors import BaseMismatchError
from merge.fold import Composite, apply
from merge.groups import ModuleCoeffs
from merge.lora import LoraAdapter
from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.distill import Distilled, load_distilled, over_whole_tasks
from merge.pipeline.search import (
    SearchResult,
    TaskData,
    predict_proba_all,
    search_coeffs,
    search_mixture_share,
)
from merge.pipeline.train import Continual
from merge.spec import SearchSettings
from node.core.order import root_item
from node.forge import claim
from node.forge.composer import Composer
from node.forge.netspec import backend, base_fingerprint, merge_spec
from node.forge.validate import Rules

BlobPath = Callable[[bytes], Path]


@dataclass(frozen=True)
class Head:
    """A main chain as its author searches against it: the forge item ``tip``, the commits up
    to it in order, and the file of every blob they name (sha256 -> path)."""

    tip: bytes
    commits: tuple[Commit, ...] = ()
    files: Mapping[bytes, Path] = field(default_factory=dict)

    @classmethod
    def empty(cls, genesis: Genesis) -> Head:
        """``item_0``: what a commit made while no node runs is searched against."""
        return cls(root_item(genesis.network_id))

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> Head:
        """The running node's ``head`` control answer (``{"tip", "commits": [{"record",
        "blobs": {kind: path}}]}``)."""
        commits, files = [], {}
        for entry in answer["commits"]:
            commit = decode_record(bytes.fromhex(entry["record"]))
            assert isinstance(commit, Commit)
            commits.append(commit)
            for kind, path in entry["blobs"].items():
                files[commit.blobs[kind].sha256] = Path(path)
        return cls(bytes.fromhex(answer["tip"]), tuple(commits), files)

    def blob_path(self, sha: bytes) -> Path:
        return self.files[sha]

    def read_blob(self, sha: bytes) -> bytes:
        return self.files[sha].read_bytes()

    def compose(self, genesis: Genesis) -> Composer:
        """The head's composite, each adapter admitted by the validity function."""
        composer = Composer(merge_spec(genesis), Rules.of(genesis), self.read_blob)
        composer.update(self.commits)
        return composer


@functools.lru_cache(maxsize=2)
def load_encoder(kind: str, model: str, fingerprint: str, device: str = "cpu") -> DualEncoder:
    """The network's base model on ``device`` (``merge.pipeline.device``), loaded once per
    process and device; refused if its fingerprint is not the one the genesis names."""
    from merge.pipeline.backends import load_backend

    encoder = load_backend(kind, model or None, device=device)
    if encoder.fingerprint != fingerprint:
        raise BaseMismatchError(
            f"{kind}:{model or 'default'}",
            None,
            f"fingerprint {encoder.fingerprint[:16]}… is not the network's {fingerprint[:16]}…",
        )
    return encoder


def network_encoder(genesis: Genesis, device: str = "cpu") -> DualEncoder:
    kind, model = backend(genesis)
    return load_encoder(kind, model, base_fingerprint(genesis), device)


def task_data(commits: Sequence[Commit], blob_path: BlobPath) -> list[Distilled]:
    """The distilled sets of the tasks merged so far (one per distinct blob)."""
    seen: set[bytes] = set()
    data = []
    for commit in commits:
        sha = commit.blobs["distilled"].sha256
        if sha not in seen:
            seen.add(sha)
            data.append(load_distilled(blob_path(sha)))
    return data


def task_names(commits: Sequence[Commit]) -> list[str]:
    """The task each set of ``task_data(commits, ...)`` is merged under (its first commit's)."""
    seen: set[bytes] = set()
    names = []
    for commit in commits:
        sha = commit.blobs["distilled"].sha256
        if sha not in seen:
            seen.add(sha)
            names.append(commit.task)
    return names


def continual(genesis: Genesis, head: Head, composer: Composer | None = None) -> Continual:
    """What a plugin to be committed onto ``head`` trains on: the head's composite (its dense
    ``ΔW`` in fusion and stack; none in mixture, whose members run alone on the base) and the
    distilled sets of its commits as replay, tagged with the head's tip (``composer``: ``head``
    already composed, if the caller has it). An empty head gives an empty ``Continual``."""
    composite = (composer or head.compose(genesis)).composite
    replay = task_data(head.commits, head.blob_path)
    return Continual.of(composite, replay, parent=head.tip.hex())


def training_record(meta: Mapping[str, Any]) -> dict[str, str | int | float] | None:
    """The commit's ``training`` field from a plugin's ``medforge.json``: ``{"method",
    "replay"}``, plus ``"trained_on"`` (the forge item, hex) for a continual plugin and
    ``"loss"`` when it was not plain cross-entropy (``"prior-corrected"``) and ``"init"``
    when the LoRA did not start at PEFT's random init (``"composite-svd"``). ``None``
    when the plugin says nothing (trained before provenance was recorded, or not by
    ``medforge train``): such a commit stays schema version 1."""
    raw = meta.get("training")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("method"), str):
        return None
    record: dict[str, str | int | float] = {
        "method": str(raw["method"]),
        "replay": int(raw.get("replay") or 0),
    }
    if isinstance(raw.get("parent"), str) and raw["parent"]:
        record["trained_on"] = str(raw["parent"])
    for key in ("loss", "init"):  # e.g. "prior-corrected", "composite-svd"
        if isinstance(raw.get(key), str) and raw[key]:
            record[key] = str(raw[key])
    return record


def coefficients(
    encoder: DualEncoder,
    head: Composite,
    adapter: LoraAdapter,
    merged: Sequence[Distilled],
    own: Distilled,
    settings: SearchSettings,
    trained_on_head: bool = False,
) -> SearchResult:
    """``(w1, w2)`` for ``apply(head, adapter, ·)``, scored on the distilled sets of the tasks
    merged so far and the plugin's own (each against its task's whole class list): the claim
    every commit carries. ``trained_on_head``: the plugin was trained on top of ``head``
    (stack: ``(1, 1)``, no search; ``search_coeffs``). A mixture network whose spec says
    ``mixture_search = "shares"`` searches the member's share instead."""
    data = over_whole_tasks([*merged, own])
    if head.mode == "mixture" and settings.mixture_search == "shares":
        return search_mixture_share(encoder, head, adapter, data, settings)
    return search_coeffs(encoder, head, adapter, data, settings, trained_on_head=trained_on_head)


def trained_on_head(head: Head, trained_on: str | None) -> bool:
    """Whether a plugin trained on forge item ``trained_on`` (hex) goes onto ``head``'s tip."""
    return trained_on is not None and trained_on == head.tip.hex()


def search(
    genesis: Genesis,
    head: Head,
    adapter: LoraAdapter,
    own: Distilled,
    composer: Composer | None = None,
    device: str = "cpu",
    trained_on: str | None = None,
) -> SearchResult:
    """The network's search for ``adapter`` onto ``head`` (``composer``: ``head`` already
    composed, if the caller has it), its claim with the per-task accuracies (``scored``).
    ``trained_on``: the forge item (hex) a continual plugin was trained on; when it is
    ``head``'s tip, a stack commit takes ``(1, 1)`` (the trained model) without searching.
    The forward passes run on ``device``; the fold stays on the CPU in float32."""
    composer = composer or head.compose(genesis)
    merged = task_data(head.commits, head.blob_path)
    settings = merge_spec(genesis).search
    encoder = network_encoder(genesis, device)
    on_head = trained_on_head(head, trained_on)
    result = coefficients(encoder, composer.composite, adapter, merged, own, settings, on_head)
    return scored(genesis, head, adapter, own, result, composer, device)


def scored(
    genesis: Genesis,
    head: Head,
    adapter: LoraAdapter,
    own: Distilled,
    result: SearchResult,
    composer: Composer | None = None,
    device: str = "cpu",
) -> SearchResult:
    """``result`` with the accuracy of the head and of the merged candidate (at ``result``'s
    coefficients) on each distilled set searched in its objective (``node.forge.claim``):
    what `medforge commit` warns about and `medforge log` shows."""
    composite = (composer or head.compose(genesis)).composite
    pairs = result.module_coeffs
    groups = ModuleCoeffs(merge_spec(genesis).search.groups, pairs) if pairs else None
    merged = apply(composite, adapter, result.coeffs, groups)
    data = over_whole_tasks([*task_data(head.commits, head.blob_path), own])
    encoder = network_encoder(genesis, device)
    before, after = accuracies(encoder, composite, data), accuracies(encoder, merged, data)
    names = claim.unique_names(task_names(head.commits))
    served = [
        claim.TaskAccuracy(*figures) for figures in zip(names, before[:-1], after[:-1], strict=True)
    ]
    mine = claim.TaskAccuracy("", before[-1], after[-1], own=True)
    entries = claim.encode(mine, served, len(result.objective))
    return replace(result, objective={**result.objective, **entries})


def accuracies(encoder: DualEncoder, composite: Composite, data: Sequence[TaskData]) -> list[float]:
    """``composite``'s accuracy on each distilled set, against that set's own class names."""
    with torch.no_grad():
        tasks = [(d.inputs, encoder.encode_classes(d.classes)) for d in data]
        probs = predict_proba_all(encoder, composite, tasks)
    return [
        float((p.argmax(-1) == d.labels).double().mean()) if len(d.labels) else 0.0
        for p, d in zip(probs, data, strict=True)
    ]


def sign_commit(
    identity: Identity,
    genesis: Genesis,
    *,
    seq: int,
    task: str,
    classes: tuple[str, ...],
    blobs: dict[str, BlobRef],
    parent: bytes,
    result: SearchResult,
    supersedes: bytes | None = None,
    training: Mapping[str, str | int | float] | None = None,
) -> Commit:
    objective: dict[str, Any] = {k: float(v) for k, v in result.objective.items()}
    return Commit.create(
        identity,
        network=genesis.network_id,
        seq=seq,
        task=task,
        classes=classes,
        base=base_fingerprint(genesis),
        blobs=blobs,
        parent=parent,
        coeffs=(float(result.coeffs[0]), float(result.coeffs[1])),
        objective=objective,
        supersedes=supersedes,
        module_coeffs=_module_coeffs(result),
        training=dict(training) if training is not None else None,
    )


def _module_coeffs(result: SearchResult) -> dict[str, tuple[float, float]] | None:
    """The search's per-group pairs as the commit carries them (``None``: a schema 1 commit)."""
    if result.module_coeffs is None:
        return None
    return {g: (float(a), float(b)) for g, (a, b) in sorted(result.module_coeffs.items())}


def rebase(
    identity: Identity,
    genesis: Genesis,
    orphan: Commit,
    head: Head,
    next_seq: Callable[[], int],
    device: str = "cpu",
) -> Commit:
    """Re-search ``orphan``'s plugin against ``head`` and sign a commit superseding it, with
    the orphan's blobs (``head.files`` must hold them too) and its ``training`` record: the
    plugin is not retrained, so a continual one keeps the ``trained_on`` it was trained on.
    ``next_seq`` is called once, when the search succeeded: a failed rebase uses up no
    sequence number. ``device``: where the search runs (the home's ``device`` key)."""
    composer = head.compose(genesis)
    adapter = composer.adapter(orphan)  # the validity function on the orphan's blobs
    own = load_distilled(head.blob_path(orphan.blobs["distilled"].sha256))
    result = search(genesis, head, adapter, own, composer, device)
    return sign_commit(
        identity,
        genesis,
        seq=next_seq(),
        task=orphan.task,
        classes=orphan.classes,
        blobs=dict(orphan.blobs),
        parent=head.tip,
        result=result,
        supersedes=orphan.id,
        training=orphan.training,
    )
