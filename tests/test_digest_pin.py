"""Digests pinned across refactors: the same adapters and coefficients give the same bytes.

The values were computed by the code before the redesign into layers (commit f6baf63) and
must never change unless the merge spec's version does: every deployed node would disagree
with every node built after such a change. Two paths: the offline fold (``medforge merge``)
and the node's composer over signed commits (what every node serves).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crypto.records import Genesis, Member
from merge.digest import composite_digest
from merge.lora_config import CONFIG_NAME, WEIGHTS_NAME
from merge.offline import merge_paths
from merge.spec import MergeSpec
from node.forge.bundle import blob_ref
from node.forge.composer import Composer
from node.forge.netspec import make_spec, merge_spec
from node.forge.validate import Rules
from node.shell.home import Home
from tests.conftest import BASE, TINY_SHAPES, write_distilled
from tests.node.e2e.test_invalid_commits import sign

COEFFS = ((1.0, 1.0), (0.75, 0.5), (0.5, 1.25))
PINNED = {
    "fusion": "7df9f25bd1be17f2a6f217e2af8b9970beb5f14263096820df9de5e9359cf603",
    "stack": "398a73353f439f22ecc892b785eee900063acd83644e48bc78772bf845a2c80c",
    "mixture": "f74b15adc2e34c1c33c41adc1781af3ac2237cf65fd08f8129768c1df00247e7",
}


@pytest.fixture
def adapters(make_adapter: Callable[..., Path]) -> list[Path]:
    return [make_adapter(f"p{k}", seed=10 + k, rank=1 + k) for k in range(len(COEFFS))]


@pytest.mark.parametrize("mode", sorted(PINNED))
def test_the_offline_fold_gives_the_pinned_digest(mode: str, adapters: list[Path]) -> None:
    composite = merge_paths(MergeSpec(mode=mode), list(zip(adapters, COEFFS, strict=True)))
    assert composite_digest(composite) == PINNED[mode]


@pytest.mark.parametrize("mode", sorted(PINNED))
def test_the_nodes_composer_gives_the_pinned_digest(
    mode: str, adapters: list[Path], tmp_path: Path
) -> None:
    home = Home.init(tmp_path / "mallory", "mallory")
    genesis = Genesis(
        name="pin",
        members=(Member("mallory", home.identity().public),),
        threshold=1,
        spec=make_spec(mode, BASE, TINY_SHAPES),
        nonce="pin",
    )
    home.join(genesis)
    distilled = write_distilled(tmp_path / "d.safetensors").read_bytes()
    store: dict[bytes, bytes] = {}
    commits = []
    for seq, (path, coeffs) in enumerate(zip(adapters, COEFFS, strict=True)):
        blobs = {
            "adapter_config": (path / CONFIG_NAME).read_bytes(),
            "adapter_model": (path / WEIGHTS_NAME).read_bytes(),
            "distilled": distilled,
        }
        store.update({blob_ref(data).sha256: data for data in blobs.values()})
        commits.append(sign(home, seq, b"\0" * 32, blobs, coeffs))
    composer = Composer(merge_spec(genesis), Rules.of(genesis), store.__getitem__)
    assert composer.update(commits) == PINNED[mode]
