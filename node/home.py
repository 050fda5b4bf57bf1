"""An institution's home directory: identity, config, genesis, store.

Layout::

    HOME/identity.pem     Ed25519 key, mode 0600 (passphrase from $MEDFORGE_PASSPHRASE)
    HOME/config.toml      name, listen address, bootstrap peers, control socket
    HOME/genesis.cbor     the network this institution belongs to (after `network join`)
    HOME/seq              the next commit sequence number (never reused: reuse = equivocation)
    HOME/store/           content-addressed blobs + SQLite index (node.store)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.identity import Identity
from crypto.records import Genesis, decode_record

PASSPHRASE_ENV = "MEDFORGE_PASSPHRASE"
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


class HomeError(Exception):
    """A home directory that is missing, incomplete or already initialised."""


@dataclass
class Config:
    name: str
    listen: str = DEFAULT_LISTEN
    bootstrap: list[str] = field(default_factory=list)
    metrics_port: int | None = None
    dht: bool = False  # also run a Kademlia DHT (py-libp2p's; discovery beyond bootstrap)

    def to_toml(self) -> str:
        lines = [f"name = {_toml_str(self.name)}", f"listen = {_toml_str(self.listen)}"]
        lines.append("bootstrap = [" + ", ".join(_toml_str(b) for b in self.bootstrap) + "]")
        if self.metrics_port is not None:
            lines.append(f"metrics_port = {self.metrics_port}")
        if self.dht:
            lines.append("dht = true")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Config:
        raw: dict[str, Any] = tomllib.loads(text)
        return cls(
            name=str(raw["name"]),
            listen=str(raw.get("listen", DEFAULT_LISTEN)),
            bootstrap=[str(b) for b in raw.get("bootstrap", [])],
            metrics_port=raw.get("metrics_port"),
            dht=bool(raw.get("dht", False)),
        )


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
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        Identity.generate().save(home.identity_path, _passphrase())
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
        """Reserve the next commit sequence number, durably, before it is used."""
        seq_path = self.path / "seq"
        seq = int(seq_path.read_text()) if seq_path.exists() else 0
        _atomic_write(seq_path, f"{seq + 1}\n".encode())
        return seq


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
