"""GPTQ: int4 group quantization with second-order error compensation.

GPTQ (arXiv 2210.17323) quantizes the columns of W [out, in] one after the other and,
after rounding column i, moves its error onto the columns not yet quantized, weighted
by the inverse Hessian of the layer's output error. With H = X^T X / n over the
calibration inputs X [n, in], rounding column i to q_i costs (w_i - q_i)^2 / [H^-1]_ii
once the later columns are updated by
    W[:, j] -= (w_i - q_i) / [H^-1]_ii * [H^-1]_ij      for j > i,
and H^-1 is then restricted to the remaining columns. The upper Cholesky factor U of
H^-1 holds every one of those restricted inverses (row i of U, divided by U_ii, is
row i of the inverse restricted to columns >= i), so one factorisation serves all
columns; the update is applied lazily in blocks of BLOCK columns, as in the paper.

The stored format is rtn.py's, unchanged: groups of g consecutive input columns with
an f16 scale and a 0..15 zero each, computed by rtn.py's rules (range widened to 0,
constant groups exact) from the group's weights *as updated* when its first column is
reached. With clip shrinks (AWQ's clip search: per row and group, the bound as a
fraction of the group's max |w|), the group's range is taken from its weights as
updated, clamped to +-shrink * their max |w|. The fraction, not the search's absolute
bound, carries over: the compensation moves the weights, and a bound fixed before it
cuts the ones it pushed outward (it measured worse: docs/quality.md, "GPTQ"). The
weights themselves are not clamped: a weight outside the grid gets the nearest end
code, and its whole error, clipping included, is moved onto the later columns like any
rounding error. Clamping the weights first would make the clipped weights GPTQ's
target, so the clipping error would never be compensated. Columns go in their natural
order (no act-order): act-order would quantize columns in order of decreasing H_ii,
and to keep groups contiguous in the file it would have to fix every group's scale
before any compensation, which gives back much of what it gains; it is not offered.

Deterministic: the same W and H give the same codes (no randomness; torch's CPU
kernels are deterministic for these ops). Works on whatever device W and H are on.
"""
from __future__ import annotations

import torch

from .rtn import MAX_Q, MIN_SCALE, pack_int4

BLOCK = 128  # columns per lazy update block (a multiple of every supported group size)
# H += DAMP * mean(diag H) * I: keeps H invertible (GPTQ's reference damps by 0.01) and
# pulls the compensation toward plain rounding. The compensation fits the calibration
# text, and a weak damping loses out of domain what it gains in domain; a damping as
# large as the mean diagonal keeps most of the in-domain gain without that loss on
# average (docs/quality.md, "GPTQ", measures each damping).
DAMP = 1.0
MAX_DAMP_TRIES = 6  # each retry multiplies the damping by 10


def int4_grid(gmax: torch.Tensor, gmin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rtn.quantize_int4's grid in torch for groups with these max and min [..., 1]: the
    range widened to include 0, a constant group exact, the scale rounded to the f16
    the file stores (returned in gmax's dtype; inf where f16 overflows), and the
    integer-valued zero."""
    span = (gmax.clamp(min=0) - gmin.clamp(max=0)) / MAX_Q
    span = torch.where(gmax == gmin, gmax.abs(), span)
    scale = span.clamp(min=MIN_SCALE).half().to(gmax.dtype)
    zero = (-torch.round(gmin.clamp(max=0) / scale)).clamp(0, MAX_Q)
    return scale, zero


def group_params(w: torch.Tensor, name: str = "weight", shrink: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """rtn.quantize_int4's scale and zero for each row of one group w [out, g], of the
    weights clamped to +-shrink [out, 1] times the row's max |w| when given: (scale
    [out, 1], the f16 value in w's dtype; zero [out, 1], integer-valued)."""
    if shrink is not None:
        bound = shrink * w.abs().amax(-1, keepdim=True)  # [out, 1]
        w = torch.minimum(torch.maximum(w, -bound), bound)
    scale, zero = int4_grid(w.amax(-1, keepdim=True), w.amin(-1, keepdim=True))  # [out, 1]
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"{name}: a group spans more than an f16 scale can hold "
                         "(max 65504 per step), or holds non-finite values")
    return scale, zero


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """The upper Cholesky factor U [in, in] of (H + damp * mean(diag H) * I)^-1.

    A column whose input is zero on every calibration token (H_ii = 0) gets H_ii = 1:
    its error then moves nowhere and it is plainly rounded. Its weights are kept (GPTQ's
    reference zeroes them), since other text may well use that channel."""
    h = hessian.clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    damp = damp * float(diag.mean())
    for _ in range(MAX_DAMP_TRIES):
        damped = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp *= 10
    raise ValueError(f"the calibration Hessian is not positive definite even with damping "
                     f"{damp / 10:g} (non-finite activations?)")


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, group_size: int,
                  name: str = "weight", damp: float = DAMP,
                  shrink: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantizes w [out, in] against hessian [in, in] (X^T X / n of its input), damped
    by damp * mean(diag H); shrink [out, in/g, 1]: the clip bound of each row's group as
    a fraction of its max |w| (the grid spans the updated group clamped to +-shrink *
    its max |w|; see the module docstring).

    Returns (codes u8 [out, in] 0..15, scales f16 [out, in/g], zeros u8 [out, in/g]) on
    w's device; the weights they represent are (codes - zero) * scale per group."""
    out_f, in_f = w.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"{name}: Hessian {list(hessian.shape)} does not match the weight's "
                         f"{in_f} input columns")
    if BLOCK % group_size or in_f % group_size:
        raise ValueError(f"{name}: group size {group_size} must divide {BLOCK} and {in_f}")
    if shrink is not None and shrink.shape != (out_f, in_f // group_size, 1):
        raise ValueError(f"{name}: clip shrinks {list(shrink.shape)} do not match "
                         f"[{out_f}, {in_f // group_size}, 1]")
    if shrink is not None:
        shrink = shrink.to(w.device, w.dtype)
    upper = inverse_hessian_factor(hessian.to(w.dtype), damp)  # [in, in]
    work = w.clone()  # [out, in]: the weights as updated by the compensation
    codes = torch.empty(out_f, in_f, dtype=torch.uint8, device=w.device)
    n_groups = in_f // group_size
    scales = torch.empty(out_f, n_groups, dtype=w.dtype, device=w.device)
    zeros = torch.empty(out_f, n_groups, dtype=w.dtype, device=w.device)
    for b0 in range(0, in_f, BLOCK):
        b1 = min(b0 + BLOCK, in_f)
        block = work[:, b0:b1]  # [out, B] (a view: updated in place)
        errors = torch.empty_like(block)  # [out, B]: scaled errors, for the lazy update
        u = upper[b0:b1, b0:b1]  # [B, B]
        for i in range(b1 - b0):
            column = b0 + i
            if column % group_size == 0:  # groups never straddle blocks (BLOCK % g == 0)
                group_shrink = None if shrink is None else shrink[:, column // group_size]
                scale, zero = group_params(block[:, i:i + group_size], name, group_shrink)
                scales[:, column // group_size] = scale[:, 0]
                zeros[:, column // group_size] = zero[:, 0]
            q = torch.round(block[:, i:i + 1] / scale).add_(zero).clamp_(0, MAX_Q)  # [out, 1]
            codes[:, column] = q[:, 0].to(torch.uint8)
            error = (block[:, i:i + 1] - (q - zero) * scale) / u[i, i]  # [out, 1]
            block[:, i:] -= error * u[i:i + 1, i:]
            errors[:, i:i + 1] = error
        work[:, b1:] -= errors @ upper[b0:b1, b1:]
    return codes, scales.half(), zeros.to(torch.uint8)


def gptq_int4(w: torch.Tensor, hessian: torch.Tensor, group_size: int, name: str = "weight",
              damp: float = DAMP, shrink: torch.Tensor | None = None):
    """gptq_quantize packed as rtn.quantize_int4 returns it: (qweight u8 [out, in/2],
    scales f16 [out, in/g], zeros u8 [out, in/g]) as numpy arrays."""
    codes, scales, zeros = gptq_quantize(w, hessian, group_size, name, damp, shrink)
    return pack_int4(codes.cpu().numpy()), scales.cpu().numpy(), zeros.cpu().numpy()
