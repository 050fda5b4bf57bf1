"""The validity function is pure: (record bytes, blobs, genesis) -> verdict, the same in any
order, in any process, on any number of threads; and what it refuses, it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.records import Commit, Genesis, Member, decode_record
from node.errors import InvalidCommit, MissingBlobs
from node.forge.netspec import make_spec
from node.forge.validate import Rules, check_commit
from node.shell.home import Home
from tests.conftest import BASE, TINY_SHAPES
from tests.node.e2e.test_invalid_commits import bad_commits, sign

ROOT = Path(__file__).resolve().parents[3]
Case = tuple[Commit, dict[str, bytes]]


def verdict(commit: Commit, blobs: dict[str, bytes], rules: Rules) -> str:
    try:
        check_commit(commit, blobs, rules)
    except InvalidCommit as exc:
        return str(exc)
    return "valid"


@pytest.fixture
def cases(tmp_path: Path, make_adapter: Callable[..., Path]) -> tuple[Genesis, list[Case]]:
    home = Home.init(tmp_path / "mallory", "mallory")
    genesis = Genesis(
        name="pure",
        members=(Member("mallory", home.identity().public),),
        threshold=1,
        spec=make_spec("stack", BASE, TINY_SHAPES),
        nonce="p",
    )
    home.join(genesis)
    variants = bad_commits(make_adapter("a", seed=5), tmp_path)
    good = next(iter(variants.values()))[0] | {
        "adapter_model": (make_adapter("b", seed=5) / "adapter_model.safetensors").read_bytes()
    }
    all_cases = [*variants.values(), (good, (0.5, 1.25))]
    out = []
    for seq, (blobs, coeffs) in enumerate(all_cases):
        out.append((sign(home, seq, b"\0" * 32, blobs, coeffs), blobs))
    return genesis, out


def test_each_check_names_what_failed(cases: tuple[Genesis, list[Case]]) -> None:
    genesis, found = cases
    rules = Rules.of(genesis)
    kinds = [verdict(c, b, rules).split(":")[0] for c, b in found]
    assert kinds == [
        "NonFiniteError",
        "NonFiniteError",
        "ShapeError",
        "BaseMismatchError",
        "ShapeError",
        "LimitError",
        "DistilledError",
        "DistilledError",
        "DistilledError",
        "AdapterFormatError",
        "CoefficientBound",
        "CoefficientBound",
        "valid",
    ]


def test_bytes_that_are_not_the_commits_blobs_are_a_mismatch_not_a_verdict(
    cases: tuple[Genesis, list[Case]],
) -> None:
    genesis, found = cases
    commit, blobs = found[-1]
    swapped = {**blobs, "adapter_model": found[0][1]["adapter_model"]}
    with pytest.raises(MissingBlobs) as caught:
        check_commit(commit, swapped, Rules.of(genesis))
    assert caught.value.shas == (commit.blobs["adapter_model"].sha256,)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(13)))
def test_the_verdict_does_not_depend_on_order(
    cases: tuple[Genesis, list[Case]], order: list[int]
) -> None:
    genesis, found = cases
    rules = Rules.of(genesis)
    reference = [verdict(c, b, rules) for c, b in found]
    shuffled = {k: verdict(*found[k], rules) for k in order}
    assert [shuffled[k] for k in range(len(found))] == reference


_CHILD = """
import json, sys, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[2]))
from crypto.records import decode_record
from node.errors import InvalidCommit
from node.forge.validate import Rules, check_commit
root = Path(sys.argv[1])
genesis = decode_record((root / "genesis.cbor").read_bytes())
rules = Rules.of(genesis)
out = []
for case in sorted(root.glob("case-*")):
    commit = decode_record((case / "commit.cbor").read_bytes())
    blobs = {k: (case / k).read_bytes() for k in ("adapter_config", "adapter_model", "distilled")}
    try:
        check_commit(commit, blobs, rules)
        out.append("valid")
    except InvalidCommit as exc:
        out.append(str(exc))
print(json.dumps(out))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_the_verdict_is_the_same_in_another_process(
    cases: tuple[Genesis, list[Case]], tmp_path: Path, threads: int
) -> None:
    genesis, found = cases
    root = tmp_path / "cases"
    root.mkdir()
    (root / "genesis.cbor").write_bytes(genesis.encode())
    for k, (commit, blobs) in enumerate(found):
        case = root / f"case-{k:02d}"
        case.mkdir()
        (case / "commit.cbor").write_bytes(commit.encode())
        for kind, data in blobs.items():
            (case / kind).write_bytes(data)
    env = {**os.environ, "PYTHONHASHSEED": str(threads * 7)}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(threads)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    rules = Rules.of(genesis)
    mine = [verdict(decode_record(c.encode()), b, rules) for c, b in found]  # type: ignore[arg-type]
    assert json.loads(child.stdout) == mine
