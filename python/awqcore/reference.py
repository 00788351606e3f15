"""An independent plain-torch forward pass of the Llama / Qwen2 decoder.

It shares no code with the runtime or the quantizer: weights come from any
getter (an importer's `get`, or a dequantized `.awqbin`), and every step
recomputes the whole sequence with full causal attention, so no KV cache can
hide a bug. It is the ground truth the C++ runtime is compared against.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np
import torch

from .source import ModelConfig, layer_prefix

Getter = Callable[[str], Union[np.ndarray, torch.Tensor]]


LayerWeights = dict  # "input_layernorm", "self_attn.q_proj", ... -> tensor (Hugging Face layout)

# The per-layer building blocks below take activations with any leading batch
# dims ([..., T, d]), so the quantizer's calibration (awqcore.quantize.awq)
# runs exactly this math on [samples, T, d] blocks.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., d] normalised in float32 and returned in x's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def rotary_tables(config: ModelConfig, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, hd]: angle p * theta^(-2i/hd) at dims i and i + hd/2 (rotate half)."""
    hd = config.head_dim
    inv_freq = config.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(n_tokens, dtype=torch.float64), inv_freq)  # [T, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, hd]
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, heads, hd] rotated in pairs (i, i + hd/2), as transformers' rotate_half."""
    half = x.shape[-1] // 2
    x32 = x.float()
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def attention_heads(config: ModelConfig, h: torch.Tensor, w: LayerWeights, cos: torch.Tensor,
                    sin: torch.Tensor) -> torch.Tensor:
    """The attention's heads concatenated, before o_proj: h [..., T, d] -> [..., T, H*hd]."""
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
    q = apply_rotary(q.view(*lead, T, H, hd), cos, sin)  # [..., T, H, hd]
    k = apply_rotary(k.view(*lead, T, KV, hd), cos, sin)  # [..., T, KV, hd]
    v = v.view(*lead, T, KV, hd)
    # Grouped-query attention: query head j reads key/value head j // (H / KV).
    k = k.repeat_interleave(H // KV, dim=-2)  # [..., T, H, hd]
    v = v.repeat_interleave(H // KV, dim=-2)  # [..., T, H, hd]
    scores = torch.einsum("...thd,...shd->...hts", q.float(), k.float()) / math.sqrt(hd)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # True above the diagonal: the future
    probs = scores.masked_fill(causal, float("-inf")).softmax(-1)  # [..., H, T, T]
    out = torch.einsum("...hts,...shd->...thd", probs, v.float()).to(h.dtype)  # [..., T, H, hd]
    return out.reshape(*lead, T, H * hd)


def mlp_hidden(h: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    """SwiGLU's input to down_proj: h [..., d] -> silu(gate) * up [..., ffn]."""
    gate = torch.nn.functional.silu(h @ w["mlp.gate_proj"].T)  # [..., ffn]
    return gate * (h @ w["mlp.up_proj"].T)


def decoder_layer(config: ModelConfig, x: torch.Tensor, w: LayerWeights, cos: torch.Tensor,
                  sin: torch.Tensor) -> torch.Tensor:
    """One pre-norm decoder layer with its residuals: x [..., T, d] -> [..., T, d]."""
    eps = config.rms_norm_eps
    h = rms_norm(x, w["input_layernorm"], eps)
    x = x + attention_heads(config, h, w, cos, sin) @ w["self_attn.o_proj"].T
    h = rms_norm(x, w["post_attention_layernorm"], eps)
    return x + mlp_hidden(h, w) @ w["mlp.down_proj"].T


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
            w = {key: load(p + key + ".weight") for key in (
                "input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
            if config.attention_bias:
                for proj in ("q_proj", "k_proj", "v_proj"):
                    w[f"self_attn.{proj}.bias"] = load(f"{p}self_attn.{proj}.bias")
            self.layers.append(w)
        self.norm = load("model.norm.weight")  # [d]
        self.lm_head = self.embed if config.tie_word_embeddings else load("lm_head.weight")

    @torch.inference_mode()
    def forward(self, ids: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
        """Logits float32 [T, vocab] of every position of `ids` (a fresh sequence)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)  # [T]
        if ids.numel() == 0:
            raise ValueError("forward needs at least one token")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        cos, sin = rotary_tables(self.config, ids.numel())
        x = self.embed[ids]  # [T, d]
        for w in self.layers:
            x = decoder_layer(self.config, x, w, cos, sin)
        return (rms_norm(x, self.norm, self.config.rms_norm_eps) @ self.lm_head.T).float()

    def greedy_generate(self, ids: Union[Sequence[int], torch.Tensor], n: int) -> list[int]:
        """The n tokens that greedy decoding appends to `ids` (no stop token), recomputing
        the full sequence at every step."""
        seq = torch.as_tensor(ids, dtype=torch.long).reshape(-1).tolist()
        new: list[int] = []
        for _ in range(n):
            token = int(self.forward(seq + new)[-1].argmax())
            new.append(token)
        return new
