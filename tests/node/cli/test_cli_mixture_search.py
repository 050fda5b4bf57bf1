"""A mixture network's share search through the real CLI (issue 12): `network create --mode
mixture` searches shares by default, and `medforge commit` against a running node then
commits the new member's share of a convex mixture, ``(1 - s, s)``; `--mixture-search paper`
keeps the paper's search and exactly the spec bytes a mixture network had before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crypto.records import Commit, decode_record
from merge.spec import MergeSpec
from node.cli import main as cli
from node.forge.netspec import merge_spec
from node.shell.home import Home
from tests.conftest import write_distilled
from tests.merge.pipeline_fixtures import save_tiny_text
from tests.node import procs
from tests.node.cli.test_cli_compaction import _tiny_bert_plugin

CLASSES = ("benign", "malignant", "none")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _create(
    capsys: pytest.CaptureFixture[str], root: Path, name: str, model: Path, *flags: str
) -> tuple[int, str, str]:
    home = root / name
    assert cli(["init", "--home", str(home), "--name", name]) == 0
    capsys.readouterr()
    argv = ["network", "create", "--home", str(home), "--name", name, "--base", str(model)]
    return _run(capsys, *argv, *flags)


def _commit(
    capsys: pytest.CaptureFixture[str], home: Home, k: int, distilled: Path
) -> tuple[Commit, dict[str, Any]]:
    fingerprint = str(home.genesis().spec["base"])
    plugin = _tiny_bert_plugin(home.path.parent / f"plugin{k}", fingerprint, seed=k)
    out = home.path.parent / f"bundle{k}"
    argv = ["commit", "--home", str(home.path), "--adapter", str(plugin), "--distilled"]
    code, stdout, err = _run(
        capsys, *argv, str(distilled), "--task", "onco", "--out", str(out), "--json"
    )
    assert code == 0, err
    record = decode_record((out / "commit.cbor").read_bytes())
    assert isinstance(record, Commit)
    return record, json.loads(stdout)


def test_a_mixture_network_commits_each_members_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_text(tmp_path / "tiny")
    code, _, err = _create(capsys, tmp_path, "alice", model, "--mode", "mixture")
    assert code == 0, err
    home = Home(tmp_path / "alice")
    assert merge_spec(home.genesis()).search.mixture_search == "shares"
    assert (
        "merge mixture, shares search"
        in _run(capsys, "network", "show", "--home", str(home.path))[1]
    )

    fingerprint = str(home.genesis().spec["base"])
    distilled = write_distilled(
        tmp_path / "onco.safetensors", CLASSES, task="onco", base=fingerprint, width=32
    )
    node = procs.start(home, [])
    first, _ = _commit(capsys, home, 0, distilled)
    assert first.coeffs == (1.0, 1.0)  # the first member is the whole mixture
    second, report = _commit(capsys, home, 1, distilled)
    w1, s = second.coeffs
    assert second.parent != first.parent  # searched onto the node's tip, which holds `first`
    assert report["objective"]["evaluations"] > 0  # a real search ran
    assert 0.0 <= s <= 0.5  # the keep range [0.5, 1] bounds the newcomer's share
    assert w1 == 1.0 - s  # a share: the weights stay a distribution
    procs.stop([node])


def test_the_papers_search_stays_available_and_only_a_mixture_has_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_text(tmp_path / "tiny")
    code, out, err = _create(
        capsys, tmp_path, "paper", model, "--mode", "mixture", "--mixture-search", "paper", "--json"
    )
    assert code == 0, err
    # exactly the merge spec (so the kind of network id) a mixture network had before
    assert json.loads(out)["spec"]["merge"] == MergeSpec(mode="mixture").to_dict()
    code, _, err = _create(capsys, tmp_path, "stacked", model, "--mixture-search", "shares")
    assert code == 2
    assert "mixture only" in err
    assert not (tmp_path / "stacked" / "genesis.cbor").exists()
