"""An independent plain-torch forward pass of every supported decoder family.

It follows transformers' definitions (modeling_llama/mistral/qwen2/qwen3/
gemma3/mixtral/qwen3_moe and modeling_rope_utils), driven by the decoder-layer description of
ModelConfig (docs/format.md): norm placement, gate activation, q/k norm,
attention and embedding scales, sliding windows, per-layer rotary bases and
rope scaling, logit soft-capping. It shares no code with the C++ runtime or
with the importers (the rotary frequencies, scaling included, are computed
here from the config's parameters). The quantizer's AWQ calibration
(awqcore.quantize.awq) imports its per-layer building blocks on purpose, so
that calibration computes exactly the reference's function.

Weights come from any getter (an importer's `get`, or a dequantized
`.awqbin`) in Hugging Face names and layout, norms as the multiplier of the
normalized vector (Gemma's 1 + w, as the file stores them). Every step
recomputes the whole sequence with full attention masks, so no KV cache can
hide a bug. It is the ground truth the C++ runtime is compared against.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np
import torch

from .source import (EXPERT_PROJECTIONS, ROUTER_NAME, ModelConfig, expert_linear,
                     layer_linears, layer_prefix)

Getter = Callable[[str], Union[np.ndarray, torch.Tensor]]


LayerWeights = dict  # "input_layernorm", "self_attn.q_proj", ... -> tensor (Hugging Face layout)

# The per-layer building blocks below take activations with any leading batch
# dims ([..., T, d]), so the quantizer's calibration (awqcore.quantize.awq)
# runs exactly this math on [samples, T, d] blocks.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., d] normalised in float32 and returned in x's dtype; `weight` is the
    multiplier (Gemma's 1 + w already added)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def llama3_inverse_frequencies(inv_freq: torch.Tensor, factor: float, low: float,
                               high: float, original: int) -> torch.Tensor:
    """inv_freq [hd/2] float64 under Llama 3's rope scaling: wavelengths longer than
    original/low are stretched by factor, those shorter than original/high kept, and the
    band between interpolated."""
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelength > original / low, inv_freq / factor, blended)
    return torch.where(wavelength < original / high, inv_freq, out)


def inverse_frequencies(config: ModelConfig, sliding: bool) -> tuple[torch.Tensor, float]:
    """(inv_freq [hd/2] float64, cos/sin multiplier) of a layer, as transformers'
    ROPE_INIT_FUNCTIONS define them. Gemma 3's sliding layers use rope_local_theta
    unscaled; every other layer uses rope_theta with config.rope_scaling."""
    hd = config.head_dim
    exponents = torch.arange(0, hd, 2, dtype=torch.float64) / hd  # [hd/2]
    if sliding and config.rope_local_theta is not None:
        return config.rope_local_theta ** -exponents, 1.0
    base = config.rope_theta
    inv_freq = base ** -exponents
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq, 1.0
    kind, factor = scaling["rope_type"], scaling["factor"]
    if kind == "linear":  # positions divided by factor
        return inv_freq / factor, 1.0
    if kind == "llama3":
        return llama3_inverse_frequencies(
            inv_freq, factor, scaling["low_freq_factor"], scaling["high_freq_factor"],
            scaling["original_max_position_embeddings"]), 1.0
    if kind == "yarn":
        # Dimensions that rotate fewer than beta_slow times over the original context
        # are interpolated (divided by factor), those above beta_fast kept, with a
        # linear ramp between the two dimension indices.
        original = scaling["original_max_position_embeddings"]

        def dimension(rotations: float) -> float:  # inverse of rotations(dim)
            return hd * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = dimension(scaling["beta_fast"]), dimension(scaling["beta_slow"])
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, hd - 1)
        if low == high:
            high += 0.001  # transformers' guard against a zero-width ramp
        ramp = ((torch.arange(hd // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate
        return inv_freq / factor * (1 - keep) + inv_freq * keep, scaling["attention_factor"]
    raise ValueError(f"rope scaling type {kind!r} has no reference implementation")


def rotary_tables(config: ModelConfig, n_tokens: int,
                  layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, hd] of `layer`: angle p * inv_freq[i] at dims i and i + hd/2
    (rotate half), times the rope scaling's attention factor."""
    inv_freq, multiplier = inverse_frequencies(config, config.is_sliding(layer))
    angles = torch.outer(torch.arange(n_tokens, dtype=torch.float64), inv_freq)  # [T, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, hd]
    return (angles.cos() * multiplier).float(), (angles.sin() * multiplier).float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, heads, hd] rotated in pairs (i, i + hd/2), as transformers' rotate_half."""
    half = x.shape[-1] // 2
    x32 = x.float()
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def attention_mask(config: ModelConfig, n_tokens: int, layer: int) -> torch.Tensor:
    """[T, T] True where query t must not see key s: the future, and on a sliding layer
    keys more than sliding_window - 1 positions back (t - W < s <= t stay visible)."""
    t = torch.arange(n_tokens)
    hidden = t[None, :] > t[:, None]
    if config.is_sliding(layer):
        hidden |= t[None, :] <= t[:, None] - config.sliding_window
    return hidden


def attention_heads(config: ModelConfig, h: torch.Tensor, w: LayerWeights, cos: torch.Tensor,
                    sin: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The attention's heads concatenated, before o_proj: h [..., T, d] -> [..., T, H*hd].
    cos, sin: rotary_tables(config, T, layer)."""
    c = config
    T, H, KV, hd = h.shape[-2], c.num_heads, c.num_kv_heads, c.head_dim
    lead = h.shape[:-2]
    q = h @ w["self_attn.q_proj"].T  # [..., T, H*hd]
    k = h @ w["self_attn.k_proj"].T  # [..., T, KV*hd]
    v = h @ w["self_attn.v_proj"].T  # [..., T, KV*hd]
    if c.attention_bias:
        q = q + w["self_attn.q_proj.bias"]
        k = k + w["self_attn.k_proj.bias"]
        v = v + w["self_attn.v_proj.bias"]
    q = q.view(*lead, T, H, hd)
    k = k.view(*lead, T, KV, hd)
    if c.qk_norm:  # one RMSNorm over each head's hd values, before rotary
        q = rms_norm(q, w["self_attn.q_norm"], c.rms_norm_eps)
        k = rms_norm(k, w["self_attn.k_norm"], c.rms_norm_eps)
    q = apply_rotary(q, cos, sin)  # [..., T, H, hd]
    k = apply_rotary(k, cos, sin)  # [..., T, KV, hd]
    v = v.view(*lead, T, KV, hd)
    # Grouped-query attention: query head j reads key/value head j // (H / KV).
    k = k.repeat_interleave(H // KV, dim=-2)  # [..., T, H, hd]
    v = v.repeat_interleave(H // KV, dim=-2)  # [..., T, H, hd]
    scale = c.attention_scale if c.attention_scale is not None else 1 / math.sqrt(hd)
    scores = torch.einsum("...thd,...shd->...hts", q.float(), k.float()) * scale
    hidden = attention_mask(c, T, layer).to(scores.device)
    probs = scores.masked_fill(hidden, float("-inf")).softmax(-1)  # [..., H, T, T]
    out = torch.einsum("...hts,...shd->...thd", probs, v.float()).to(h.dtype)  # [..., T, H, hd]
    return out.reshape(*lead, T, H * hd)


def mlp_hidden(h: torch.Tensor, w: LayerWeights, activation: str = "silu") -> torch.Tensor:
    """The gated MLP's input to down_proj: h [..., d] -> act(gate) * up [..., ffn], act
    SiLU (SwiGLU) or GELU's tanh approximation (GeGLU, gelu_pytorch_tanh)."""
    gate = h @ w["mlp.gate_proj"].T  # [..., ffn]
    if activation == "silu":
        gate = torch.nn.functional.silu(gate)
    elif activation == "gelu_tanh":
        gate = torch.nn.functional.gelu(gate, approximate="tanh")
    else:
        raise ValueError(f"activation {activation!r} has no reference implementation")
    return gate * (h @ w["mlp.up_proj"].T)


def route(config: ModelConfig, h: torch.Tensor,
          router: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MoE router: h [n, d] -> (weights [n, k] f32, experts [n, k] long), rank order.

    softmax over the E router logits in f32, the k largest probabilities in descending
    order, renormalized to sum 1 when norm_topk_prob (as transformers' Mixtral and
    Qwen3-MoE routers). Equal probabilities rank the lower expert index first, by a
    stable sort. transformers' torch.topk has no such rule: on CPU it breaks exact ties
    in an order its selection algorithm sets (all-equal probabilities over 8 experts
    give experts 6 and 5 for k = 2; tests/test_moe_reference.py shows it), so the format
    fixes the lower index, which a runtime can reproduce. Without exact ties both agree."""
    logits = h.float() @ router.float().T  # [n, E]
    probs = logits.softmax(-1)
    order = torch.sort(probs, dim=-1, descending=True, stable=True)
    k = config.num_experts_per_tok
    weights, experts = order.values[:, :k], order.indices[:, :k]  # [n, k] each
    if config.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, experts


def expert_weights(w: LayerWeights, expert: int) -> LayerWeights:
    """One expert's gate/up/down under the dense MLP's keys, for mlp_hidden."""
    return {f"mlp.{p}": w[expert_linear(expert, p)] for p in EXPERT_PROJECTIONS}


def moe_block(config: ModelConfig, h: torch.Tensor, w: LayerWeights,
              routed: dict | None = None) -> torch.Tensor:
    """The mixture-of-experts MLP: h [..., d] -> [..., d], each token the sum, in rank
    order, of its k experts' gated MLPs weighted by the router (docs/format.md).
    `routed`, when given, receives expert -> (token indices [m] into h flattened, the
    down_proj inputs [m, f]) for every expert that got a token, which AWQ records."""
    flat = h.reshape(-1, h.shape[-1])  # [n, d]
    weights, experts = route(config, flat, w[ROUTER_NAME])  # [n, k] each
    n, k = experts.shape
    # [n, k, d]: each rank's term, on h's device (the quantizer may run on a GPU)
    ranked = torch.zeros(n, k, flat.shape[-1], dtype=h.dtype, device=h.device)
    for e in torch.unique(experts).tolist():
        tokens, ranks = (experts == e).nonzero(as_tuple=True)  # [m] each
        ew = expert_weights(w, e)
        hidden = mlp_hidden(flat[tokens], ew, config.activation)  # [m, f]
        out = hidden @ ew["mlp.down_proj"].T  # [m, d]
        ranked[tokens, ranks] = (out.float() * weights[tokens, ranks, None]).to(h.dtype)
        if routed is not None:
            routed[e] = (tokens, hidden)
    total = ranked[:, 0]
    for r in range(1, k):
        total = total + ranked[:, r]
    return total.reshape(h.shape)


def decoder_layer(config: ModelConfig, x: torch.Tensor, w: LayerWeights, cos: torch.Tensor,
                  sin: torch.Tensor, layer: int = 0, taps: dict | None = None) -> torch.Tensor:
    """One decoder layer with its residuals: x [..., T, d] -> [..., T, d]. "pre" places
    one norm before attention and one before the MLP; "sandwich" (Gemma 3) also
    normalizes each block's output before adding it to the residual. `taps`, when
    given, receives the input of every linear ("qkv": q/k/v's, "o": the heads,
    "mlp": gate/up's, "down": down_proj's), which AWQ's calibration records. An MoE
    layer's MLP is moe_block; its taps have no "down" but "routed" (moe_block's `routed`,
    token indices into the flattened [..., T] positions)."""
    eps = config.rms_norm_eps
    sandwich = config.norm_placement == "sandwich"
    h = rms_norm(x, w["input_layernorm"], eps)
    heads = attention_heads(config, h, w, cos, sin, layer)  # [..., T, H*hd]
    attention = heads @ w["self_attn.o_proj"].T
    if sandwich:
        x = x + rms_norm(attention, w["post_attention_layernorm"], eps)
        h2 = rms_norm(x, w["pre_feedforward_layernorm"], eps)
    else:
        x = x + attention
        h2 = rms_norm(x, w["post_attention_layernorm"], eps)
    if config.is_moe_layer(layer):
        routed = {} if taps is not None else None
        hidden, mlp = None, moe_block(config, h2, w, routed)
    else:
        hidden = mlp_hidden(h2, w, config.activation)  # [..., T, ffn]
        mlp = hidden @ w["mlp.down_proj"].T
    if sandwich:
        mlp = rms_norm(mlp, w["post_feedforward_layernorm"], eps)
    if taps is not None:
        taps.update(qkv=h, o=heads, mlp=h2)
        if hidden is not None:
            taps["down"] = hidden
        else:
            taps["routed"] = routed
    return x + mlp


class ReferenceModel:
    """The decoder built from `get(name)` (Hugging Face names and layout), computing in `dtype`.

    Norms, rotary angles, softmax and logits are computed in float32 whatever
    `dtype` is, as Hugging Face does, so a bf16/f16 reference differs from the
    float32 one only by the rounding of weights and matmuls.
    """

    def __init__(self, config: ModelConfig, get: Getter, dtype: torch.dtype = torch.float32):
        self.config = config
        self.dtype = dtype

        def load(name: str) -> torch.Tensor:
            return torch.as_tensor(get(name)).to(dtype)

        self.embed = load("model.embed_tokens.weight")  # [vocab, d]
        self.layers = []
        for layer in range(config.num_layers):
            p = layer_prefix(layer)
            keys = [s for s, _ in layer_linears(config, layer)] + list(config.layer_norm_names())
            w = {key: load(p + key + ".weight") for key in keys}
            if config.is_moe_layer(layer):  # the router stays f32, as the file stores it
                w[ROUTER_NAME] = torch.as_tensor(get(p + ROUTER_NAME + ".weight")).float()
            if config.attention_bias:
                for proj in ("q_proj", "k_proj", "v_proj"):
                    w[f"self_attn.{proj}.bias"] = load(f"{p}self_attn.{proj}.bias")
            self.layers.append(w)
        self.norm = load("model.norm.weight")  # [d]
        self.lm_head = self.embed if config.tie_word_embeddings else load("lm_head.weight")

    @torch.inference_mode()
    def forward(self, ids: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
        """Logits float32 [T, vocab] of every position of `ids` (a fresh sequence)."""
        c = self.config
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)  # [T]
        if ids.numel() == 0:
            raise ValueError("forward needs at least one token")
        if int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size:
            raise ValueError(f"token ids must be in [0, {c.vocab_size})")
        T = ids.numel()
        x = self.embed[ids]  # [T, d]
        if c.embedding_scale != 1.0:  # Gemma: sqrt(d), applied in the embedding's dtype
            x = x * torch.tensor(c.embedding_scale, dtype=self.dtype)
        for layer, w in enumerate(self.layers):
            cos, sin = rotary_tables(c, T, layer)
            x = decoder_layer(c, x, w, cos, sin, layer)
        logits = (rms_norm(x, self.norm, c.rms_norm_eps) @ self.lm_head.T).float()
        if c.final_logit_softcap > 0:
            logits = torch.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
        return logits

    def greedy_generate(self, ids: Union[Sequence[int], torch.Tensor], n: int) -> list[int]:
        """The n tokens that greedy decoding appends to `ids` (no stop token), recomputing
        the full sequence at every step."""
        seq = torch.as_tensor(ids, dtype=torch.long).reshape(-1).tolist()
        new: list[int] = []
        for _ in range(n):
            token = int(self.forward(seq + new)[-1].argmax())
            new.append(token)
        return new
