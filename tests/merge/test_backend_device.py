"""Devices (``merge.pipeline.device``): specs resolve or fail with a typed error before a model
loads; ``cpu`` and ``auto`` (on this CPU-only machine) give exactly today's outputs; on CUDA,
what training and distillation return is CPU float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_fixtures import tiny_bert, tiny_text_backend, toy_records

from merge.pipeline.backends import load_backend
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.device import Precision, check_spec, device_of, resolve_device
from merge.pipeline.distill import DistillConfig, distill
from merge.pipeline.errors import DeviceError, DeviceUnavailableError
from merge.pipeline.evaluate import model_probs
from merge.pipeline.train import TrainConfig, train_plugin

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device; none here")
no_cuda = pytest.mark.skipif(CUDA, reason="this machine has CUDA: the refusal cannot be seen")
QUICK = TrainConfig.quick(batch_size=8)
WEIGHTS = "adapter_model.safetensors"


def on(device: str) -> TextBackend:
    """The tiny text base of the fixtures, its model on ``device``."""
    base = tiny_text_backend()
    return TextBackend(tiny_bert(), base.tokenizer, name="tiny-bert", device=device)


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_well_formed_specs_pass_the_syntax_check(spec: str) -> None:
    assert check_spec(spec) == spec


@pytest.mark.parametrize("spec", ["", "gpu", "CUDA", "cuda:", "cuda:x", "cpu:0", " cpu"])
def test_malformed_specs_are_a_device_error(spec: str) -> None:
    with pytest.raises(DeviceError, match="not one of"):
        resolve_device(spec)


def test_cpu_resolves_and_a_resolved_device_resolves_to_itself() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    auto = resolve_device("auto")
    assert resolve_device(auto) == auto
    mps = torch.backends.mps.is_available()
    assert auto.type == ("cuda" if CUDA else "mps" if mps else "cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_an_absent_cuda_is_refused_with_the_reason(spec: str) -> None:
    with pytest.raises(DeviceUnavailableError, match=f"device '{spec}' is not available"):
        resolve_device(spec)


@no_cuda
def test_an_absent_device_fails_before_any_model_loads(tmp_path: Path) -> None:
    # the path holds no model: were it read first, the error would be UnsupportedBaseError
    with pytest.raises(DeviceUnavailableError):
        load_backend("clip", str(tmp_path / "nothing"), device="cuda")
    with pytest.raises(DeviceUnavailableError):
        TextBackend.from_pretrained(str(tmp_path / "nothing"), device="cuda")


def test_cpu_precision_is_float32_with_nothing_around_it() -> None:
    precision = Precision.for_device(torch.device("cpu"))
    assert (precision.dtype, precision.name, precision.scaler()) == (None, "float32", None)
    with precision.autocast():
        assert not torch.is_autocast_enabled()


def test_a_backend_says_where_it_runs() -> None:
    assert on("cpu").device == torch.device("cpu")
    assert device_of(on("cpu")) == torch.device("cpu")
    assert device_of(object()) == torch.device("cpu")  # a fake with no device: the CPU


@pytest.mark.parametrize("spec", ["cpu", "auto"])
def test_cpu_and_auto_train_and_distil_exactly_as_the_default(spec: str, tmp_path: Path) -> None:
    if spec == "auto" and resolve_device("auto").type != "cpu":
        pytest.skip("auto is not the CPU on this machine")
    records = toy_records()
    default = train_plugin(
        tiny_text_backend(), records, task="toy", out=tmp_path / "d", config=QUICK
    )
    chosen = train_plugin(on(spec), records, task="toy", out=tmp_path / "c", config=QUICK)
    assert (chosen.out / WEIGHTS).read_bytes() == (default.out / WEIGHTS).read_bytes()
    assert (chosen.device, chosen.precision) == ("cpu", "float32")
    config = DistillConfig.quick(ipc=2)
    a = distill(tiny_text_backend(), records, task="toy", config=config).distilled
    b = distill(on(spec), records, task="toy", config=config).distilled
    assert torch.equal(a.inputs, b.inputs)


@needs_cuda
def test_cuda_training_saves_a_cpu_float32_adapter(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    backend = on("cuda")
    config = TrainConfig.quick(batch_size=8, steps=3)
    result = train_plugin(backend, toy_records(), task="toy", out=tmp_path / "p", config=config)
    assert result.device.startswith("cuda")
    assert result.precision in ("bf16-autocast", "fp16-autocast")
    tensors = load_file(str(result.out / WEIGHTS))
    assert tensors
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors.values())
    report = distill(backend, toy_records(), task="toy", config=DistillConfig.quick(ipc=2))
    inputs = report.distilled.inputs
    assert (inputs.device.type, inputs.dtype) == ("cpu", torch.float32)
    probs = model_probs(backend, None, toy_records().items[:4], ("fracture", "infection"))
    assert (probs.device.type, probs.dtype) == ("cpu", torch.float32)
