"""AWQ's clip search and the input statistics it (and GPTQ) work from.

The clip error of row o and group j of a linear is mean_t (x_tj . d_oj)^2 = d_oj^T C_j d_oj
with C_j = mean_t x_tj x_tj^T, the g x g Gram matrix of the group's inputs over the
calibration tokens, and d_oj the group's quantization error once its weights are clamped
to +-shrink * max|w_oj|. Accumulated once (n*in*g flops), each shrink step then costs
out*in*g flops whatever n is (AutoAWQ multiplies out over 512 sampled tokens per step
instead). The searches return the shrinks (1: no clipping), the form GPTQ takes: each
group's grid spans its weights as the compensation has updated them, clamped to the
shrink (gptq.py; the weights themselves are not clamped there).

The statistics are kept separately for the even and the odd calibration sequences, so a
shrink chosen on one half can be checked on the other ("heldout" mode).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

CLIP_GRID = 20  # shrink factors 1 - i / 20 ...
CLIP_STEPS = 10  # ... for i = 0..9 (down to 0.55 of the group's max |w|)
MILD_STEPS = 4  # "mild" mode: i = 0..3 (down to 0.85)
CLIP_MODES = ("full", "heldout", "mild", "attn", "off")
ATTENTION_ONLY = "attn"  # the full search on the attention's linears, none on the MLP's


def _group_error(d: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """d [out, G, g], gram [G, g, g] -> err [out, G] = d[o, j] . (C_j d[o, j])."""
    return (torch.bmm(d.transpose(0, 1), gram).transpose(0, 1) * d).sum(-1)


def search_clip(w: torch.Tensor, gram: torch.Tensor, group_size: int,
                fake_quantize: Callable[[torch.Tensor, int], torch.Tensor],
                step: Callable[[], None] | None = None, steps: int = CLIP_STEPS,
                check_gram: torch.Tensor | None = None) -> torch.Tensor:
    """Per (row, group) clip shrink [out, G, 1] for w [out, in] whose input has per-group
    Gram matrices gram [G, g, g]: the shrink among 1 - i/CLIP_GRID, i < steps, with the
    lowest error. With check_gram (the Gram of other tokens), a shrink is kept only where
    it also lowers the error on those tokens against no clipping."""
    out_f, in_f = w.shape
    wg = w.reshape(out_f, in_f // group_size, group_size)  # [out, G, g]
    absmax = wg.abs().amax(-1, keepdim=True)  # [out, G, 1]
    best = torch.ones_like(absmax)
    best_err = torch.full(absmax.shape[:2], math.inf, device=w.device)  # [out, G]
    check_best = check_none = None  # [out, G]: check error of the chosen shrink / of none
    for i in range(steps):
        shrink = 1 - i / CLIP_GRID
        bound = absmax * shrink
        clipped = torch.minimum(torch.maximum(wg, -bound), bound)
        d = fake_quantize(clipped.reshape(out_f, in_f), group_size).reshape(wg.shape) - wg
        err = _group_error(d, gram)  # [out, G]
        better = err < best_err  # NaN/inf never win: a bad step keeps the previous shrink
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], shrink, best)
        if check_gram is not None:
            check = _group_error(d, check_gram)
            check_none = check if check_none is None else check_none
            check_best = torch.where(better, check, check if check_best is None else check_best)
        if step:
            step()
    if check_gram is not None:
        best = torch.where((check_best < check_none)[..., None], best, 1.0)
    return best


def clip_shrinks(w: torch.Tensor, stats: "InputStats", s: torch.Tensor, mode: str,
                 fake_quantize: Callable, step: Callable[[], None] | None = None
                 ) -> torch.Tensor:
    """The clip shrinks [out, G, 1] of `mode` for the scaled weights w (input divided by s)."""
    g = stats.g
    if mode in ("full", ATTENTION_ONLY):
        return search_clip(w, stats.scaled_gram(s), g, fake_quantize, step)
    if mode == "mild":
        return search_clip(w, stats.scaled_gram(s), g, fake_quantize, step, steps=MILD_STEPS)
    if mode == "heldout":
        if min(stats.counts) == 0:  # one sequence only: nothing to check against
            return search_clip(w, stats.scaled_gram(s), g, fake_quantize, step)
        return search_clip(w, stats.scaled_gram(s, part=0), g, fake_quantize, step,
                           check_gram=stats.scaled_gram(s, part=1))
    raise ValueError(f"unknown clip mode {mode!r} (choose from {', '.join(CLIP_MODES)})")


def clamp_to_shrinks(w: torch.Tensor, shrink: torch.Tensor, group_size: int) -> None:
    """Clamps w [out, in] in place to +-shrink [out, G, 1] times each group's max |w|."""
    wg = w.view(w.shape[0], -1, group_size)  # [out, G, g]
    bound = shrink * wg.abs().amax(-1, keepdim=True)  # [out, G, 1]
    torch.minimum(torch.maximum(wg, -bound), bound, out=wg)


def clips_linear(mode: str, name: str) -> bool:
    """Whether clip mode `mode` searches shrinks for the linear `name` (a reference key
    such as "self_attn.o_proj" or "mlp.experts.3.down_proj"; q and k are left out by
    the quantizers themselves)."""
    return mode != "off" and (mode != ATTENTION_ONLY or name.startswith("self_attn."))


class InputStats:
    """Statistics of one linear input over all calibration tokens: sum |x| per channel
    (for x_mean), the per-group Gram matrices of the even and the odd sequences (for the
    clip search) and, when asked, the full Gram matrix X^T X (GPTQ's Hessian)."""

    def __init__(self, width: int, group_size: int, full_gram: bool = False,
                 device: torch.device | str = "cpu"):
        self.g = group_size
        groups = width // group_size
        self.abs_sum = torch.zeros(width, dtype=torch.float64, device=device)  # [in]
        self.gram = torch.zeros(2, groups, group_size, group_size, device=device)  # [2, G, g, g]
        self.full = torch.zeros(width, width, device=device) if full_gram else None  # [in, in]
        self.counts = [0, 0]  # tokens of the even / odd sequences

    def add(self, x: torch.Tensor, part: torch.Tensor) -> None:
        """x [b, T, in]: b sequences; part [b]: 0 for an even sequence, 1 for an odd one."""
        for p in (0, 1):
            xp = x[part == p].reshape(-1, x.shape[-1])  # [n, in]
            if len(xp) == 0:
                continue
            self.abs_sum += xp.abs().sum(0, dtype=torch.float64)
            xg = xp.reshape(xp.shape[0], self.gram.shape[1], self.g).transpose(0, 1)  # [G, n, g]
            self.gram[p].baddbmm_(xg.transpose(1, 2), xg)
            if self.full is not None:
                self.full.addmm_(xp.T, xp)
            self.counts[p] += xp.shape[0]

    @property
    def count(self) -> int:
        return sum(self.counts)

    def x_mean(self) -> torch.Tensor:
        return (self.abs_sum / self.count).float()

    def scaled_gram(self, s: torch.Tensor, part: int | None = None) -> torch.Tensor:
        """Mean Gram matrices [G, g, g] of x / s (the input once scales are folded), over
        all tokens or over one part's."""
        gram = self.gram.sum(0) / self.count if part is None else self.gram[part] / self.counts[part]
        inv = (1.0 / s).reshape(-1, self.g)  # [G, g]
        return gram * inv[:, :, None] * inv[:, None, :]

    def hessian(self, s: torch.Tensor) -> torch.Tensor:
        """X^T X / n [in, in] of x / s, for GPTQ."""
        if self.full is None:
            raise RuntimeError("the full Gram matrix was not accumulated (full_gram=False)")
        inv = 1.0 / s  # [in]
        return self.full / self.count * inv[:, None] * inv[None, :]
