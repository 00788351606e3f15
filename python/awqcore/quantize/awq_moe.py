"""AWQ for mixture-of-experts layers (Mixtral, Qwen3-MoE).

`MoeAwqQuantizer` is awq.AwqQuantizer with one more layer kind: dense layers
(Qwen3-MoE's mlp_only_layers) go through the dense code unchanged; an MoE layer
is searched as follows (the attention exactly as a dense layer's):
  * gate/up of all experts: ONE scale s [d], since every expert reads the same
    post-attention norm output h. x_mean is over all calibration tokens; w_mean
    over the rows of every expert's gate and up; the loss is the MSE of the whole
    MoE block's output (router, top-k, every chosen expert) on the loss tokens.
    1/s folds into post_attention_layernorm and s into every expert's gate/up
    columns AND the router's columns: the router reads h too, and its logits
    (router * s) . (h / s) are then unchanged, so no token changes expert.
  * each expert's down: its own scale from its own up's output rows, searched on
    the tokens routed to that expert (its x_mean from all of them, the loss on at
    most loss_tokens of them).
  * clip search for every expert linear on its routed tokens (gate/up: the Gram
    matrices of h over the tokens routed to the expert; down: of its hidden).
  * an expert that no calibration token is routed to has no statistics: its
    gate/up still take the shared scale (folded into the norm, they must), its
    down stays unscaled and nothing is clipped: round-to-nearest. Such experts are
    counted in the report (`unrouted_experts` per layer and a note).

Memory: the pipeline holds one decoder layer in float32 (a real Mixtral 8x7B layer,
8 x 3 x 4096 x 14336 = 1.4 G parameters, is 5.6 GB). This quantizer holds it twice
more: the layer as torch tensors, and the scaled copy of its linears that it clips
and hands to the quantizer. The forward pass runs one expert at a time on its
routed tokens (reference.moe_block), and the shared-scale search fake-quantizes one
expert's gate and up at a time inside the loss (never all E candidates at once);
its w_mean, though, reads every expert's gate and up at once (up to three
temporaries of the experts' gate/up size, about twice the layer, while it runs).
Per expert it keeps input statistics (a [2, d/g, g, g] and a [2, f/g, g, g] Gram
matrix, even and odd sequences: 4 + 14 MB at g128 for Mixtral) and the down_proj
samples (at most loss_tokens x f).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..reference import decoder_layer, expert_weights, mlp_hidden, route, rotary_tables
from ..source import EXPERT_PROJECTIONS, ROUTER_NAME, expert_linear, layer_prefix
from .awq import (CHUNK_TOKENS, N_GRID, AwqQuantizer, _mse, fake_quantize, fold_scales,
                  grid_search, search_scales, weight_mean)
from .clip import InputStats, clamp_to_shrinks, clip_shrinks, clips_linear
from .rtn import quantize_int4


class MoeAwqQuantizer(AwqQuantizer):
    """The `awq` method for models with experts (pipeline picks it when num_experts > 0).
    Same contract and thread safety as AwqQuantizer."""

    def __init__(self, source, group_size: int, progress: bool = True, **options):
        if options.get("gptq") or options.get("scale_search") is False:
            raise ValueError("GPTQ (--method gptq, awq-gptq) is not implemented for "
                             "mixture-of-experts models; use --method awq or rtn")
        super().__init__(source, group_size, progress, **options)
        self.unrouted: dict[int, list[int]] = {}  # MoE layer -> experts no token reached

    def quantize_layer(self, layer: int, weights: dict[str, np.ndarray],
                       linears: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not self.config.is_moe_layer(layer):
            return super().quantize_layer(layer, weights, linears)
        p = layer_prefix(layer)
        scaled = self._fold_moe_layer(layer, weights)
        start = time.perf_counter()
        result = {prefix: quantize_int4(scaled[prefix[len(p):]].cpu().numpy(), self.group_size,
                                        name=prefix + ".weight") for prefix in linears}
        self.times["int4 quantize"] += time.perf_counter() - start
        return result

    # ------------------------------------------------------------ forward
    def _moe_forward(self, layer: int, w: dict) -> tuple[dict, dict]:
        """The FP layer over the calibration sequences (self.x advances to its output).
        Returns statistics {"qkv", "o", "mlp", ("mlp", e), ("down", e)} and samples
        {"attn", "o", "mlp", "weight", ("down", e)}."""
        c, g = self.config, self.group_size
        n, t, d = self.x.shape
        f, E = c.moe_intermediate_size, c.num_experts
        dev = self.device
        stats: dict = {"qkv": InputStats(d, g, device=dev),
                       "o": InputStats(c.num_heads * c.head_dim, g, device=dev),
                       "mlp": InputStats(d, g, device=dev)}
        for e in range(E):
            stats["mlp", e] = InputStats(d, g, device=dev)
            stats["down", e] = InputStats(f, g, device=dev)
        samples: dict = {"attn": [], "o": [], "mlp": [], "weight": []}
        down: dict[int, list[torch.Tensor]] = {e: [] for e in range(E)}
        cap = self.options.loss_tokens or n * t  # down_proj loss samples per expert
        keep = torch.ones(n, dtype=torch.bool, device=dev)
        per_chunk = max(1, CHUNK_TOKENS // t)
        attn_seqs = set(self.attn_seqs.tolist())
        for lo in range(0, n, per_chunk):
            x = self.x[lo:lo + per_chunk]  # [b, T, d]
            taps: dict = {}
            out = decoder_layer(c, x, w, *self.rope, layer, taps=taps)  # [b, T, d]
            finite = out.isfinite().flatten(1).all(1)  # [b]
            for key in ("qkv", "o", "mlp"):
                finite &= taps[key].isfinite().flatten(1).all(1)
            keep[lo:lo + len(x)] = finite
            mask = self.loss_mask[lo:lo + len(x)] & finite[:, None]  # [b, T]
            # Clip statistics per even / odd sequence (clip.InputStats' held-out mode).
            parity = torch.arange(lo, lo + len(x), device=dev) % 2  # [b]
            for key in ("qkv", "o", "mlp"):
                stats[key].add(taps[key][finite], parity[finite])
            for key in ("o", "mlp"):
                samples[key].append(taps[key][mask])
            samples["weight"].append(self.loss_weight[lo:lo + len(x)][mask])
            samples["attn"] += [taps["qkv"][i] for i in range(len(x))
                                if lo + i in attn_seqs and bool(finite[i])]
            h = taps["mlp"].reshape(-1, d)  # [b*T, d]
            token_finite = finite.repeat_interleave(t)  # [b*T]
            for e, (tokens, hidden) in taps["routed"].items():
                ok = token_finite[tokens]
                tokens, hidden = tokens[ok], hidden[ok]  # [m], [m, f]
                part = parity[tokens // t]  # each routed token counts as a 1-token sequence
                stats["mlp", e].add(h[tokens][:, None], part)
                stats["down", e].add(hidden[:, None], part)
                room = cap - sum(len(s) for s in down[e])
                if room > 0:
                    down[e].append(hidden[:room])
            self.x[lo:lo + len(x)] = out
        self._drop_non_finite(layer, keep)
        merged = {k: torch.cat(samples[k]) for k in ("o", "mlp", "weight")}
        merged["attn"] = torch.stack(samples["attn"]) if samples["attn"] else None
        for e in range(E):
            merged["down", e] = torch.cat(down[e]) if down[e] else None
        return stats, merged

    # ------------------------------------------------------------ searches
    def _moe_loss(self, w: dict, samples: dict) -> Callable[[torch.Tensor | None], float]:
        """loss(s) -> weighted MSE of the MoE block output on the loss tokens with every
        expert's gate/up replaced by Q(W * s) / s (s None: Q(W)), one expert at a time.
        Routing does not depend on s (the router's columns take s too), so it is
        computed once."""
        c, g = self.config, self.group_size
        h, weights = samples["mlp"], samples["weight"]  # [m, d], [m]
        if len(h) == 0:
            return lambda s: math.inf
        gates, experts = route(c, h, w[ROUTER_NAME])  # [m, k] each
        plan = []  # (expert, tokens, router weight per token)
        for e in torch.unique(experts).tolist():
            tokens, ranks = (experts == e).nonzero(as_tuple=True)
            plan.append((e, tokens, gates[tokens, ranks]))

        def block(s: torch.Tensor | None, quantized: bool = True) -> torch.Tensor:
            out = torch.zeros_like(h)
            for e, tokens, gate in plan:
                ew = expert_weights(w, e)
                if quantized:
                    for key in ("mlp.gate_proj", "mlp.up_proj"):
                        ew[key] = fake_quantize(ew[key], g, s)
                hidden = mlp_hidden(h[tokens], ew, c.activation)
                out.index_add_(0, tokens, (hidden @ ew["mlp.down_proj"].T) * gate[:, None])
            return out

        reference = block(None, quantized=False)
        return lambda s: _mse(block(s), reference, weights)

    def _search_shared_scale(self, layer: int, w: dict, stats: dict, samples: dict,
                             tick) -> torch.Tensor:
        """The gate/up scale of all experts (awq.grid_search, its loss the MoE block's
        output; s = 1 kept when it beats every ratio)."""
        rows = [w[expert_linear(e, p)] for e in range(self.config.num_experts)
                for p in ("gate_proj", "up_proj")]
        result = grid_search(stats["mlp"].x_mean(), weight_mean(rows, self.group_size),
                             self._moe_loss(w, samples), tick)
        return self.record_search(layer, "moe gate/up", result)

    def _search_down(self, layer: int, e: int, w: dict, stats: dict,
                     samples: dict) -> torch.Tensor | None:
        """Expert e's down scale [f], from its own routed tokens; None when none reached it."""
        x = samples["down", e]
        if x is None or stats["down", e].count == 0:
            return None
        down = w[expert_linear(e, "down_proj")]
        reference = x @ down.T
        result = search_scales(stats["down", e].x_mean(), [down],
                               lambda c: _mse(x @ c[0].T, reference), self.group_size)
        return self.record_search(layer, "expert down", result, label=f"expert {e} down")

    # ------------------------------------------------------------ the layer
    def _fold_moe_layer(self, layer: int, weights: dict[str, np.ndarray]) -> dict:
        """Scales, folds and clips one MoE layer; returns its linears by reference key,
        f32 [out, in], and writes the folded norms and router back into `weights`."""
        c = self.config
        w = self._layer_tensors(layer, weights)
        linears = [k for k in w if k.endswith("_proj")]
        attention_groups = [grp for grp in self.scale_groups() if grp.source in ("qkv", "o")]
        E = c.num_experts
        bar = tqdm(total=(len(attention_groups) + 1) * N_GRID + E, desc=f"layer {layer} search",
                   unit="step", leave=False, disable=not self.progress)
        tick = lambda: bar.update(1)  # noqa: E731

        start = time.perf_counter()
        self.rope = tuple(t.to(self.device) for t in rotary_tables(c, self.x.shape[1], layer))
        stats = samples = None
        self.searches = {}  # this layer's attention searches (search_group)
        if len(self.x):
            with torch.no_grad():
                stats, samples = self._moe_forward(layer, w)
        self.times["layer forward"] += time.perf_counter() - start
        if stats is None or stats["qkv"].count == 0:
            self.notes.append(f"layer {layer}: no finite calibration activations left; "
                              "quantized with plain RTN")
            self.unrouted[layer] = list(range(E))
            bar.close()
            return {k: w[k] for k in linears}

        start = time.perf_counter()
        scaled = {k: w[k].clone() for k in linears}  # [out, in] each
        input_scale: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            scales = {}
            for group in attention_groups:  # exactly the dense search
                scales[group.name] = self.search_group(layer, group, w, stats, samples, tick)
            shared = self._search_shared_scale(layer, w, stats, samples, tick)
            downs = {}
            for e in range(E):
                downs[e] = self._search_down(layer, e, w, stats, samples)
                tick()
            for group in attention_groups:
                fold_scales(group, scales[group.name], w, scaled)
                input_scale.update(dict.fromkeys(group.linears, scales[group.name]))
            w["post_attention_layernorm"] /= shared
            w[ROUTER_NAME] *= shared  # its columns: the logits stay what they were
            for e in range(E):
                for proj in ("gate_proj", "up_proj"):
                    scaled[expert_linear(e, proj)] *= shared
                    input_scale[expert_linear(e, proj)] = shared
                if downs[e] is not None:
                    scaled[expert_linear(e, "up_proj")] /= downs[e][:, None]
                    scaled[expert_linear(e, "down_proj")] *= downs[e]
                    input_scale[expert_linear(e, "down_proj")] = downs[e]
        self.times["scale search"] += time.perf_counter() - start

        unrouted = [e for e in range(E) if stats["down", e].count == 0]
        self.unrouted[layer] = unrouted
        if unrouted:
            self.notes.append(f"layer {layer}: experts {unrouted} got no calibration token; "
                              "their down_proj is unscaled and nothing of theirs is clipped")
        start = time.perf_counter()
        # v and o as in a dense layer, every routed expert linear; clips_linear decides
        # which of them the clip mode covers ("off": none, "attn": v and o only).
        todo = [("self_attn.v_proj", "qkv"), ("self_attn.o_proj", "o")]
        todo += [(expert_linear(e, proj), ("down", e) if proj == "down_proj" else ("mlp", e))
                 for e in range(E) if e not in unrouted for proj in EXPERT_PROJECTIONS]
        with torch.no_grad():
            for n, key in todo:
                if clips_linear(self.options.clip, n):
                    s = input_scale.get(n, torch.ones(scaled[n].shape[1], device=self.device))
                    self._clip(scaled[n], stats[key], s)
        self.times["clip search"] += time.perf_counter() - start
        bar.close()
        self._hand_back_norms(layer, weights, w)  # the router with the scale folded in too
        return scaled

    def _clip(self, weight: torch.Tensor, stats: InputStats, s: torch.Tensor) -> None:
        """Clamps `weight` [out, in] (input scaled by s) in place to the clip mode's
        per-group shrinks on the tokens `stats` saw."""
        clamp_to_shrinks(weight, clip_shrinks(weight, stats, s, self.options.clip,
                                              fake_quantize), self.group_size)

    def report(self) -> dict:
        out = super().report()
        counts = {layer: len(experts) for layer, experts in self.unrouted.items()}
        out["unrouted_experts"] = counts
        total = sum(counts.values())
        if total:
            out["notes"].append(f"{total} expert(s) over {len(counts)} MoE layer(s) got no "
                                "calibration token (round-to-nearest down_proj, no clipping)")
        return out
