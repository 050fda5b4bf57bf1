"""`scripts/netlab.py`: real namespaces, real packets. Skipped, saying why, where the machine
cannot build a lab (no root, no iptables, no bridge netfilter); delay tests also where NFQUEUE is
missing. Every wait is a probe with its own deadline, none a sleep."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.scripts import load_script

if TYPE_CHECKING:
    import netlab
else:
    netlab = load_script("netlab")

PREFIX = "nltest"
PORT = 7000
REFUSED = 0.5  # seconds to wait for a connection that must not come
# A lab's process that will die without closing it, leaving a NAT host with a process in it:
# prints the lab's tag and that process's pid, then waits to be killed.
CRASH = """
import runpy, subprocess, sys
lab = runpy.run_path(sys.argv[1])["Lab"](sys.argv[2]).__enter__()
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
print(lab.tag, lab.nat_host("carol").run(["sleep", "600"], **quiet).pid, flush=True)
sys.stdin.read()
"""


def ours(tag: str) -> list[str]:
    return [ns for ns in netlab.namespaces() if ns.startswith(f"{tag}-")]


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    reason = netlab.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with netlab.Lab(PREFIX) as built:
        yield built


@pytest.fixture
def delay(lab: netlab.Lab) -> None:
    if not netlab.delay_supported():
        pytest.skip("no NFQUEUE here: netlab cannot delay packets")


def test_public_hosts_reach_each_other_over_tcp(lab: netlab.Lab) -> None:
    alice, bob = lab.public_host("alice"), lab.public_host("bob")
    assert alice.address in alice.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
    bob.serve_echo(PORT)
    seen = alice.probe(bob.address, PORT, rtts=3, bulk=1 << 20)
    assert (seen.connected, seen.error, seen.seen_as) == (True, "", alice.address)
    assert len(seen.rtts) == 3
    assert seen.bulk_s > 0


def test_a_nat_host_dials_out_masqueraded_and_cannot_be_dialled(lab: netlab.Lab) -> None:
    bob, carol = lab.public_host("bob"), lab.nat_host("carol")
    bob.serve_echo(PORT)
    carol.serve_echo(PORT)
    assert carol.address != carol.public_address
    out = carol.probe(bob.address, PORT)
    assert (out.connected, out.seen_as) == (True, carol.public_address)
    assert carol.probe(carol.address, PORT).connected  # its server is up
    at_router = bob.probe(carol.public_address, PORT, timeout=REFUSED)
    assert not at_router.connected
    assert "Timeout" in at_router.error  # dropped silently, as by a home router
    assert not bob.probe(carol.address, PORT, timeout=REFUSED).connected  # no route to it
    assert bob.udp_echoes(carol.public_address, PORT, 5, wait=REFUSED) == 0


def test_partition_blocks_across_groups_and_heal_restores(lab: netlab.Lab) -> None:
    alice, bob, carol = lab.public_host("alice"), lab.public_host("bob"), lab.nat_host("carol")
    for host in (alice, bob):
        host.serve_echo(PORT)
    lab.partition([alice], [bob, carol])
    assert not alice.probe(bob.address, PORT, timeout=REFUSED).connected
    assert not carol.probe(alice.address, PORT, timeout=REFUSED).connected  # masqueraded too
    assert carol.probe(bob.address, PORT).connected  # same side
    lab.heal()
    assert alice.probe(bob.address, PORT).connected
    assert carol.probe(alice.address, PORT).connected


@pytest.mark.usefixtures("delay")
def test_delay_adds_to_every_round_trip_and_clears(lab: netlab.Lab) -> None:
    alice, bob = lab.public_host("alice"), lab.public_host("bob")
    bob.serve_echo(PORT)
    assert median(alice.probe(bob.address, PORT, rtts=5).rtts) < 0.010
    lab.impair(alice, delay_ms=30)  # each way: a round trip with bob gains 60 ms
    slow = alice.probe(bob.address, PORT, rtts=5)
    assert min(slow.rtts) >= 0.060
    assert slow.connect_s >= 0.060
    assert median(slow.rtts) < 0.060 + 0.100
    lab.impair(bob, delay_ms=10)  # delays on both ends add up
    assert min(alice.probe(bob.address, PORT, rtts=5).rtts) >= 0.080
    lab.impair(alice)
    lab.impair(bob)
    assert median(alice.probe(bob.address, PORT, rtts=5).rtts) < 0.010


def test_loss_drops_packets_each_way(lab: netlab.Lab) -> None:
    alice, bob = lab.public_host("alice"), lab.public_host("bob")
    bob.serve_echo(PORT)
    assert alice.udp_echoes(bob.address, PORT, 200) == 200
    lab.impair(alice, loss=0.5)  # a datagram and its echo both pass: 1 in 4, 50 of 200
    assert 10 <= alice.udp_echoes(bob.address, PORT, 200) <= 110


def test_rate_limits_a_bulk_echo(lab: netlab.Lab) -> None:
    alice, bob = lab.public_host("alice"), lab.public_host("bob")
    bob.serve_echo(PORT)
    size = 256 << 10
    assert alice.probe(bob.address, PORT, bulk=size).bulk_s < 0.2
    lab.impair(alice, rate_kbit=4000)  # 500 kB/s: at least 0.45 s after the 16 kB bursts
    assert alice.probe(bob.address, PORT, bulk=size).bulk_s >= 0.4


def test_close_stops_processes_and_removes_namespaces_on_an_error() -> None:
    if (reason := netlab.unavailable_reason()) is not None:
        pytest.skip(reason)
    built: list[netlab.Lab] = []
    started: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"):
        fail_inside_a_lab(built, started)
    assert not ours(built[0].tag)
    assert [p.poll() for p in started] != [None, None]
    assert not any(running(p.pid) for p in started)


def fail_inside_a_lab(built: list[netlab.Lab], started: list[subprocess.Popen[bytes]]) -> None:
    with netlab.Lab(PREFIX) as lab:
        built.append(lab)
        alice, carol = lab.public_host("alice"), lab.nat_host("carol")
        started += [alice.serve_echo(PORT), carol.run(["sleep", "600"])]
        if netlab.delay_supported():
            lab.impair(alice, delay_ms=5)
        assert len(ours(lab.tag)) == 4  # inet, alice, carol, carol-gw
        raise RuntimeError("boom")


def test_a_crashed_labs_leftovers_go_when_the_next_lab_opens() -> None:
    if (reason := netlab.unavailable_reason()) is not None:
        pytest.skip(reason)
    argv = [sys.executable, "-c", CRASH, str(netlab.SCRIPT), PREFIX]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as lab:
        assert lab.stdout is not None
        tag, pid = lab.stdout.readline().split()
        assert len(ours(tag)) == 3  # inet, carol, carol-gw: kept while their lab's process lives
        lab.kill()
    assert running(int(pid))
    with netlab.Lab(PREFIX):
        assert not ours(tag)
        assert not running(int(pid))


def test_hosts_and_groups_are_checked(lab: netlab.Lab) -> None:
    alice = lab.public_host("alice")
    with pytest.raises(ValueError, match="host name"):
        lab.public_host("alice")
    with pytest.raises(ValueError, match="host name"):
        lab.nat_host("Bad-Name")
    with pytest.raises(ValueError, match="disjoint"):
        lab.partition([alice], [alice])
    with pytest.raises(ValueError, match="loss"):
        lab.impair(alice, loss=1.5)


def median(values: tuple[float, ...]) -> float:
    return sorted(values)[len(values) // 2]
