"""A checkpoint's rope scaling dict -> ModelConfig.rope_scaling, with transformers' defaults.

Both importers hand their raw parameters here, so that the file holds one
normalised dict per type (docs/format.md, `model.rope_scaling.*`): the keys
each formula reads, with every default transformers would apply resolved
(`original_max_position_embeddings`, YaRN's betas, truncation and attention
factor). Only the parameters are resolved here; the frequencies are computed
by the runtime and, independently, by awqcore.reference.
"""
from __future__ import annotations

import math
from typing import Optional


def _number(raw: dict, key: str, origin: str, default=None) -> float:
    value = raw.get(key, default)
    if value is None:
        raise ValueError(f"{origin}: rope scaling {raw.get('rope_type')!r} needs {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{origin}: rope scaling {key}={value!r} must be a positive number")
    return float(value)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature 0.1 * mscale * ln(factor) + 1 (1 when not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def normalize_rope_scaling(raw: Optional[dict], max_position_embeddings: int,
                           origin: str) -> Optional[dict]:
    """None for no scaling; else {"rope_type": ..., parameters}. ValueError naming any
    type this runtime does not implement (dynamic, longrope, ...)."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: rope_scaling {raw!r} is not an object")
    kind = raw.get("rope_type", raw.get("type", "default"))
    if kind == "default":
        return None
    raw = {**raw, "rope_type": kind}
    if kind == "linear":
        return {"rope_type": kind, "factor": _number(raw, "factor", origin)}
    original = int(_number(raw, "original_max_position_embeddings", origin,
                           max_position_embeddings))
    if kind == "llama3":
        low = _number(raw, "low_freq_factor", origin)
        high = _number(raw, "high_freq_factor", origin)
        if high <= low:
            raise ValueError(f"{origin}: rope scaling llama3 needs high_freq_factor > "
                             f"low_freq_factor (got {high} and {low})")
        return {"rope_type": kind, "factor": _number(raw, "factor", origin),
                "original_max_position_embeddings": original,
                "low_freq_factor": low, "high_freq_factor": high}
    if kind == "yarn":
        # transformers: a missing factor is the context's stretch; falsy betas take 32 and 1;
        # the attention factor defaults to the paper's temperature (or the mscale ratio).
        factor = raw.get("factor")
        factor = max_position_embeddings / original if factor is None else \
            _number(raw, "factor", origin)
        attention = raw.get("attention_factor")
        if attention is None:
            mscale, mscale_all = raw.get("mscale"), raw.get("mscale_all_dim")
            attention = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
                         if mscale and mscale_all else _yarn_mscale(factor))
        return {"rope_type": kind, "factor": float(factor),
                "original_max_position_embeddings": original,
                "beta_fast": float(raw.get("beta_fast") or 32.0),
                "beta_slow": float(raw.get("beta_slow") or 1.0),
                "truncate": bool(raw.get("truncate", True)),
                "attention_factor": _number({"attention_factor": attention}, "attention_factor",
                                            origin)}
    raise ValueError(f"{origin}: rope scaling type {kind!r} is not supported "
                     "(supported: linear, llama3, yarn)")
