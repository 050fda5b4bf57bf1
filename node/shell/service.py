"""The long-lived node: a trio shell that pumps transport <-> core <-> store <-> composer.

One task owns the core: every event (a peer's message, a finished blob fetch, a timer, a
finished merge, a local commit) goes through ``_events`` and is handled in arrival order, and
the actions it returns are carried out by small tasks (one outbox per peer keeps each peer's
messages in order). Validation and the fold run in worker threads, one at a time each; the
fold always on the latest order. Nothing here decides anything the core decides.

Nothing a peer sends can stop the node: content is judged by ``node.forge.validate`` before it
counts, and a fold that still fails (a defect of ours) is logged with the commit that caused
it, reported in ``status``, and the last composite keeps being served.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from crypto.records import Commit, Record, decode_record
from node.core import protocol as p
from node.errors import (
    BlobMismatch,
    CorruptBlob,
    FoldError,
    InvalidCommit,
    MissingBlobs,
    NodeError,
    NodeRefused,
    StoreError,
    TransportError,
)
from node.forge.composer import Composer
from node.forge.netspec import merge_spec
from node.forge.validate import VALIDITY, Rules, check_blobs, check_commit
from node.shell.checkpoint_files import CheckpointFiles
from node.shell.discovery import Discovery
from node.shell.home import Home
from node.shell.latency import MergeLatency
from node.shell.rtt import RttProbe
from node.shell.snapshot import snapshot
from node.shell.status import NodeStatus, describe_link
from node.shell.store import Store
from node.shell.transport import PeerId, Transport, TransportConfig
from node.shell.transport.types import (
    LinkDown,
    LinkUp,
)

if TYPE_CHECKING:  # the search side loads when a rebase runs, not on import
    from node.forge.author import Head

log = logging.getLogger("node.shell.service")
MAX_MESSAGE = 16 * 1024 * 1024  # a batch of records; the core splits bigger batches
PUBLISH_TIMEOUT = 120.0  # a local commit is judged within this (validation queue included)


@dataclass
class _Waiter:
    """A control request waiting for a local record to be accepted or rejected."""

    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None


class NodeService:
    """One institution's node. ``await nursery.start(service.run)``; ``service.stop()``."""

    def __init__(
        self,
        home: Home,
        *,
        transport: Transport | None = None,
        core_config: p.CoreConfig | None = None,
        transport_config: TransportConfig | None = None,
    ) -> None:
        self.home = home
        self.identity = home.identity()
        self.config = home.config()
        self.genesis = home.genesis()
        self.store = Store.open(home.path)  # flock: a second node on this home fails here
        self.recovery = self.store.recovery  # what Store.open repaired, for status
        self.core = p.Core(
            self.genesis,
            me=self.identity.public,
            config=core_config or p.CoreConfig(strangers=self.config.strangers),
            blobs=[sha for sha, _ in self.store.blobs()],
        )
        self.transport = transport or self._libp2p(transport_config)
        self.rules = Rules.of(self.genesis)
        self.composer = Composer(
            merge_spec(self.genesis),
            self.rules,
            self._read_blob,
            checkpoints=CheckpointFiles.under(self.store.root),
            checkpoint_every=self.config.checkpoint_every,
            defer_members=True,  # a mixture's members are read from the store when used
        )
        self.started_at = time.time()
        self.names = {m.key.peer_id(): m.name for m in self.genesis.members}
        self._roster_names: tuple[object, dict[str, str]] = (None, {})
        self._events_tx, self._events_rx = trio.open_memory_channel[p.Event](math.inf)
        self._outboxes: dict[PeerId, trio.MemorySendChannel[bytes]] = {}
        self._validate_tx, self._validate_rx = trio.open_memory_channel[p.Validate](math.inf)
        self._merge_wanted: p.Merge | None = None
        self._merge_kick = trio.Event()
        self._timer_at = math.inf
        self._timer_moved = trio.Event()
        self._waiters: dict[bytes, _Waiter] = {}
        self._stop = trio.Event()
        self.stopped = trio.Event()  # set once run() has closed everything
        self._changed = trio.Event()
        self._blob_files: dict[bytes, Path] = {}
        self._nursery: trio.Nursery | None = None
        self.errors: list[tuple[float, str]] = []
        self.faults: dict[str, int] = {"validation": 0, "merge": 0}  # defects of ours, counted
        self.merge_error: str | None = None  # the last fold failure, while it lasts
        # commits judged valid by the whole validity function / believed from the store
        self.rejudged = {"checked": 0, "trusted": 0}
        self.rtt = RttProbe(self.transport, self.core.is_member, self.core.config.sync_interval)
        self.transport.set_member_filter(self.core.is_member)
        self.discovery = Discovery(
            self.transport, self._member_peers, self.core.config.sync_interval, self.name_of
        )
        self.merge_latency = MergeLatency(restored=self.store.has_record)  # commit -> served

    def _libp2p(self, config: TransportConfig | None) -> Transport:
        from node.shell.transport.libp2p import Libp2pTransport

        config = config or TransportConfig(
            listen_addrs=(self.config.listen,),
            bootstrap=tuple(self.config.bootstrap),
            enable_dht=self.config.dht,
            announce_addrs=tuple(self.config.announce),
            relays=tuple(self.config.relays),
            relay_service=self.config.relay_service,
            relay_max_bytes=self.config.relay_max_bytes,
            relay_max_seconds=self.config.relay_max_seconds,
            hole_punching=self.config.hole_punching,
        )
        return Libp2pTransport(self.identity.private_bytes(), config)

    def __repr__(self) -> str:
        return f"<NodeService {self.config.name} {self.core!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.transport.set_request_handler(self._on_request)
                self.transport.set_blob_provider(self._serve_blob)  # rehashed first
                transport_done = trio.Event()
                await nursery.start(self._run_transport, transport_done)
                self._restore()
                for task in (
                    self._core_loop,
                    self._transport_events,
                    self._timer_loop,
                    self._validate_loop,
                    self._merge_loop,
                    self.rtt.run,
                    self.discovery.run,
                ):
                    nursery.start_soon(task)
                task_status.started()
                log.info("node %s up: %s", self.config.name, ", ".join(self.listen_addrs))
                await self._stop.wait()
                # Graceful: the transport closes its connections before anything is cancelled
                # (py-libp2p leaks sockets when cancelled mid-close).
                self.transport.stop()
                await transport_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.store.close()
            self.stopped.set()

    async def _run_transport(
        self, done: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.transport.run(task_status=task_status)
        finally:
            done.set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return self.transport.listen_addrs

    def _restore(self) -> None:
        """Replay the store into the core. Commits are judged again (their blobs may have
        gone since: the core then fetches them again); a commit judged invalid stays so."""
        # The empty composite is the composite of the empty order: claimed at once, so an
        # empty network reports one digest and convergence instead of "(merging)".
        self.post(p.MergeDone(self.core.order.head, self.composer.digest))
        for stored in self.store.records():
            verdict = self.store.verification(stored.id)
            invalid = verdict.reason if verdict is not None and not verdict.ok else None
            self.post(p.LocalRecord(stored.data, blobs_held=False, restored=True, invalid=invalid))

    # -- the core ----------------------------------------------------------------------

    async def _core_loop(self) -> None:
        async for event in self._events_rx:
            for action in self.core.handle(event, trio.current_time()):
                self._carry_out(action)
            if self.merge_error is not None and isinstance(event, p.BlobReceived):
                self._merge_kick.set()  # a failed fold may have waited for this blob
            self._notify()

    def _notify(self) -> None:
        """Wake ``wait_until`` callers: the node's state changed."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[NodeService], bool]) -> None:
        """Return once ``predicate(self)`` holds; re-checked after every core event and
        every failed merge."""
        while not predicate(self):
            await self._changed.wait()

    async def connect(self, addr: str) -> None:
        await self.transport.connect(addr)

    def post(self, event: p.Event) -> None:
        self._events_tx.send_nowait(event)

    def _carry_out(self, action: p.Action) -> None:
        assert self._nursery is not None
        match action:
            case p.Send(peer, data):
                self._outbox(peer).send_nowait(data)
            case p.Broadcast(data):
                for peer in self.transport.peers():
                    self._outbox(peer).send_nowait(data)
            case p.FetchBlob(peer, sha, size, kind):
                self.merge_latency.fetching(sha, trio.current_time())
                self._nursery.start_soon(self._fetch, peer, sha, size, kind)
            case p.StoreRecord(record_id, data):
                self._store_record(record_id, data)
            case p.Validate(record_id, commit):
                self.merge_latency.learned(record_id, commit, trio.current_time())
                self._validate_tx.send_nowait(action)
            case p.StoreInvalid(record_id, data, reason):
                self._store_invalid(record_id, data, reason)
            case p.Merge():
                self._merge_wanted = action
                self._merge_kick.set()
            case p.SetTimer(at):
                self._timer_at = at
                self._timer_moved.set()
            case p.Disconnect(peer, reason):
                self._error(f"disconnecting {self.name_of(peer)}: {reason}")
                self._nursery.start_soon(self.transport.disconnect, peer)
            case p.Rebase(commit_id, parent):
                self._nursery.start_soon(self._rebase, commit_id, parent)
            case p.Rejected(record_id, reason):
                self._error(f"local record {record_id.hex()[:12]} rejected: {reason}")
                self._finish_waiter(record_id, reason)

    def _store_record(self, record_id: bytes, data: bytes) -> None:
        record = decode_record(data)
        try:
            self.store.put_record(record_id, record.KIND, data)
        except StoreError as exc:
            self._error(f"could not store {record_id.hex()[:12]}: {exc}")
        if isinstance(record, Commit):
            self._finish_waiter(record_id, None)

    def _serve_blob(self, sha: bytes) -> Path | None:
        """The store's verified path for a blob a peer asks for; a copy found damaged is
        dropped by the store, and the core fetches it again."""
        held = self.store.has_blob(sha)
        path = self.store.serving_path(sha)
        if path is None and held:
            self.post(p.BlobLost(sha))
        return path

    def _lost_blobs(self, commits: list[Commit]) -> list[bytes]:
        """Blobs of ``commits`` whose files are gone or damaged (a fold just failed): dropped
        from the store and handed to the core to fetch again."""
        # serving_path rehashes and drops what fails; None also for what was never held.
        shas = {ref.sha256 for c in commits for ref in c.blobs.values()}
        return sorted(sha for sha in shas if self.store.serving_path(sha) is None)

    def _store_invalid(self, record_id: bytes, data: bytes, reason: str) -> None:
        record = decode_record(data)
        author = record.author.peer_id() if isinstance(record, Commit) else "?"
        self._error(f"commit {record_id.hex()[:12]} by {self.name_of(author)} is invalid: {reason}")
        try:
            self.store.put_record(record_id, record.KIND, data)
            self.store.set_verification(record_id, False, reason)
        except StoreError as exc:
            self._error(f"could not store evidence {record_id.hex()[:12]}: {exc}")

    def _finish_waiter(self, record_id: bytes, error: str | None) -> None:
        waiter = self._waiters.pop(record_id, None)
        if waiter is not None:
            waiter.error = error
            waiter.done.set()

    def _error(self, message: str) -> None:
        log.warning("%s", message)
        self.errors = [*self.errors[-31:], (time.time(), message)]

    def _roster_peers(self) -> dict[PeerId, str]:
        """Peer id -> name of each member of the roster in force (derived once per roster
        change): whom discovery keeps us connected to, and how peers are named."""
        roster = self.core.roster
        if self._roster_names[0] is not roster:
            names = {m.key.peer_id(): m.name for m in roster.members.values()}
            self._roster_names = (roster, names)
        return self._roster_names[1]

    def _member_peers(self) -> list[PeerId]:
        return list(self._roster_peers())

    def name_of(self, peer: PeerId) -> str:
        """The member name of a peer in the roster in force (or, for a former member, the
        genesis), else the tail of its peer id."""
        return self._roster_peers().get(peer) or self.names.get(peer, peer[-8:])

    # -- network -----------------------------------------------------------------------

    async def _transport_events(self) -> None:
        async for event in self.transport.events:
            match event:
                case LinkUp(peer):
                    where = describe_link(self.transport.link_addrs(peer), self.name_of)
                    where = where or "unknown address"
                    log.info("peer %s connected (%s, %s)", self.name_of(peer), where, peer)
                    try:
                        self.store.upsert_peer(peer, ())
                    except StoreError as exc:  # a full disk: the peer still counts
                        self._error(f"could not record peer {self.name_of(peer)}: {exc}")
                    self.post(p.PeerConnected(peer))
                    if self.core.is_member(peer):
                        self.discovery.kick()
                case LinkDown(peer):
                    log.info("peer %s disconnected", self.name_of(peer))
                    outbox = self._outboxes.pop(peer, None)
                    if outbox is not None:
                        outbox.close()
                    self.post(p.PeerDisconnected(peer))

    async def _on_request(self, peer: PeerId, payload: bytes) -> bytes:
        self.post(p.MessageReceived(peer, payload))
        return b""

    def _outbox(self, peer: PeerId) -> trio.MemorySendChannel[bytes]:
        outbox = self._outboxes.get(peer)
        if outbox is None:
            assert self._nursery is not None
            outbox, inbox = trio.open_memory_channel[bytes](math.inf)
            self._outboxes[peer] = outbox
            self._nursery.start_soon(self._send_loop, peer, inbox)
        return outbox

    async def _send_loop(self, peer: PeerId, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
        async for data in inbox:
            try:
                await self.transport.request(peer, data, max_response=16)
            except TransportError as exc:
                log.info("send to %s failed: %s", self.name_of(peer), exc)

    async def _fetch(self, peer: PeerId, sha: bytes, size: int, kind: str) -> None:
        result = p.BlobResult.UNAVAILABLE
        try:
            with self.store.blob_writer(sha, size) as writer:
                await self.transport.fetch_blob(peer, sha, size=size, sink=writer)
                writer.commit()
            result = p.BlobResult.VERIFIED
        except (StoreError, TransportError) as exc:
            # Only bytes proven wrong (size or sha256, by the stream's check or the store's)
            # are the peer's fault; anything else (refused, reset, cut short, timed out,
            # disk) only means "try again, or another holder". Frame garbage is the
            # transport's to punish.
            corrupt = isinstance(exc, BlobMismatch | CorruptBlob)
            result = p.BlobResult.CORRUPT if corrupt else p.BlobResult.UNAVAILABLE
            log.info("fetch of %s from %s failed: %s", sha.hex()[:12], self.name_of(peer), exc)
        self.post(p.BlobReceived(peer, sha, result))

    # -- timers and merging ------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            self._timer_moved = trio.Event()
            with trio.move_on_at(self._timer_at):
                await self._timer_moved.wait()
                continue
            self._timer_at = math.inf
            self.post(p.Timer())

    async def _validate_loop(self) -> None:
        async for action in self._validate_rx:
            judged = await self._judge(action.record_id, action.commit)
            if judged is not None:
                self.post(judged)

    async def _judge(self, record_id: bytes, commit: Commit) -> p.Judged | None:
        """The validity function on ``commit`` and its blobs as stored; None when it could
        not be judged (a defect of ours: logged and counted, the commit stays pending)."""
        paths = {kind: self.store.blob_path(ref.sha256) for kind, ref in commit.blobs.items()}
        gone = tuple(commit.blobs[k].sha256 for k, path in sorted(paths.items()) if path is None)
        if gone:
            return p.Judged(record_id, p.Verdict.MISSING, missing=gone)
        try:
            if self._judged_valid(record_id):  # before a restart: its bytes are checked again
                await trio.to_thread.run_sync(lambda: check_blobs(commit, _read_all(paths)))
                self.rejudged["trusted"] += 1
                return p.Judged(record_id, p.Verdict.VALID)
            # In a worker thread: reading the files and the checks take a while.
            adapter = await trio.to_thread.run_sync(
                lambda: check_commit(commit, _read_all(paths), self.rules)
            )
        except InvalidCommit as exc:
            return p.Judged(record_id, p.Verdict.INVALID, str(exc))
        except MissingBlobs as exc:
            for sha in exc.shas:  # our copy rotted or was cut: drop it, the core refetches
                self._error(f"stored blob {sha.hex()[:12]} is damaged; fetching it again")
                self.store.drop_blob(sha)
            return p.Judged(record_id, p.Verdict.MISSING, missing=exc.shas)
        except Exception as exc:  # noqa: BLE001 - our defect or our disk: never the peer's
            self.faults["validation"] += 1
            self._error(f"could not judge commit {record_id.hex()[:12]}: {exc!r}")
            return None
        self.composer.admit(commit.id, adapter)  # judged once: the fold need not load it again
        self.store.set_verification(record_id, True, VALIDITY)
        self.rejudged["checked"] += 1
        return p.Judged(record_id, p.Verdict.VALID)

    def _judged_valid(self, record_id: bytes) -> bool:
        """Whether this node judged the commit valid before, under this validity function:
        a restart then checks only that the blobs are still its bytes (a store that rotted
        still heals), not the whole content again (1000 CLIP-sized adapters: 50 s)."""
        verdict = self.store.verification(record_id)
        return verdict is not None and verdict.ok and verdict.reason == VALIDITY

    async def _merge_loop(self) -> None:
        while True:
            await self._merge_kick.wait()
            self._merge_kick = trio.Event()
            wanted = self._merge_wanted
            if wanted is None:
                continue
            commits = [self.core.commit(cid) for cid in wanted.order.commits]
            ready = [c for c in commits if c is not None]
            # Checkpoints only on the main chain: orphans move as others arrive.
            stable = sum(c is not None for c in commits[: wanted.order.main_length])
            try:
                self._blob_files.update(self._paths_of(ready))  # SQLite stays on this thread
                digest = await trio.to_thread.run_sync(
                    partial(self.composer.update, ready, stable=stable)
                )
            except (FoldError, StoreError) as exc:
                # A defect of ours or a blob gone from disk, never a peer's content (that was
                # judged before it counted): keep serving the last composite, say why.
                self.faults["merge"] += 1
                self.merge_error = f"forge item v{len(ready)}: {exc}"
                self._error(f"merge failed, serving {self.composer.digest[:16]}: {exc}")
                for sha in self._lost_blobs(ready):  # a disk fault heals by fetching again
                    self.post(p.BlobLost(sha))
                self._notify()
                continue
            self.merge_error = None
            self.merge_latency.merged([c.id for c in ready], trio.current_time())
            self.post(p.MergeDone(wanted.order.head, digest))
            last = ready[-1] if ready else None
            log.info(
                "forge item v%d %s digest %s%s",
                len(ready),
                wanted.order.head.hex()[:12],
                digest[:16],
                f" (last: {self.name_of(last.author.peer_id())}, task {last.task!r})"
                if last is not None
                else "",
            )

    def _paths_of(self, commits: list[Commit]) -> dict[bytes, Path]:
        return {ref.sha256: self.blob_path(ref.sha256) for c in commits for ref in c.blobs.values()}

    def _read_blob(self, sha: bytes) -> bytes:
        """Runs in the merge thread: reads files whose paths the trio thread looked up."""
        return self._blob_files[sha].read_bytes()

    # -- local records -------------------------------------------------------------------

    async def publish(self, record: Record, blobs: dict[bytes, Path] | None = None) -> None:
        """Store ``blobs`` (sha -> file) and hand ``record`` to the core; for a commit, wait
        until the core stored or rejected it."""
        for sha, path in (blobs or {}).items():
            # SQLite objects stay on the trio thread; a local file copy is quick enough.
            self.store.put_blob(path, sha)
        data = record.encode()
        content_id = hashlib.sha256(data).digest()  # what the core's actions name
        waiter = _Waiter()
        if isinstance(record, Commit) and content_id in self.core.invalid():
            raise NodeRefused(f"refused: {self.core.invalid()[content_id][1]}")
        if not isinstance(record, Commit) or self.core.holds(content_id):
            waiter.done.set()  # nothing to wait for (a record, or a commit already held)
        else:
            self._waiters[content_id] = waiter
        self.post(p.LocalRecord(data))
        try:
            with trio.fail_after(PUBLISH_TIMEOUT):
                await waiter.done.wait()
        except trio.TooSlowError as exc:
            self._waiters.pop(content_id, None)
            raise NodeError(
                f"the node neither took nor refused {record.KIND} {content_id.hex()[:12]} in "
                f"{PUBLISH_TIMEOUT:.0f} s (see its log)"
            ) from exc
        if waiter.error is not None:
            raise NodeRefused(waiter.error)

    async def _rebase(self, commit_id: bytes, parent: bytes) -> None:
        """Re-search one of our orphans against ``parent`` and publish the commit that
        supersedes it (the search runs in a worker thread: no SQLite, no core state)."""
        from node.forge import author  # the search (nevergrad) loads on a first rebase only

        old = self.core.commit(commit_id)
        if old is None:
            return
        try:
            head = self.head_at(parent, old)
            new = await trio.to_thread.run_sync(
                author.rebase,
                self.identity,
                self.genesis,
                old,
                head,
                self.home.next_seq,
                self.config.device,  # config.toml's device: where the re-search runs
            )
            await self.publish(new)
            log.info(
                "rebased orphan %s onto %s as %s",
                commit_id.hex()[:12],
                parent.hex()[:12],
                new.id.hex()[:12],
            )
        except Exception as exc:  # noqa: BLE001 - a failed rebase leaves the orphan in place
            self._error(f"rebase of {commit_id.hex()[:12]} failed: {exc}")

    def head_at(self, parent: bytes, *also: Commit) -> Head:
        """The main chain up to forge item ``parent``, with the blob files of its commits and
        of ``also``."""
        from node.forge.author import Head

        order = self.core.order
        k = order.items.index(parent) if parent in order.items else order.main_length
        commits = tuple(c for c in map(self.core.commit, order.commits[:k]) if c is not None)
        return Head(parent, commits, self._paths_of([*commits, *also]))

    def blob_path(self, sha: bytes) -> Path:
        path = self.store.blob_path(sha)
        if path is None:
            raise StoreError(f"blob {sha.hex()[:12]} is not in the store")
        return path

    # -- status --------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """A frozen snapshot of the node, taken on the trio thread."""
        return snapshot(self)


def _read_all(paths: dict[str, Path | None]) -> dict[str, bytes]:
    return {kind: path.read_bytes() for kind, path in paths.items() if path is not None}
