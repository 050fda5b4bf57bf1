"""An institution's home directory: identity, config, genesis, store.

Layout::

    HOME/identity.pem     Ed25519 key, mode 0600 (passphrase from $MEDFORGE_PASSPHRASE)
    HOME/config.toml      name, listen address, bootstrap peers, control socket, checkpoints,
                          the device the node's own searches (orphan rebases) run on
    HOME/genesis.cbor     the network this institution belongs to (after `network join`)
    HOME/seq              the next commit sequence number, as text (reuse = equivocation)
    HOME/seq.lock         flock'ed by every ``next_seq`` call, in every process and thread
    HOME/store/           content-addressed blobs + SQLite index (node.shell.store), and the
                          composer's checkpoints (node.shell.checkpoint_files)
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.identity import Identity, WeakPassphrase, check_passphrase
from crypto.records import Genesis, decode_record
from node.errors import HomeError

PASSPHRASE_ENV = "MEDFORGE_PASSPHRASE"
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
SEQ_FILE = "seq"
SEQ_LOCK = "seq.lock"
DEFAULT_CHECKPOINT_EVERY = 8
DEFAULT_DEVICE = "auto"
DEFAULT_RELAY_MAX_BYTES = 1 << 30  # per relayed connection: blobs may flow through a relay
DEFAULT_RELAY_MAX_SECONDS = 3600  # lifetime of one relayed connection
# merge.pipeline.device's spec syntax (node/shell may not import merge): availability is
# checked where the device is used, when the search loads the base
_DEVICE_SPEC = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_TMP_PREFIX = ".tmp-"  # _atomic_write's temporaries: HOME/.tmp-<name>-<random>


@dataclass
class Config:
    name: str
    listen: str = DEFAULT_LISTEN
    bootstrap: list[str] = field(default_factory=list)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # where the metrics endpoint binds; loopback by default
    # addresses advertised before the listen ones: a public or port-forwarded address
    announce: list[str] = field(default_factory=list)
    # relays to hold a slot at, for a member that cannot be dialled (behind NAT)
    relays: list[str] = field(default_factory=list)
    # relay for members behind NAT (a member with a public address), within these limits
    relay_service: bool = False
    relay_max_bytes: int = DEFAULT_RELAY_MAX_BYTES
    relay_max_seconds: int = DEFAULT_RELAY_MAX_SECONDS
    hole_punching: bool = True  # DCUtR: upgrade a relayed connection to a direct one
    # peer routing among members (py-libp2p's Kademlia DHT): a member needs one address
    dht: bool = True
    strangers: str = "read"  # peers the roster never named: "read" (pull only) or "none"
    # commits between the composer's checkpoints (node.forge.checkpoints); local, not replicated
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    # where the node's rebase searches run: auto (CUDA, else MPS, else CPU), cpu, cuda[:N], mps
    device: str = DEFAULT_DEVICE

    def to_toml(self) -> str:
        lines = [f"name = {_toml_str(self.name)}", f"listen = {_toml_str(self.listen)}"]
        lines.append("bootstrap = [" + ", ".join(_toml_str(b) for b in self.bootstrap) + "]")
        if self.metrics_port is not None:
            lines.append(f"metrics_port = {self.metrics_port}")
        if self.metrics_host != "127.0.0.1":
            lines.append(f"metrics_host = {_toml_str(self.metrics_host)}")
        if self.announce:
            lines.append("announce = [" + ", ".join(_toml_str(a) for a in self.announce) + "]")
        if self.relays:
            lines.append("relays = [" + ", ".join(_toml_str(a) for a in self.relays) + "]")
        if self.relay_service:
            lines.append("relay_service = true")
        if self.relay_max_bytes != DEFAULT_RELAY_MAX_BYTES:
            lines.append(f"relay_max_bytes = {self.relay_max_bytes}")
        if self.relay_max_seconds != DEFAULT_RELAY_MAX_SECONDS:
            lines.append(f"relay_max_seconds = {self.relay_max_seconds}")
        if not self.hole_punching:
            lines.append("hole_punching = false")
        if not self.dht:
            lines.append("dht = false")
        if self.strangers != "read":
            lines.append(f"strangers = {_toml_str(self.strangers)}")
        if self.checkpoint_every != DEFAULT_CHECKPOINT_EVERY:
            lines.append(f"checkpoint_every = {self.checkpoint_every}")
        if self.device != DEFAULT_DEVICE:
            lines.append(f"device = {_toml_str(self.device)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Config:
        raw: dict[str, Any] = tomllib.loads(text)
        return cls(
            name=str(raw["name"]),
            listen=str(raw.get("listen", DEFAULT_LISTEN)),
            bootstrap=[_dialable(str(b)) for b in raw.get("bootstrap", [])],
            metrics_port=raw.get("metrics_port"),
            metrics_host=str(raw.get("metrics_host", "127.0.0.1")),
            announce=[_listenable("announce", str(a)) for a in raw.get("announce", [])],
            relays=[_dialable(str(a), "relays") for a in raw.get("relays", [])],
            relay_service=_bool("relay_service", raw.get("relay_service", False)),
            relay_max_bytes=_positive(
                "relay_max_bytes", raw.get("relay_max_bytes", DEFAULT_RELAY_MAX_BYTES)
            ),
            relay_max_seconds=_positive(
                "relay_max_seconds", raw.get("relay_max_seconds", DEFAULT_RELAY_MAX_SECONDS)
            ),
            hole_punching=_bool("hole_punching", raw.get("hole_punching", True)),
            dht=_bool("dht", raw.get("dht", True)),
            strangers=_one_of("strangers", raw.get("strangers", "read"), ("read", "none")),
            checkpoint_every=_positive(
                "checkpoint_every", raw.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
            ),
            device=_device(raw.get("device", DEFAULT_DEVICE)),
        )


def _dialable(addr: str, key: str = "bootstrap") -> str:
    """A bootstrap (relay) address must name the peer it dials (Noise authenticates that
    key)."""
    if "/p2p/" not in addr:
        raise HomeError(
            f"config.toml: {key} address {addr!r} lacks /p2p/<peer id> "
            "(the peer id is what `medforge id` prints)"
        )
    return addr


def _one_of(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise HomeError(f"config.toml: {key} must be one of {allowed}, got {value!r}")
    return str(value)


def _device(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE_SPEC.fullmatch(value):
        raise HomeError(
            f"config.toml: device must be auto, cpu, cuda, cuda:N or mps, got {value!r}"
        )
    return value


def _positive(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HomeError(f"config.toml: {key} must be an integer >= 1, got {value!r}")
    return value


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def identity_path(self) -> Path:
        return self.path / "identity.pem"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def genesis_path(self) -> Path:
        return self.path / "genesis.cbor"

    @property
    def store_path(self) -> Path:
        return self.path / "store"

    @property
    def control_path(self) -> Path:
        return self.path / "control.sock"

    @classmethod
    def init(cls, path: Path, name: str) -> Home:
        home = cls(path)
        if home.identity_path.exists():
            raise HomeError(f"{path} already holds an identity; refusing to overwrite it")
        passphrase = _passphrase()
        try:  # before anything is created: a refused passphrase leaves no half-made home
            check_passphrase(passphrase)
        except WeakPassphrase as exc:
            raise WeakPassphrase(f"${PASSPHRASE_ENV}: {exc}") from exc
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        Identity.generate().save(home.identity_path, passphrase)
        home.save_config(Config(name=name))
        return home

    def require(self) -> Home:
        if not self.identity_path.exists():
            raise HomeError(f"{self.path} is not a medforge home: run `medforge init` first")
        return self

    def identity(self) -> Identity:
        return Identity.load(self.require().identity_path, _passphrase())

    def config(self) -> Config:
        return Config.from_toml(self.require().config_path.read_text())

    def save_config(self, config: Config) -> None:
        _atomic_write(self.config_path, config.to_toml().encode())

    def genesis(self) -> Genesis:
        if not self.genesis_path.exists():
            raise HomeError(f"{self.path} has joined no network: run `medforge network join`")
        record = decode_record(self.genesis_path.read_bytes())
        if not isinstance(record, Genesis):
            raise HomeError(f"{self.genesis_path} is not a genesis document")
        return record

    def join(self, genesis: Genesis) -> None:
        if self.genesis_path.exists() and self.genesis().network_id != genesis.network_id:
            raise HomeError(f"{self.path} already belongs to another network")
        _atomic_write(self.genesis_path, genesis.encode())

    def next_seq(self) -> int:
        """Reserve the next commit sequence number, durably, before it is used.

        The one allocator for every process and thread on this home (a node's rebase thread,
        ``medforge commit``, ...): an exclusive ``flock`` on ``HOME/seq.lock`` is held across
        read, increment and the durable write of ``HOME/seq``. The lock file is opened on every
        call, because a flock belongs to an open file description: two threads sharing one
        descriptor would not exclude each other. The new value is on disk (file fsynced,
        renamed over ``seq``, directory fsynced) before the number is returned, so a crash at
        any instant can skip a number but never hand one out twice.
        """
        seq_path = self.path / SEQ_FILE
        fd = os.open(self.path / SEQ_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close below, or by death
            _remove_stale_temporaries(self.path, SEQ_FILE)  # only a dead holder leaves them
            seq = _read_seq(seq_path)
            _atomic_write(seq_path, f"{seq + 1}\n".encode())
        finally:
            os.close(fd)
        return seq


def _read_seq(seq_path: Path) -> int:
    try:
        text = seq_path.read_text()
    except FileNotFoundError:
        return 0  # a fresh home
    try:
        seq = int(text.strip())
    except ValueError:
        seq = -1
    if seq < 0:
        # Never restart from 0: reusing a number signs an equivocation.
        raise HomeError(f"{seq_path} holds {text[:40]!r}, not a sequence number; fix it by hand")
    return seq


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: a temporary of its own (so concurrent writers
    never share one), fsynced, renamed over ``path``, then the directory fsynced."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Delete the temporaries a SIGKILLed writer of ``name`` left behind (call only while
    holding the lock every writer of ``name`` takes, so none of them is live)."""
    for stale in directory.glob(f"{_TMP_PREFIX}{name}-*"):
        stale.unlink(missing_ok=True)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise HomeError(f"config.toml: {key} must be true or false, got {value!r}")
    return value


def _listenable(key: str, value: str) -> str:
    """A multiaddr without ``/p2p/`` (our own address: the peer id is added by libp2p)."""
    if "/p2p/" in value:
        raise HomeError(f"config.toml: {key}: {value!r} names a peer id; give the address only")
    try:
        import multiaddr

        multiaddr.Multiaddr(value)
    except Exception as exc:  # noqa: BLE001 - whatever multiaddr rejects
        raise HomeError(f"config.toml: {key}: {value!r} is not a multiaddr ({exc})") from exc
    return value
