"""The deterministic order of commits: a pure function of the record set (shared/DESIGN.md).

Rules, exactly as every node applies them:

- A forge item is named by a chain hash: ``item_0 = sha256(network id)`` and
  ``item_k = sha256(item_{k-1} || commit_k id)``. A commit names, as ``parent``, the item it was
  searched against, so the item a commit creates when it extends its parent is
  ``sha256(parent || id)`` -- a function of the commit alone.
- **Excluded** commits never enter the order: equivocation (one author, one sequence number, two
  different commits: all of them, and the author is *flagged*) and revoked commits. Commits an
  author may not sign (roster) are not even passed in. Commits built on an excluded commit lose
  their parent and become orphans.
- **Main chain**: start at ``item_0``; among the eligible commits whose parent is the current
  item, take the one that starts the longest chain (ties: lowest commit id); repeat.
- **Orphans** (eligible commits not on the main chain) follow the tip, sorted by
  ``(parent height, id)``. The height of an item is the number of known commits on its ancestry
  path (``item_0`` and unknown items: 0), counted over every commit passed in, excluded or not,
  so a chain built on an excluded commit keeps its inner order.
- An orphan leaves the order when an eligible commit of the *same author* ``supersedes`` it; a
  ``supersedes`` that names a main-chain commit (or another author's) is ignored, so nobody can
  pull history out from under others. Supersession never moves the main chain.
- The item chain runs on through the orphans: ``items[k]`` names the composite after the first
  ``k`` commits of the order, whatever their ``parent``.

``forge_order(genesis, records)`` applies the roster (membership, revocation) and then
``order_commits``, which works on a small structural view of a commit (``Entry``). ``OrderBook``
keeps the same answer incrementally: a commit that extends the tip is appended in O(orphans);
anything else recomputes from scratch. Property tests hold the two against each other.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from crypto.records import Commit, Genesis, Record
from crypto.roster import Roster


def root_item(network_id: bytes) -> bytes:
    """``item_0``: the empty composite of this network."""
    return hashlib.sha256(network_id).digest()


def chain_item(previous: bytes, commit_id: bytes) -> bytes:
    """The item after applying ``commit_id`` to the composite named ``previous``."""
    return hashlib.sha256(previous + commit_id).digest()


@dataclass(frozen=True)
class Entry:
    """What the order needs of a commit: its id, author, seq and links, and the item it creates
    on top of its parent, hashed once here since the order asks for it on every step."""

    id: bytes
    author: bytes
    seq: int
    parent: bytes
    supersedes: bytes | None = None
    item: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "item", chain_item(self.parent, self.id))

    @classmethod
    def of(cls, commit: Commit) -> Entry:
        # No memo: ``Commit.id`` is cached on the record itself (crypto.records), and the
        # rest costs a few microseconds, once per commit per core.
        return cls(commit.id, commit.author.raw, commit.seq, commit.parent, commit.supersedes)


@dataclass(frozen=True)
class Order:
    """The applied order: main chain, then orphans; ``items[k]`` names the composite after
    ``commits[:k]`` (``items[0]`` is ``item_0``). ``tip`` is the main chain's last item: the
    parent a new commit names, searched against ``commits[:main_length]``."""

    commits: tuple[bytes, ...]
    items: tuple[bytes, ...]
    main_length: int
    superseded: frozenset[bytes] = frozenset()
    excluded: frozenset[bytes] = frozenset()
    flagged: frozenset[bytes] = frozenset()

    @property
    def tip(self) -> bytes:
        return self.items[self.main_length]

    @property
    def head(self) -> bytes:
        """The item of the whole order: the name of the composite every node folds."""
        return self.items[-1]

    @property
    def main(self) -> tuple[bytes, ...]:
        return self.commits[: self.main_length]

    @property
    def orphans(self) -> tuple[bytes, ...]:
        return self.commits[self.main_length :]


def _items(root: bytes, commits: Iterable[bytes]) -> tuple[bytes, ...]:
    items = [root]
    for commit_id in commits:
        items.append(chain_item(items[-1], commit_id))
    return tuple(items)


def equivocations(entries: Iterable[Entry]) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """(flagged authors, excluded commit ids): every (author, seq) signed more than once."""
    seen: dict[tuple[bytes, int], set[bytes]] = defaultdict(set)
    for entry in entries:
        seen[(entry.author, entry.seq)].add(entry.id)
    clashes = [(author, ids) for (author, _), ids in seen.items() if len(ids) > 1]
    return (
        frozenset(author for author, _ in clashes),
        frozenset(i for _, ids in clashes for i in ids),
    )


def _chain_lengths(
    children: Mapping[bytes, list[Entry]], roots: Iterable[Entry]
) -> dict[bytes, int]:
    """Length of the longest chain that starts with each commit (iterative: no recursion limit)."""
    length: dict[bytes, int] = {}
    stack = [(entry, False) for entry in roots]
    while stack:
        entry, expanded = stack.pop()
        below = children.get(entry.item, [])
        if expanded:
            length[entry.id] = 1 + max((length[c.id] for c in below), default=0)
        elif entry.id not in length:
            stack.append((entry, True))
            stack.extend((c, False) for c in below)
    return length


def _main_chain(root: bytes, eligible: Iterable[Entry]) -> list[Entry]:
    children: dict[bytes, list[Entry]] = defaultdict(list)
    for entry in eligible:
        children[entry.parent].append(entry)
    length = _chain_lengths(children, children.get(root, []))
    chain: list[Entry] = []
    item = root
    while children.get(item):
        best = min(children[item], key=lambda e: (-length[e.id], e.id))
        chain.append(best)
        item = best.item
    return chain


def _heights(entries: Mapping[bytes, Entry]) -> dict[bytes, int]:
    """Height of every item some known commit creates (item_0 and unknown items: 0)."""
    by_item = {e.item: e for e in entries.values()}
    height: dict[bytes, int] = {}
    for start in by_item:
        path: list[bytes] = []
        item = start
        while item in by_item and item not in height:
            path.append(item)
            item = by_item[item].parent
        base = height.get(item, 0)
        for k, step in enumerate(reversed(path), start=1):
            height[step] = base + k
    return height


def order_commits(
    root: bytes, entries: Iterable[Entry], *, revoked: frozenset[bytes] = frozenset()
) -> Order:
    """The order of ``entries`` (commits their authors may sign) on top of ``root``."""
    known = {e.id: e for e in entries}
    flagged, clashing = equivocations(known.values())
    excluded = clashing | (revoked & known.keys())
    eligible = {i: e for i, e in known.items() if i not in excluded}
    main = _main_chain(root, eligible.values())
    on_main = {e.id for e in main}
    superseded = frozenset(
        e.supersedes
        for e in eligible.values()
        if e.supersedes in eligible
        and e.supersedes not in on_main
        and eligible[e.supersedes].author == e.author
        and e.supersedes != e.id
    )
    height = _heights(known)
    orphans = sorted(
        (e for i, e in eligible.items() if i not in on_main and i not in superseded),
        key=lambda e: (height.get(e.parent, 0), e.id),
    )
    commits = tuple(e.id for e in main) + tuple(e.id for e in orphans)
    return Order(commits, _items(root, commits), len(main), superseded, excluded, flagged)


def forge_order(genesis: Genesis, records: Iterable[Record]) -> Order:
    """The order of the valid commits in ``records``: roster first, then ``order_commits``."""
    records = list(records)
    roster = Roster.from_records(genesis, records)
    commits = [r for r in records if isinstance(r, Commit)]
    allowed = [c for c in commits if roster.may_author(c.author, c.seq)]
    revoked = frozenset(c.id for c in allowed if roster.is_revoked(c))
    return order_commits(
        root_item(genesis.network_id), (Entry.of(c) for c in allowed), revoked=revoked
    )


@dataclass
class OrderBook:
    """``order_commits`` kept up to date one commit at a time.

    The fast path appends a commit that extends the tip when nothing else can move: its
    (author, seq) is new, nothing already names its item as parent, it is not revoked and it
    supersedes no orphan. Then the main chain just grows by one (it stays the longest, and its
    tie-breaks are unchanged), the orphans and their sort keys stay as they were, and only the
    item names after the tip are recomputed. Anything else recomputes from scratch.

    ``add(..., defer=True)`` (a restart: the store's commits come back in no chain order, so
    almost none takes the fast path, and recomputing after each is O(N^2) over a restore)
    only records the commit; ``order`` is then stale until ``settle()`` or the next plain
    ``add``/``set_revoked`` recomputes it once.
    """

    root: bytes
    entries: dict[bytes, Entry] = field(default_factory=dict)
    revoked: frozenset[bytes] = frozenset()
    order: Order = field(init=False)
    _signed: set[tuple[bytes, int]] = field(default_factory=set, repr=False)
    _parents: set[bytes] = field(default_factory=set, repr=False)
    _stale: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._signed.update((e.author, e.seq) for e in self.entries.values())
        self._parents.update(e.parent for e in self.entries.values())
        self.order = Order((), (self.root,), 0)
        self.recompute()

    def add(self, entry: Entry, *, defer: bool = False) -> Order:
        if entry.id in self.entries:
            return self.order
        fast = not self._stale and not defer and self._extends_tip(entry)
        self.entries[entry.id] = entry
        self._signed.add((entry.author, entry.seq))
        self._parents.add(entry.parent)
        if defer:
            self._stale = True
        elif fast:
            self.order = self._appended(entry)
        else:
            self.recompute()
        return self.order

    def settle(self) -> Order:
        """``order`` up to date after deferred adds (a no-op when it is)."""
        return self.recompute() if self._stale else self.order

    def set_revoked(self, revoked: frozenset[bytes]) -> Order:
        if revoked != self.revoked:
            self.revoked = revoked
            self.recompute()
        return self.order

    def recompute(self) -> Order:
        self.order = order_commits(self.root, self.entries.values(), revoked=self.revoked)
        self._stale = False
        return self.order

    def _extends_tip(self, entry: Entry) -> bool:
        order = self.order
        return (
            entry.parent == order.tip
            and (entry.author, entry.seq) not in self._signed
            and entry.item not in self._parents
            and entry.id not in self.revoked
            and (entry.supersedes is None or entry.supersedes not in order.orphans)
        )

    def _appended(self, entry: Entry) -> Order:
        order = self.order
        main = order.main + (entry.id,)
        commits = main + order.orphans
        items = order.items[: order.main_length + 1] + _items(entry.item, order.orphans)
        return Order(commits, items, len(main), order.superseded, order.excluded, order.flagged)
