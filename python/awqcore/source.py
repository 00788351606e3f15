"""What an importer hands to the quantizer: config, tokenizer and lazy tensors.

Every importer (GGUF file, Hugging Face folder, synthetic random model) returns
a `SourceModel`. Tensors use Hugging Face names and layouts
(`model.layers.0.self_attn.q_proj.weight` is [out, in]) and are produced on
demand as float32 numpy arrays, so a quantizer can stream one layer at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")


@dataclass
class ModelConfig:
    architecture: str  # one of SUPPORTED_ARCHITECTURES
    name: str
    vocab_size: int
    hidden_size: int  # d
    intermediate_size: int  # ffn
    num_layers: int
    num_heads: int  # H
    num_kv_heads: int  # KV
    head_dim: int  # hd
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v biases (Qwen2)
    # The decoder-layer description (docs/format.md); the defaults are Llama's.
    norm_placement: str = "pre"  # "pre" | "sandwich" (Gemma 3's four norms per layer)
    activation: str = "silu"  # "silu" | "gelu_tanh": the gated MLP's gate
    qk_norm: bool = False  # per-head RMSNorm of q and k before rotary (Qwen3, Gemma 3)
    attention_scale: Optional[float] = None  # None: 1/sqrt(head_dim)
    embedding_scale: float = 1.0  # Gemma 3: sqrt(hidden_size)
    final_logit_softcap: float = 0.0  # 0: off
    sliding_window: int = 0  # 0: none
    layer_types: Optional[list] = None  # [num_layers] of "full_attention" | "sliding_attention"
    rope_local_theta: Optional[float] = None  # Gemma 3: sliding layers' base, unscaled
    rope_scaling: Optional[dict] = None  # transformers' dict ("rope_type": linear | llama3 | yarn)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r} "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")


@dataclass
class TokenizerInfo:
    json: str  # a `tokenizers` JSON document
    chat_template: str = ""
    bos_token_id: int = -1  # -1: none
    eos_token_ids: list[int] = field(default_factory=list)


class SourceModel(Protocol):
    config: ModelConfig
    tokenizer: TokenizerInfo
    source: str  # human-readable origin, e.g. "SmolLM2-135M-Instruct.Q4_1.gguf (Q4_1)"

    def tensor_names(self) -> list[str]: ...

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 in Hugging Face layout; KeyError naming it if absent."""
        ...


LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}."


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """[out, in] of each linear inside a decoder layer, by its LINEAR_NAMES suffix."""
    d, hd, ffn = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_heads * hd, config.num_kv_heads * hd
    return {
        "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, q), "mlp.gate_proj": (ffn, d), "mlp.up_proj": (ffn, d),
        "mlp.down_proj": (d, ffn),
    }


def iter_linears(config: ModelConfig) -> Iterator[tuple[str, tuple[int, int]]]:
    """(full name prefix, [out, in]) of every quantized linear, in layer order."""
    shapes = linear_shapes(config)
    for layer in range(config.num_layers):
        for suffix in LINEAR_NAMES:
            yield layer_prefix(layer) + suffix, shapes[suffix]
