"""The doctor's checks of the network side of config.toml: the listen address, the metrics
port, and the bootstrap (and relay) peers."""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Iterator

from node.cli.doctor.report import CONTROL_TIMEOUT, Check, Facts
from node.shell import netcheck

_EXAMPLE_LISTEN = "/ip4/0.0.0.0/tcp/4001"


def _node_ports(f: Facts) -> set[int]:
    """The TCP ports the running node says it listens on."""
    ports = set()
    for addr in (f.node or {}).get("listen", ()):
        try:
            ports.add(netcheck.parse_addr(str(addr)).port)
        except netcheck.AddrError:
            continue
    return ports


def listen(f: Facts) -> Iterator[Check]:
    addr = str(f.raw.get("listen", f.config.listen if f.config else ""))
    if not addr:
        yield Check("listen", "skip", "config.toml did not parse")
        return
    try:
        here = netcheck.parse_addr(addr)
    except netcheck.AddrError as exc:
        yield Check("listen", "fail", str(exc), f'listen = "{_EXAMPLE_LISTEN}" in config.toml')
        return
    taken = netcheck.port_taken(addr)
    if taken is None:
        yield _shape(here)
    elif here.port in _node_ports(f):
        yield Check("listen", "ok", f"{addr}: held by this home's running node")
    else:
        yield Check(
            "listen",
            "fail",
            f"{taken}, by another process",
            f"stop it (`ss -ltnp 'sport = :{here.port}'` names it) or choose another port",
        )


def _shape(here: netcheck.Endpoint) -> Check:
    if here.port == 0:
        return Check(
            "listen",
            "warn",
            f"{here.addr}: a new random port at every start, so no peer can keep this node "
            "in its bootstrap list",
            f'listen = "{_EXAMPLE_LISTEN}" in config.toml, and open tcp/4001',
        )
    if here.loopback:
        return Check(
            "listen",
            "warn",
            f"{here.addr}: loopback only, peers on other machines cannot dial it",
            f'listen = "/ip4/0.0.0.0/tcp/{here.port}" in config.toml',
        )
    return Check("listen", "ok", f"{here.addr}: port {here.port} is free")


def metrics(f: Facts) -> Iterator[Check]:
    """Free before the node starts; once it runs, its endpoint answers with our series."""
    if f.config is None or f.config.metrics_port is None:
        return
    host, port = f.config.metrics_host, f.config.metrics_port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        yield Check("metrics", "fail", f"metrics_port = {port!r} is not a TCP port", "fix it")
        return
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/metrics"
    if f.node is None:
        taken = netcheck.port_taken(f"/ip4/{host}/tcp/{port}") if _ip4(host) else None
        if taken is None:
            yield Check("metrics", "ok", f"{url}: port free")
        else:
            yield Check("metrics", "fail", f"metrics_port: {taken}", "choose another metrics_port")
        return
    try:
        with urllib.request.urlopen(url, timeout=CONTROL_TIMEOUT) as answer:
            body = answer.read(1 << 20).decode(errors="replace")
    except OSError as exc:
        yield Check("metrics", "fail", f"{url}: {exc}", "see the node's log")
        return
    if "medforge_build_info" in body:
        yield Check("metrics", "ok", f"{url} answers (the running node's)")
    else:
        yield Check("metrics", "fail", f"{url} answers, but not with medforge's series")


def _ip4(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


def _addrs(f: Facts, kind: str) -> list[str]:
    if kind == "bootstrap":
        raw = f.raw.get("bootstrap", f.config.bootstrap if f.config else [])
    else:  # the raw file, so that an address the config would refuse is still reported
        raw = f.raw.get("relays", f.config.relays if f.config else [])
    return [str(a) for a in (raw if isinstance(raw, list) else [raw])]


def peers(f: Facts, kind: str, timeout: float) -> Iterator[Check]:
    """Each address of ``kind`` ("bootstrap", "relay"): parses, names its peer, answers as a
    libp2p node. An unreachable peer is a warning: it may be down, and the node redials it."""
    addrs = _addrs(f, kind)
    if not addrs and kind == "bootstrap" and f.config is not None:
        yield Check(
            "bootstrap",
            "warn",
            "none configured: this node only meets peers that dial it",
            'bootstrap = ["/ip4/<peer ip>/tcp/4001/p2p/<peer id>"] in config.toml',
        )
    own = f.identity.public.peer_id() if f.identity else None
    dialable = []
    for addr in addrs:
        try:
            endpoint = netcheck.parse_addr(addr)
        except netcheck.AddrError as exc:
            yield Check(kind, "fail", str(exc), f"fix the {kind} list in config.toml")
            continue
        if endpoint.peer is None:
            yield Check(
                kind,
                "fail",
                f"{addr} lacks /p2p/<peer id> (Noise authenticates that key)",
                "append /p2p/<the peer id `medforge id` prints on that node>",
            )
        elif endpoint.peer == own:
            yield Check(kind, "warn", f"{addr} is this node itself", "remove it")
        else:
            dialable.append(endpoint)
    for result in netcheck.reach(dialable, timeout):
        yield _reached(kind, result)


def _reached(kind: str, result: netcheck.Reach) -> Check:
    addr, port = result.endpoint.addr, result.endpoint.port
    if result.ok:
        return Check(kind, "ok", f"{addr}: a libp2p node, Noise accepted, in {result.detail}")
    if result.tcp:
        return Check(
            kind,
            "warn",
            f"{addr}: {result.detail}",
            f"is something else on tcp/{port} there (another service, a proxy), or a NAT "
            "forwarding it elsewhere?",
        )
    return Check(
        kind,
        "warn",
        f"{addr}: unreachable ({result.detail})",
        f"is that node running? do the firewalls on both sides allow tcp/{port}?",
    )
