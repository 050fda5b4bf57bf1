"""A simulation scenario: every knob, with defaults, from options or a TOML file.

TOML layout (every key optional; unknown keys are refused)::

    nodes = 50
    topology = "random-regular"   # random-regular | small-world | line | star | file
    degree = 4
    topology_file = "edges.txt"   # "a b [latency_seconds]" per line, nodes numbered from 0
    latency = "uniform:0.02:0.1"  # seconds per link: fixed:X | uniform:A:B | lognormal:MU:SIGMA
    loss = 0.0                    # probability that a message or transfer is lost
    bandwidth = 10e6              # bytes/s per link direction
    commits = 20                  # how many commits the authors make, one every commit_interval
    authors = 10
    commit_interval = 5.0
    duration = 600.0              # virtual seconds simulated

    [[partitions]]                # the network splits in two and heals
    start = 30.0
    end = 90.0
    fraction = 0.5

    [churn]                       # a fraction of the nodes leaves for a while and comes back
    fraction = 0.1
    start = 20.0
    duration = 100.0
    late = 0.05                   # a fraction joins only at `late_at`
    late_at = 150.0

    [adversaries]                 # how many nodes behave this way (see adversaries.py)
    forged = 1
    equivocate = 1
    invalid = 1
    oversized = 1
    replay = 1
    garbage = 1
    withhold = 1
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node.errors import ScenarioError

ADVERSARY_KINDS = ("forged", "equivocate", "invalid", "oversized", "replay", "garbage", "withhold")
TOPOLOGIES = ("random-regular", "small-world", "line", "star", "file")


@dataclass(frozen=True)
class Partition:
    start: float
    end: float
    fraction: float = 0.5


@dataclass(frozen=True)
class Churn:
    fraction: float = 0.0
    start: float = 20.0
    duration: float = 100.0
    late: float = 0.0
    late_at: float = 150.0


@dataclass(frozen=True)
class Scenario:
    nodes: int = 50
    topology: str = "random-regular"
    degree: int = 4
    rewire: float = 0.1
    topology_file: str = ""
    latency: str = "uniform:0.02:0.1"
    loss: float = 0.0
    bandwidth: float = 10e6
    mode: str = "fusion"
    commits: int = 20
    authors: int = 10
    commit_interval: float = 5.0
    start: float = 1.0
    search_time: float = 2.0
    adapter_bytes: int = 64 * 1024
    distilled_bytes: int = 32 * 1024
    config_bytes: int = 512
    duration: float = 600.0
    sync_interval: float = 30.0
    fetch_timeout: float = 10.0
    rebase_delay: float = 5.0
    partitions: tuple[Partition, ...] = ()
    churn: Churn = field(default_factory=Churn)
    adversaries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ScenarioError("nodes: at least 2")
        if self.topology not in TOPOLOGIES:
            raise ScenarioError(f"topology: one of {TOPOLOGIES}")
        if self.topology == "file" and not self.topology_file:
            raise ScenarioError("topology_file: required with topology = 'file'")
        if not 0 <= self.loss < 1:
            raise ScenarioError("loss: a probability below 1")
        if self.bandwidth <= 0 or self.duration <= 0 or self.commit_interval < 0:
            raise ScenarioError("bandwidth and duration must be > 0, commit_interval >= 0")
        unknown = set(self.adversaries) - set(ADVERSARY_KINDS)
        if unknown:
            raise ScenarioError(f"adversaries: unknown kinds {sorted(unknown)}")
        bad = sum(self.adversaries.values())
        if self.authors < 1 or self.authors + bad > self.nodes:
            raise ScenarioError("authors: at least 1, and authors + adversaries <= nodes")
        parse_latency(self.latency)

    def blob_sizes(self) -> dict[str, int]:
        return {
            "adapter_config": self.config_bytes,
            "adapter_model": self.adapter_bytes,
            "distilled": self.distilled_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partitions"] = [asdict(p) for p in self.partitions]
        data["adversaries"] = dict(sorted(self.adversaries.items()))
        return data


def parse_latency(spec: str) -> tuple[str, tuple[float, ...]]:
    kind, _, rest = spec.partition(":")
    try:
        params = tuple(float(x) for x in rest.split(":")) if rest else ()
    except ValueError as exc:
        raise ScenarioError(f"latency: cannot read {spec!r}") from exc
    expected = {"fixed": 1, "uniform": 2, "lognormal": 2}
    if expected.get(kind) != len(params) or any(p < 0 for p in params[:1]):
        raise ScenarioError("latency: fixed:X | uniform:A:B | lognormal:MU:SIGMA")
    return kind, params


def from_mapping(data: dict[str, Any], base: Scenario | None = None) -> Scenario:
    """A scenario from a TOML-shaped mapping, on top of ``base`` (defaults if None)."""
    base = base or Scenario()
    known = {f.name for f in fields(Scenario)}
    unknown = set(data) - known
    if unknown:
        raise ScenarioError(f"unknown scenario keys {sorted(unknown)}")
    values = dict(data)
    try:
        if "partitions" in values:
            values["partitions"] = tuple(Partition(**p) for p in values["partitions"])
        if "churn" in values:
            values["churn"] = Churn(**values["churn"])
        if "adversaries" in values:
            values["adversaries"] = {str(k): int(v) for k, v in values["adversaries"].items()}
        return replace(base, **values)
    except TypeError as exc:
        raise ScenarioError(str(exc)) from exc


def load(path: Path, base: Scenario | None = None) -> Scenario:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    return from_mapping(data, base)
