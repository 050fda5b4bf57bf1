"""Per-module coefficients on the node side (issue 12): what every node refuses, and that
every composer applies a schema 2 commit's pairs to the same bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from crypto.identity import Identity
from crypto.records import Commit, Genesis, Member
from merge.digest import composite_digest
from merge.errors import SpecError
from merge.fold import apply, empty
from merge.groups import ModuleCoeffs
from node.errors import InvalidCommit
from node.forge.bundle import blob_ref
from node.forge.composer import Composer
from node.forge.netspec import check_spec, make_spec, merge_spec
from node.forge.synthetic import Folds, tiny_adapter
from node.forge.validate import Rules, check_commit
from tests.conftest import BASE, TINY_SHAPES, write_distilled

Pairs = Mapping[str, tuple[float, float]]
ME = Identity.from_seed(b"\x05" * 32)


def network(mode: str = "stack", groups: str = "target") -> Genesis:
    spec = make_spec(mode, BASE, TINY_SHAPES, groups=groups)
    return Genesis("groups", (Member("me", ME.public),), 1, spec, f"{mode}-{groups}")


@pytest.fixture
def blobs(tmp_path: Path, make_adapter: Callable[..., Path]) -> list[dict[str, bytes]]:
    distilled = write_distilled(tmp_path / "d.safetensors").read_bytes()
    out = []
    for k in range(2):
        path = make_adapter(f"p{k}", seed=20 + k, rank=2 + k)
        out.append(
            {
                "adapter_config": (path / "adapter_config.json").read_bytes(),
                "adapter_model": (path / "adapter_model.safetensors").read_bytes(),
                "distilled": distilled,
            }
        )
    return out


def commit(
    genesis: Genesis,
    seq: int,
    blobs: dict[str, bytes],
    coeffs: tuple[float, float],
    pairs: Pairs | None = None,
) -> Commit:
    return Commit.create(
        ME,
        network=genesis.network_id,
        seq=seq,
        task=f"t{seq}",
        classes=("a", "b"),
        base=BASE,
        blobs={k: blob_ref(v) for k, v in blobs.items()},
        parent=b"\0" * 32,
        coeffs=coeffs,
        objective={},
        module_coeffs=pairs,
    )


def verdict(genesis: Genesis, c: Commit, blobs: dict[str, bytes]) -> str:
    try:
        check_commit(c, blobs, Rules.of(genesis))
    except InvalidCommit as exc:
        return str(exc).split(":")[0]
    return "valid"


def test_rules_name_the_groups_of_the_base() -> None:
    rules = Rules.of(network())
    assert (rules.mode, rules.groups, rules.group_names) == (
        "stack",
        "target",
        frozenset({"q", "v", "head"}),
    )
    plain = Rules.of(network(groups="none"))
    assert (plain.groups, plain.group_names) == ("none", frozenset())


@pytest.mark.parametrize(
    ("mode", "groups", "pairs", "expected"),
    [
        ("stack", "target", {"q": (0.75, -0.5), "head": (1.0, 1.5)}, "valid"),
        ("fusion", "target", {"v": (0.5, 0.0)}, "valid"),
        ("stack", "target", {"k": (1.0, 1.0)}, "UnknownGroup"),
        ("stack", "target", {"q": (1.0, 1.0), "layer.0": (1.0, 1.0)}, "UnknownGroup"),
        ("stack", "target", {"q": (0.25, 1.0)}, "CoefficientBound"),  # w1 below keep_min
        ("stack", "target", {"q": (1.25, 1.0)}, "CoefficientBound"),  # w1 above keep_max
        ("stack", "target", {"q": (1.0, -1.75)}, "CoefficientBound"),  # |w2| over the bound
        ("stack", "target", {"v": (1.0, 1e39)}, "CoefficientBound"),
        ("stack", "none", {"q": (1.0, 1.0)}, "GroupsDisabled"),
        ("fusion", "none", {"q": (1.0, 1.0)}, "GroupsDisabled"),
        ("mixture", "none", {"q": (1.0, 1.0)}, "GroupsInMixture"),
    ],
)
def test_what_every_node_refuses_in_module_coeffs(
    blobs: list[dict[str, bytes]], mode: str, groups: str, pairs: Pairs, expected: str
) -> None:
    genesis = network(mode, groups)
    assert verdict(genesis, commit(genesis, 0, blobs[0], (1.0, 0.5), pairs), blobs[0]) == expected


def test_the_scalar_pair_is_still_checked_beside_the_groups(blobs: list[dict[str, bytes]]) -> None:
    genesis = network()
    bad = commit(genesis, 0, blobs[0], (0.0, 0.5), {"q": (1.0, 1.0)})
    assert verdict(genesis, bad, blobs[0]) == "CoefficientBound"


def test_schema_1_commits_stay_valid_on_a_grouped_network(blobs: list[dict[str, bytes]]) -> None:
    genesis = network()
    plain = commit(genesis, 0, blobs[0], (1.0, 0.5))
    assert plain.version() == 1
    assert verdict(genesis, plain, blobs[0]) == "valid"


def composer(genesis: Genesis, store: dict[bytes, bytes]) -> Composer:
    return Composer(merge_spec(genesis), Rules.of(genesis), store.__getitem__)


@pytest.mark.parametrize("mode", ["stack", "fusion"])
def test_composers_apply_module_coeffs_identically(
    blobs: list[dict[str, bytes]], mode: str
) -> None:
    genesis = network(mode)
    store = {blob_ref(v).sha256: v for b in blobs for v in b.values()}
    first = commit(genesis, 0, blobs[0], (1.0, 1.0))
    pairs = {"q": (0.75, -0.25), "v": (0.5, 1.25)}
    grouped = commit(genesis, 1, blobs[1], (0.9, 0.5), pairs)
    assert grouped.version() == 2
    one, two = composer(genesis, store), composer(genesis, store)
    one.update([first])
    digest = one.update([first, grouped])  # incremental: only the new step
    assert two.update([first, grouped]) == digest  # a fresh composer refolds from empty
    # It is the fold with the commit's pairs, under the network's grouping.
    a1, a2 = (two.adapter(c) for c in (first, grouped))
    want = apply(apply(empty(mode), a1, (1.0, 1.0)), a2, (0.9, 0.5), ModuleCoeffs("target", pairs))
    assert digest == composite_digest(want)
    assert digest != composite_digest(apply(apply(empty(mode), a1, (1.0, 1.0)), a2, (0.9, 0.5)))


def test_pairs_equal_to_the_scalar_give_the_schema_1_digest(blobs: list[dict[str, bytes]]) -> None:
    genesis = network()
    store = {blob_ref(v).sha256: v for b in blobs for v in b.values()}
    first = commit(genesis, 0, blobs[0], (1.0, 1.0))
    every = dict.fromkeys(("q", "v", "head"), (0.9, 0.5))
    v2 = commit(genesis, 1, blobs[1], (0.9, 0.5), every)
    v1 = commit(genesis, 1, blobs[1], (0.9, 0.5))
    assert v1.id != v2.id
    assert composer(genesis, store).update([first, v2]) == composer(genesis, store).update(
        [first, v1]
    )


def test_check_spec_refuses_groups_no_commit_could_name() -> None:
    check_spec(make_spec("stack", BASE, TINY_SHAPES, groups="target"))
    check_spec(make_spec("stack", BASE, TINY_SHAPES))
    with pytest.raises(SpecError, match="no module of the base"):
        check_spec(make_spec("stack", BASE, TINY_SHAPES, groups="layer"))  # q, v, head
    with pytest.raises(SpecError, match="mixture"):
        make_spec("mixture", BASE, TINY_SHAPES, groups="target")


def test_genesis_network_ids_of_specs_without_groups_are_unchanged() -> None:
    """Computed by the code before module groups existed (commit c65f077): a spec at the
    default grouping keeps its bytes, so every network created before keeps its id."""
    member = Member("alice", Identity.from_seed(b"\x07" * 32).public)
    pinned = {
        "fusion": "1af16adc6c80b5d0ef45be20bfac602123576de5a12f5edac84c3d810fec90c5",
        "stack": "b1fbbd9f7c47fb2f829f0adc68a6f9511451e8d85bdbec6306fd97ab36b23926",
        "mixture": "09aa052259a64ae628510d0c04ffe97ba917fd930e044c2d437576b7a9813750",
    }
    for mode, network_id in pinned.items():
        genesis = Genesis("pin", (member,), 1, make_spec(mode, "ab" * 32, TINY_SHAPES), "pin")
        assert genesis.network_id.hex() == network_id
        assert merge_spec(genesis).search.groups == "none"
    grouped = make_spec("stack", "ab" * 32, TINY_SHAPES, groups="target")
    assert Genesis("pin", (member,), 1, grouped, "pin").network_id.hex() != pinned["stack"]


def test_the_simulators_folds_pass_group_pairs_through() -> None:
    pairs = {"encoder.layer.1": (0.5, 0.25)}
    folds = Folds("stack", groups="layer")
    keys = [b"0", b"1", b"2"]
    steps = [(1, (1.0, 1.0)), (2, (0.75, 0.5), pairs)]
    digest = folds.digest(keys, lambda j: steps[j])
    want = apply(
        apply(empty("stack"), tiny_adapter(1), (1.0, 1.0)),
        tiny_adapter(2),
        (0.75, 0.5),
        ModuleCoeffs("layer", pairs),
    )
    assert digest == composite_digest(want)
    plain = Folds("stack").digest(keys, lambda j: steps[j][:2])
    assert plain != digest
