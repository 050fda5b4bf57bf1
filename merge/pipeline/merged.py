"""A fusion/stack composite merged into its base: one ordinary Hugging Face checkpoint.

``save_merged(backend, composite, out)`` writes what a user without medforge or PEFT can load
with ``from_pretrained``: a deep copy of the backend's model with ``W + ΔW`` in every adapted
Linear (``ΔW`` from ``merge.fold.delta_weights``: a dense module's own ``W``, or ``B @ A``),
saved with ``save_pretrained``, plus the tokenizer and the image preprocessor's config where
the backend has them. The base model itself is never modified.

A mixture has no merged weights (each member runs on the base, and their softmax outputs are
mixed): it is refused with ``ModeError``. Like every export this is for people and tools, not
digests: the sum uses float32 BLAS and depends on nothing but the composite and the base.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from merge.errors import ModeError
from merge.fold import Composite, delta_weights
from merge.pipeline.backends.base import DualEncoder, delta_params

# CLIP's image normalisation lives beside the weights; the backend reads it from there.
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def merged_model(backend: DualEncoder, composite: Composite) -> nn.Module:
    """A copy of ``backend.model`` with the composite's ``ΔW`` added into its weights."""
    if composite.mode == "mixture":
        raise ModeError(
            "a mixture has no merged weights (its members' outputs are mixed): export it as "
            "PEFT members instead"
        )
    model = copy.deepcopy(backend.model).cpu()  # a checkpoint is CPU float32, like the fold
    # delta_params checks every module against the model (a Linear of that weight's shape).
    weights = delta_params(model, delta_weights(composite.modules))
    with torch.no_grad():
        for key, weight in weights.items():
            model.get_parameter(key).copy_(weight)
    return model


def save_merged(backend: DualEncoder, composite: Composite, out: Path) -> Path:
    """Write ``merged_model`` to ``out`` (created) as a ``save_pretrained`` checkpoint, with
    the backend's tokenizer and (CLIP) preprocessor config; returns ``out``."""
    model = merged_model(backend, composite)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))  # type: ignore[operator]
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    preprocessor = Path(backend.name) / PREPROCESSOR_CONFIG
    if preprocessor.is_file():
        shutil.copyfile(preprocessor, out / PREPROCESSOR_CONFIG)
    return out
