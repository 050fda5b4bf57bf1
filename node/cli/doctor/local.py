"""The doctor's checks of this machine: the home's files, its store, the disk, the node."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tomllib
from collections.abc import Iterator
from typing import Any

from crypto.errors import CryptoError
from node.cli.doctor.report import CONTROL_TIMEOUT, Check, Facts
from node.errors import ControlError, NodeError, NodeNotRunning
from node.shell.control import call
from node.shell.home import PASSPHRASE_ENV, Config, Home
from node.shell.store_check import check_store
from node.shell.store_layout import INDEX_FILE, STORE_DIR

MIN_FREE = 1 << 30  # below this blobs and checkpoints soon fail to write: fail
LOW_FREE = 5 << 30  # below this, or LOW_FREE_SHARE of the filesystem: warn
LOW_FREE_SHARE = 0.05


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _not_mine(what: str, st: os.stat_result) -> Check | None:
    if st.st_uid == os.geteuid():
        return None
    owner = _name(st.st_uid)
    return Check(
        what,
        "fail",
        f"owned by {owner}, not by {_name(os.geteuid())} who runs this check",
        f"run doctor as the user the node runs as (sudo -u {owner} ...), or chown -R the home "
        "to that user",
    )


def home_dir(f: Facts) -> Iterator[Check]:
    st = f.home.path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if (wrong := _not_mine("home", st)) is not None:
        yield wrong
    elif mode & 0o077:
        yield Check(
            "home",
            "warn",
            f"{f.home.path} is mode {mode:04o}: other users can reach the control socket",
            f"chmod 700 {f.home.path}",
        )
    else:
        yield Check("home", "ok", f"{f.home.path}, mode {mode:04o}, owner {_name(st.st_uid)}")


def identity(f: Facts) -> Iterator[Check]:
    path = f.home.identity_path
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if (wrong := _not_mine("identity", st)) is not None:
        yield wrong
        return
    if mode & 0o077:
        yield Check(
            "identity",
            "fail",
            f"{path.name} is mode {mode:04o}: other users may read the private key",
            f"chmod 600 {path}",
        )
        return
    try:
        f.identity = f.home.identity()
    except CryptoError as exc:
        yield Check(
            "identity",
            "fail",
            str(exc),
            f"export ${PASSPHRASE_ENV} as the node gets it (systemd: its EnvironmentFile)",
        )
        return
    at_rest = "encrypted" if os.environ.get(PASSPHRASE_ENV) else "not encrypted"
    peer = f.identity.public.peer_id()
    yield Check("identity", "ok", f"{path.name} mode {mode:04o} ({at_rest}), peer id {peer}")


def config(f: Facts) -> Iterator[Check]:
    path = f.home.config_path
    try:
        text = path.read_text()
        f.raw = tomllib.loads(text)
        f.config = Config.from_toml(text)
    except FileNotFoundError:
        yield Check("config", "fail", f"{path} is missing", 'write it: name = "<institution>"')
    except (tomllib.TOMLDecodeError, NodeError, KeyError, TypeError, ValueError) as exc:
        what = f"no key {exc}" if isinstance(exc, KeyError) else str(exc)
        yield Check("config", "fail", f"{path.name}: {what}", f"fix {path}")
    else:
        yield Check("config", "ok", f"{path.name}: name {f.config.name!r}")


def store(f: Facts) -> Iterator[Check]:
    """``medforge store check`` without --repair: read-only, safe beside a running node."""
    if not (f.home.path / STORE_DIR / INDEX_FILE).is_file():
        yield Check("store", "ok", "none yet (the node creates it when it first starts)")
        return
    repair = f"medforge store check --home {f.home.path}"
    try:
        report = check_store(f.home.path)
    except NodeError as exc:
        yield Check(
            "store", "fail", f"{type(exc).__name__}: {exc}", f"{repair} --repair (node stopped)"
        )
        return
    mode = "beside the running node" if report.live else "no node running"
    size = f"{report.blobs_checked} blobs ({report.bytes_checked >> 20} MiB) rehashed ({mode})"
    if report.clean:
        fetch = f", {len(report.unheld)} blobs still to fetch" if report.unheld else ""
        yield Check("store", "ok", f"{size}: clean{fetch}")
    else:
        yield Check(
            "store",
            "fail",
            f"{size}: {report.problems} problems",
            f"{repair} lists them; with --repair (node stopped) it fixes them",
        )


def disk(f: Facts) -> Iterator[Check]:
    usage = shutil.disk_usage(f.home.path)
    free = f"{usage.free / (1 << 30):.1f} GiB free of {usage.total / (1 << 30):.1f} GiB"
    fix = "free space on the home's filesystem, or move the home to a larger one"
    if usage.free < MIN_FREE:
        yield Check("disk", "fail", f"{free}: blobs and checkpoints will fail to write", fix)
    elif usage.free < LOW_FREE or usage.free < LOW_FREE_SHARE * usage.total:
        yield Check("disk", "warn", f"{free}: low", fix)
    else:
        yield Check("disk", "ok", free)


def ask_node(home: Home) -> tuple[dict[str, Any] | None, ControlError | None]:
    """The running node's status answer, or why there is none."""
    try:
        answer = call(home.control_path, "status", timeout=CONTROL_TIMEOUT)
    except ControlError as exc:
        return None, exc
    except OSError as exc:  # a socket that accepts and never answers, one we may not open
        return None, NodeNotRunning(f"{home.control_path}: {exc}")
    return (answer if isinstance(answer, dict) else {}), None


def node(f: Facts) -> Iterator[Check]:
    if f.node is not None:
        s = f.node
        own = f.identity.public.peer_id() if f.identity else s.get("peer_id")
        if s.get("peer_id") != own:
            yield Check("node", "fail", f"the node answering is {s.get('peer_id')}, not {own}")
            return
        yield Check(
            "node",
            "ok",
            f"running for {s.get('uptime_s', 0):.0f} s: {s.get('peers_connected', 0)} peers "
            f"connected ({s.get('peers_live', 0)} live), forge item {s.get('forge_item', 0)}",
        )
    elif isinstance(f.node_error, NodeNotRunning):
        yield Check(
            "node",
            "warn",
            str(f.node_error),
            f"medforge node run --home {f.home.path} (or: systemctl start medforge)",
        )
    else:
        yield Check("node", "fail", f"control socket: {f.node_error}", "see the node's log")
