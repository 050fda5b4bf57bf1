"""Issue 15, exports people can use: `medforge merge --export` and `medforge export` on a real
tiny BERT base, read back by PEFT itself (one adapter, and a mixture through PEFT's
multi-adapter API), with a model card whose loader snippet runs as written."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import trio
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModel

from merge.digest import composite_digest
from merge.fold import Composite, delta_weights
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.evaluate import model_probs
from node.cli import main as cli
from node.forge.sources import read_bundles, read_export
from node.shell.home import Home
from node.shell.runner import run_node
from node.shell.service import NodeService
from node.shell.transport import MemoryNetwork, MemoryTransport
from tests.conftest import write_distilled
from tests.merge.pipeline_fixtures import save_tiny_text
from tests.node.cli.test_cli_compaction import _tiny_bert_plugin
from tests.node.shell.test_service import FAST, _commit

TASKS = {"fracture": ("broken bone", "intact bone"), "oncology": ("benign", "malignant", "none")}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@dataclass
class Net:
    root: Path
    model: Path  # the tiny BERT the genesis names
    fingerprint: str
    network_id: str
    bundles: list[Path]


def _network(root: Path, mode: str, capsys: pytest.CaptureFixture[str]) -> Net:
    """alice and bob on a `mode` network over a tiny BERT; alice commits "fracture", bob
    "oncology" (bundles made offline, as `medforge commit --coeffs` does)."""
    model = save_tiny_text(root / "tiny")
    for name in ("alice", "bob"):
        _cli(capsys, "init", "--home", str(root / name), "--name", name)
    (root / "bob.json").write_text(_cli(capsys, "id", "--home", str(root / "bob"), "--json"))
    argv = ["network", "create", "--home", str(root / "alice"), "--name", "oncology"]
    argv += ["--member", str(root / "bob.json"), "--base", str(model)]
    _cli(capsys, *argv, "--mode", mode, "--out", str(root / "genesis.cbor"))
    _cli(capsys, "network", "join", "--home", str(root / "bob"), str(root / "genesis.cbor"))
    genesis = Home(root / "alice").genesis()
    fingerprint = str(genesis.spec["base"])
    bundles = []
    for k, (who, task, coeffs) in enumerate(
        [("alice", "fracture", ("1", "0.8")), ("bob", "oncology", ("0.7", "0.55"))]
    ):
        plugin = _tiny_bert_plugin(root / f"plugin-{who}", fingerprint, seed=k)
        distilled = write_distilled(
            root / f"{task}.safetensors", TASKS[task], task=task, base=fingerprint, width=32
        )
        argv = ["commit", "--home", str(root / who), "--adapter", str(plugin), "--distilled"]
        argv += [str(distilled), "--task", task, "--coeffs", *coeffs]
        _cli(capsys, *argv, "--out", str(root / f"bundle-{who}"))
        bundles.append(root / f"bundle-{who}")
    return Net(root, model, fingerprint, genesis.network_id.hex(), bundles)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _front_matter(card: str) -> dict[str, Any]:
    """The card's YAML front matter (written as JSON scalars, so read here without YAML)."""
    head = card.split("---\n")[1]
    out: dict[str, Any] = {"tags": []}
    for line in head.splitlines():
        if line.startswith("- "):
            out["tags"].append(json.loads(line[2:]))
        elif not line.endswith(":"):
            key, value = line.split(": ", 1)
            out[key] = json.loads(value) if value.startswith('"') else value
    return out


def _snippet_probs(out: Path, monkeypatch: pytest.MonkeyPatch, classes: tuple[str, ...]) -> Any:
    """Run the card's loader snippet as a user would, from inside the export folder."""
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S)
    assert code is not None
    source = re.sub(r"CLASSES = .*", f"CLASSES = {json.dumps(list(classes))}", code.group(1))
    source = source.replace('["an example to classify"]', json.dumps(TEXTS))
    monkeypatch.chdir(out)
    scope: dict[str, Any] = {}
    exec(compile(source, str(out / "README.md"), "exec"), scope)
    return scope["probs"]


TEXTS = ["broken femur", "lymphoma", "fever and pus"]


def test_an_adapter_export_names_its_base_and_its_tasks_and_loads_in_peft(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _network(tmp_path, "stack", capsys)
    bundles = [str(b) for b in net.bundles]
    out = tmp_path / "export"
    result = json.loads(_cli(capsys, "merge", *bundles, "--export", str(out), "--json"))
    assert sorted(_files(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(net.model)  # what from_pretrained loads
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        assert f.metadata()["base"] == net.fingerprint
    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert (front["library_name"], front["base_model"]) == ("peft", str(net.model))
    assert {"medforge", "lora", "stack", "text"} <= set(front["tags"])
    for needle in (net.network_id, result["digest"], net.fingerprint, "offline merge"):
        assert needle in card
    assert "| fracture | broken bone, intact bone |" in card
    assert "| oncology | benign, malignant, none |" in card
    assert re.search(r"\| 1 \| alice \| fracture \| 1 \| 0\.8 \|", card)
    assert re.search(r"\| 2 \| bob \| oncology \| 0\.7 \| 0\.55 \|", card)
    assert "PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), EXPORT)" in card

    # PEFT reads it onto the base the config names: the composite's ΔW, as medforge applies it.
    source = read_bundles(net.bundles)
    assert isinstance(source.model, Composite)
    peft = PeftModel.from_pretrained(AutoModel.from_pretrained(str(net.model)), str(out)).eval()
    backend = TextBackend.from_pretrained(str(net.model))
    ids = backend.prepare(TEXTS)
    with torch.no_grad():
        want = backend.encode_inputs(ids, delta_weights(source.model.modules))
        torch.testing.assert_close(backend.features(peft, ids), want, rtol=1e-5, atol=1e-5)
    # The card's snippet, run as written, gives medforge's probabilities.
    classes = TASKS["oncology"]
    got = _snippet_probs(out, monkeypatch, classes)
    torch.testing.assert_close(got, model_probs(backend, source.model, TEXTS, classes))

    again = tmp_path / "again"
    _cli(capsys, "merge", *bundles, "--export", str(again))
    assert _files(again) == _files(out)  # the same composite: the same bytes, card included


def test_a_mixture_export_loads_every_member_through_peft_multi_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _network(tmp_path, "mixture", capsys)
    bundles = [str(b) for b in net.bundles]
    out = tmp_path / "export"
    _cli(capsys, "merge", *bundles, "--export", str(out))
    source = read_bundles(net.bundles)
    composite = source.model
    assert isinstance(composite, Composite)
    assert composite.mode == "mixture"
    assert sorted(_files(out)) == [
        "README.md",
        *(
            f"member{k}/{f}"
            for k in (0, 1)
            for f in ("adapter_config.json", "adapter_model.safetensors")
        ),
        "mixture.json",
    ]
    mixture = json.loads((out / "mixture.json").read_text())
    members = mixture["members"]
    weights = composite.weights
    assert [m["lambda"] for m in members] == [w / sum(weights) for w in weights]
    assert math.fsum(m["lambda"] for m in members) == pytest.approx(1.0, abs=1e-15)
    assert [float.fromhex(m["weight_hex"]) for m in members] == list(weights)
    assert [(m["adapter_name"], m["dir"], m["task"], tuple(m["classes"])) for m in members] == [
        ("m0", "member0", "fracture", TASKS["fracture"]),
        ("m1", "member1", "oncology", TASKS["oncology"]),
    ]
    assert mixture["tasks"] == {t: list(cs) for t, cs in TASKS.items()}
    assert mixture["digest"] == source.digest
    assert mixture["base"] == net.fingerprint
    assert mixture["base_model_name_or_path"] == str(net.model)
    # Read back by medforge: the very composite (its weights from their hex).
    assert composite_digest(read_export(out).model) == source.digest  # type: ignore[arg-type]

    card = (out / "README.md").read_text()
    assert _front_matter(card)["base_model"] == str(net.model)
    assert 'adapter_name="m0"' in card
    assert 'model.load_adapter(f"{EXPORT}/member1"' in card
    assert "| `m1` | `member1/` | oncology |" in card

    # PEFT's multi-adapter API: both members on one base, each as medforge applies it.
    backend = TextBackend.from_pretrained(str(net.model))
    ids = backend.prepare(TEXTS)
    base = AutoModel.from_pretrained(str(net.model))
    peft = PeftModel.from_pretrained(base, str(out / "member0"), adapter_name="m0")
    peft.load_adapter(str(out / "member1"), adapter_name="m1")
    peft.eval()
    for k, member in enumerate(composite.members):
        peft.set_adapter(f"m{k}")
        with torch.no_grad():
            want = backend.encode_inputs(ids, delta_weights(member.modules))
            torch.testing.assert_close(backend.features(peft, ids), want, rtol=1e-5, atol=1e-5)
    # The card's snippet mixes with the normalised weights: medforge's own P over Σ weight.
    classes = TASKS["oncology"]
    got = _snippet_probs(out, monkeypatch, classes)
    want = model_probs(backend, composite, TEXTS, classes) / sum(weights)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(len(TEXTS)))

    again = tmp_path / "again"
    _cli(capsys, "merge", *bundles, "--export", str(again))
    assert _files(again) == _files(out)


async def test_a_running_nodes_export_names_its_forge_item_and_authors(
    tmp_path: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_text(tmp_path / "tiny")
    _cli(capsys, "init", "--home", str(tmp_path / "alice"), "--name", "alice")
    argv = ["network", "create", "--home", str(tmp_path / "alice"), "--name", "ward"]
    _cli(capsys, *argv, "--base", str(model), "--mode", "mixture")
    home = Home(tmp_path / "alice")
    fingerprint = str(home.genesis().spec["base"])
    distilled = write_distilled(tmp_path / "d.safetensors", base=fingerprint, width=32)
    node = NodeService(
        home, transport=MemoryTransport(MemoryNetwork(), home.identity().private_bytes(), FAST)
    )
    await nursery.start(run_node, node)
    for k, coeffs in enumerate([(1.0, 1.0), (0.8, 0.6)]):
        plugin = _tiny_bert_plugin(tmp_path / f"p{k}", fingerprint, seed=k)
        commit, blobs = _commit(home, plugin, distilled, node.core.tip, coeffs)
        await node.publish(commit, blobs)
        with trio.fail_after(60):
            await node.wait_until(
                lambda n, k=k: len(n.core.order.commits) == k + 1 and n.core.digest is not None
            )

    # The node holds no member's tensors: the export reads each from the store.
    assert all(m.deferred for m in node.composer.composite.members)
    outs = [tmp_path / "export", tmp_path / "again"]
    for out in outs:
        argv = ["export", "--home", str(home.path), "--out", str(out), "--json"]
        assert await trio.to_thread.run_sync(cli, argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["forge_item"], result["digest"]) == (2, node.composer.digest)
        assert (result["base_model"], result["card"]) == (str(model), "README.md")
    assert _files(outs[0]) == _files(outs[1])
    card = (outs[0] / "README.md").read_text()
    assert "# ward: forge item v2 (mixture)" in card
    assert "| forge item | v2 |" in card
    assert node.composer.digest in card
    assert home.genesis().network_id.hex() in card
    assert re.search(r"\| 1 \| alice \| task-alice \| 1 \| 1 \|", card)
    assert re.search(r"\| 2 \| alice \| task-alice \| 0\.8 \| 0\.6 \|", card)
    assert "| task-alice | a, b |" in card
    mixture = json.loads((outs[0] / "mixture.json").read_text())
    assert (mixture["forge_item"], mixture["network"]) == (2, "ward")
    assert [m["author"] for m in mixture["members"]] == ["alice", "alice"]
    for k in (0, 1):
        config = json.loads((outs[0] / f"member{k}" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(model)
    node.stop()
