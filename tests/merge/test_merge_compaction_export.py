"""Exports of compacted composites: PEFT adapters (per-module SVD) and merged full models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from merge_fixtures import LIMITS, TinyNet, base_shapes, make_peft_adapter
from peft import PeftModel
from pipeline_fixtures import tiny_text_backend

from merge.compaction import Compaction
from merge.dense import DenseModule
from merge.errors import ModeError
from merge.export import cap_rank, export_peft
from merge.fold import Composite, apply, delta_weights, empty, fold
from merge.lora import LoraAdapter, LoraModule, load_adapter
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.merged import merged_model, save_merged

torch.set_num_threads(1)
X = torch.randn(7, 12, generator=torch.Generator().manual_seed(99))
COEFFS = [(1.0, 0.8), (0.9, -0.6), (1.1, 1.3)]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> list[LoraAdapter]:
    root = tmp_path_factory.mktemp("adapters")
    made = [make_peft_adapter(root / f"p{k}", k + 1, r=3) for k in range(3)]
    return [load_adapter(p, base=None, limits=LIMITS, shapes=base_shapes(TinyNet())) for p in made]


def _forward(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(X)
    assert isinstance(out, torch.Tensor)
    return out


def engine_forward(c: Composite) -> torch.Tensor:
    base = TinyNet()
    linears = dict(base.named_modules())
    params = {f"{n}.weight": linears[n].weight + dw for n, dw in delta_weights(c.modules).items()}
    with torch.no_grad():
        out = torch.func.functional_call(base, params, (X,), strict=False)
    assert isinstance(out, torch.Tensor)
    return out


def test_a_compacted_composite_exports_as_a_peft_adapter(
    adapters: list[LoraAdapter], tmp_path: Path
) -> None:
    # enc.q/enc.v (12×12, crossover at rank 6) turn dense at the second commit; head (5×12,
    # crossover 60/17 -> rank 4) too.
    c = fold("stack", zip(adapters, COEFFS, strict=True), compaction=Compaction())
    assert all(isinstance(m, DenseModule) for m in c.modules.values())
    out = export_peft(c, tmp_path / "compacted")
    torch.testing.assert_close(
        _forward(PeftModel.from_pretrained(TinyNet(), str(out))), engine_forward(c)
    )
    back = load_adapter(out, base=None, limits=LIMITS, shapes=base_shapes(TinyNet()))
    # No max_rank: each module at its numerical rank (here the rank of the exact sum, 9 and 5).
    assert {n: m.rank for n, m in back.modules.items()} == {"enc.q": 9, "enc.v": 9, "head": 5}
    for name, dw in delta_weights(back.modules).items():
        torch.testing.assert_close(dw, delta_weights(c.modules)[name], rtol=0, atol=1e-5)


def test_a_dense_module_is_capped_by_its_own_svd(adapters: list[LoraAdapter]) -> None:
    c = fold("stack", zip(adapters, COEFFS, strict=True), compaction=Compaction())
    capped = cap_rank(c.modules, 2)
    for name, m in c.modules.items():
        assert isinstance(m, DenseModule)
        s = torch.linalg.svdvals(m.W.double())
        err = torch.linalg.matrix_norm(capped[name].B.double() @ capped[name].A.double() - m.W)
        assert capped[name].rank == 2
        # Eckart–Young: the best rank-2 error is the norm of the other singular values.
        torch.testing.assert_close(err, s[2:].norm(), rtol=1e-4, atol=1e-6)


def test_a_low_rank_dense_module_exports_at_its_numerical_rank() -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(12, 3, generator=g) @ torch.randn(3, 12, generator=g)
    exported = cap_rank({"enc.q": DenseModule(w)}, 10)["enc.q"]
    assert exported.rank == 3  # float32 noise is not exported as rank
    zero = cap_rank({"enc.q": DenseModule(torch.zeros(12, 12))}, 10)["enc.q"]
    assert zero.rank == 1
    assert not bool(zero.B.any())


# --- the merged full model ------------------------------------------------------------------


def _text_composite(backend: TextBackend) -> Composite:
    linears = dict(backend.model.named_modules())
    names = [n for n in sorted(linears) if n.endswith((".query", ".value"))]
    g = torch.Generator().manual_seed(7)
    c = empty("stack")
    for k in range(3):
        mods = {}
        for n in names:
            out, inp = linears[n].weight.shape
            a, b = torch.randn(8, inp, generator=g), torch.randn(out, 8, generator=g) * 0.05
            mods[n] = LoraModule(A=a, B=b)
        c = apply(c, LoraAdapter("tiny", mods), (0.9, 0.6 + k / 10), compaction=Compaction(8))
    assert all(isinstance(m, DenseModule) for m in c.modules.values())  # rank 16 > 8
    return c


def test_the_merged_model_loads_with_transformers_and_is_base_plus_delta(tmp_path: Path) -> None:
    backend = tiny_text_backend()
    c = _text_composite(backend)
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    out = save_merged(backend, c, tmp_path / "merged")
    assert all(torch.equal(v, before[k]) for k, v in backend.model.state_dict().items())
    loaded = TextBackend.from_pretrained(str(out))  # transformers' AutoModel + AutoTokenizer
    ids = backend.prepare(["broken femur", "fever and pus", "a lung mass"])
    with torch.no_grad():
        want = backend.encode_inputs(ids, delta_weights(c.modules))
        base = backend.encode_inputs(ids)
        got = loaded.encode_inputs(ids)
    assert not torch.allclose(want, base, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (out / "tokenizer_config.json").is_file()


def test_a_mixture_has_no_merged_model(adapters: list[LoraAdapter]) -> None:
    mixture = apply(empty("mixture"), adapters[0], (1.0, 1.0))
    with pytest.raises(ModeError, match="mixture"):
        merged_model(tiny_text_backend(), mixture)
