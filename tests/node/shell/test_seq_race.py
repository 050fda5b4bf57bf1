"""One sequence allocator per home: every number handed out once, across processes, threads
and SIGKILL.

Real processes share one home (as ``medforge commit`` shares it with the node), threads share
one process (as the node's rebase worker shares it with the control server), and a writer is
SIGKILLed mid-loop at whatever instant it happens to be in. Children wait for a "go" line on
stdin, so they all start allocating together; nothing sleeps, every wait has a deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from node.shell.home import Home

ROOT = Path(__file__).resolve().parents[3]
DEADLINE_S = 60.0

# argv: home, calls per thread, threads. Prints "ready", waits for "go", then prints every
# number it was handed, one per line, as soon as next_seq returns it (flushed).
ALLOCATOR = r"""
import sys, threading
from pathlib import Path
from node.shell.home import Home

home, calls, threads = Home(Path(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
failed = []

def work():
    try:
        for _ in range(calls):
            seq = home.next_seq()
            with lock:
                print(seq, flush=True)
    except BaseException as exc:
        failed.append(exc)
        raise

print("ready", flush=True)
sys.stdin.readline()
workers = [threading.Thread(target=work) for _ in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
sys.exit(1 if failed else 0)  # a thread's exception does not set the exit status by itself
"""


def spawn(home: Path, calls: int, threads: int = 1) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", ALLOCATOR, str(home), str(calls), str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next stdout line of ``proc`` ("" at EOF), failing the test at ``deadline``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            pytest.fail("allocator produced nothing before the deadline")
    return proc.stdout.readline()


@contextmanager
def allocators(
    home: Path, count: int, calls: int, threads: int = 1
) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [spawn(home, calls, threads) for _ in range(count)]
    try:
        deadline = time.monotonic() + DEADLINE_S
        for proc in procs:
            assert read_line(proc, deadline) == "ready\n", stderr_of(proc)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=DEADLINE_S)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                assert stream is not None
                stream.close()


def stderr_of(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "(still running)"
    assert proc.stderr is not None
    return proc.stderr.read()


def go(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def drain(proc: subprocess.Popen[str], deadline: float) -> list[int]:
    numbers = []
    while line := read_line(proc, deadline):
        numbers.append(int(line))
    assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, stderr_of(proc)
    return numbers


def collect(procs: list[subprocess.Popen[str]]) -> list[int]:
    """Every number the processes print, reading their pipes in turn until each ends (the
    pipes are large enough that a process never blocks while another is read)."""
    deadline = time.monotonic() + DEADLINE_S
    return [n for proc in procs for n in drain(proc, deadline)]


class Workers:
    """Threads of this process calling ``next_seq`` on one home, all released by ``go``."""

    def __init__(self, home: Home, threads: int, calls: int) -> None:
        self.got: list[int] = []
        self.errors: list[BaseException] = []
        self._go = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(home, calls)) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, home: Home, calls: int) -> None:
        try:
            assert self._go.wait(timeout=DEADLINE_S)
            for _ in range(calls):
                self.got.append(home.next_seq())  # list.append is atomic
        except BaseException as exc:  # re-raised by join
            self.errors.append(exc)

    def go(self) -> None:
        self._go.set()

    def join(self) -> list[int]:
        self._go.set()  # never leave a thread waiting, even when the test failed early
        deadline = time.monotonic() + DEADLINE_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "a next_seq thread is stuck"
        if self.errors:
            raise self.errors[0]
        return self.got


def test_processes_never_share_a_number(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    with allocators(home.path, count=4, calls=150) as procs:
        go(procs)
        numbers = collect(procs)
    assert len(numbers) == 600
    assert sorted(numbers) == list(range(600))  # distinct, and (no crash) none skipped
    assert home.next_seq() == 600


def test_threads_never_share_a_number(tmp_path: Path) -> None:
    home = Home.init(tmp_path / "alice", "alice")
    workers = Workers(home, threads=8, calls=75)
    workers.go()
    assert sorted(workers.join()) == list(range(600))


def test_node_threads_and_cli_processes_never_share_a_number(tmp_path: Path) -> None:
    """The red-team case: a node's worker threads allocate while `medforge commit`-like
    processes (each with threads of its own) allocate on the same home."""
    home = Home.init(tmp_path / "alice", "alice")
    workers = Workers(Home(home.path), threads=3, calls=100)
    try:
        with allocators(home.path, count=3, calls=50, threads=2) as procs:
            go(procs)
            workers.go()
            numbers = collect(procs)
    finally:
        got = workers.join()
    everything = numbers + got
    assert len(everything) == 3 * 50 * 2 + 3 * 100
    assert sorted(everything) == list(range(600))


def test_numbers_survive_sigkill_and_are_never_reused(tmp_path: Path) -> None:
    """Kill the allocator mid-loop, several times, at a different count each time: after each
    restart every new number is above every number handed out before (gaps allowed)."""
    home = Home.init(tmp_path / "alice", "alice")
    handed_out: list[int] = []
    for round_, kill_after in enumerate((1, 37, 113, 250)):
        with allocators(home.path, count=1, calls=10**6) as (proc,):
            go([proc])
            deadline = time.monotonic() + DEADLINE_S
            got = [int(read_line(proc, deadline)) for _ in range(kill_after)]
            proc.send_signal(signal.SIGKILL)  # wherever it is: inside next_seq, or printing
            assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
        assert got == sorted(got)
        assert not handed_out or got[0] > handed_out[-1], f"round {round_} reused a number"
        handed_out += got
        after = Home(home.path).next_seq()  # a restarted process
        assert after > handed_out[-1]
        handed_out.append(after)
    assert len(set(handed_out)) == len(handed_out)
    assert not list(home.path.glob(".tmp-seq-*"))  # a later call swept any killed temporary
