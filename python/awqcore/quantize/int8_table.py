"""Symmetric int8 storage of the embedding and lm_head tables (docs/format.md).

Per block of BLOCK = 32 consecutive columns of a row (llama.cpp's Q8_0 layout):
    s = absmax / 127, rounded to the nearest f16, and moved up one f16 step
        when that rounding went below absmax / 127
    q = clamp(round(w / s), -127, 127)            (0 for an all-zero block)
    W' = q * s                                    (exact in f32)
q is computed against the f16-rounded scale, the one the runtime multiplies
by, so the runtime dequantizes to exactly what the quantizer assumed. Moving a
scale up keeps |w / s| <= 127 (no clipping), so every element is within half a
step: |w - q * s| <= s / 2. A normal f16 scale rounded down only takes |w / s|
to 127 (1 + 2^-11) ~ 127.06, which still rounds to 127; the step up matters for
subnormal scales (blocks with absmax < 127 * 2^-14 ~ 0.008), whose coarser
rounding would otherwise clip the block's largest values.

The divisions are done in float64, where w / s and the comparison 127 * s <
absmax are exact or correctly rounded for every f32 w and f16 s, so the bound
above holds exactly rather than up to f32 rounding at the .5 ties.

SmolLM2-135M's 49152 x 576 table: 28.3 MB of codes + 1.8 MB of scales
instead of 56.6 MB in f16.
"""
from __future__ import annotations

import numpy as np

BLOCK = 32      # columns per scale
MAX_Q = 127     # codes are -127..127 (the format's readers also accept -128)
TABLE_FORMS = ("f16", "int8")  # how quantize_model may store the two tables
_CHUNK_ROWS = 4096  # rows converted at once: bounds the float64 temporaries (~75 MB at d=576)


def quantize_int8_table(w: np.ndarray, name: str = "table") -> tuple[np.ndarray, np.ndarray]:
    """w [rows, d] f32 -> (q int8 [rows, d], scales f16 [rows, d/32]). `name` is used in
    error messages."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [rows, d] table, got shape {w.shape}")
    rows, d = w.shape
    if d % BLOCK:
        raise ValueError(f"{name}: width {d} is not a multiple of {BLOCK}; an int8 table has "
                         f"one scale per {BLOCK} columns (store it as f16 instead)")
    blocks = d // BLOCK
    q = np.empty((rows, d), dtype=np.int8)
    scales = np.empty((rows, blocks), dtype=np.float16)
    for start in range(0, rows, _CHUNK_ROWS):
        chunk = w[start:start + _CHUNK_ROWS].astype(np.float64).reshape(-1, blocks, BLOCK)
        absmax = np.abs(chunk).max(axis=-1)  # [n, blocks]; NaN and inf propagate
        if not np.isfinite(absmax).all():
            r, j = np.argwhere(~np.isfinite(absmax))[0]
            raise ValueError(f"{name}: non-finite value in row {start + r}, columns "
                             f"{j * BLOCK}..{j * BLOCK + BLOCK - 1}; the source weights are corrupt")
        with np.errstate(over="ignore"):  # beyond f16: inf, reported below
            s = (absmax / MAX_Q).astype(np.float16)  # [n, blocks]
        low = s.astype(np.float64) * MAX_Q < absmax
        s[low] = np.nextafter(s[low], np.float16(np.inf))
        if not np.isfinite(s).all():
            r, j = np.argwhere(~np.isfinite(s))[0]
            raise ValueError(f"{name}: row {start + r} has |w| = {absmax[r, j]:g} in columns "
                             f"{j * BLOCK}..{j * BLOCK + BLOCK - 1}, too large for an f16 scale "
                             f"(max {MAX_Q} * 65504)")
        s64 = s.astype(np.float64)[..., None]  # [n, blocks, 1]
        codes = np.divide(chunk, s64, out=np.zeros_like(chunk), where=s64 > 0)
        np.rint(codes, out=codes)
        np.clip(codes, -MAX_Q, MAX_Q, out=codes)
        q[start:start + _CHUNK_ROWS] = codes.reshape(-1, d).astype(np.int8)
        scales[start:start + _CHUNK_ROWS] = s
    return q, scales


def dequantize_int8_table(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """W [rows, d] f32 = q * s, computed in f32 from the f16 scales exactly as the
    runtime does (and exact: 7 + 11 significant bits)."""
    rows, d = q.shape
    if d % BLOCK or scales.shape != (rows, d // BLOCK):
        raise ValueError(f"scales {scales.shape} must be [{rows}, {d}/{BLOCK}] for codes {q.shape}")
    s = scales.astype(np.float16).astype(np.float32)[..., None]  # [rows, d/32, 1]
    return (q.astype(np.float32).reshape(rows, d // BLOCK, BLOCK) * s).reshape(rows, d)
