"""The shell's content check of a fetched blob, by the kind its commit gives it.

The transport already checked size and sha256; this checks that the bytes are what the kind
says (a PEFT config, LoRA safetensors within the network's limits, a distilled set), so a
peer that serves well-hashed garbage is caught as INVALID before anything is merged. Pure:
a function of the bytes and the genesis only, so every node decides alike.
"""

from __future__ import annotations

import json

from merge.errors import MergeError
from merge.lora_blob import read_safetensors
from merge.lora_config import parse_config
from merge.spec import Limits


class InvalidBlob(Exception):
    """A blob whose bytes are not a valid instance of its kind."""


def check_blob(kind: str, data: bytes, limits: Limits) -> None:
    try:
        if kind == "adapter_config":
            parse_config(data, "adapter_config")
        elif kind == "adapter_model":
            read_safetensors(data, "adapter_model", limits)
        elif kind == "distilled":
            _check_distilled(data)
        else:
            raise InvalidBlob(f"unknown blob kind {kind!r}")
    except MergeError as exc:
        raise InvalidBlob(str(exc)) from None


def _check_distilled(data: bytes) -> None:
    if len(data) < 8:
        raise InvalidBlob("distilled data: shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, 1 << 20):
        raise InvalidBlob("distilled data: header length beyond the file")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidBlob("distilled data: header is not JSON") from None
    if not isinstance(header, dict) or not {"inputs", "labels"} <= header.keys():
        raise InvalidBlob("distilled data: needs tensors 'inputs' and 'labels'")
