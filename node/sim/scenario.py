"""A simulation scenario: every knob, with defaults, from options or a TOML file.

Each key's meaning is the ``doc`` in its field's metadata, and ``ADVERSARIES`` says what each
adversary kind does: that is the one source of truth that ``node.sim.schema`` renders for
``medforge simulate --help`` and docs/simulator.md (with an example TOML). A TOML file sets any
of the keys below at its top level, ``[[partitions]]`` tables, a ``[churn]`` table and an
``[adversaries]`` table; every key is optional and unknown keys are refused.

The default ``mode`` is ``medforge network create``'s default (``stack``), so a simulated
network merges as a real one made with default options does.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node.errors import ScenarioError

# what each adversary kind does (node/sim/adversaries.py); the TOML's [adversaries] counts them
ADVERSARIES = {
    "forged": "sends commits that name a member as author but carry its own signature",
    "equivocate": "a member that signs two commits with one sequence number, one to each half "
    "of its neighbours",
    "invalid": "a member that publishes a commit whose adapter fails validation (NaN)",
    "oversized": "a member that sends a commit declaring an adapter over the genesis limit",
    "replay": "re-sends every record it holds, again and again, then one signed for another "
    "network",
    "garbage": "sends random bytes",
    "withhold": "relays records but never answers a blob request",
}
ADVERSARY_KINDS = tuple(ADVERSARIES)
TOPOLOGIES = ("random-regular", "small-world", "line", "star", "file")
MODES = ("stack", "fusion", "mixture")  # merge.spec.MODES; stack first: the network's default
DOC = "doc"  # the metadata key of a field's meaning


def _key(default: Any, doc: str) -> Any:
    """A scenario key: its default and what it means (read by ``node.sim.schema``)."""
    return field(default=default, metadata={DOC: doc})


@dataclass(frozen=True)
class Partition:
    start: float = field(metadata={DOC: "virtual second at which the network splits in two"})
    end: float = field(metadata={DOC: "virtual second at which it heals"})
    fraction: float = _key(0.5, "fraction of the nodes (drawn at random) on one side")


@dataclass(frozen=True)
class Churn:
    fraction: float = _key(0.0, "fraction of the plain honest nodes that leave for a while")
    start: float = _key(20.0, "virtual second at which they leave")
    duration: float = _key(100.0, "virtual seconds until they come back")
    late: float = _key(0.0, "fraction of the plain honest nodes that join only at late_at")
    late_at: float = _key(150.0, "virtual second at which the late nodes join")


@dataclass(frozen=True)
class Scenario:
    nodes: int = _key(50, "number of nodes (at least 2), authors and adversaries included")
    topology: str = _key("random-regular", "random-regular | small-world | line | star | file")
    degree: int = _key(4, "links per node (random-regular, small-world)")
    rewire: float = _key(0.1, "small-world: probability that a ring link is rewired")
    topology_file: str = _key(
        "", "edge list for topology = 'file': 'a b [latency_s]' per line, nodes from 0"
    )
    latency: str = _key(
        "uniform:0.02:0.1", "one-way seconds per link: fixed:X | uniform:A:B | lognormal:MU:SIGMA"
    )
    loss: float = _key(0.0, "probability that a message or blob transfer is lost (below 1)")
    bandwidth: float = _key(10e6, "bytes per second per link direction")
    mode: str = _key("stack", "merge mode: stack (as network create) | fusion | mixture")
    commits: int = _key(20, "commits the authors make, in turn, one every commit_interval")
    authors: int = _key(10, "honest members that make the commits (at least 1)")
    commit_interval: float = _key(5.0, "virtual seconds between commits (plus a random jitter)")
    start: float = _key(1.0, "virtual second of the first commit")
    search_time: float = _key(2.0, "virtual seconds an author takes to re-search a rebase")
    adapter_bytes: int = _key(64 * 1024, "size of each commit's adapter blob (bytes)")
    distilled_bytes: int = _key(32 * 1024, "size of each commit's distilled-data blob (bytes)")
    config_bytes: int = _key(512, "size of the adapter config blob, shared by all (bytes)")
    duration: float = _key(600.0, "virtual seconds simulated")
    sync_interval: float = _key(30.0, "anti-entropy period of every node (virtual seconds)")
    fetch_timeout: float = _key(10.0, "seconds a node waits for a blob before another holder")
    rebase_delay: float = _key(5.0, "seconds before an author rebases an orphaned own commit")
    partitions: tuple[Partition, ...] = field(
        default=(), metadata={DOC: "times the network splits in two and heals"}
    )
    churn: Churn = field(
        default_factory=Churn, metadata={DOC: "nodes that leave and come back, or join late"}
    )
    adversaries: dict[str, int] = field(
        default_factory=dict, metadata={DOC: "how many nodes cheat in each way (kind = count)"}
    )

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ScenarioError("nodes: at least 2")
        if self.topology not in TOPOLOGIES:
            raise ScenarioError(f"topology: one of {TOPOLOGIES}")
        if self.topology == "file" and not self.topology_file:
            raise ScenarioError("topology_file: required with topology = 'file'")
        if self.mode not in MODES:
            raise ScenarioError(f"mode: one of {MODES}")
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


def from_mapping(data: Mapping[str, Any], base: Scenario | None = None) -> Scenario:
    """A scenario from a TOML-shaped mapping, on top of ``base`` (defaults if None)."""
    values = _checked(Scenario, data, "")
    if "partitions" in values:
        if not isinstance(values["partitions"], list | tuple):
            raise ScenarioError("partitions: an array of tables ([[partitions]])")
        values["partitions"] = tuple(
            Partition(**_checked(Partition, p, f"partitions[{k}].", table=True))
            for k, p in enumerate(values["partitions"])
        )
    if "churn" in values:
        values["churn"] = Churn(**_checked(Churn, values["churn"], "churn.", table=True))
    if "adversaries" in values:
        values["adversaries"] = _counts(values["adversaries"])
    return replace(base or Scenario(), **values)


_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}


def _checked(cls: type, data: Any, where: str, *, table: bool = False) -> dict[str, Any]:
    """``data``'s keys, known to ``cls`` and of their field's type (ints made floats where a
    float is due); ``table``: every key without a default must be there."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where.rstrip('.')}: a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ScenarioError(f"unknown scenario keys {sorted(where + k for k in unknown)}")
    values = dict(data)
    for name, value in data.items():
        kind = str(known[name].type)
        allowed = _SCALARS.get(kind)
        if allowed is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            raise ScenarioError(f"{where}{name}: expected {kind}, got {value!r}")
        if kind == "float":
            values[name] = float(value)
    missing = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
    if table and set(missing) - set(data):
        raise ScenarioError(f"{where}{sorted(set(missing) - set(data))[0]}: required")
    return values


def _counts(data: Any) -> dict[str, int]:
    if not isinstance(data, Mapping):
        raise ScenarioError(f"adversaries: a table of kind = count, got {data!r}")
    for kind, count in data.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ScenarioError(f"adversaries.{kind}: a count >= 0, got {count!r}")
    return {str(k): v for k, v in data.items()}


def load(path: Path, base: Scenario | None = None) -> Scenario:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    return from_mapping(data, base)
