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
  crossing the host's port go through iptables ``NFQUEUE`` to a small userspace daemon
  (``scripts/netlab_delay.py``: raw nfnetlink, no dependencies) that holds each one
  ``delay_ms`` and then accepts it. It acts in both directions, so a round trip with an
  unimpaired host grows by 2 * delay_ms. A packet is never early (the tests assert RTT >=
  2 * delay_ms); its lateness, throughput and limits are in that file's docstring. Changing a
  host's delay restarts its daemon, which first releases what it holds. The queue sits on the
  bridge (behind a veth, which orphans the packet) on purpose: a packet held below a local TCP
  socket counts against its TCP Small Queues budget and collapses throughput (measured
  1.25 MiB in 5.9 s at 25 ms there, 0.24 s on the bridge). ``delay_supported()`` says whether
  NFQUEUE works here.

Probing: ``Host.serve_echo`` starts an echo server (TCP and UDP; TCP first sends the address
the connection came from, then echoes), ``Host.probe`` runs a probe against it and returns a
``Probe``: whether it connected, the address seen, round trips, bulk echo time;
``Host.udp_echoes`` counts the echoes of a burst of datagrams. Both are
``scripts/netlab_probe.py``, run inside the host's namespace.

    python scripts/netlab.py check        # {"unavailable": null, "delay": true} as JSON

Layout: this file is the Lab/Host API and runs in the caller's process. The delay daemon and
the probing tools are files of their own because they are separate programs that the lab starts
inside namespaces (``python <file> ...``, from any working directory); they use only the
standard library and nothing of this file (``Host.probe`` reads what the probe prints).

Errors: ``LabError`` for a command or helper that failed (its stderr in the message).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

SCRIPT = Path(__file__).resolve()
DELAY = SCRIPT.parent / "netlab_delay.py"
PROBE = SCRIPT.parent / "netlab_probe.py"

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


def _helper(script: Path, *argv: str) -> list[str]:
    """The command line of one of the lab's helper programs (``DELAY``, ``PROBE``)."""
    return [sys.executable, str(script), *argv]


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
            _cmd(_in(ns, *_helper(DELAY, "--queue", "0", "--delay-ms", "0", "--check")))
    except LabError:
        return False
    return True


# --- hosts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What ``Host.probe`` saw of an echo server (``netlab_probe.py probe``): times in s."""

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
        server = self.run(_helper(PROBE, "echo", self.address, str(port)), stdout=subprocess.PIPE)
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
        return self.exec(_helper(PROBE, *argv), timeout=300).stdout


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
            argv = _helper(DELAY, "--queue", str(i), "--delay-ms", str(delay_ms))
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


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="print what this machine supports, as JSON")
    parser.parse_args(argv)
    reason = unavailable_reason()
    print(json.dumps({"unavailable": reason, "delay": delay_supported()}))
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
