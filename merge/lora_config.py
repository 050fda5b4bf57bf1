"""Read a PEFT ``adapter_config.json`` and decide the exact scale of every module, or refuse.

PEFT's ``add_weighted_adapter`` silently merges variants it does not understand (peft
issue #3761). We do the opposite: every config key is either known to leave ``ΔW = s·B@A``
intact (it only selects modules or affects training), handled exactly (``use_rslora``,
``rank_pattern``, ``alpha_pattern``), or must be unset; an unknown key that is set is refused,
so a future PEFT option can never be merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from merge.errors import AdapterFormatError, UnsupportedAdapterError

MAX_CONFIG_BYTES = 1 << 20
CONFIG_NAME = "adapter_config.json"  # the two files of a PEFT adapter directory
WEIGHTS_NAME = "adapter_model.safetensors"
_T = TypeVar("_T")

# Keys that do not change what a saved adapter means at inference (or are checked below).
_BENIGN = frozenset(
    {
        "task_type",
        "peft_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "r",
        "target_modules",
        "exclude_modules",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "init_lora_weights",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
        "megatron_core",
        "qalora_group_size",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "ensure_weight_tying",
        "bias",
    }
)
# Initialisations that leave the base weights untouched (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA
# rewrite the base model, so their adapters are deltas against a different W).
_PLAIN_INITS = (True, False, "gaussian")
# rank/alpha pattern keys are regexes (PEFT matches ``(.*\.)?(key)$``). Untrusted regexes
# could backtrack for ever, so only literals, ``.`` and ``\.`` are accepted.
_SAFE_PATTERN = re.compile(r"(?:[A-Za-z0-9_.]|\\\.){1,512}")


@dataclass(frozen=True)
class LoraScales:
    """Per-module rank and scale, resolved exactly as PEFT 0.21 ``LoraModel`` does."""

    r: int
    alpha: float
    rslora: bool
    rank_pattern: tuple[tuple[str, int], ...]
    alpha_pattern: tuple[tuple[str, float], ...]
    declared_base: str | None

    def rank(self, module: str) -> int:
        return _lookup(self.rank_pattern, module, self.r)

    def scale(self, module: str) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA, as python floats like PEFT."""
        r, alpha = self.rank(module), _lookup(self.alpha_pattern, module, self.alpha)
        return alpha / math.sqrt(r) if self.rslora else alpha / r


def _lookup(pattern: tuple[tuple[str, _T], ...], module: str, default: _T) -> _T:
    """PEFT's ``get_pattern_key``: the first key (in file order) matching the module."""
    for key, value in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def parse_config(data: bytes, adapter: str) -> LoraScales:
    """Validate ``adapter_config.json`` bytes; raise a typed ``AdapterError`` naming why."""
    if len(data) > MAX_CONFIG_BYTES:
        raise AdapterFormatError(adapter, None, f"config is {len(data)} bytes (> 1 MiB)")
    cfg = strict_json_object(data, adapter, CONFIG_NAME)
    _refuse_variants(cfg, adapter)
    return LoraScales(
        r=_positive_int(cfg.get("r"), adapter, "r"),
        alpha=_number(cfg.get("lora_alpha"), adapter, "lora_alpha"),
        rslora=cfg.get("use_rslora", False) is True,
        rank_pattern=tuple(
            (k, _positive_int(v, adapter, f"rank_pattern[{k}]"))
            for k, v in _patterns(cfg, "rank_pattern", adapter)
        ),
        alpha_pattern=tuple(
            (k, _number(v, adapter, f"alpha_pattern[{k}]"))
            for k, v in _patterns(cfg, "alpha_pattern", adapter)
        ),
        declared_base=_optional_str(cfg.get("base_model_name_or_path"), adapter),
    )


def _refuse_variants(cfg: dict[str, Any], adapter: str) -> None:
    if cfg.get("peft_type") != "LORA":
        raise UnsupportedAdapterError(adapter, None, f"peft_type {cfg.get('peft_type')!r}")
    if cfg.get("use_dora"):
        raise UnsupportedAdapterError(adapter, None, "DoRA (use_dora) is not a plain ΔW=B@A")
    if cfg.get("lora_bias"):
        raise UnsupportedAdapterError(adapter, None, "lora_bias adds a bias term")
    if cfg.get("bias", "none") != "none":
        raise UnsupportedAdapterError(adapter, None, f"bias={cfg.get('bias')!r} trains biases")
    if cfg.get("use_rslora", False) not in (True, False):
        raise AdapterFormatError(adapter, None, "use_rslora must be a boolean")
    if cfg.get("init_lora_weights", True) not in _PLAIN_INITS:
        init = cfg.get("init_lora_weights")
        raise UnsupportedAdapterError(adapter, None, f"init_lora_weights={init!r} edits the base")
    if cfg.get("loftq_config"):
        raise UnsupportedAdapterError(adapter, None, "LoftQ quantises the base")
    for key, value in cfg.items():
        if key not in _BENIGN and key != "loftq_config" and value not in (None, False, {}, [], ""):
            raise UnsupportedAdapterError(adapter, None, f"option {key}={value!r} is not supported")


def _patterns(cfg: dict[str, Any], key: str, adapter: str) -> list[tuple[str, Any]]:
    pattern = cfg.get(key) or {}
    if not isinstance(pattern, dict):
        raise AdapterFormatError(adapter, None, f"{key} must be an object")
    for k in pattern:
        if not _SAFE_PATTERN.fullmatch(k):
            raise UnsupportedAdapterError(adapter, None, f"{key} key {k!r}: regex not supported")
    return list(pattern.items())


def strict_json_object(data: bytes, adapter: str, what: str) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, no NaN/Infinity."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate key in {what}")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} in {what}")

    try:
        obj = json.loads(
            data.decode("utf-8"), object_pairs_hook=no_dupes, parse_constant=no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdapterFormatError(adapter, None, f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise AdapterFormatError(adapter, None, f"{what} is not a JSON object")
    return obj


def _positive_int(value: object, adapter: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterFormatError(adapter, None, f"{what} must be a positive int, got {value!r}")
    return value


def _number(value: object, adapter: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterFormatError(adapter, None, f"{what} must be a finite number, got {value!r}")
    return float(value)


def _optional_str(value: object, adapter: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise AdapterFormatError(adapter, None, "base_model_name_or_path must be a string")
    return value
