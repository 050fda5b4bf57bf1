"""Signed, content-addressed records: the only things the network replicates.

Envelope (canonical CBOR, see ``crypto.canonical``)::

    {"v": <the kind's schema version>, "kind": "commit" | "genesis" | "roster" | "revocation",
     "body": {...}, "sigs": [{"key": <32 bytes>, "sig": <64 bytes>}, ...]}

Schema versions are per kind (``VERSIONS``, the newest; ``READABLE``, every version a build
accepts): genesis and roster are version 1. A commit is version 1, or version 2 when it says how
its plugin was trained (``training``) or carries coefficients per module group
(``module_coeffs``); a version 1 commit keeps its bytes and id, so every commit signed before
stays valid. A revocation is version 2 (version 1 named its signer's key in the body, so two
members' revocations of one commit were two records that never combined; it is refused on decode).

Every signature covers ``encode({"domain": DOMAIN, "kind": kind, "body": body})``, from version 2
on ``encode({"domain": DOMAIN, "kind": kind, "v": v, "body": body})`` (version 1's bytes stay as
they were: its ids, network ids among them, must not change); the record id is the sha256 of
those same bytes. Signatures are *not* part of the id, so members who co-sign a roster update or
a revocation independently produce the same record, and their signatures combine by union.
The body of every record except the genesis names its network, so a signature made for one
network can never be replayed into another.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, TypeAlias

from crypto import canonical
from crypto.errors import (
    BadSignature,
    NonCanonicalEncoding,
    SchemaError,
    UnknownSchemaVersion,
    WrongNetwork,
)
from crypto.identity import Identity, PublicKey

SCHEMA_VERSION = 1  # genesis, commit, roster; see VERSIONS for every kind
DOMAIN = "medforge-record/1"
MAX_RECORD_BYTES = 256 * 1024
MAX_NAME = 200
MAX_CLASSES = 4096
MAX_SIGNATURES = 256
MAX_REASON = 1000
BLOB_KINDS = ("adapter_config", "adapter_model", "distilled")

Kind = Literal["genesis", "commit", "roster", "revocation"]


@dataclass(frozen=True)
class BlobRef:
    sha256: bytes
    size: int

    def to_wire(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Signature:
    key: PublicKey
    sig: bytes


def _signing_bytes(kind: str, version: int, body: Mapping[str, Any]) -> bytes:
    if version == 1:  # version 1 predates binding the version: its ids must not change
        return canonical.encode({"domain": DOMAIN, "kind": kind, "body": body})
    return canonical.encode({"domain": DOMAIN, "kind": kind, "v": version, "body": body})


@dataclass(frozen=True)
class _Signed(ABC):
    """Shared machinery: body <-> fields, id, signatures, envelope."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = SCHEMA_VERSION
    sigs: tuple[Signature, ...] = field(default=(), kw_only=True, compare=False)

    @abstractmethod
    def body(self) -> dict[str, Any]:
        """The signed content as plain values for the canonical encoding."""

    @functools.cached_property
    def id(self) -> bytes:
        # Cached: the order and the core ask for ids constantly, and a record is immutable.
        return canonical.sha256(self.signing_bytes())

    def version(self) -> int:
        """The schema version of this record's bytes (per kind; see ``READABLE``)."""
        return self.VERSION

    def signing_bytes(self) -> bytes:
        return _signing_bytes(self.KIND, self.version(), self.body())

    def encode(self) -> bytes:
        sigs = [{"key": s.key.raw, "sig": s.sig} for s in sorted(self.sigs, key=lambda s: s.key)]
        return canonical.encode(
            {"v": self.version(), "kind": self.KIND, "body": self.body(), "sigs": sigs}
        )

    def signed_by(self, identity: Identity) -> Any:
        """A copy with ``identity``'s signature added (idempotent)."""
        kept = tuple(s for s in self.sigs if s.key != identity.public)
        mine = Signature(identity.public, identity.sign(self.signing_bytes()))
        return replace(self, sigs=kept + (mine,))

    def signers(self) -> frozenset[PublicKey]:
        return frozenset(s.key for s in self.sigs)

    def combined(self, other: _Signed) -> Any:
        """Union of two records' signatures over the same body."""
        if other.id != self.id:
            raise SchemaError("cannot combine signatures of two different records")
        merged = {s.key: s for s in self.sigs} | {s.key: s for s in other.sigs}
        return replace(self, sigs=tuple(merged.values()))


@dataclass(frozen=True)
class Member:
    name: str
    key: PublicKey


@dataclass(frozen=True)
class Genesis(_Signed):
    """The founding document; its id is the network id."""

    name: str
    members: tuple[Member, ...]
    threshold: int
    spec: Mapping[str, Any]
    nonce: str
    KIND: ClassVar[str] = "genesis"

    @property
    def network_id(self) -> bytes:
        return self.id

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": [{"name": m.name, "key": m.key.raw} for m in self.members],
            "threshold": self.threshold,
            "spec": dict(self.spec),
            "nonce": self.nonce,
        }


@dataclass(frozen=True)
class Commit(_Signed):
    """One institution's plugin, merged onto forge item ``parent`` with ``coeffs``.

    Version 2 fields (``None`` in a version 1 commit): ``training`` says how the plugin was
    trained (``{"method": "independent" | "continual", "replay": n, ...}``: names to text or
    numbers, informational); ``module_coeffs`` maps module groups (named by the merge spec) to
    their own coefficient pair, ``coeffs`` applying to every module of no named group."""

    network: bytes
    author: PublicKey
    seq: int
    task: str
    classes: tuple[str, ...]
    base: str
    blobs: Mapping[str, BlobRef]
    parent: bytes
    coeffs: tuple[float, float]
    objective: Mapping[str, float]
    supersedes: bytes | None = None
    training: Mapping[str, str | int | float] | None = None
    module_coeffs: Mapping[str, tuple[float, float]] | None = None
    KIND: ClassVar[str] = "commit"
    VERSION: ClassVar[int] = 2  # the newest; version() says which one these bytes are

    @classmethod
    def create(cls, identity: Identity, **fields: Any) -> Commit:
        commit = cls(author=identity.public, **fields)
        _check_commit(commit)
        signed: Commit = commit.signed_by(identity)
        return signed

    def body(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "author": self.author.raw,
            "seq": self.seq,
            "task": self.task,
            "classes": list(self.classes),
            "base": self.base,
            "blobs": {k: v.to_wire() for k, v in self.blobs.items()},
            "parent": self.parent,
            "coeffs": list(self.coeffs),
            "objective": dict(self.objective),
            "supersedes": self.supersedes,
        } | self._v2_body()

    def version(self) -> int:
        return 1 if self.training is None and self.module_coeffs is None else 2

    def _v2_body(self) -> dict[str, Any]:
        if self.version() == 1:
            return {}  # a version 1 body has exactly its original keys: its id must not change
        coeffs = self.module_coeffs
        return {
            "training": dict(self.training) if self.training is not None else None,
            "module_coeffs": {k: list(v) for k, v in coeffs.items()} if coeffs else None,
        }


RosterOp = Literal["add", "remove", "rotate", "threshold"]


@dataclass(frozen=True)
class RosterUpdate(_Signed):
    """A change to the roster at ``epoch``; counts when the members of epoch-1 reach the
    threshold. ``keep_through_seq``: commits of a removed/rotated key up to this sequence
    number stay valid (history is not pulled out from under others); -1 keeps none."""

    network: bytes
    epoch: int
    op: RosterOp
    name: str
    key: PublicKey
    new_key: PublicKey | None = None
    keep_through_seq: int = -1
    threshold: int = 0
    KIND: ClassVar[str] = "roster"

    def body(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "epoch": self.epoch,
            "op": self.op,
            "name": self.name,
            "key": self.key.raw,
            "new_key": self.new_key.raw if self.new_key else None,
            "keep_through_seq": self.keep_through_seq,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Revocation(_Signed):
    """Revokes one commit (``commit``), or a key (``subject``) from sequence number
    ``from_seq`` on. The body names only *what* is revoked and why; *who* revokes is in the
    signatures alone, so members who sign the same revocation independently make one record
    (one id) whose signatures combine. It counts (``crypto.roster``) when signed by the
    commit's author, or by the key itself for a key revocation, or by the threshold of members.

    Schema version 2. Build one with ``of_commit`` or ``of_key``."""

    network: bytes
    commit: bytes | None = None
    subject: PublicKey | None = None
    from_seq: int | None = None
    reason: str = ""
    KIND: ClassVar[str] = "revocation"
    VERSION: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _check_revocation(self)

    @classmethod
    def of_commit(cls, network: bytes, commit: bytes, reason: str = "") -> Revocation:
        return cls(network, commit=commit, reason=reason)

    @classmethod
    def of_key(
        cls, network: bytes, subject: PublicKey, from_seq: int, reason: str = ""
    ) -> Revocation:
        return cls(network, subject=subject, from_seq=from_seq, reason=reason)

    def body(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "commit": self.commit,
            "subject": self.subject.raw if self.subject is not None else None,
            "from_seq": self.from_seq,
            "reason": self.reason,
        }


def _check_revocation(rev: Revocation) -> None:
    if not isinstance(rev.network, bytes) or len(rev.network) != 32:
        raise SchemaError("revocation.network must be a 32-byte hash")
    if rev.commit is not None:
        if not isinstance(rev.commit, bytes) or len(rev.commit) != 32:
            raise SchemaError("revocation.commit must be a 32-byte commit id")
        if rev.subject is not None or rev.from_seq is not None:
            raise SchemaError("a revocation names a commit, or a key and from_seq, not both")
    elif rev.subject is None or rev.from_seq is None:
        raise SchemaError("a revocation names a commit, or a key (subject) and from_seq")
    elif not isinstance(rev.subject, PublicKey):
        raise SchemaError("revocation.subject must be a public key")
    elif isinstance(rev.from_seq, bool) or not isinstance(rev.from_seq, int) or rev.from_seq < 0:
        raise SchemaError("revocation.from_seq must be an integer >= 0")
    if not isinstance(rev.reason, str) or len(rev.reason) > MAX_REASON:
        raise SchemaError(f"revocation.reason must be text of at most {MAX_REASON} characters")


Record: TypeAlias = Genesis | Commit | RosterUpdate | Revocation


# --- decoding: every check is a function of the bytes alone ------------------------------


def decode_record(
    data: bytes, *, network: bytes | None = None, max_size: int = MAX_RECORD_BYTES
) -> Record:
    """Decode and check encoding, schema and every signature.

    Roster membership is not checked here (it depends on the record set): see
    ``crypto.roster``. ``network``: refuse records made for another network.
    """
    envelope = canonical.decode(data, max_size=max_size)
    kind, body, sigs = _envelope(envelope)
    record: Record = replace(_PARSERS[kind](_Body(kind, body)), sigs=sigs)
    if record.version() != envelope["v"]:
        raise SchemaError(f"{kind}: a version {envelope['v']} envelope around a different body")
    if network is not None and not isinstance(record, Genesis) and record.network != network:
        raise WrongNetwork(f"{kind} {record.id.hex()[:12]} belongs to another network")
    _check_signatures(record)
    if record.encode() != bytes(data):
        # Signatures are stored sorted by key; anything else is a second encoding.
        raise NonCanonicalEncoding("signatures are not sorted by key")
    return record


def _envelope(envelope: Any) -> tuple[str, dict[str, Any], tuple[Signature, ...]]:
    if not isinstance(envelope, dict) or set(envelope) != {"v", "kind", "body", "sigs"}:
        raise SchemaError("a record is a map of exactly v, kind, body, sigs")
    kind, version = envelope["kind"], envelope["v"]
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise SchemaError(f"unknown record kind {kind!r}")
    if type(version) is not int or version not in READABLE[kind]:
        if kind == "revocation" and version == 1:
            raise UnknownSchemaVersion(
                "revocation schema version 1 (bound to its signer's key) is retired: "
                "re-issue it with `medforge revoke` (version 2)"
            )
        raise UnknownSchemaVersion(
            f"{kind} schema version {version!r} is not supported (this build reads "
            f"versions {list(READABLE[kind])})"
        )
    if not isinstance(envelope["body"], dict):
        raise SchemaError("body must be a map")
    return kind, envelope["body"], _signatures(envelope["sigs"])


def _signatures(raw: Any) -> tuple[Signature, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_SIGNATURES:
        raise SchemaError("sigs must be a list of at most 256 signatures")
    sigs = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"key", "sig"}:
            raise SchemaError("a signature is a map of key and sig")
        if not isinstance(item["sig"], bytes) or len(item["sig"]) != 64:
            raise SchemaError("an Ed25519 signature has 64 bytes")
        sigs.append(Signature(_key(item["key"], "sigs.key"), item["sig"]))
    if len({s.key for s in sigs}) != len(sigs):
        raise SchemaError("two signatures by the same key")
    return tuple(sigs)


def _check_signatures(record: Record) -> None:
    if not record.sigs and not isinstance(record, Genesis):
        raise BadSignature(f"{record.KIND} {record.id.hex()[:12]} is not signed")
    message = record.signing_bytes()
    for sig in record.sigs:
        sig.key.verify(sig.sig, message)
    if isinstance(record, Commit) and record.signers() != {record.author}:
        raise BadSignature("a commit is signed by its author and nobody else")


def _key(value: Any, where: str) -> PublicKey:
    if not isinstance(value, bytes) or len(value) != 32:
        raise SchemaError(f"{where}: a public key is 32 bytes")
    return PublicKey(value)


class _Body:
    """Typed field access that turns a wrong shape into a SchemaError naming the field."""

    def __init__(self, kind: str, body: dict[str, Any]) -> None:
        self.kind, self.body = kind, body

    def exactly(self, names: Iterable[str]) -> None:
        names = set(names)
        if set(self.body) != set(names):
            missing, extra = set(names) - set(self.body), set(self.body) - set(names)
            raise SchemaError(f"{self.kind}: missing {sorted(missing)}, unknown {sorted(extra)}")

    def get(self, name: str, typ: type | tuple[type, ...], *, optional: bool = False) -> Any:
        value = self.body[name]
        if value is None and optional:
            return None
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise SchemaError(f"{self.kind}.{name} has the wrong type")
        return value

    def name(self, name: str) -> str:
        value: str = self.get(name, str)
        if not value or len(value) > MAX_NAME:
            raise SchemaError(f"{self.kind}.{name} must be 1..{MAX_NAME} characters")
        return value

    def nat(self, name: str, *, low: int = 0) -> int:
        value: int = self.get(name, int)
        if value < low:
            raise SchemaError(f"{self.kind}.{name} must be >= {low}")
        return value

    def hash(self, name: str, *, optional: bool = False) -> bytes | None:
        value = self.get(name, bytes, optional=optional)
        if value is not None and len(value) != 32:
            raise SchemaError(f"{self.kind}.{name} must be a 32-byte hash")
        return value  # type: ignore[no-any-return]

    def key(self, name: str, *, optional: bool = False) -> PublicKey | None:
        value = self.body[name]
        if value is None and optional:
            return None
        return _key(value, f"{self.kind}.{name}")


def _parse_genesis(b: _Body) -> Genesis:
    b.exactly(("name", "members", "threshold", "spec", "nonce"))
    members = tuple(_member(m) for m in b.get("members", list))
    if not members or len({m.key for m in members}) != len(members):
        raise SchemaError("genesis needs at least one member and distinct keys")
    genesis = Genesis(
        name=b.name("name"),
        members=members,
        threshold=b.nat("threshold", low=1),
        spec=b.get("spec", dict),
        nonce=b.get("nonce", str),
    )
    if genesis.threshold > len(members):
        raise SchemaError("genesis threshold exceeds the number of members")
    return genesis


def _member(raw: Any) -> Member:
    if not isinstance(raw, dict) or set(raw) != {"name", "key"}:
        raise SchemaError("a member is a map of name and key")
    body = _Body("member", raw)
    return Member(body.name("name"), _key(raw["key"], "member.key"))


_COMMIT_V2 = {"training", "module_coeffs"}


def _parse_commit(b: _Body) -> Commit:
    names = {f.name for f in fields(Commit)} - {"sigs"}
    b.exactly(names if _COMMIT_V2 & set(b.body) else names - _COMMIT_V2)
    v2 = _COMMIT_V2 <= set(b.body)
    commit = Commit(
        network=b.hash("network") or b"",
        author=_key(b.body["author"], "commit.author"),
        seq=b.nat("seq"),
        task=b.name("task"),
        classes=tuple(b.get("classes", list)),
        base=b.name("base"),
        blobs=_blobs(b.get("blobs", dict)),
        parent=b.hash("parent") or b"",
        coeffs=tuple(b.get("coeffs", list)),
        objective=b.get("objective", dict),
        supersedes=b.hash("supersedes", optional=True),
        training=b.get("training", dict, optional=True) if v2 else None,
        module_coeffs=_module_coeffs(b.get("module_coeffs", dict, optional=True)) if v2 else None,
    )
    _check_commit(commit)
    return commit


def _module_coeffs(raw: dict[str, Any] | None) -> dict[str, tuple[float, float]] | None:
    if raw is None:
        return None
    out = {}
    for name, pair in raw.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise SchemaError(f"module_coeffs[{name!r}] must be a pair of floats")
        out[name] = (pair[0], pair[1])
    return out


def _check_commit(commit: Commit) -> None:
    for name in (commit.task, commit.base):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise SchemaError(f"task and base must be 1..{MAX_NAME} characters")
    if commit.seq < 0 or len(commit.parent) != 32 or len(commit.network) != 32:
        raise SchemaError("seq must be >= 0 and network and parent 32-byte hashes")
    classes = commit.classes
    if not 1 <= len(classes) <= MAX_CLASSES or len(set(classes)) != len(classes):
        raise SchemaError(f"commit needs 1..{MAX_CLASSES} distinct class names")
    if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in classes):
        raise SchemaError(f"class names are 1..{MAX_NAME} characters of text")
    coeffs = commit.coeffs
    if len(coeffs) != 2 or not all(isinstance(c, float) and math.isfinite(c) for c in coeffs):
        raise SchemaError("coeffs must be two finite floats")
    objective = commit.objective
    if len(objective) > 32 or not all(
        isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)
        for v in objective.values()
    ):
        raise SchemaError("objective must map at most 32 names to finite numbers")
    if set(commit.blobs) != set(BLOB_KINDS):
        raise SchemaError(f"commit blobs must be exactly {list(BLOB_KINDS)}")
    _check_v2(commit)


MAX_TRAINING_KEYS = 16
MAX_MODULE_GROUPS = 4096


def _check_v2(commit: Commit) -> None:
    training = commit.training
    if training is not None and (
        len(training) > MAX_TRAINING_KEYS
        or not all(isinstance(k, str) and 0 < len(k) <= MAX_NAME for k in training)
        or not all(_plain_value(v) for v in training.values())
    ):
        raise SchemaError(
            f"training must map at most {MAX_TRAINING_KEYS} names to text "
            f"(<= {MAX_NAME} characters) or finite numbers"
        )
    groups = commit.module_coeffs
    if groups is not None:
        if not 0 < len(groups) <= MAX_MODULE_GROUPS:
            raise SchemaError(f"module_coeffs must name 1..{MAX_MODULE_GROUPS} module groups")
        for name, pair in groups.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                raise SchemaError(f"module group names are 1..{MAX_NAME} characters")
            if len(pair) != 2 or not all(isinstance(c, float) and math.isfinite(c) for c in pair):
                raise SchemaError(f"module_coeffs[{name!r}] must be two finite floats")


def _plain_value(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_NAME
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) and math.isfinite(value)


def _blobs(raw: dict[str, Any]) -> dict[str, BlobRef]:
    refs = {}
    for name, value in raw.items():
        if not isinstance(value, dict) or set(value) != {"sha256", "size"}:
            raise SchemaError(f"blob {name!r} must be a map of sha256 and size")
        b = _Body(f"blobs.{name}", value)
        refs[name] = BlobRef(b.hash("sha256") or b"", b.nat("size"))
    return refs


def _parse_roster(b: _Body) -> RosterUpdate:
    b.exactly({f.name for f in fields(RosterUpdate)} - {"sigs"})
    op = b.get("op", str)
    if op not in ("add", "remove", "rotate", "threshold"):
        raise SchemaError(f"unknown roster op {op!r}")
    update = RosterUpdate(
        network=b.hash("network") or b"",
        epoch=b.nat("epoch", low=1),
        op=op,
        name=b.name("name"),
        key=_key(b.body["key"], "roster.key"),
        new_key=b.key("new_key", optional=True),
        keep_through_seq=b.nat("keep_through_seq", low=-1),
        threshold=b.nat("threshold"),
    )
    if (update.op == "rotate") != (update.new_key is not None):
        raise SchemaError("new_key is required for rotate and only for rotate")
    if update.op == "threshold" and update.threshold < 1:
        raise SchemaError("a threshold update needs threshold >= 1")
    return update


def _parse_revocation(b: _Body) -> Revocation:
    b.exactly(("network", "commit", "subject", "from_seq", "reason"))
    return Revocation(  # the shape rules are Revocation's own (_check_revocation)
        network=b.hash("network") or b"",
        commit=b.hash("commit", optional=True),
        subject=b.key("subject", optional=True),
        from_seq=b.get("from_seq", int, optional=True),
        reason=b.get("reason", str),
    )


_PARSERS: dict[str, Any] = {
    "genesis": _parse_genesis,
    "commit": _parse_commit,
    "roster": _parse_roster,
    "revocation": _parse_revocation,
}
VERSIONS: dict[str, int] = {
    cls.KIND: cls.VERSION for cls in (Genesis, Commit, RosterUpdate, Revocation)
}
# Every version a build reads: commit version 1 stays readable (its records are signed history).
READABLE: dict[str, tuple[int, ...]] = {kind: (v,) for kind, v in VERSIONS.items()} | {
    "commit": (1, 2)
}
