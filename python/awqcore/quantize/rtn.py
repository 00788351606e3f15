"""Round-to-nearest 4-bit group quantization (AutoAWQ's asymmetric quantizer).

For each group of `group_size` consecutive input columns of a row:
    scale = (max - min) / 15        (at least MIN_SCALE; stored as f16)
    zero  = clamp(-round(min / scale), 0, 15)
    q     = clamp(round(w / scale) + zero, 0, 15)
    w'    = (q - zero) * scale
and the codes are packed two per byte as docs/format.md specifies.

Two deliberate details:
  * q and zero are computed from the f16-rounded scale, the one the runtime
    will multiply by, so that packing and dequantization agree exactly.
  * The group's range is widened to include 0. On a group that straddles zero
    (practically every group of real weights) this changes nothing; on an
    all-positive or all-negative group it keeps `zero` inside 0..15 instead of
    clamping it, which would otherwise clip the whole group. A group whose
    values are all equal to c uses scale |c| so that c is reconstructed exactly
    (to f16 precision) rather than as 15 * (c / 15).
"""
from __future__ import annotations

import numpy as np

from ..source import SourceModel

MAX_Q = 15  # 4-bit codes are 0..15
# Smallest scale: keeps all-zero groups from dividing by zero. 1e-5 is a
# (subnormal) f16 value still stored to ~0.6% precision.
MIN_SCALE = 1e-5
SUPPORTED_GROUP_SIZES = (128, 64, 32)  # what docs/format.md allows, largest first


def check_group_size(in_features: int, group_size: int, name: str = "weight") -> None:
    """ValueError unless `group_size` splits `in_features` into whole groups."""
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise ValueError(f"group_size must be a positive integer (got {group_size!r})")
    if in_features % group_size != 0:
        fits = [g for g in SUPPORTED_GROUP_SIZES if in_features % g == 0]
        hint = (f"use --group-size {' or '.join(map(str, fits))}" if fits else
                f"no supported group size ({', '.join(map(str, SUPPORTED_GROUP_SIZES))}) divides it")
        raise ValueError(f"{name}: in_features={in_features} is not divisible by "
                         f"group_size={group_size}; {hint}")
    if in_features % 2 != 0:  # only reachable with an odd group size
        raise ValueError(f"{name}: in_features={in_features} must be even to pack two "
                         "4-bit codes per byte")


def _raise_non_finite(w: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(w)
    r, c = np.argwhere(bad)[0]
    raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) (first: {w[r, c]} at "
                     f"[{r}, {c}]); the source weights are corrupt")


def quantize_int4(w: np.ndarray, group_size: int, *, name: str = "weight"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantizes w [out, in] f32 to (qweight u8 [out, in/2], scales f16 [out, in/g],
    zeros u8 [out, in/g]). `name` is used in error messages."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [out, in] weight, got shape {w.shape}")
    out_features, in_features = w.shape
    check_group_size(in_features, group_size, name)
    n_groups = in_features // group_size
    groups = w.reshape(out_features, n_groups, group_size)  # [out, G, g] (a view)

    gmax = groups.max(axis=-1)  # [out, G]
    gmin = groups.min(axis=-1)  # [out, G]
    # max/min propagate NaN and inf, so checking them avoids another full pass.
    if not (np.isfinite(gmax).all() and np.isfinite(gmin).all()):
        _raise_non_finite(w, name)
    span = (np.maximum(gmax, 0) - np.minimum(gmin, 0)) / MAX_Q  # [out, G]
    span = np.where(gmax == gmin, np.abs(gmax), span)  # constant groups: one step of |c|
    scales = np.maximum(span, MIN_SCALE).astype(np.float16)  # [out, G]
    if not np.isfinite(scales).all():
        r, j = np.argwhere(~np.isfinite(scales))[0]
        raise ValueError(f"{name}: group [{r}, {j}] spans {float(span[r, j]) * MAX_Q:g}, too "
                         "large for an f16 scale (max 65504 per step)")
    s = scales.astype(np.float32)[..., None]  # [out, G, 1]: the scale the runtime uses
    zeros = np.clip(-np.round(np.minimum(gmin, 0)[..., None] / s), 0, MAX_Q)  # [out, G, 1]

    q = groups / s  # [out, G, g] f32 (new array; `groups` is not modified)
    np.round(q, out=q)
    q += zeros
    np.clip(q, 0, MAX_Q, out=q)
    q = q.astype(np.uint8).reshape(out_features, in_features)  # [out, in]
    return pack_int4(q), scales, zeros[..., 0].astype(np.uint8)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """q u8 [out, in] (values 0..15) -> u8 [out, in/2]: column c goes to byte c/2,
    in the low nibble when c is even."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(qweight: np.ndarray) -> np.ndarray:
    """The inverse of pack_int4: u8 [out, in/2] -> u8 [out, in]."""
    out = np.empty((qweight.shape[0], qweight.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = qweight & 0x0F
    out[:, 1::2] = qweight >> 4
    return out


def dequantize_int4(qweight: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                    group_size: int) -> np.ndarray:
    """W [out, in] f32 = (q - zero) * scale, computed in f32 from the f16 scales,
    exactly as the runtime does."""
    out_features, half = qweight.shape
    in_features = half * 2
    check_group_size(in_features, group_size)
    n_groups = in_features // group_size
    if scales.shape != (out_features, n_groups) or zeros.shape != (out_features, n_groups):
        raise ValueError(f"scales {scales.shape} and zeros {zeros.shape} must both be "
                         f"[{out_features}, {n_groups}] for qweight {qweight.shape} with "
                         f"group_size={group_size}")
    q = unpack_int4(qweight).reshape(out_features, n_groups, group_size)  # [out, G, g]
    z = zeros.astype(np.float32)[..., None]                             # [out, G, 1]
    s = scales.astype(np.float16).astype(np.float32)[..., None]         # [out, G, 1]
    return ((q.astype(np.float32) - z) * s).reshape(out_features, in_features)


class RtnQuantizer:
    """The `rtn` method: every linear quantized on its own, no calibration data.
    Implements pipeline.LayerQuantizer."""

    def __init__(self, source: SourceModel, group_size: int):
        self.group_size = group_size

    def quantize_layer(self, layer: int, weights: dict[str, np.ndarray],
                       linears: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return {prefix: quantize_int4(weights[prefix + ".weight"], self.group_size,
                                      name=prefix + ".weight")
                for prefix in linears}
