"""Seeded topologies and the distances a lower bound needs.

Rules: every generator takes a ``random.Random`` (never the global one), returns undirected
edges as sorted ``(a, b)`` pairs in a deterministic order, and retries until the graph is
connected. ``file`` reads a measured topology: ``a b [latency_seconds]`` per line.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict, deque
from collections.abc import Iterable
from pathlib import Path

from node.errors import ScenarioError
from node.sim.scenario import Scenario, parse_latency

Edge = tuple[int, int]


def build(s: Scenario, rng: random.Random) -> dict[Edge, float]:
    """Edges with their one-way latency in seconds."""
    if s.topology == "file":
        return _from_file(Path(s.topology_file), s, rng)
    for _ in range(100):
        edges = _generate(s, rng)
        if edges is not None and connected(s.nodes, edges):
            return {e: latency(s.latency, rng) for e in sorted(edges)}
    raise ScenarioError(f"could not build a connected {s.topology} graph of {s.nodes} nodes")


def latency(spec: str, rng: random.Random) -> float:
    kind, p = parse_latency(spec)
    if kind == "fixed":
        return p[0]
    if kind == "uniform":
        return rng.uniform(p[0], p[1])
    return rng.lognormvariate(p[0], p[1])


def _generate(s: Scenario, rng: random.Random) -> set[Edge] | None:
    n = s.nodes
    if s.topology == "line":
        return {(i, i + 1) for i in range(n - 1)}
    if s.topology == "star":
        return {(0, i) for i in range(1, n)}
    if s.topology == "small-world":
        return _small_world(n, s.degree, s.rewire, rng)
    return _random_regular(n, min(s.degree, n - 1), rng)


def _random_regular(n: int, d: int, rng: random.Random) -> set[Edge] | None:
    """Steger-Wormald pairing: pair free stubs at random, keep the suitable pairs, retry."""
    if n * d % 2:
        d -= 1
    edges: set[Edge] = set()
    stubs = [i for i in range(n) for _ in range(d)]
    while stubs:
        left: dict[int, int] = defaultdict(int)
        rng.shuffle(stubs)
        for u, v in zip(stubs[::2], stubs[1::2], strict=True):
            pair = (min(u, v), max(u, v))
            if u != v and pair not in edges:
                edges.add(pair)
            else:
                left[u] += 1
                left[v] += 1
        free = sorted(left)
        if free and not any((a, b) not in edges for i, a in enumerate(free) for b in free[i + 1 :]):
            return None
        stubs = [node for node in free for _ in range(left[node])]
    return edges


def _small_world(n: int, k: int, p: float, rng: random.Random) -> set[Edge]:
    """Watts-Strogatz: a ring where each node links k/2 neighbours each side, then rewiring."""
    edges = {
        (min(i, (i + j) % n), max(i, (i + j) % n))
        for i in range(n)
        for j in range(1, max(1, k // 2) + 1)
    }
    for edge in sorted(edges):
        if rng.random() < p:
            a = edge[0]
            b = rng.randrange(n)
            new = (min(a, b), max(a, b))
            if b != a and new not in edges:
                edges.discard(edge)
                edges.add(new)
    return edges


def _from_file(path: Path, s: Scenario, rng: random.Random) -> dict[Edge, float]:
    edges: dict[Edge, float] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        try:
            a, b = int(parts[0]), int(parts[1])
            lat = float(parts[2]) if len(parts) > 2 else latency(s.latency, rng)
        except (ValueError, IndexError) as exc:
            raise ScenarioError(f"{path}:{number}: expected 'a b [latency]'") from exc
        if not (0 <= a < s.nodes and 0 <= b < s.nodes) or a == b:
            raise ScenarioError(f"{path}:{number}: node out of range 0..{s.nodes - 1}")
        edges[(min(a, b), max(a, b))] = lat
    if not connected(s.nodes, edges):
        raise ScenarioError(f"{path}: the topology is not connected")
    return dict(sorted(edges.items()))


def neighbours(n: int, edges: Iterable[Edge]) -> list[list[int]]:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in sorted(edges):
        adj[a].append(b)
        adj[b].append(a)
    return adj


def connected(n: int, edges: Iterable[Edge]) -> bool:
    return len(hops_from(0, neighbours(n, edges))) == n


def hops_from(start: int, adj: list[list[int]]) -> dict[int, int]:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def diameter(adj: list[list[int]], rng: random.Random, exact_below: int = 300) -> int:
    """Hop diameter: exact for small graphs, else a double sweep from a few random nodes (a
    lower bound on the diameter, and usually exact on these graphs)."""
    n = len(adj)
    if n <= exact_below:
        return max(max(hops_from(u, adj).values()) for u in range(n))
    best = 0
    for _ in range(4):
        dist = hops_from(rng.randrange(n), adj)
        far = max(dist, key=lambda v: (dist[v], v))
        best = max(best, max(hops_from(far, adj).values()))
    return best


def latency_eccentricity(start: int, adj: list[list[int]], lat: dict[Edge, float]) -> float:
    """The longest shortest-latency path from ``start`` (Dijkstra)."""
    dist = {start: 0.0}
    heap = [(0.0, start)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        for v in adj[u]:
            nd = d + lat[(min(u, v), max(u, v))]
            if nd < dist.get(v, float("inf")):
                dist[v] = nd
                heapq.heappush(heap, (nd, v))
    return max(dist.values())
