"""Export: real PEFT adapters in, fold, PEFT adapter out, loaded back by PEFT itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from merge_fixtures import LIMITS, TinyNet, base_shapes, make_peft_adapter, random_adapter
from peft import PeftModel

from merge.digest import composite_digest
from merge.errors import ModeError
from merge.export import cap_rank, export_peft, peft_files
from merge.fold import Composite, apply, delta_weights, empty, fold, single_task
from merge.lora import LoraModule, load_adapter

torch.set_num_threads(1)
X = torch.randn(7, 12, generator=torch.Generator().manual_seed(99))


def engine_forward(c: Composite) -> torch.Tensor:
    """The base model with W + ΔW swapped in for this call (the engine's own view)."""
    base = TinyNet()
    params = {
        f"{n}.weight": dict(base.named_modules())[n].weight + dw
        for n, dw in delta_weights(c.modules).items()
    }
    with torch.no_grad():
        out = torch.func.functional_call(base, params, (X,), strict=False)
    assert isinstance(out, torch.Tensor)
    return out


def peft_forward(path: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(TinyNet(), str(path))
    model.eval()
    with torch.no_grad():
        out = model(X)
    assert isinstance(out, torch.Tensor)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> list:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("adapters")
    made = [
        make_peft_adapter(root / "alice", 1, r=4),
        make_peft_adapter(root / "bob", 2, r=2, targets=("enc.q", "head"), use_rslora=True),
        make_peft_adapter(root / "carol", 3, r=3, targets=("enc.v",), lora_alpha=5),
    ]
    shapes = base_shapes(TinyNet())
    return [load_adapter(p, base=None, limits=LIMITS, shapes=shapes) for p in made]


@pytest.mark.parametrize("mode", ["stack", "fusion"])
def test_exported_composite_loads_in_peft_and_matches_the_engine(
    mode: str,
    adapters: list,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    c = fold(mode, zip(adapters, [(1.0, 0.8), (0.9, -0.6), (1.1, 1.3)], strict=True))
    out = export_peft(c, tmp_path / "composite")
    assert not torch.allclose(engine_forward(c), engine_forward(empty(mode)))
    torch.testing.assert_close(peft_forward(out), engine_forward(c), rtol=1e-5, atol=1e-5)
    # Our loader reads the export back bit-exactly (scale alpha/r = 1.0, patterns escaped).
    again = load_adapter(out, base=None, limits=LIMITS, shapes=base_shapes(TinyNet()))
    assert composite_digest(single_task("stack", again)) == composite_digest(
        Composite("stack", modules=c.modules)
    )


def test_stack_export_has_the_summed_ranks_per_module(
    adapters: list,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    c = fold("stack", [(a, (1.0, 1.0)) for a in adapters])
    assert {n: m.rank for n, m in c.modules.items()} == {"enc.q": 6, "enc.v": 7, "head": 6}
    out = export_peft(c, tmp_path / "s", base="tiny")
    config = (out / "adapter_config.json").read_text()
    assert '"enc\\\\.v": 7' in config


def test_rank_capped_export_is_the_optimal_truncation_of_the_exact_sum(
    adapters: list,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    c = fold("stack", zip(adapters, [(1.0, 0.8), (0.9, -0.6), (1.1, 1.3)], strict=True))
    exact = delta_weights(c.modules)
    lossless = cap_rank(c.modules, 12)  # a cap above every rank changes nothing
    assert all(lossless[n] is c.modules[n] for n in c.modules)
    for name, m in cap_rank(c.modules, 12, recompress=True).items():
        assert m.rank == min(c.modules[name].rank, *c.modules[name].shape)  # head: out=5 < 6
        rel = (m.B @ m.A - exact[name]).norm() / exact[name].norm()
        assert float(rel) < 1e-5
    capped = cap_rank(c.modules, 2)
    for name, dw in delta_weights(capped).items():
        assert capped[name].rank == 2
        s = torch.linalg.svdvals(exact[name].double())
        optimal = float(s[2:].square().sum().sqrt())
        err = float(torch.linalg.matrix_norm(dw.double() - exact[name].double()))
        assert err == pytest.approx(optimal, rel=1e-4, abs=1e-6)
    out = export_peft(c, tmp_path / "capped", max_rank=2)
    capped_c = Composite("stack", modules=capped)
    torch.testing.assert_close(peft_forward(out), engine_forward(capped_c), rtol=1e-5, atol=1e-5)


def test_cap_at_the_numerical_rank_is_lossless() -> None:
    # Five commits of the same rank-4 plugin: stacked rank 20, numerical rank 4.
    one = random_adapter(5, {"w": (64, 48)}, {"w": 4})
    c = fold("stack", [(one, (1.0, w)) for w in (0.5, -0.25, 1.5, 0.125, 1.0)])
    assert c.modules["w"].rank == 20
    dw = delta_weights(c.modules)["w"]
    capped = cap_rank(c.modules, 4)["w"]
    assert capped.rank == 4
    assert float((capped.B @ capped.A - dw).norm() / dw.norm()) < 1e-6


def test_mixture_and_empty_composites_do_not_export(tmp_path: Path) -> None:
    one = random_adapter(1, {"w": (4, 4)}, {"w": 2})
    with pytest.raises(ModeError, match="mixture"):
        export_peft(apply(empty("mixture"), one, (1.0, 1.0)), tmp_path / "m")
    with pytest.raises(ModeError, match="empty"):
        export_peft(empty("stack"), tmp_path / "e")


def test_the_export_is_one_byte_string_however_often_it_is_written() -> None:
    """safetensors keeps metadata in a hash map whose order changes from call to call: the
    export writes a canonical header, so equal composites give equal files."""
    g = torch.Generator().manual_seed(7)
    modules = {
        f"m{k}": LoraModule(A=torch.randn(2, 8, generator=g), B=torch.randn(8, 2, generator=g))
        for k in range(3)
    }
    c = Composite("stack", modules=modules)
    files = {peft_files(c, base="c1" * 32) for _ in range(8)}
    assert len(files) == 1


def test_the_config_names_a_loadable_base_and_the_metadata_its_fingerprint(
    adapters: list,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    """``base_model_name_or_path`` is what ``from_pretrained`` loads; the fingerprint stays
    the safetensors ``"base"``, which the loader checks."""
    from safetensors import safe_open

    from merge.errors import BaseMismatchError

    c = fold("stack", [(a, (1.0, 1.0)) for a in adapters])
    out = export_peft(c, tmp_path / "named", base="c1" * 32, model="org/tiny-net")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-net"
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        assert f.metadata()["base"] == "c1" * 32
    assert load_adapter(out, base="c1" * 32, limits=LIMITS).base == "c1" * 32
    with pytest.raises(BaseMismatchError):
        load_adapter(out, base="d2" * 32, limits=LIMITS)
    # Without a model the fingerprint is all there is to name (as before).
    config, _ = peft_files(c, base="c1" * 32)
    assert json.loads(config)["base_model_name_or_path"] == "c1" * 32
