"""Activation-aware weight quantization (AWQ): scale search, clip search, int4.

Per decoder layer, as AutoAWQ does (arXiv 2306.00978 and its reference code):
 1. Run the full-precision layer over the calibration activations, recording the
    input of every linear; the layer's FP output is the next layer's input.
 2. For each group of linears sharing an input, search per-input-channel scales
       s(a) = x_mean^a / (w_mean^(1-a) + 1e-4),  clamped >= 1e-4, over sqrt(max*min)
    for a in 0, 0.05, ..., 0.95, keeping the a whose fake-quantized weights
    Q(W*s)/s give the lowest MSE at the output of the module that consumes them
    (the attention for q/k/v, the MLP for gate/up, the linear itself for o, down).
    Fold 1/s into the op before (norm weight, or v/up output rows) and s into
    the linears' input columns: the FP function is unchanged, x*W^T = (x/s)(W*s)^T.
    Which linears share an input, and which op produces it, depends on the
    architecture: SCALE_GROUPS, after AutoAWQ's get_layers_for_scaling.
 3. Clip search for every linear but q/k (clip.py): per output row and group, clamp
    the weights to +-(1 - i/20)*absmax for i in 0..9 and keep the one minimising the
    group's output error; --clip picks a milder, held-out-checked or attention-only
    variant.
 4. Quantize with the round-to-nearest int4 quantizer (rtn.quantize_int4), or with
    GPTQ's error compensation (gptq.py; methods gptq and awq-gptq) from the Gram
    matrix of the same (scaled) inputs; GPTQ takes the clip bounds, as fractions of
    each group's max |w|, as its grid's range and compensates the clipping error with
    the rounding error.

Where we differ, and why:
  * The clip error is computed exactly over all calibration tokens from per-group
    Gram matrices (clip.py), not over 512 sampled tokens.
  * The scale-search loss is computed on `loss_tokens` tokens sampled from the
    calibration set (whole sequences for the attention, since it mixes tokens;
    single tokens for the MLP and the linears, stratified: every sequence's first
    token plus a uniform draw, weighted back to the all-token mean; see
    stratified_sample), while x_mean and the clip
    statistics use every token. The search runs the module once per candidate (21
    of them, and once for the reference), so this is what keeps a 128 x 512
    calibration within minutes on a CPU.
  * The unscaled weights (s = 1) are a candidate of the scale search besides the
    20 ratios (see grid_search): AWQ never does worse than round-to-nearest on
    the search's own loss.
  * Calibration sequences whose activations turn non-finite are dropped (and
    reported); a search with no finite loss falls back to unscaled weights
    (reported) instead of raising.

Device: the activations, statistics, searches and GPTQ run on AwqOptions.device (cuda
when torch sees one, else cpu); tensors are created on it. What comes back to the
host: the folded norms, and GPTQ's finished int4 tensors, or without GPTQ the scaled
f32 weights, which rtn.quantize_int4 rounds. Memory on it: one layer's weights, the
calibration activations [N, T, d] and the layer's input statistics.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..reference import attention_heads, decoder_layer, mlp_hidden, rotary_tables
from ..source import SourceModel, layer_prefix
from .calibration import calibration_blocks
from .clip import (CLIP_MODES, CLIP_STEPS, MILD_STEPS, InputStats, clamp_to_shrinks,
                   clip_shrinks, clips_linear)
from .gptq import gptq_int4, int4_grid
from .rtn import MAX_Q, quantize_int4

N_GRID = 20  # ratios a = i / 20, i = 0..19
CLIP_EXCLUDED = ("self_attn.q_proj", "self_attn.k_proj")  # their error is seen through softmax
# Which recorded input each linear reads.
INPUT_OF = {"self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
            "self_attn.o_proj": "o", "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp",
            "mlp.down_proj": "down"}
# Forward passes run over chunks of about this many tokens, bounding the memory
# of the [chunk, ffn] MLP activations and [chunk/T, H, T, T] attention scores.
CHUNK_TOKENS = 4096


@dataclass
class AwqOptions:
    # 32 x 256 tokens: SmolLM2-135M calibrates in minutes on 2 cores (16 x 256 in about
    # two: README, "Targets (issue 18)").
    calib_samples: int = 32
    calib_seqlen: int = 256
    calib_text: str | None = None  # None: the Wikipedia summaries' calibration split
    clip: str | bool = "full"  # a clip.CLIP_MODES entry; True = "full", False = "off"
    seed: int = 0
    loss_tokens: int = 1024  # tokens the scale-search loss is computed on; 0 = all
    scale_search: bool = True  # False: unscaled weights (how the gptq method runs)
    gptq: bool = False  # quantize with GPTQ's error compensation instead of rounding
    device: str | None = None  # torch device of the searches; None: cuda if torch sees one


def stratified_sample(n: int, t: int, budget: int,
                      rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-token loss sample: mask [n, t] of `budget` tokens and their weights.

    Position 0 of every sequence is always taken, the rest uniformly: the first token
    (the attention sink, with massive activations) can carry an output error hundreds
    of times a typical token's and most of a layer's loss, so a uniform sample's loss
    would swing with how many first tokens it drew (docs/quality.md, "Why: the
    per-layer diagnosis", Qwen2.5-Coder). A drawn token weighs its stratum's size over
    the number drawn from it, so the weighted mean estimates the all-token mean
    (AutoAWQ's objective) without that variance."""
    mask = np.zeros((n, t), dtype=bool)
    weight = np.zeros((n, t), dtype=np.float32)
    if budget >= n * t:
        mask[:], weight[:] = True, 1.0
    elif budget <= n:  # too small for both strata: a plain uniform draw
        flat = rng.permutation(n * t)[:budget]
        mask[flat // t, flat % t] = True
        weight[:] = n * t / budget
    else:
        mask[:, 0], weight[:, 0] = True, 1.0
        flat = rng.permutation(n * (t - 1))[:budget - n]
        mask[flat // (t - 1), 1 + flat % (t - 1)] = True
        weight[:, 1:] = n * (t - 1) / (budget - n)
    return torch.from_numpy(mask), torch.from_numpy(weight)


@dataclass(frozen=True)
class ScaleGroup:
    """Linears sharing one input, searched together. `prev` receives 1/s: a norm
    weight [in] (the stored multiplier, so Gemma's 1 + w too: (1 + w) / s), or a
    linear whose output rows feed the group."""
    name: str
    prev: str
    linears: tuple[str, ...]
    source: str  # which recorded input the group's linears read ("qkv", "o", "mlp", "down")


_QKV = ScaleGroup("qkv", "input_layernorm",
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "qkv")
# v -> o: the attention mixes v's rows over tokens with weights that do not depend on
# v, so 1/s on v's output rows reaches o's input columns unchanged. This holds through
# q/k norms (they see q and k only) and before Gemma's post-attention norm (which
# follows o). It needs v's rows to be o's columns one to one (scale_groups checks).
_VO = ScaleGroup("vo", "self_attn.v_proj", ("self_attn.o_proj",), "o")
_DOWN = ScaleGroup("down", "mlp.up_proj", ("mlp.down_proj",), "down")


def _gate_up(norm: str) -> ScaleGroup:
    """gate/up scaled from the norm in front of the MLP."""
    return ScaleGroup("mlp", norm, ("mlp.gate_proj", "mlp.up_proj"), "mlp")


# architecture -> its scale groups in search order. Per-head q/k norms (Qwen3, Gemma 3)
# act on q/k's outputs, so scaling their input columns leaves them alone, as AutoAWQ's
# qwen3.py does; Gemma 3's MLP reads pre_feedforward_layernorm (as AutoAWQ's gemma2.py).
_PRE_NORM = (_QKV, _VO, _gate_up("post_attention_layernorm"), _DOWN)
SCALE_GROUPS = {
    "llama": _PRE_NORM,
    "mistral": _PRE_NORM,
    "qwen2": _PRE_NORM,
    "qwen3": _PRE_NORM,
    "gemma3": (_QKV, _VO, _gate_up("pre_feedforward_layernorm"), _DOWN),
    # Dense layers of these; their MoE layers take the attention groups from here
    # and search the experts in awq_moe.
    "mixtral": _PRE_NORM,
    "qwen3_moe": _PRE_NORM,
}


# fake_quantize works on blocks of rows of about this many weights (1 MB of f32), so
# that its ~10 elementwise passes stay in the core's L2 cache instead of streaming a
# large weight from memory each time. Every op is elementwise or within a row's
# groups, so the result does not depend on the block size.
FAKE_QUANTIZE_BLOCK = 1 << 18


def _fake_quantize_rows(w: torch.Tensor, group_size: int, scale: torch.Tensor | None,
                        out: torch.Tensor) -> None:
    """fake_quantize of the rows w [rows, in] into out [rows, in]."""
    rows, in_f = w.shape
    if scale is not None:
        w = w * scale
    g = w.reshape(rows, in_f // group_size, group_size)  # [rows, G, g]
    s, z = int4_grid(g.amax(-1, keepdim=True), g.amin(-1, keepdim=True))  # [rows, G, 1]
    # clamp(round(w/s) + z, 0, 15) - z == clamp(round(w/s), -z, 15 - z): z is an integer,
    # so both are exact, and the second makes three passes over w instead of five.
    q = torch.round_(g / s)
    q = q.clamp_(-z, MAX_Q - z).mul_(s).reshape(rows, in_f)
    if scale is not None:
        q = q.div_(scale)
    out.copy_(q)


def fake_quantize(w: torch.Tensor, group_size: int,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """w [out, in] f32 -> the weights quantize_int4 then dequantize_int4 give, in torch
    (same rounding: f16 scale, range widened to 0, constant groups exact). With scale
    [in]: Q(w * scale) / scale, the weights AWQ's scales make, in the same pass.
    On the CPU in blocks of rows that stay in cache; on a GPU in one pass (blocks
    would only multiply its kernel launches)."""
    out = torch.empty_like(w)  # [out, in]
    rows = max(1, FAKE_QUANTIZE_BLOCK // w.shape[1]) if w.device.type == "cpu" else w.shape[0]
    for lo in range(0, w.shape[0], rows):
        _fake_quantize_rows(w[lo:lo + rows], group_size, scale, out[lo:lo + rows])
    return out


def weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """AutoAWQ's w_mean [in]: |W| normalised by each group's max |W|, averaged over the
    rows of all the group's linears."""
    w = torch.cat(weights, dim=0)  # [sum(out), in]
    g = w.abs().reshape(w.shape[0], -1, group_size)  # [rows, G, g]
    g = g / (g.amax(-1, keepdim=True) + 1e-6)  # +1e-6: an all-zero group stays 0, not NaN
    return g.reshape(w.shape).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    """s(a) [in], normalised by sqrt(max*min) so that its geometric middle is 1."""
    s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@dataclass
class ScaleSearch:
    scales: torch.Tensor  # [in]; all ones when unscaled (identity won, or no finite loss)
    ratio: float | None  # the chosen a; None: unscaled
    losses: list[float]  # per grid point
    unscaled_loss: float  # the loss of the unscaled weights (round-to-nearest)

    @property
    def finite(self) -> bool:
        """False when no candidate, unscaled included, gave a finite loss."""
        return any(math.isfinite(v) for v in (self.unscaled_loss, *self.losses))


def grid_search(x_mean: torch.Tensor, w_mean: torch.Tensor,
                loss: Callable[[torch.Tensor | None], float],
                step: Callable[[], None] | None = None) -> ScaleSearch:
    """The grid search of step 2. loss(s [in], or None for the unscaled weights) -> MSE
    of the inspected module's output with its weights fake-quantized at those scales.
    Ties keep the smaller a (the first found).

    Beyond AutoAWQ's grid, the unscaled weights (s = 1, plain round-to-nearest) are a
    candidate too, kept only when strictly better than every grid point: no grid point
    is s = 1 (at a = 0, s = 1 / w_mean), and on real models the whole grid sometimes
    loses to the unscaled weights on the search's own loss (docs/quality.md, "Why: the
    per-layer diagnosis", Qwen2.5-Coder)."""
    best, best_loss, losses = None, math.inf, []
    for i in range(N_GRID):
        ratio = i / N_GRID
        s = candidate_scales(x_mean, w_mean, ratio)  # [in]
        value = loss(s)
        losses.append(value)
        if math.isfinite(value) and value < best_loss:
            best, best_loss = (s, ratio), value
        if step:
            step()
    unscaled_loss = loss(None)
    if best is None or (math.isfinite(unscaled_loss) and unscaled_loss < best_loss):
        return ScaleSearch(torch.ones_like(x_mean), None, losses, unscaled_loss)
    return ScaleSearch(best[0], best[1], losses, unscaled_loss)


def search_scales(x_mean: torch.Tensor, weights: list[torch.Tensor],
                  loss: Callable[[list[torch.Tensor]], float], group_size: int,
                  step: Callable[[], None] | None = None) -> ScaleSearch:
    """grid_search over the linears `weights` that share one input; loss(candidate
    weights, one per linear) -> MSE of the inspected module's output."""
    return grid_search(x_mean, weight_mean(weights, group_size),
                       lambda s: loss([fake_quantize(w, group_size, s) for w in weights]), step)


def _mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Mean squared difference; with weights [tokens], the weighted mean over tokens
    (rows) of each token's mean."""
    if weights is None:
        return float((a - b).pow(2).mean())
    return float(((a - b).pow(2).mean(-1) * weights).sum() / weights.sum())


def fold_scales(group: ScaleGroup, s: torch.Tensor, w: dict, scaled: dict) -> None:
    """Step 2's fold for one group, in place: s [in] into its linears' input columns in
    `scaled`, 1/s into the op before (a linear's output rows and bias, or a norm
    weight, in `scaled` / `w`)."""
    for n in group.linears:
        scaled[n] *= s
    if group.prev.endswith("_proj"):
        scaled[group.prev] /= s[:, None]
        if group.prev + ".bias" in w:
            w[group.prev + ".bias"] /= s
    else:
        w[group.prev] /= s


class AwqQuantizer:
    """The `awq` method (a pipeline.LayerQuantizer). Holds the calibration activations
    [samples, T, d] between layers: memory is one layer plus these. Layers must come
    in order, once each; not thread-safe (one quantizer per quantize_model call)."""

    def __init__(self, source: SourceModel, group_size: int, progress: bool = True,
                 **options):
        self.options = AwqOptions(**options)
        o = self.options
        if o.loss_tokens < 0:
            raise ValueError(f"loss_tokens must be >= 0 (0 = all), got {o.loss_tokens}")
        if isinstance(o.clip, bool):
            o.clip = "full" if o.clip else "off"
        if o.clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)} (got {o.clip!r})")
        self.device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        self.config = c = source.config
        self.group_size = group_size
        self.progress = progress
        self.times = {"calibration data": 0.0, "layer forward": 0.0, "scale search": 0.0,
                      "clip search": 0.0, "gptq" if o.gptq else "int4 quantize": 0.0}
        self.notes: list[str] = []
        self.kept_unscaled = 0  # searches where s = 1 beat every ratio
        self.ratios: dict[str, list[float | None]] = {}
        start = time.perf_counter()
        ids = calibration_blocks(source.tokenizer.json, o.calib_samples, o.calib_seqlen,
                                 seed=o.seed, text_file=o.calib_text)  # [N, T]
        if int(ids.max()) >= c.vocab_size:
            raise ValueError(f"the tokenizer produced id {int(ids.max())}, outside the model's "
                             f"vocabulary of {c.vocab_size}")
        embed = source.get("model.embed_tokens.weight")  # [vocab, d]
        self.x = torch.from_numpy(np.ascontiguousarray(embed[ids])).to(self.device)  # [N, T, d]
        del embed
        if c.embedding_scale != 1.0:  # Gemma: sqrt(d), in f32 as the reference
            self.x *= torch.tensor(c.embedding_scale, dtype=self.x.dtype)
        n, t = ids.shape
        # The rotary tables (cos, sin [T, hd]) of the layer being quantized.
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        # The loss subsample, fixed for all layers: whole sequences for the attention
        # and single tokens for the MLP and linears (loss_tokens of each; 0 = all).
        rng = np.random.default_rng(o.seed)
        budget = n * t if o.loss_tokens == 0 else min(o.loss_tokens, n * t)
        self.attn_seqs = np.sort(rng.permutation(n)[:max(1, round(budget / t))])
        mask, weight = stratified_sample(n, t, budget, rng)  # [N, T] each
        self.loss_mask, self.loss_weight = mask.to(self.device), weight.to(self.device)
        self.times["calibration data"] = time.perf_counter() - start

    # ------------------------------------------------------------ per layer
    def scale_groups(self) -> list[ScaleGroup]:
        """The architecture's groups, v -> o only when v's output rows are o's input
        columns one to one: not under grouped-query attention, where each v row feeds
        H/KV heads."""
        c = self.config
        return [g for g in SCALE_GROUPS[c.architecture]
                if g is not _VO or c.num_kv_heads == c.num_heads]

    def _forward(self, layer: int, w: dict) -> tuple[dict, dict]:
        """The FP layer over every calibration sequence, in chunks. Returns the input
        statistics per input ("qkv", "o", "mlp", "down") and the loss samples: the
        sampled tokens of "o", "mlp" and "down" with their "weight", and the attention's
        whole sequences "attn" (q/k/v's loss runs through the attention). Replaces
        self.x by the layer's output (dropping sequences gone non-finite)."""
        c, g = self.config, self.group_size
        n, t, d = self.x.shape
        widths = {"qkv": d, "o": c.num_heads * c.head_dim, "mlp": d,
                  "down": c.intermediate_size}
        stats = {k: InputStats(width, g, full_gram=self.options.gptq, device=self.device)
                 for k, width in widths.items()}
        sampled = ("o", "mlp", "down")
        samples: dict[str, list[torch.Tensor]] = {k: [] for k in (*sampled, "attn", "weight")}
        keep = torch.ones(n, dtype=torch.bool, device=self.device)
        per_chunk = max(1, CHUNK_TOKENS // t)
        attn_seqs = set(self.attn_seqs.tolist())
        for lo in range(0, n, per_chunk):
            x = self.x[lo:lo + per_chunk]  # [b, T, d]
            inputs: dict[str, torch.Tensor] = {}  # the linears' inputs, [b, T, width] each
            out = decoder_layer(c, x, w, *self.rope, layer, taps=inputs)  # [b, T, d]
            h = inputs["qkv"]
            finite = out.isfinite().flatten(1).all(1)  # [b]
            for value in inputs.values():
                finite &= value.isfinite().flatten(1).all(1)
            keep[lo:lo + len(x)] = finite
            mask = self.loss_mask[lo:lo + len(x)] & finite[:, None]  # [b, T]
            part = (torch.arange(lo, lo + len(x), device=self.device) % 2)[finite]  # [b']
            for key, value in inputs.items():
                stats[key].add(value[finite], part)
            for key in sampled:
                samples[key].append(inputs[key][mask])  # [tokens, width]
            samples["weight"].append(self.loss_weight[lo:lo + len(x)][mask])  # [tokens]
            samples["attn"] += [h[i] for i in range(len(x))
                                if lo + i in attn_seqs and bool(finite[i])]
            self.x[lo:lo + len(x)] = out
        self._drop_non_finite(layer, keep)
        merged = {k: torch.cat(samples[k]) for k in (*sampled, "weight")}  # [tokens, width]
        merged["attn"] = torch.stack(samples["attn"]) if samples["attn"] else None  # [S, T, d]
        return stats, merged

    def _drop_non_finite(self, layer: int, keep: torch.Tensor) -> None:
        """Drops the calibration sequences whose activations went non-finite in `layer`
        (keep [n] False) from x, the loss mask and weights and the attention samples,
        with a note; the dense and the MoE layer passes both call it."""
        if bool(keep.all()):
            return
        n = len(keep)
        self.notes.append(f"layer {layer}: dropped {int((~keep).sum())} of {n} calibration "
                          "sequences whose activations became non-finite")
        kept = keep.nonzero()[:, 0]
        self.x, self.loss_mask = self.x[kept].contiguous(), self.loss_mask[kept]
        self.loss_weight = self.loss_weight[kept]
        remap = {int(old): new for new, old in enumerate(kept)}
        self.attn_seqs = np.array([remap[i] for i in self.attn_seqs.tolist() if i in remap],
                                  dtype=np.int64)
        if len(self.attn_seqs) == 0 and len(self.x):
            self.attn_seqs = np.zeros(1, dtype=np.int64)  # later layers: the first left

    def observe(self, layer: int, w: dict) -> tuple[dict | None, dict | None]:
        """The FP layer (weights w by reference key, torch on self.device) over the
        calibration activations: (input statistics, loss samples) as _forward returns
        them, or (None, None) when no sequence is left. Advances the activations."""
        self.rope = tuple(t.to(self.device)
                          for t in rotary_tables(self.config, self.x.shape[1], layer))
        if not len(self.x):
            return None, None
        with torch.no_grad():
            return self._forward(layer, w)

    def module_loss(self, layer: int, group: ScaleGroup, w: dict, samples: dict) -> Callable:
        """loss(candidate weights of group.linears) -> MSE against the FP module output."""
        c = self.config

        def with_(cands: list[torch.Tensor]) -> dict:
            return {**w, **dict(zip(group.linears, cands))}

        if group.name == "qkv":
            h = samples["attn"]  # [S, T, d]
            if h is None:  # its sequences went non-finite in this layer: fallback, noted
                return lambda cands: math.inf
            per_chunk = max(1, CHUNK_TOKENS // h.shape[1])

            def run(ww: dict) -> torch.Tensor:
                return torch.cat([attention_heads(c, h[i:i + per_chunk], ww, *self.rope, layer)
                                  for i in range(0, len(h), per_chunk)]) @ w["self_attn.o_proj"].T
        elif group.name == "mlp":
            def run(ww: dict) -> torch.Tensor:
                return mlp_hidden(samples["mlp"], ww, c.activation) @ w["mlp.down_proj"].T
        else:  # a single linear: its own output
            x, name = samples[group.source], group.linears[0]

            def run(ww: dict) -> torch.Tensor:
                return x @ ww[name].T
        reference = run(w)
        # Single-token samples carry their stratum weights; the attention's whole
        # sequences are a plain sample.
        weights = None if group.name == "qkv" else samples["weight"]
        return lambda cands: _mse(run(with_(cands)), reference, weights)

    def fold_layer(self, layer: int, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Steps 1-3 for one layer: returns its linears by reference key
        ("self_attn.q_proj", ...), scaled (and clipped; with GPTQ unclipped, the bounds
        as shrinks [out, G, 1] in self.clip_shrink), f32 [out, in], and replaces the
        layer's norms (and biases) in `weights` by their folded versions. Advances the
        calibration activations to the layer's FP output."""
        w = self._layer_tensors(layer, weights)
        o = self.options
        groups = self.scale_groups() if o.scale_search else []
        clipped = [n for n in INPUT_OF if n not in CLIP_EXCLUDED and clips_linear(o.clip, n)]
        steps = MILD_STEPS if o.clip == "mild" else CLIP_STEPS
        bar = tqdm(total=len(groups) * N_GRID + len(clipped) * steps,
                   desc=f"layer {layer} search", unit="step", leave=False,
                   disable=not self.progress)
        tick = lambda: bar.update(1)  # noqa: E731

        start = time.perf_counter()
        self.layer_stats, self.input_scale, self.searches = None, {}, {}
        self.clip_shrink: dict[str, torch.Tensor] = {}
        stats, samples = self.observe(layer, w)
        self.times["layer forward"] += time.perf_counter() - start
        if stats is None or stats["qkv"].count == 0:
            self.notes.append(f"layer {layer}: no finite calibration activations left; "
                              "quantized with plain RTN")
            bar.close()
            self._hand_back_norms(layer, weights, w)
            return {n: w[n] for n in INPUT_OF}

        # Step 2: every search sees the FP weights (as AutoAWQ); folding comes after.
        start = time.perf_counter()
        scales = {}
        with torch.no_grad():
            for group in groups:
                scales[group.name] = self.search_group(layer, group, w, stats, samples, tick)
            scaled = {n: w[n].clone() for n in INPUT_OF}  # [out, in] each
            for group in groups:
                fold_scales(group, scales[group.name], w, scaled)
        self.times["scale search"] += time.perf_counter() - start

        # Step 3: clip search on the scaled weights against the scaled inputs. The
        # scale each linear's input was divided by: ones for a linear in no group
        # (o_proj under GQA, which AutoAWQ clips all the same).
        start = time.perf_counter()
        input_scale = {n: scales[g.name] for g in groups for n in g.linears}
        self.layer_stats = stats
        self.input_scale = {n: input_scale.get(n, torch.ones(scaled[n].shape[1],
                                                             device=self.device))
                            for n in INPUT_OF}  # [in] each
        with torch.no_grad():
            for n in clipped:
                shrink = clip_shrinks(scaled[n], stats[INPUT_OF[n]], self.input_scale[n],
                                      o.clip, fake_quantize, step=tick)  # [out, G, 1]
                if o.gptq:  # GPTQ takes its grid from the shrinks and compensates the clipping
                    self.clip_shrink[n] = shrink
                else:
                    clamp_to_shrinks(scaled[n], shrink, self.group_size)
        self.times["clip search"] += time.perf_counter() - start
        bar.close()
        self._hand_back_norms(layer, weights, w)
        return scaled

    def _layer_tensors(self, layer: int, weights: dict[str, np.ndarray]) -> dict:
        """The layer's weights as torch tensors on self.device by reference-model key
        ("self_attn.q_proj", "input_layernorm", "...bias"), copied: the folded norms and
        biases go back through `weights` at the end. Rejects non-finite source weights."""
        p = layer_prefix(layer)
        for name, value in weights.items():
            if not np.isfinite(value).all():
                raise ValueError(f"{name}: {int((~np.isfinite(value)).sum())} non-finite "
                                 "value(s) in the source weights; the model is corrupt")
        return {name[len(p):].removesuffix(".weight"): torch.tensor(value, device=self.device)
                for name, value in weights.items()}

    def search_group(self, layer: int, group: ScaleGroup, w: dict, stats: dict,
                     samples: dict, tick: Callable[[], None]) -> torch.Tensor:
        """Step 2 for one group on the FP weights w: its scales [in], the search kept in
        self.searches and booked for the report."""
        result = search_scales(stats[group.source].x_mean(), [w[n] for n in group.linears],
                               self.module_loss(layer, group, w, samples), self.group_size,
                               step=tick)
        self.searches[group.name] = result
        return self.record_search(layer, group.name, result)

    def record_search(self, layer: int, name: str, result: ScaleSearch,
                      label: str | None = None) -> torch.Tensor:
        """Books a scale search under `name` in the report's ratios (a note, naming
        `label` or `name`, when no candidate had a finite loss; the count of unscaled
        wins) and returns its scales."""
        self.ratios.setdefault(name, []).append(result.ratio)
        if not result.finite:
            self.notes.append(f"layer {layer} {label or name}: no ratio gave a finite loss; "
                              "kept unscaled weights (no AWQ scales for these linears)")
        elif result.ratio is None:
            self.kept_unscaled += 1
        return result.scales

    @staticmethod
    def _hand_back_norms(layer: int, weights: dict[str, np.ndarray], w: dict) -> None:
        """Norms and biases (with the inverse scales folded in) back into `weights`."""
        p = layer_prefix(layer)
        for name in weights:
            key = name[len(p):].removesuffix(".weight")
            if not key.endswith("_proj"):
                weights[name] = w[key].cpu().numpy()

    def quantize_layer(self, layer: int, weights: dict[str, np.ndarray],
                       linears: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        p = layer_prefix(layer)
        scaled = self.fold_layer(layer, weights)
        start = time.perf_counter()
        result = {}
        with torch.no_grad():
            for prefix in linears:
                key, name = prefix[len(p):], prefix + ".weight"
                if self.options.gptq and self.layer_stats is not None:
                    hessian = self.layer_stats[INPUT_OF[key]].hessian(self.input_scale[key])
                    result[prefix] = gptq_int4(scaled[key], hessian, self.group_size, name,
                                               shrink=self.clip_shrink.get(key))
                else:
                    result[prefix] = quantize_int4(scaled[key].cpu().numpy(), self.group_size,
                                                   name=name)
        self.times["gptq" if self.options.gptq else "int4 quantize"] += (
            time.perf_counter() - start)
        return result

    def report(self) -> dict:
        """Seconds per stage, fallbacks and the chosen ratios per group (one per layer;
        None: unscaled, because s = 1 won or no loss was finite)."""
        searched = sum(len(v) for v in self.ratios.values())
        notes = list(self.notes)
        if self.kept_unscaled:
            notes.append(f"{self.kept_unscaled} of {searched} scale searches kept the unscaled "
                         "weights (lower loss than every ratio)")
        where = (str(self.device) if self.device.type != "cpu" else
                 f"cpu, {torch.get_num_threads()} threads")
        return {"stage_seconds": dict(self.times), "device": where, "notes": notes,
                "ratios": {k: list(v) for k, v in self.ratios.items()}}
