"""Where a composite to evaluate comes from, read without writing anything.

``medforge evaluate`` and ``medforge predict`` score a model on an institution's own data;
each reader here returns a ``Source``: the model, the base fingerprint it was built for (when
it declares one), the tasks its commits name with their classes, and what to tell the user.

- ``read_plugin``: one plugin's PEFT directory as ``medforge train`` writes it (its
  ``medforge.json`` names the task and classes), evaluated alone;
- ``read_export``: what ``medforge export`` writes: a PEFT directory (fusion, stack) or a
  mixture directory with ``mixture.json`` (weights read back exactly from their hex);
- ``read_bundles``: commit bundles, verified against the first one's genesis and folded in
  the order given onto the empty composite (what ``medforge merge`` digests);
- ``read_head``: a main chain (a running node's ``head`` answer, or ``stored_head`` over the
  records of a store read offline), composed through the validity function as every node does.

Plugins and exports are the user's own files, checked for format and finite values but with
no network's size limits; whether they fit the base is ``Source.check_base``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from crypto.records import Commit, Genesis, Record
from merge.errors import AdapterFormatError, BaseMismatchError, ShapeError
from merge.fold import Composite, Module
from merge.lora import LoraAdapter, load_adapter
from merge.spec import Limits
from node.core.order import forge_order
from node.errors import StoreError, UsageError
from node.forge.author import Head
from node.forge.bundle import read_bundle_genesis, verify_bundle
from node.forge.composer import Composer
from node.forge.export import MIXTURE_FILE
from node.forge.netspec import base_fingerprint, merge_spec
from node.forge.validate import Rules

# A local file is the user's own: no network's bounds apply, only sanity.
LOCAL_LIMITS = Limits(
    max_tensor_elements=1 << 40, max_norm=3.0e38, max_rank=1 << 24, max_blob_bytes=1 << 40
)
PLUGIN_META = "medforge.json"  # merge.pipeline.train writes it beside a trained adapter


@dataclass(frozen=True)
class Task:
    """A task a composite serves and its class names, in label order."""

    name: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """A model to score: a plugin alone (``LoraAdapter``) or a composite."""

    kind: str  # "home", "export", "plugin" or "bundle"
    path: Path
    model: LoraAdapter | Composite
    base: str | None  # the base fingerprint it declares; None: undeclared (shapes decide)
    tasks: tuple[Task, ...] = ()
    digest: str | None = None  # the composite digest, where it is the network's
    forge_item: int | None = None  # home: the main chain's length
    notes: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        """The composite's merge mode; ``plugin``, or ``peft`` for an exported fusion or stack
        composite (one adapter: which of the two it was is not in the files)."""
        if isinstance(self.model, LoraAdapter):
            return "plugin" if self.kind == "plugin" else "peft"
        return self.model.mode

    def modules(self) -> Iterator[tuple[str, Module]]:
        """Every adapted module, of every mixture member (a compacted one is dense)."""
        model = self.model
        members = model.members if isinstance(model, Composite) else ()
        for m in (model, *members):
            yield from m.modules.items()

    def check_base(self, fingerprint: str, shapes: Mapping[str, tuple[int, int]]) -> None:
        """Refuse a base that is not the one this model was built for: another fingerprint
        than the one it declares, or a module the base lacks or shapes otherwise."""
        if self.base is not None and self.base != fingerprint:
            raise BaseMismatchError(
                str(self.path),
                None,
                f"built for base {self.base[:16]}…, the base given is {fingerprint[:16]}… "
                "(pass the --backend/--base it was trained on)",
            )
        for name, module in self.modules():
            want = shapes.get(name)
            if want is None:
                raise ShapeError(str(self.path), name, "the base given has no such Linear module")
            if tuple(want) != module.shape:
                raise ShapeError(str(self.path), name, f"ΔW {module.shape}, base weight {want}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "mode": self.mode,
            "base": self.base,
            "digest": self.digest,
            "forge_item": self.forge_item,
            "tasks": {t.name: list(t.classes) for t in self.tasks},
            "notes": list(self.notes),
        }


def tasks_of(commits: Sequence[Commit]) -> tuple[Task, ...]:
    """The tasks of ``commits`` in order of first appearance, each with the classes of every
    commit of it, in order of first appearance: institutions that share a task may each hold
    only some of its classes (label skew), and the composite answers over all of them."""
    classes: dict[str, dict[str, None]] = {}
    for commit in commits:
        classes.setdefault(commit.task, {}).update(dict.fromkeys(commit.classes))
    return tuple(Task(name, tuple(cs)) for name, cs in classes.items())


# -- the readers ----------------------------------------------------------------------------


def read_plugin(path: Path) -> Source:
    if (path / MIXTURE_FILE).is_file():
        raise UsageError(f"{path} is a mixture export: pass it as --export")
    adapter = load_adapter(path, base=None, limits=LOCAL_LIMITS, name=path.name)
    meta = _plugin_meta(path)
    task, classes = meta.get("task"), meta.get("classes")
    tasks: tuple[Task, ...] = ()
    if isinstance(task, str) and _names(classes):
        tasks = (Task(task, tuple(classes)),)
    return Source("plugin", path, adapter, adapter.base or None, tasks)


def _plugin_meta(path: Path) -> dict[str, Any]:
    file = path / PLUGIN_META
    if not file.is_file():
        return {}  # a PEFT adapter from elsewhere: no task, no classes
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(path.name, None, f"{PLUGIN_META} is not JSON: {exc}") from exc
    return meta if isinstance(meta, dict) else {}


def _names(value: object) -> TypeGuard[list[str]]:
    """A non-empty list of strings."""
    return isinstance(value, list) and bool(value) and all(isinstance(c, str) for c in value)


def read_export(path: Path) -> Source:
    if not (path / MIXTURE_FILE).is_file():
        adapter = load_adapter(path, base=None, limits=LOCAL_LIMITS, name=path.name)
        return Source("export", path, adapter, adapter.base or None)
    raw = _mixture_json(path)
    members, weights = [], []
    for k, entry in enumerate(raw["members"]):
        member_dir = _member_dir(path, entry, k)
        members.append(load_adapter(member_dir, base=None, limits=LOCAL_LIMITS, name=f"member {k}"))
        weights.append(_weight(path, entry, k))
    base = raw.get("base")
    composite = Composite("mixture", members=tuple(members), weights=tuple(weights))
    return Source("export", path, composite, base if isinstance(base, str) and base else None)


def _mixture_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads((path / MIXTURE_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(path.name, None, f"{MIXTURE_FILE} is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("members"), list):
        raise AdapterFormatError(path.name, None, f"{MIXTURE_FILE} lists no members")
    return raw


def _member_dir(path: Path, entry: object, k: int) -> Path:
    where = entry.get("dir") if isinstance(entry, dict) else None
    if not isinstance(where, str):
        raise AdapterFormatError(path.name, None, f"{MIXTURE_FILE}: member {k} names no dir")
    member = (path / where).resolve()
    if not member.is_relative_to(path.resolve()):
        raise AdapterFormatError(path.name, None, f"member {k}: {where!r} is outside {path}")
    return member


def _weight(path: Path, entry: dict[str, Any], k: int) -> float:
    """The exact weight (``weight_hex``), else the decimal one."""
    try:
        weight = float.fromhex(entry["weight_hex"]) if "weight_hex" in entry else entry["weight"]
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFormatError(path.name, None, f"member {k}: no readable weight") from exc
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise AdapterFormatError(path.name, None, f"member {k}: weight {weight!r}")
    if not math.isfinite(weight):
        raise AdapterFormatError(path.name, None, f"member {k}: weight {weight!r} is not finite")
    return float(weight)


def read_bundles(paths: Sequence[Path]) -> Source:
    """``paths`` verified (signature, roster, blobs, validity) against the first bundle's
    genesis and folded in the order given."""
    genesis = read_bundle_genesis(paths[0])
    bundles = [verify_bundle(path, genesis) for path in paths]
    files = {b.commit.blobs[k].sha256: b.blob_path(k) for b in bundles for k in b.commit.blobs}
    composer = Composer(merge_spec(genesis), Rules.of(genesis), lambda sha: files[sha].read_bytes())
    commits = [b.commit for b in bundles]
    composer.update(commits)
    return Source(
        "bundle",
        paths[0],
        composer.composite,
        base_fingerprint(genesis),
        tasks_of(commits),
        composer.digest,
        notes=(f"{len(paths)} commit(s) of network {genesis.name!r} folded in the order given",),
    )


def read_head(genesis: Genesis, head: Head, path: Path, notes: Sequence[str] = ()) -> Source:
    """The composite of ``head``'s main chain, each adapter admitted by the validity function."""
    composer = head.compose(genesis)
    return Source(
        "home",
        path,
        composer.composite,
        base_fingerprint(genesis),
        tasks_of(head.commits),
        composer.digest,
        len(head.commits),
        tuple(notes),
    )


def stored_head(
    genesis: Genesis, records: Sequence[Record], files: Mapping[bytes, Path]
) -> tuple[Head, int]:
    """The main chain of ``records`` (what a store holds as valid: commits, roster updates,
    revocations) with ``files`` (sha256 -> blob file), and how many orphans follow it.
    Raises ``StoreError`` when a blob of a main-chain commit is not held."""
    order = forge_order(genesis, records)
    commits = {r.id: r for r in records if isinstance(r, Commit)}
    main = tuple(commits[cid] for cid in order.main)
    for commit in main:
        lost = [ref.sha256.hex()[:12] for ref in commit.blobs.values() if ref.sha256 not in files]
        if lost:
            raise StoreError(
                f"the store lacks blob(s) {lost} of commit {commit.id.hex()[:12]} "
                f"({commit.task!r}): start the node so that it fetches them again"
            )
    return Head(order.tip, main, dict(files)), len(order.orphans)


# -- which task a data set is scored on -----------------------------------------------------


def choose_task(
    tasks: Sequence[Task],
    *,
    name: str | None,
    classes: Sequence[str] | None,
    labels: Collection[str] | None,
    default_name: str,
) -> Task:
    """The task (and its classes, in label order) one data set is scored on.

    ``name`` (``--task``) picks that task of the composite; ``classes`` (``--classes``)
    override a task's classes, or name the classes of a source that names no task. Otherwise
    the composite's task whose classes hold every one of ``labels`` (an exact match first) is
    taken; with no labels (inputs to predict) only a composite's one task. Anything ambiguous
    is a ``UsageError`` that lists the tasks."""
    given = tuple(classes) if classes else None
    if name is not None:
        known = {t.name: t for t in tasks}
        if tasks and name not in known:
            raise UsageError(f"the composite serves no task {name!r}; it serves {_listed(tasks)}")
        task = known.get(name, Task(name, ()))
    elif given is not None:
        same = [t for t in tasks if set(t.classes) == set(given)]
        task = same[0] if len(same) == 1 else Task(default_name, given)
    elif tasks:
        task = _matching(tasks, labels)
    else:
        raise UsageError("this source names no task and no classes: pass --classes C1 C2 ...")
    task = Task(task.name, given or task.classes)
    if not task.classes:
        raise UsageError(f"no classes known for task {task.name!r}: pass --classes C1 C2 ...")
    return task


def _matching(tasks: Sequence[Task], labels: Collection[str] | None) -> Task:
    if labels is None:
        if len(tasks) == 1:
            return tasks[0]
        raise UsageError(f"the composite serves {_listed(tasks)}: pass --task NAME")
    held = [t for t in tasks if set(labels) <= set(t.classes)]
    exact = [t for t in held if set(labels) == set(t.classes)]
    for found in (exact, held):
        if len(found) == 1:
            return found[0]
    why = "no task has" if not held else "several tasks have"
    raise UsageError(
        f"{why} every label of the data ({sorted(labels)}) among its classes; the composite "
        f"serves {_listed(tasks)}: pass --task NAME (or --classes)"
    )


def _listed(tasks: Sequence[Task]) -> str:
    return "; ".join(f"{t.name!r} ({', '.join(t.classes)})" for t in tasks)
