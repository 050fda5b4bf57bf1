"""CLIP backend: MedForge's own setting. The image tower carries the plugin; the text tower
encodes class names (frozen); logits are ``exp(logit_scale) * cos``. Any ``CLIPModel``
checkpoint by path or cached id; images are resized and centre-cropped to the vision tower's
size (224 px for ViT-B/16) and normalised with the checkpoint's mean/std.

Paper defaults for the plugin: LoRA r=16, alpha 16, dropout 0.1 on the vision tower's
``q_proj``/``v_proj`` and on ``visual_projection`` (see ``TrainConfig.for_backend``).

The model sits on ``device`` (``merge.pipeline.device``). Pixels are prepared on the CPU and
moved there by ``features``, which returns its result where its inputs were; class-name
features are computed there and cached on the CPU. An in-memory ``CLIPModel`` works as well
as a checkpoint (``ClipBackend(model, tokenizer, name=...)``; ``scripts/bench_clip.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from merge.fingerprint import fingerprint_model
from merge.pipeline.backends.base import call_with_delta, unit
from merge.pipeline.device import resolve_device
from merge.pipeline.errors import UnsupportedBaseError

# OpenAI CLIP's normalisation, used when a checkpoint ships no preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vision_targets(model: nn.Module) -> tuple[str, ...]:
    """Full paths of the vision tower's q/v projections, plus ``visual_projection``.

    Full paths, not suffixes: ``q_proj`` alone would also match the frozen text tower."""
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and n.startswith("vision_model.")
        and n.rsplit(".", 1)[-1] in ("q_proj", "v_proj")
    ]
    return (*sorted(names), "visual_projection")


class ClipBackend:
    """A frozen ``CLIPModel`` seen as a :class:`~merge.pipeline.backends.base.DualEncoder`."""

    kind = "clip"
    input_kind = "pixels"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        name: str,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        template: str = "a photo of {}.",
        device: str | torch.device = "cpu",
    ) -> None:
        """``device``: a spec or device (``merge.pipeline.device``), resolved before the model
        moves; the caller's module is moved there (``nn.Module.to`` works in place)."""
        self._device = resolve_device(device)
        # Any: the HF model's own attributes (config, towers) are untyped.
        self._model: Any = model.eval().requires_grad_(False).to(self._device)
        config: Any = self._model.config
        self._tokenizer = tokenizer
        self._name = name
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)
        self.template = template
        self.image_size = int(config.vision_config.image_size)
        self._targets = vision_targets(model)
        self._class_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path_or_id: str, **kwargs: Any) -> ClipBackend:
        from transformers import AutoConfig, AutoTokenizer, CLIPModel

        if "device" in kwargs:  # an absent device fails before the checkpoint loads
            kwargs["device"] = resolve_device(kwargs["device"])
        try:
            config = AutoConfig.from_pretrained(path_or_id)
        except (OSError, ValueError) as e:
            raise UnsupportedBaseError(f"cannot load a config from {path_or_id!r}: {e}") from e
        if config.model_type != "clip":
            raise UnsupportedBaseError(f"{path_or_id}: {config.model_type} is not a CLIP model")
        model = CLIPModel.from_pretrained(path_or_id, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        options: dict[str, Any] = {**_normalisation(path_or_id), **kwargs}
        return cls(model, tokenizer, name=os.fspath(path_or_id), **options)

    # --- DualEncoder ---

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_model(self._model, self._model.config.to_dict())

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return self._targets

    @property
    def logit_scale(self) -> float:
        return float(self._model.logit_scale.detach().exp())

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> nn.Module:
        model: nn.Module = self._model
        return model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer(self) -> Any:
        """The class-name tokenizer (saved beside a merged model: ``merge.pipeline.merged``)."""
        return self._tokenizer

    def encode_inputs(
        self, inputs: torch.Tensor, delta: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return call_with_delta(self._model, self.features, inputs, delta)

    def encode_classes(self, classes: Sequence[str]) -> torch.Tensor:
        key = tuple(classes)
        if key not in self._class_cache:
            self._class_cache[key] = self._text_features([self.template.format(c) for c in key])
        return self._class_cache[key]

    # --- pipeline extras ---

    def prepare(self, items: Sequence[str]) -> torch.Tensor:
        return torch.stack([self._pixels(Path(p)) for p in items])

    def features(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        m: Any = model
        pixels = inputs.to(self._device)
        pooled = m.vision_model(pixel_values=pixels)[1]  # [1]: pooler_output in every version
        out: torch.Tensor = m.visual_projection(pooled)
        return unit(out).to(inputs.device)

    def to_synthetic(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.detach().clone()

    def synthetic_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # Inputs are normalised pixels, so a standard normal is the scale of real images.
        return torch.randn((n, 3, self.image_size, self.image_size), generator=generator)

    # --- internals ---

    @torch.no_grad()
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        limit = int(self._model.config.text_config.max_position_embeddings)
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        pooled = self._model.text_model(
            input_ids=batch["input_ids"].to(self._device),
            attention_mask=batch["attention_mask"].to(self._device),
        )[1]
        out: torch.Tensor = unit(self._model.text_projection(pooled)).cpu()
        return out

    def _pixels(self, path: Path) -> torch.Tensor:
        """Resize the short side, centre-crop, scale to [0, 1] and normalise (CLIP's recipe)."""
        from PIL import Image

        size = self.image_size
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        w, h = rgb.size
        scale = size / min(w, h)
        rgb = rgb.resize(
            (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
        )
        left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
        x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        x = x.view(size, size, 3).permute(2, 0, 1).float() / 255.0
        return (x - self._mean) / self._std

    def __repr__(self) -> str:
        size, n = self.image_size, len(self._targets)
        return f"<ClipBackend {self._name!r} {size}px targets={n} on {self._device}>"


def _normalisation(path_or_id: str) -> dict[str, tuple[float, ...]]:
    """Mean/std from a local ``preprocessor_config.json`` if there is one."""
    file = Path(path_or_id) / "preprocessor_config.json"
    if not file.is_file():
        return {}
    cfg = json.loads(file.read_text())
    if "image_mean" in cfg and "image_std" in cfg:
        return {"mean": tuple(cfg["image_mean"]), "std": tuple(cfg["image_std"])}
    return {}
