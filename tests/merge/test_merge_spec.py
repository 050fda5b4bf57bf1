"""The merge spec (carried by genesis) and the offline merge entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from merge_fixtures import make_peft_adapter

from merge.digest import composite_digest
from merge.errors import BaseMismatchError, SpecError
from merge.fold import fold
from merge.lora import load_adapter
from merge.offline import merge_paths
from merge.spec import Limits, MergeSpec, SearchSettings


def test_defaults_are_the_papers_search_settings() -> None:
    s = MergeSpec().search
    assert (s.budget, s.init, s.bound, s.l1) == (40, 0.5, 1.5, 0.05)


def test_round_trip_through_plain_json_values() -> None:
    spec = MergeSpec(
        mode="stack", search=SearchSettings(seed=3, objective="paper"), limits=Limits(max_rank=32)
    )
    data = json.loads(json.dumps(spec.to_dict()))
    assert MergeSpec.from_dict(data) == spec
    assert MergeSpec.from_dict(data).to_dict() == spec.to_dict()


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = MergeSpec().to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mode",), "average"),
        (("mode",), 3),
        (("search", "budget"), 0),
        (("search", "budget"), 40.0),
        (("search", "budget"), True),
        (("search", "init"), 2.0),
        (("search", "bound"), float("inf")),
        (("search", "objective"), "ce"),
        (("search", "seed"), -1),
        (("search", "extra"), 1),
        (("search", "l1"), KeyError),
        (("limits", "max_norm"), float("nan")),
        (("limits", "max_rank"), 0),
        (("limits",), [1, 2]),
    ],
)
def test_from_dict_refuses_what_to_dict_never_writes(path: tuple[str, ...], value: Any) -> None:
    with pytest.raises(SpecError):
        MergeSpec.from_dict(_with(path, value))


def test_ints_are_accepted_for_floats() -> None:
    assert MergeSpec.from_dict(_with(("search", "bound"), 2)).search.bound == 2.0


def test_merge_paths_folds_validated_adapters(tmp_path: Path) -> None:
    paths = [make_peft_adapter(tmp_path / n, s, r=s + 1) for n, s in (("a", 1), ("b", 2))]
    coeffs = [(1.0, 1.0), (0.7, 0.4)]
    spec = MergeSpec(mode="stack")
    got = merge_paths(spec, list(zip(paths, coeffs, strict=True)))
    adapters = [load_adapter(p, base=None, limits=spec.limits) for p in paths]
    assert composite_digest(got) == composite_digest(
        fold("stack", zip(adapters, coeffs, strict=True))
    )


def test_merge_paths_refuses_mixed_bases(tmp_path: Path) -> None:
    a = make_peft_adapter(tmp_path / "a", 1)
    b = make_peft_adapter(tmp_path / "b", 2)
    for path, fingerprint in ((a, "cd" * 32), (b, "ab" * 32)):  # fingerprints: claims
        cfg = json.loads((path / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = fingerprint
        (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BaseMismatchError, match="abab"):
        merge_paths(MergeSpec(), [(a, (1.0, 1.0)), (b, (1.0, 1.0))])


# --- module groups (issue 12): a setting that old specs never wrote -----------------------

# Every key a merge spec had before module groups: a spec at the defaults still has exactly
# these, so its genesis bytes and network id are the ones it always had.
V1_SEARCH_KEYS = ["bound", "budget", "init", "keep_max", "keep_min", "l1", "objective", "seed"]


def test_a_spec_without_groups_has_exactly_its_old_keys() -> None:
    for mode in ("fusion", "stack", "mixture"):
        data = MergeSpec(mode=mode).to_dict()
        assert sorted(data) == ["limits", "mode", "search"]
        assert sorted(data["search"]) == V1_SEARCH_KEYS
        assert MergeSpec.from_dict(data).search.groups == "none"


def test_groups_round_trip_and_appear_only_when_set() -> None:
    spec = MergeSpec(mode="fusion", search=SearchSettings(groups="layer", group_budget=12))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["search"]["groups"] == "layer"
    assert data["search"]["group_budget"] == 12
    assert MergeSpec.from_dict(data) == spec
    only = MergeSpec(mode="stack", search=SearchSettings(groups="target")).to_dict()
    assert "group_budget" not in only["search"]
    assert MergeSpec.from_dict(only).search.groups == "target"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("search", "groups"), "none"),  # the default is written by leaving it out
        (("search", "group_budget"), 0),
        (("search", "groups"), "block"),
        (("search", "groups"), 1),
        (("search", "group_budget"), -1),
        (("search", "group_budget"), 4.0),
        (("search", "group_budget"), False),
    ],
)
def test_from_dict_refuses_group_settings_it_never_writes(
    path: tuple[str, ...], value: Any
) -> None:
    with pytest.raises(SpecError):
        MergeSpec.from_dict(_with(path, value))


def test_a_mixture_takes_no_module_groups() -> None:
    with pytest.raises(SpecError, match="mixture"):
        MergeSpec(mode="mixture", search=SearchSettings(groups="layer"))
    data = _with(("search", "groups"), "target")
    data["mode"] = "mixture"
    with pytest.raises(SpecError, match="mixture"):
        MergeSpec.from_dict(data)


# --- the mixture's share search (issue 12): optional, mixture only -------------------------


def test_a_mixture_spec_names_its_share_search_only_when_it_uses_it() -> None:
    spec = MergeSpec(mode="mixture", search=SearchSettings(mixture_search="shares"))
    data = json.loads(json.dumps(spec.to_dict()))
    assert sorted(data["search"]) == sorted([*V1_SEARCH_KEYS, "mixture_search"])
    assert MergeSpec.from_dict(data) == spec
    assert MergeSpec.from_dict(MergeSpec(mode="mixture").to_dict()).search.mixture_search == (
        "paper"
    )


@pytest.mark.parametrize("value", ["paper", "uniform", 1, None])
def test_from_dict_refuses_share_settings_it_never_writes(value: Any) -> None:
    data = MergeSpec(mode="mixture").to_dict()
    data["search"]["mixture_search"] = value
    with pytest.raises(SpecError):
        MergeSpec.from_dict(data)


def test_only_a_mixture_searches_shares() -> None:
    for mode in ("fusion", "stack"):
        with pytest.raises(SpecError, match="mixture only"):
            MergeSpec(mode=mode, search=SearchSettings(mixture_search="shares"))
