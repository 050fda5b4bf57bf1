"""Many ``node.core.protocol.Core`` instances on a seeded virtual network with a virtual clock.

Rules:

- ``Simulation(plan)`` executes a ``schedule.Plan`` (the topology, the roles, the timed steps)
  and plans nothing itself. The plan's steps go on the queue first, in their order.
- One event queue ordered by (virtual time, insertion number); one random stream, the plan's
  carried on (``Plan.rng_state``), drawn from in event order; no wall clock and no iteration
  over hash-ordered sets, so the same scenario and seed replay the same trace, byte for byte.
- Each simulated node is the real core plus a thin shell (this module) that carries out its
  actions: ``Send``/``Broadcast`` go over links with a latency, a bandwidth (a link direction
  sends one thing at a time, so big transfers queue small messages behind them, like one TCP
  connection) and a loss rate; ``FetchBlob`` sends a request and, if the holder serves, the
  blob's size over the reverse direction; ``Merge`` folds through the shared memo in ``World``
  (tensors stay in ``node.forge.synthetic``); ``Rebase`` answers after ``search_time`` with a
  superseding commit that carries the same adapter and the simulator's fixed coefficients.
- A connection has an epoch: anything in flight when a link goes down (partition, churn,
  ``Disconnect``) is dropped, and a link that comes back starts a new connection, so the cores
  see ``PeerDisconnected`` / ``PeerConnected`` and run anti-entropy again. A ``Disconnect``
  bans the link for the rest of the run.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any, assert_never

from node.core.protocol import (
    BlobReceived,
    BlobResult,
    Broadcast,
    Core,
    CoreConfig,
    Disconnect,
    Event,
    FetchBlob,
    Judged,
    LocalRecord,
    Merge,
    MergeDone,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    Rebase,
    Rejected,
    Send,
    SetTimer,
    StoreRecord,
    Timer,
    Validate,
    Verdict,
)
from node.sim.adversaries import cheat
from node.sim.schedule import Attack, Heal, Plan, Publish, Relink, SetOnline, Split, Step
from node.sim.simnode import SimNode, is_member
from node.sim.topology import Edge, connected, neighbours
from node.sim.world import World, identity

_REQUEST_BYTES = 80


class Simulation:
    """One plan run: build with ``Simulation(schedule.plan(scenario, seed))``, ``run()``, then
    read ``nodes`` (each with its ``core``), ``samples`` and the counters, or ``report.build``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.s = plan.scenario
        self.seed = plan.seed
        self.rng = random.Random(plan.seed)
        self.rng.setstate(plan.rng_state)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._counter = 0
        self.latency = dict(plan.latency)
        self.adj = neighbours(self.s.nodes, self.latency)
        self.roles = list(plan.roles)
        members = [identity(self.seed, i) for i, r in enumerate(self.roles) if is_member(r)]
        self.world = World(self.seed, members, self.s.mode, self.s.blob_sizes())
        self.nodes = [self._make_node(i) for i in range(self.s.nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        # connection epochs and latencies by directed pair (both directions stored): the hot
        # paths look a pair up without normalising it
        self._up: dict[tuple[int, int], int] = {}
        self._lat = {**self.latency, **{(b, a): t for (a, b), t in self.latency.items()}}
        self._epochs = 0
        self._busy: dict[tuple[int, int], float] = {}
        self._loss, self._bandwidth = self.s.loss, self.s.bandwidth
        self._banned: set[Edge] = set()
        self.side: set[int] | None = None
        # distinct composite digests among online honest nodes, recorded at every change
        self.samples: list[tuple[float, int]] = []
        self._digests: dict[str, int] = {}
        empty = self.world.digest(self.nodes[0].core.order)
        for node in self.nodes:
            node.digest = empty
            self._count(node, +1)
        self.completed: dict[bytes, list[float]] = {}  # commit id -> completion times
        self.rejected = 0
        self.disconnects: list[tuple[float, str, str, str]] = []
        self.authored: dict[bytes, int] = {}  # commit id -> adapter seed

    def honest_connected(self) -> bool:
        """Whether the honest nodes stay connected without the adversaries' links: if not,
        adversaries (disconnected for their garbage, or withholding blobs) can cut honest
        nodes apart, and no protocol can make those converge."""
        honest = [n.index for n in self.nodes if n.honest]
        index = {v: k for k, v in enumerate(honest)}
        edges = [(index[a], index[b]) for a, b in self.latency if a in index and b in index]
        return connected(len(honest), edges)

    # --- set-up ---

    def _make_node(self, i: int) -> SimNode:
        role = self.roles[i]
        ident = identity(self.seed, i) if is_member(role) or role == "forged" else None
        config = CoreConfig(
            sync_interval=self.s.sync_interval,
            fetch_timeout=self.s.fetch_timeout,
            rebase_delay=self.s.rebase_delay,
            strangers="trust",  # simulated peer names are not peer ids
        )
        core = Core(
            self.world.genesis,
            me=ident.public if ident else None,
            config=config,
            decode_message=self.world.decode_message,
            decode=self.world.decode_record,
        )
        return SimNode(i, core, role, ident)

    # --- the event loop ---

    def at(self, time: float, fn: Callable[..., None], *args: Any) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (time, self._counter, fn, args))

    def run(self) -> None:
        """Execute the plan's steps, and all they cause, up to ``duration`` virtual seconds."""
        for step in self.plan.steps:
            self.at(step.at, self._execute, step)
        while self._queue and self._queue[0][0] <= self.s.duration:
            time, _, fn, args = heapq.heappop(self._queue)
            self.now = time
            fn(*args)
        self.now = self.s.duration

    def _execute(self, step: Step) -> None:
        match step:
            case Relink():
                self.relink()
            case SetOnline(node=i, online=online):
                self.set_online(self.nodes[i], online)
            case Publish(node=i, k=k):
                self.publish(self.nodes[i], k)
            case Split(fraction=fraction):
                self._split(fraction)
            case Heal():
                self.side = None
                self.relink()
            case Attack(node=i, round=k):
                node = self.nodes[i]
                for data, targets in cheat(self, node, k):
                    for v in targets:
                        self.transmit(node.index, v, data)
            case _:
                assert_never(step)

    def deliver(self, node: SimNode, event: Event) -> None:
        self.apply(node, node.core.handle(event, self.now))

    def apply(self, node: SimNode, actions: list[Any]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self.transmit(node.index, self.by_name[action.peer].index, action.data)
            elif kind is Broadcast:
                for v in self.adj[node.index]:
                    self.transmit(node.index, v, action.data)
            elif kind is FetchBlob:
                self._fetch(node, self.by_name[action.peer], action)
            elif kind is SetTimer:
                node.timer_gen += 1
                self.at(max(action.at, self.now), self._timer, node, node.timer_gen)
            elif kind is Merge:
                self._merge(node, action)
            else:
                self._rare(node, action)

    def _rare(self, node: SimNode, action: Any) -> None:
        if isinstance(action, StoreRecord):
            commit_id = self.world.content.get(action.id)
            if commit_id is not None and node.honest:
                self.completed.setdefault(commit_id, []).append(self.now)
        elif isinstance(action, Disconnect):
            peer = self.by_name[action.peer]
            self.disconnects.append((self.now, node.name, peer.name, action.reason))
            edge = _edge(node.index, peer.index)
            self._banned.add(edge)
            self.link_down(edge)
        elif isinstance(action, Validate):
            valid = self.world.valid(action.commit)
            verdict = Verdict.VALID if valid else Verdict.INVALID
            self.deliver(node, Judged(action.record_id, verdict, "" if valid else "invalid"))
        elif isinstance(action, Rebase):
            self.at(self.now + self.s.search_time, self._rebase, node, action)
        elif isinstance(action, Rejected):
            self.rejected += 1

    def _timer(self, node: SimNode, generation: int) -> None:
        if generation == node.timer_gen:
            self.deliver(node, Timer())

    def _merge(self, node: SimNode, action: Merge) -> None:
        digest = self.world.digest(action.order)
        if digest != node.digest:
            self._count(node, -1)
            node.digest, node.changed_at = digest, self.now
            self._count(node, +1)
        self.deliver(node, MergeDone(action.order.head, digest))

    # --- links ---

    def may_link(self, edge: Edge) -> bool:
        a, b = edge
        if edge in self._banned or not (self.nodes[a].online and self.nodes[b].online):
            return False
        return self.side is None or ((a in self.side) == (b in self.side))

    def _split(self, fraction: float) -> None:
        """Draw the sides now, from the run's stream (where the draw always was)."""
        order = [n.index for n in self.nodes]
        self.rng.shuffle(order)
        self.side = set(order[: int(fraction * len(order))])
        self.relink()

    def link_up(self, edge: Edge) -> None:
        if edge in self._up or not self.may_link(edge):
            return
        self._epochs += 1
        self._up[edge] = self._up[(edge[1], edge[0])] = self._epochs
        a, b = self.nodes[edge[0]], self.nodes[edge[1]]
        self.deliver(a, PeerConnected(b.name))
        self.deliver(b, PeerConnected(a.name))

    def link_down(self, edge: Edge) -> None:
        if self._up.pop(edge, None) is None:
            return
        del self._up[(edge[1], edge[0])]
        a, b = self.nodes[edge[0]], self.nodes[edge[1]]
        self.deliver(a, PeerDisconnected(b.name))
        self.deliver(b, PeerDisconnected(a.name))

    def relink(self) -> None:
        for edge in self.latency:
            if self.may_link(edge):
                self.link_up(edge)
            else:
                self.link_down(edge)

    def _send_time(self, src: int, dst: int, size: int, start: float) -> float:
        """When ``size`` bytes sent from ``src`` at ``start`` arrive at ``dst``."""
        pair = (src, dst)
        depart = max(start, self._busy.get(pair, 0.0))
        done = depart + size / self._bandwidth
        self._busy[pair] = done
        return done + self._lat[pair]

    def _lost(self) -> bool:
        return self._loss > 0 and self.rng.random() < self._loss

    def transmit(self, src: int, dst: int, data: bytes) -> None:
        epoch = self._up.get((src, dst))
        if epoch is None:
            return
        arrive = self._send_time(src, dst, len(data), self.now)
        sender = self.nodes[src]
        sender.sent += len(data)
        sender.messages += 1
        if not self._lost():
            self.at(arrive, self._arrive, src, dst, data, epoch)

    def _arrive(self, src: int, dst: int, data: bytes, epoch: int) -> None:
        if self._up.get((src, dst)) != epoch:
            return
        node = self.nodes[dst]
        node.received += len(data)
        self.deliver(node, MessageReceived(self.nodes[src].name, data))

    # --- blobs ---

    def _fetch(self, node: SimNode, holder: SimNode, action: FetchBlob) -> None:
        edge = (node.index, holder.index)
        epoch = self._up.get(edge)
        if epoch is None:
            return
        node.sent += _REQUEST_BYTES
        node.messages += 1
        asked = self._send_time(node.index, holder.index, _REQUEST_BYTES, self.now)
        if self._lost() or holder.role == "withhold":
            return  # no answer: the core's deadline moves on to another holder
        if action.sha256 not in holder.blobs:
            back = asked + self._lat[edge]
            self.at(back, self._blob, node, holder, action.sha256, 0, BlobResult.UNAVAILABLE, epoch)
            return
        arrive = self._send_time(holder.index, node.index, action.size, asked)
        holder.sent += action.size
        holder.messages += 1
        if not self._lost():
            result = BlobResult.VERIFIED
            self.at(arrive, self._blob, node, holder, action.sha256, action.size, result, epoch)

    def _blob(
        self,
        node: SimNode,
        holder: SimNode,
        sha: bytes,
        size: int,
        result: BlobResult,
        epoch: int,
    ) -> None:
        if self._up.get((node.index, holder.index)) != epoch:
            return
        node.received += size
        node.payload += size
        if sha in node.blobs:
            node.duplicate += size
            node.dups[sha] = node.dups.get(sha, 0) + size
        elif result is BlobResult.VERIFIED:
            node.blobs.add(sha)
            node.payload_blobs += size
        self.deliver(node, BlobReceived(holder.name, sha, result))

    # --- authors ---

    def publish(
        self,
        node: SimNode,
        k: int,
        *,
        supersedes: bytes | None = None,
        adapter_seed: int | None = None,
        parent: bytes | None = None,
    ) -> bytes:
        """``node`` signs a commit onto its tip (its own adapter ``k``) and hands it to its core."""
        assert node.identity is not None
        seed = adapter_seed if adapter_seed is not None else self.seed * 1_000_003 + k
        commit = self.world.make_commit(
            node.identity,
            node.seq,
            parent if parent is not None else node.core.tip,
            f"task-{k}",
            adapter_seed=seed,
            supersedes=supersedes,
            now=self.now,
        )
        node.seq += 1
        self.authored[commit.id] = seed
        node.blobs.update(ref.sha256 for ref in commit.blobs.values())
        self.deliver(node, LocalRecord(commit.encode()))
        return commit.id

    def _rebase(self, node: SimNode, action: Rebase) -> None:
        seed = self.authored.get(action.commit_id)
        if seed is None:  # an adversary's own commit: cheaters do not re-search
            return
        self.publish(node, 0, supersedes=action.commit_id, adapter_seed=seed, parent=action.parent)

    def set_online(self, node: SimNode, online: bool) -> None:
        if online != node.online:
            self._count(node, -1)
            node.online = online
            self._count(node, +1)
        self.relink()

    def _count(self, node: SimNode, step: int) -> None:
        if not (node.honest and node.online) or node.digest is None:
            return
        count = self._digests.get(node.digest, 0) + step
        if count:
            self._digests[node.digest] = count
        else:
            del self._digests[node.digest]
        if not self.samples or self.samples[-1][1] != len(self._digests):
            self.samples.append((self.now, len(self._digests)))


def _edge(a: int, b: int) -> Edge:
    return (a, b) if a < b else (b, a)
