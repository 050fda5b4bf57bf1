#!/usr/bin/env python3
"""netlab: a small multi-host network on one Linux machine, built from network namespaces.

For integration tests and scenario scripts that run real medforge nodes "on separate hosts".
Needs root, iproute2 (``ip``, ``tc``) and iptables with bridge netfilter; ``unavailable_reason()``
says what is missing. Nothing is created in the root namespace: every namespace is named
``<prefix>-<pid>-<n>-<name>``, and ``Lab`` deletes its own on exit and a crashed run's on entry.

    with Lab("medforge") as lab:
        alice = lab.public_host("alice")          # 10.88.0.2 on "the internet"
        carol = lab.nat_host("carol")             # 10.89.1.2 behind 10.88.0.3 (MASQUERADE)
        node = carol.run(["medforge", ...])       # killed when the lab closes
        lab.impair(carol, delay_ms=20, loss=0.01, rate_kbit=8000)  # RTT +40 ms
        lab.partition([alice], [carol]); ...; lab.heal()

Topology: the internet is a bridge ``br0`` in namespace ``<tag>-inet``; every site is one port
``p<i>`` on it. A public host is its own site (``eth0`` on 10.88.0.0/24). A NAT host sits at
10.89.<k>.2 behind its router ``<tag>-<name>-gw`` (``wan`` on the bridge, ``lan`` to the host),
which MASQUERADEs outbound traffic and drops every inbound packet that is not ESTABLISHED or
RELATED (also those addressed to the router itself), so nothing can dial a NAT host; UDP and
TCP source ports are kept where possible, as by a home router. IPv6 is off in every namespace so
that no traffic goes around the IPv4 rules. Public hosts have no default route. Only the
network is separate: the file system, users and clock are the machine's.

Impairments and partitions act on the bridge ports (bridge netfilter: ``physdev`` matches in
the inet namespace), so they hit the packet in the middle of the path, as a real link would:
the sender sees no error, and a NAT host's masqueraded traffic is covered by its router's port.
``partition`` drops IPv4 between the groups' ports (ARP still passes; hosts in no group keep
talking to everyone); ``heal`` removes every partition, and connections that outlived it go on.

- ``loss``: ``statistic --mode random`` DROP, each direction of the host's port independently.
- ``rate_kbit``: ``tbf`` on both ends of the site's uplink (the port towards the host, the
  host's or router's interface towards the bridge).
- ``delay_ms``: this kernel has no netem (nor fq, so no EDT pacing through BPF either). Packets
  crossing the host's port go through iptables ``NFQUEUE`` to a small userspace daemon (this
  file's ``delay`` command: raw nfnetlink, metadata only, batch verdicts, no dependencies) that
  holds each one ``delay_ms`` and then accepts it. It acts in both directions, so a round trip
  with an unimpaired host grows by 2 * delay_ms. Measured here (TCP echo, 50 round trips,
  64 MiB echoed): bare 0.07 ms, 780 MiB/s; delay 1 -> 2.5 ms, 500 MiB/s; 12.5 -> 26.0 ms
  (max 26.3), 84 MiB/s; 50 -> 101.1 ms (max 103), 21 MiB/s, i.e. window-bound as on a real
  long link. A packet is never early (the tests assert RTT >= 2 * delay_ms) and typically
  0.2-1 ms late (Python timers; more under CPU load).
  Limits: a constant delay, no jitter and no reordering; the daemon's one Python process bounds
  a delayed link's packet rate; it holds up to 65536 packets, more are dropped like a full
  router buffer; changing a host's delay restarts its daemon, which first releases what it
  holds; the daemon exits when the lab's process dies. The queue sits on the bridge (behind a
  veth, which orphans the packet) on purpose: a packet held below a local TCP socket counts
  against its TCP Small Queues budget and collapses throughput (measured 1.25 MiB in 5.9 s at
  25 ms there, 0.24 s on the bridge). ``delay_supported()`` says whether NFQUEUE works here.

Probing: ``Host.serve_echo`` starts this file's ``echo`` server (TCP and UDP; TCP first sends
the address the connection came from, then echoes), ``Host.probe`` runs ``probe`` against it and
returns a ``Probe``: whether it connected, the address seen, round trips, bulk echo time;
``Host.udp_echoes`` counts the echoes of a burst of datagrams.

    python scripts/netlab.py check        # {"unavailable": null, "delay": true} as JSON

Errors: ``LabError`` for a command or helper that failed (its stderr in the message).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

SCRIPT = Path(__file__).resolve()
INTERNET = "10.88.0"  # the /24 every site's public address is in
PRIVATE = "10.89"  # NAT host k lives in 10.89.<k>.0/24
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,15}")
_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
_LABS = itertools.count()
_STOP_GRACE = 3.0  # seconds a process gets between SIGTERM and SIGKILL


class LabError(Exception):
    """A command, a namespace or a helper process of the lab failed; the message says which."""


def _cmd(
    argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, input=input, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _in(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


# --- namespaces ------------------------------------------------------------------------------


def namespaces() -> list[str]:
    """Every network namespace name ``ip netns`` knows, ours or not."""
    return [line.split()[0] for line in _cmd(["ip", "netns", "list"]).stdout.splitlines() if line]


def _alive(pid: int) -> bool:
    """Running and not a zombie (a container's init may never reap a crashed lab's process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _delete_namespace(ns: str) -> None:
    """Kill what still runs in ``ns`` (children of dead processes included), then delete it."""
    deadline = time.monotonic() + 10
    while pids := [int(p) for p in _cmd(["ip", "netns", "pids", ns], check=False).stdout.split()]:
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids} in {ns} do not die")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    deleted = _cmd(["ip", "netns", "del", ns], check=False)
    if deleted.returncode != 0 and ns in namespaces():  # else another run removed it first
        raise LabError(f"ip netns del {ns}: {deleted.stderr.strip()}")


def remove_leftovers(prefix: str) -> list[str]:
    """Delete the namespaces of earlier labs with ``prefix`` whose process is gone; their names."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)-\d+-")
    stale = [
        ns
        for ns in namespaces()
        if (m := pattern.match(ns)) and int(m[1]) != os.getpid() and not _alive(int(m[1]))
    ]
    for ns in stale:
        _delete_namespace(ns)
    return stale


# --- what this machine can do ----------------------------------------------------------------


def _helper(*argv: str) -> list[str]:
    """The command line of one of this file's own commands."""
    return [sys.executable, str(SCRIPT), *argv]


@contextlib.contextmanager
def _scratch(what: str) -> Iterator[str]:
    """A throwaway namespace to try things in."""
    remove_leftovers("netlabprobe")
    ns = f"netlabprobe-{os.getpid()}-0-{what}"
    try:
        _cmd(["ip", "netns", "add", ns])
        yield ns
    finally:
        if ns in namespaces():
            _delete_namespace(ns)


@functools.cache
def unavailable_reason() -> str | None:
    """None when a lab can be built here (root, ip, tc, iptables, bridge netfilter), else why."""
    if os.geteuid() != 0:
        return "netlab needs root (network namespaces, iptables)"
    for tool in ("ip", "tc", "iptables", "iptables-restore", "sysctl"):
        if shutil.which(tool) is None:
            return f"netlab needs `{tool}` on PATH (apt-get install iproute2 iptables procps)"
    try:
        with _scratch("probe") as ns:
            _cmd(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
            bridge_nf = _in(ns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables")
            if not _cmd(bridge_nf, check=False).stdout.strip():
                return "netlab needs bridge netfilter (modprobe br_netfilter)"
            rule = ["-m", "physdev", "--physdev-in", "p0", "-m", "statistic", "--mode", "random"]
            _cmd(_in(ns, "iptables", "-A", "FORWARD", *rule, "--probability", "0.5", "-j", "DROP"))
    except LabError as error:
        return f"netlab cannot build a namespace here: {error}"
    return None


@functools.cache
def delay_supported() -> bool:
    """Whether ``Lab.impair(delay_ms=...)`` works: iptables NFQUEUE plus an nfnetlink queue."""
    if unavailable_reason() is not None:
        return False
    try:
        with _scratch("delay") as ns:
            _cmd(_in(ns, "iptables", "-t", "mangle", "-A", "PREROUTING", "-j", "NFQUEUE"))
            _cmd(_in(ns, *_helper("delay", "--queue", "0", "--delay-ms", "0", "--check")))
    except LabError:
        return False
    return True


# --- hosts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What ``Host.probe`` saw of an echo server: times in seconds."""

    connected: bool
    error: str  # why it did not connect or broke off; "" when all went through
    connect_s: float
    seen_as: str  # the address the server saw the connection come from (NAT: the router's)
    rtts: tuple[float, ...]
    bulk_s: float


class Host:
    """One machine of a lab: a network namespace. ``address`` is the one to bind to;
    ``public_address`` the one others reach it at (a NAT host's router's)."""

    def __init__(
        self, lab: Lab, name: str, namespace: str, address: str, public_address: str, site: int
    ) -> None:
        self.lab = lab
        self.name = name
        self.namespace = namespace
        self.address = address
        self.public_address = public_address
        self.site = site  # its port p<site> on the bridge, its delay queue number

    def __repr__(self) -> str:
        nat = "" if self.address == self.public_address else f" via {self.public_address}"
        return f"<Host {self.name} {self.address}{nat} ns={self.namespace}>"

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (``env`` on top of ``os.environ``); the lab stops it
        (SIGTERM to its process group, then SIGKILL) when it closes."""
        streams = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
        return self.lab._spawn(self.namespace, argv, env=env, cwd=cwd, **streams)

    def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to completion, capturing text output."""
        return _cmd(_in(self.namespace, *argv), check=check, input=input, timeout=timeout)

    def serve_echo(self, port: int, *, timeout: float = 10) -> subprocess.Popen[bytes]:
        """A TCP and UDP echo server on ``address:port``, listening when this returns."""
        server = self.run(_helper("echo", self.address, str(port)), stdout=subprocess.PIPE)
        _wait_ready(server, f"echo server on {self.name}", timeout)
        return server

    def probe(
        self, address: str, port: int, *, timeout: float = 2.0, rtts: int = 0, bulk: int = 0
    ) -> Probe:
        """Connect over TCP from this host to an echo server (``timeout`` s to connect), then
        time ``rtts`` 1-byte round trips and the echo of ``bulk`` bytes."""
        argv = ["probe", address, str(port), "--timeout", str(timeout), "--rtts", str(rtts)]
        found = json.loads(self._run_helper(*argv, "--bulk", str(bulk)))
        return Probe(**{**found, "rtts": tuple(found["rtts"])})

    def udp_echoes(self, address: str, port: int, count: int, *, wait: float = 1.0) -> int:
        """Send ``count`` numbered datagrams at once to an echo server; how many distinct ones
        come back within ``wait`` s of the last send."""
        return int(self._run_helper("udp", address, str(port), str(count), "--wait", str(wait)))

    def _run_helper(self, *argv: str) -> str:
        return self.exec(_helper(*argv), timeout=300).stdout


def _wait_ready(process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    """Wait for ``process`` to print ``ready``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([process.stdout], [], [], left)[0]:
            line = process.stdout.readline()
            if line.strip() == b"ready":
                return
            if not line:
                raise LabError(f"{what} exited with {process.wait(left)} before it was ready")
    raise LabError(f"{what} not ready after {timeout} s")


def _stop(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, SIGKILL what is left after the grace time, reap, close pipes."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(10)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


# --- the lab ---------------------------------------------------------------------------------

_INTERNET_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:NETLAB-PART - [0:0]
-A FORWARD -j NETLAB-PART
COMMIT
"""

_SITE_RULES = """*mangle
:up{i} - [0:0]
:down{i} - [0:0]
-A PREROUTING -m physdev --physdev-in p{i} -j up{i}
-A POSTROUTING -m physdev --physdev-out p{i} -j down{i}
COMMIT
"""

_ROUTER_RULES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o wan -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i wan -j DROP
-A FORWARD -i lan -o wan -j ACCEPT
-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
COMMIT
"""

_NO_IPV6 = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


class Lab:
    """A network of hosts in namespaces named ``<prefix>-<pid>-<n>-...``; a context manager
    that removes them all, and stops every process started in them, on exit."""

    def __init__(self, prefix: str = "netlab") -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r}: lowercase letters and digits, 1 to 16")
        self.prefix = prefix
        self.tag = f"{prefix}-{os.getpid()}-{next(_LABS)}"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._delays: dict[int, subprocess.Popen[bytes]] = {}  # site -> its delay daemon
        self._sites = itertools.count(2)
        self._subnets = itertools.count(1)

    def __repr__(self) -> str:
        return f"<Lab {self.tag} hosts={sorted(self.hosts)} processes={len(self._processes)}>"

    @property
    def internet(self) -> str:
        """The namespace of the bridge every site hangs off."""
        return f"{self.tag}-inet"

    def __enter__(self) -> Lab:
        remove_leftovers(self.prefix)
        try:
            self._namespace(self.internet, "net.bridge.bridge-nf-call-iptables=1")
            self._ip(self.internet, "link", "add", "br0", "type", "bridge")
            self._ip(self.internet, "link", "set", "br0", "up")
            self._restore(self.internet, _INTERNET_RULES)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except LabError as error:
            if exc is None:
                raise
            exc.add_note(f"and closing the lab failed: {error}")

    def close(self) -> None:
        """Stop every process, delete every namespace (with its veths and bridge); idempotent."""
        _stop(self._processes)
        self._processes.clear()
        self._delays.clear()
        failures = []
        for ns in reversed(self._namespaces):
            try:
                _delete_namespace(ns)
            except LabError as error:
                failures.append(str(error))
        self._namespaces.clear()
        if failures:
            raise LabError("; ".join(failures))

    def public_host(self, name: str) -> Host:
        """A host with its own address on the internet, reachable by every other host."""
        ns, site = self._claim(name)
        address = f"{INTERNET}.{site}"
        self._namespace(ns)
        self._plug(ns, "eth0", site, address)
        return self._add(Host(self, name, ns, address, address, site))

    def nat_host(self, name: str) -> Host:
        """A host at a private address behind its own router (``<name>-gw``), which masquerades
        it and lets no connection in."""
        ns, site = self._claim(name)
        router, subnet = f"{ns}-gw", f"{PRIVATE}.{next(self._subnets)}"
        public = f"{INTERNET}.{site}"
        self._namespace(router, "net.ipv4.ip_forward=1")
        self._namespace(ns)
        self._plug(router, "wan", site, public)
        self._ip(router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip(router, "addr", "add", f"{subnet}.1/24", "dev", "lan")
        self._ip(router, "link", "set", "lan", "up")
        self._ip(ns, "addr", "add", f"{subnet}.2/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", "default", "via", f"{subnet}.1")
        self._restore(router, _ROUTER_RULES)
        return self._add(Host(self, name, ns, f"{subnet}.2", public, site))

    def impair(
        self,
        host: Host,
        *,
        delay_ms: float = 0.0,
        loss: float = 0.0,
        rate_kbit: int | None = None,
    ) -> None:
        """Make ``host``'s link to the internet bad, in each direction: ``delay_ms`` added to
        every packet, each lost with probability ``loss``, at most ``rate_kbit``. Replaces the
        host's earlier impairment; all defaults: a clean link again."""
        if not 0.0 <= loss <= 1.0 or delay_ms < 0 or (rate_kbit is not None and rate_kbit <= 0):
            raise ValueError(
                f"impair {host.name}: delay_ms={delay_ms} loss={loss} rate={rate_kbit}"
            )
        i = host.site
        for chain in (f"up{i}", f"down{i}"):
            self._iptables("-t", "mangle", "-F", chain)
        if (daemon := self._delays.pop(i, None)) is not None:
            _stop([daemon])
            self._processes.remove(daemon)
        self._shape(host, rate_kbit)
        rules = []
        if loss > 0:
            rules.append(f"-m statistic --mode random --probability {loss:.8f} -j DROP")
        if delay_ms > 0:
            argv = _helper("delay", "--queue", str(i), "--delay-ms", str(delay_ms))
            daemon = self._spawn(self.internet, argv, stdout=subprocess.PIPE)
            self._delays[i] = daemon
            _wait_ready(daemon, f"delay daemon for {host.name}", 10)
            rules.append(f"-j NFQUEUE --queue-num {i}")
        lines = [f"-A {chain} {rule}" for chain in (f"up{i}", f"down{i}") for rule in rules]
        self._restore(
            self.internet, "*mangle\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
        )

    def partition(self, *groups: Iterable[Host]) -> None:
        """Drop every packet between hosts of different groups (hosts in no group keep talking
        to all); adds to earlier partitions until ``heal``."""
        sides = [list(group) for group in groups]
        names = [host.name for side in sides for host in side]
        if len(sides) < 2 or not all(sides) or len(set(names)) != len(names):
            raise ValueError(f"partition needs two or more disjoint, non-empty groups: {sides}")
        lines = [
            f"-A NETLAB-PART -m physdev --physdev-in p{a.site} --physdev-out p{b.site} -j DROP\n"
            for x, side in enumerate(sides)
            for y, other in enumerate(sides)
            if x != y
            for a in side
            for b in other
        ]
        self._restore(self.internet, "*filter\n" + "".join(lines) + "COMMIT\n")

    def heal(self) -> None:
        """Undo every partition."""
        self._iptables("-F", "NETLAB-PART")

    # --- plumbing ---

    def _claim(self, name: str) -> tuple[str, int]:
        if self.internet not in self._namespaces:
            raise LabError(f"{self.tag}: open the lab (`with Lab(...) as lab`) before adding hosts")
        if not _NAME.fullmatch(name) or name == "inet" or name in self.hosts:
            raise ValueError(f"host name {name!r}: new, lowercase letters and digits, not 'inet'")
        site = next(self._sites)
        if site > 254:
            raise LabError(f"{self.tag}: 253 sites is the most a lab holds")
        return f"{self.tag}-{name}", site

    def _add(self, host: Host) -> Host:
        self.hosts[host.name] = host
        return host

    def _namespace(self, ns: str, *sysctls: str) -> None:
        _cmd(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")
        _cmd(_in(ns, "sysctl", "-q", "-w", *_NO_IPV6, *sysctls))

    def _plug(self, ns: str, ifname: str, site: int, address: str) -> None:
        """A veth from ``ns`` (``ifname`` at ``address``) to port ``p<site>`` of the bridge."""
        port = f"p{site}"
        self._ip(
            self.internet, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns
        )
        self._ip(self.internet, "link", "set", port, "master", "br0", "up")
        self._ip(ns, "addr", "add", f"{address}/24", "dev", ifname)
        self._ip(ns, "link", "set", ifname, "up")
        self._restore(self.internet, _SITE_RULES.format(i=site))

    def _shape(self, host: Host, rate_kbit: int | None) -> None:
        """tbf on both ends of ``host``'s uplink, or none."""
        ends = [(self.internet, f"p{host.site}")]
        ends.append(
            (host.namespace, "eth0")
            if host.address == host.public_address
            else (f"{host.namespace}-gw", "wan")
        )
        for ns, dev in ends:
            if rate_kbit is None:
                _cmd(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            else:
                burst = max(rate_kbit * 125 // 100, 16_000)  # 10 ms at the rate, at least 16 kB
                tbf = ["tbf", "rate", f"{rate_kbit}kbit", "burst", str(burst), "latency", "100ms"]
                _cmd(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *tbf])

    def _spawn(
        self, ns: str, argv: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, **(env or {})}
        process = subprocess.Popen(_in(ns, *argv), env=env, start_new_session=True, **popen)
        self._processes.append(process)
        return process

    def _ip(self, ns: str, *argv: str) -> None:
        _cmd(["ip", "-n", ns, *argv])

    def _iptables(self, *argv: str) -> None:
        _cmd(_in(self.internet, "iptables", *argv))

    def _restore(self, ns: str, rules: str) -> None:
        _cmd(_in(ns, "iptables-restore", "--noflush"), input=rules)


# --- the delay daemon: raw nfnetlink queue ---------------------------------------------------

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_QUEUE = 3
_MSG_PACKET, _MSG_CONFIG, _MSG_VERDICT_BATCH = 0, 2, 3
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_NLMSG_ERROR = 2
_CFG_CMD, _CFG_PARAMS, _CFG_QUEUE_MAXLEN, _CFG_MASK, _CFG_FLAGS = 1, 2, 3, 4, 5
_CMD_BIND, _COPY_META, _F_GSO = 1, 1, 1 << 2
_PACKET_HDR, _VERDICT_HDR = 1, 2
_NF_ACCEPT = 1
_SOL_NETLINK, _NETLINK_NO_ENOBUFS = 270, 5
_SO_RCVBUFFORCE = 33
_MAX_HELD = 65536


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + bytes(-size % 4)


def _message(kind: int, queue: int, attrs: Sequence[bytes], flags: int = _NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    head = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0)
    return head + body


class DelayQueue:
    """nfnetlink queue ``queue`` of this namespace, bound: ``serve`` holds every packet
    ``delay`` seconds and then accepts it, in arrival order."""

    def __init__(self, queue: int) -> None:
        self.queue = queue
        self.held: collections.deque[tuple[float, int]] = collections.deque()  # (due, packet id)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
        self.sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._configure(
            _attr(_CFG_CMD, struct.pack("=BBH", _CMD_BIND, 0, socket.htons(socket.AF_INET)))
        )
        self._configure(_attr(_CFG_PARAMS, struct.pack(">IB", 0, _COPY_META)))
        self._configure(_attr(_CFG_QUEUE_MAXLEN, struct.pack(">I", _MAX_HELD)))
        self._configure(
            _attr(_CFG_MASK, struct.pack(">I", _F_GSO)),
            _attr(_CFG_FLAGS, struct.pack(">I", _F_GSO)),
        )

    def _configure(self, *attrs: bytes) -> None:
        self.sock.send(_message(_MSG_CONFIG, self.queue, attrs, _NLM_F_REQUEST | _NLM_F_ACK))
        reply = self.sock.recv(65536)
        (kind,) = struct.unpack_from("=H", reply, 4)
        error = struct.unpack_from("=i", reply, 16)[0] if kind == _NLMSG_ERROR else 0
        if error:
            raise LabError(f"nfnetlink queue {self.queue}: {os.strerror(-error)}")

    def serve(self, delay: float, stopping: threading.Event) -> None:
        """Until ``stopping`` is set or the parent dies; then release what is held."""
        parent = os.getppid()
        self.sock.setblocking(False)
        while not stopping.is_set() and os.getppid() == parent:
            now = time.monotonic()
            self.release(now)
            wait = min(0.2, self.held[0][0] - now) if self.held else 0.2
            if select.select([self.sock], [], [], max(0.0, wait))[0]:
                self._receive(delay)
        self.release(float("inf"))

    def release(self, now: float) -> None:
        """Accept every packet due by ``now`` (one batch verdict: ids only grow)."""
        last = None
        while self.held and self.held[0][0] <= now:
            last = self.held.popleft()[1]
        if last is not None:
            verdict = _attr(_VERDICT_HDR, struct.pack(">II", _NF_ACCEPT, last))
            self.sock.send(_message(_MSG_VERDICT_BATCH, self.queue, [verdict]))

    def _receive(self, delay: float) -> None:
        for _ in range(256):  # then release again, however fast packets come
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            due = time.monotonic() + delay
            for kind, body in _netlink_messages(data):
                if kind == (_NFNL_SUBSYS_QUEUE << 8) | _MSG_PACKET:
                    self.held.append((due, _packet_id(body)))
                elif kind == _NLMSG_ERROR and (error := struct.unpack_from("=i", body)[0]):
                    print(f"netlab delay: netlink error {os.strerror(-error)}", file=sys.stderr)


def _netlink_messages(data: bytes) -> Iterable[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        size, kind = struct.unpack_from("=IH", data, offset)
        yield kind, data[offset + 16 : offset + size]
        offset += max(16, (size + 3) & ~3)


def _packet_id(body: bytes) -> int:
    """The id in a queued packet's attributes (after its 4-byte nfgenmsg)."""
    offset = 4
    while offset + 4 <= len(body):
        size, kind = struct.unpack_from("=HH", body, offset)
        if kind & 0x3FFF == _PACKET_HDR:
            return int(struct.unpack_from(">I", body, offset + 4)[0])
        offset += max(4, (size + 3) & ~3)
    raise LabError("nfnetlink queue: a packet without its header")


# --- echo server and probe -------------------------------------------------------------------


def serve_echo(address: str, port: int) -> None:
    """TCP (sends the peer's address and a newline, then echoes) and UDP echo on one port."""
    tcp = socket.create_server((address, port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
    udp.bind((address, port))
    threading.Thread(target=_echo_udp, args=(udp,), daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, peer = tcp.accept()
        threading.Thread(target=_echo_tcp, args=(conn, peer[0]), daemon=True).start()


def _echo_udp(udp: socket.socket) -> None:
    while True:
        data, peer = udp.recvfrom(65536)
        udp.sendto(data, peer)


def _echo_tcp(conn: socket.socket, peer: str) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn.sendall(f"{peer}\n".encode())
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


def probe(address: str, port: int, timeout: float, rtts: int, bulk: int) -> Probe:
    """Connect to an echo server and measure; an I/O step gets 60 s."""
    start = time.monotonic()
    try:
        conn = socket.create_connection((address, port), timeout=timeout)
    except OSError as error:
        return Probe(False, f"{type(error).__name__}: {error}", 0.0, "", (), 0.0)
    connect_s, seen, times, bulk_s, failure = time.monotonic() - start, "", [], 0.0, ""
    with conn:
        conn.settimeout(60)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            seen = _read_line(conn)
            for _ in range(rtts):
                start = time.monotonic()
                conn.sendall(b"x")
                _read_exactly(conn, 1)
                times.append(time.monotonic() - start)
            bulk_s = _echo_bulk(conn, bulk) if bulk else 0.0
        except OSError as error:
            failure = f"{type(error).__name__}: {error}"
    return Probe(True, failure, connect_s, seen, tuple(times), bulk_s)


def _read_line(conn: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        line += _read_exactly(conn, 1)
    return line.decode().strip()


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        data += chunk
    return data


def _echo_bulk(conn: socket.socket, size: int) -> float:
    start = time.monotonic()
    sender = threading.Thread(target=conn.sendall, args=(bytes(size),), daemon=True)
    sender.start()
    got = 0
    while got < size:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        got += len(chunk)
    sender.join()
    return time.monotonic() - start


def udp_echoes(address: str, port: int, count: int, wait: float) -> int:
    """Send ``count`` numbered datagrams at once; how many distinct ones come back within
    ``wait`` s of the last send."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
        sock.connect((address, port))
        for n in range(count):
            sock.send(struct.pack(">I", n))
        back: set[bytes] = set()
        deadline = time.monotonic() + wait
        while len(back) < count and (left := deadline - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                try:
                    back.add(sock.recv(64))
                except ConnectionRefusedError:  # an ICMP error for an earlier datagram
                    pass
        return len(back)


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="print what this machine supports, as JSON")
    delay = commands.add_parser("delay", help="hold every packet of an nfnetlink queue")
    delay.add_argument("--queue", type=int, required=True)
    delay.add_argument("--delay-ms", type=float, required=True)
    delay.add_argument("--check", action="store_true", help="bind the queue, then exit")
    echo = commands.add_parser("echo", help="TCP and UDP echo server")
    echo.add_argument("address")
    echo.add_argument("port", type=int)
    measure = commands.add_parser("probe", help="TCP: connect to an echo server, time, JSON")
    measure.add_argument("address")
    measure.add_argument("port", type=int)
    measure.add_argument("--timeout", type=float, default=2.0)
    measure.add_argument("--rtts", type=int, default=0)
    measure.add_argument("--bulk", type=int, default=0)
    udp = commands.add_parser("udp", help="UDP: count a burst's echoes")
    udp.add_argument("address")
    udp.add_argument("port", type=int)
    udp.add_argument("count", type=int)
    udp.add_argument("--wait", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "check":
        reason = unavailable_reason()
        print(json.dumps({"unavailable": reason, "delay": delay_supported()}))
        return 0 if reason is None else 1
    if args.command == "delay":
        return _serve_delay(args.queue, args.delay_ms / 1000, args.check)
    if args.command == "echo":
        serve_echo(args.address, args.port)
        return 0
    if args.command == "udp":
        print(udp_echoes(args.address, args.port, args.count, args.wait))
        return 0
    found = probe(args.address, args.port, args.timeout, args.rtts, args.bulk)
    print(json.dumps(dataclasses.asdict(found)))
    return 0


def _serve_delay(queue: int, delay: float, check_only: bool) -> int:
    held = DelayQueue(queue)
    if check_only:
        return 0
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print("ready", flush=True)
    held.serve(delay, stopping)
    return 0


if __name__ == "__main__":
    sys.exit(main())
