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

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "mixtral", "qwen3_moe")
# The mixture-of-experts families (docs/format.md, "Mixture of experts"): each has
# num_experts > 0, and no other family may.
MOE_ARCHITECTURES = ("mixtral", "qwen3_moe")
NORM_PLACEMENTS = ("pre", "sandwich")
ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
# The rope_scaling dict after the importers' normalisation (awqcore.importers.rope_scaling):
# "rope_type" plus the parameters its formula reads, defaults resolved.
ROPE_TYPES = ("linear", "llama3", "yarn")


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
    # {"rope_type": linear | llama3 | yarn, and that type's parameters, defaults resolved}
    rope_scaling: Optional[dict] = None
    # Mixture of experts (docs/format.md): 0 experts is a dense model.
    num_experts: int = 0  # E
    num_experts_per_tok: int = 0  # k, 1 <= k <= E
    moe_intermediate_size: int = 0  # f, each expert's MLP width
    norm_topk_prob: bool = False  # the k chosen router weights divided by their sum
    moe_layers: Optional[list] = None  # [num_layers] of 0 (dense MLP) | 1 (MoE); None: all MoE

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
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement {self.norm_placement!r} is not one of "
                             f"{', '.join(NORM_PLACEMENTS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of "
                             f"{', '.join(ACTIVATIONS)}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be >= 0")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                                 f"{self.num_layers} layers")
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown:
                raise ValueError(f"layer_types: unknown {unknown} "
                                 f"(expected {', '.join(LAYER_TYPES)})")
            if "sliding_attention" in self.layer_types and self.sliding_window <= 0:
                raise ValueError("layer_types has sliding layers but sliding_window is 0")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") not in ROPE_TYPES:
            raise ValueError(f"rope_scaling type {self.rope_scaling.get('rope_type')!r} is not one "
                             f"of {', '.join(ROPE_TYPES)}")
        self._check_experts()

    def _check_experts(self) -> None:
        """The mixture-of-experts fields against each other and the architecture."""
        moe = self.architecture in MOE_ARCHITECTURES
        if not moe:
            if self.num_experts or self.moe_layers is not None:
                raise ValueError(f"num_experts={self.num_experts}: the {self.architecture} "
                                 "architecture has no experts")
            return
        E, k = self.num_experts, self.num_experts_per_tok
        if E < 1:
            raise ValueError(f"{self.architecture} needs num_experts >= 1 (got {E})")
        if not 1 <= k <= E:
            raise ValueError(f"num_experts_per_tok={k} must be in 1..num_experts={E}")
        if self.moe_intermediate_size < 1:
            raise ValueError(f"moe_intermediate_size={self.moe_intermediate_size} must be >= 1")
        if self.qk_norm != (self.architecture == "qwen3_moe"):
            raise ValueError(f"{self.architecture}: qk_norm must be "
                             f"{int(self.architecture == 'qwen3_moe')} (Qwen3's attention "
                             "normalizes q and k, Mistral's does not)")
        if self.architecture == "mixtral" and self.intermediate_size != self.moe_intermediate_size:
            raise ValueError(f"mixtral's experts are its MLP: intermediate_size="
                             f"{self.intermediate_size} must equal moe_intermediate_size="
                             f"{self.moe_intermediate_size}")
        if self.architecture == "mixtral" and not self.norm_topk_prob:
            raise ValueError("mixtral always renormalizes the chosen router weights "
                             "(norm_topk_prob must be true)")
        if self.moe_layers is not None:
            layers = [int(v) for v in self.moe_layers]
            if len(layers) != self.num_layers or any(v not in (0, 1) for v in layers):
                raise ValueError(f"moe_layers {self.moe_layers!r} must be {self.num_layers} "
                                 "values of 0 (dense MLP) or 1 (MoE)")
            if self.architecture == "mixtral" and 0 in layers:
                raise ValueError("mixtral has an MoE block in every layer (moe_layers all 1)")
            # All MoE is spelled None, so that equal models compare equal.
            self.moe_layers = None if all(layers) else layers

    def is_moe_layer(self, layer: int) -> bool:
        """Whether `layer`'s MLP is a mixture of experts (else a dense gated MLP)."""
        if self.num_experts == 0:
            return False
        return self.moe_layers is None or bool(self.moe_layers[layer])

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends to the last sliding_window positions only. Without
        layer_types a sliding_window applies to every layer (Mistral)."""
        if self.layer_types is not None:
            return self.layer_types[layer] == "sliding_attention"
        return self.sliding_window > 0

    def layer_norm_names(self) -> tuple[str, ...]:
        """The norm weights inside a decoder layer (suffixes after the layer prefix)."""
        names = ("input_layernorm", "post_attention_layernorm")
        if self.norm_placement == "sandwich":
            names += ("pre_feedforward_layernorm", "post_feedforward_layernorm")
        if self.qk_norm:
            names += ("self_attn.q_norm", "self_attn.k_norm")
        return names


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


ATTENTION_LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj")
MLP_LINEAR_NAMES = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LINEAR_NAMES = ATTENTION_LINEAR_NAMES + MLP_LINEAR_NAMES  # a dense decoder layer's linears
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ROUTER_NAME = "mlp.gate"  # an MoE layer's router weight is mlp.gate.weight [E, d], f32


def expert_linear(expert: int, projection: str) -> str:
    """The suffix of one expert's linear inside a layer, e.g. "mlp.experts.3.up_proj".
    Sources hold experts one by one under these names; the file stacks them
    (stacked_expert_name)."""
    return f"mlp.experts.{expert}.{projection}"


def stacked_expert_name(projection: str) -> str:
    """The suffix of a layer's stacked experts in the file, e.g. "mlp.experts.up_proj"."""
    return f"mlp.experts.{projection}"


def layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}."


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """[out, in] of each linear of a dense decoder layer, by its LINEAR_NAMES suffix."""
    d, hd, ffn = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_heads * hd, config.num_kv_heads * hd
    return {
        "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, q), "mlp.gate_proj": (ffn, d), "mlp.up_proj": (ffn, d),
        "mlp.down_proj": (d, ffn),
    }


def layer_linears(config: ModelConfig, layer: int) -> list[tuple[str, tuple[int, int]]]:
    """(suffix, [out, in]) of every quantized linear of `layer`: the attention's, then the
    dense MLP's or, in an MoE layer, each expert's gate, up and down, expert by expert."""
    shapes = linear_shapes(config)
    out = [(s, shapes[s]) for s in ATTENTION_LINEAR_NAMES]
    if not config.is_moe_layer(layer):
        return out + [(s, shapes[s]) for s in MLP_LINEAR_NAMES]
    d, f = config.hidden_size, config.moe_intermediate_size
    expert_shapes = {"gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}
    for e in range(config.num_experts):
        out += [(expert_linear(e, p), expert_shapes[p]) for p in EXPERT_PROJECTIONS]
    return out


def iter_linears(config: ModelConfig) -> Iterator[tuple[str, tuple[int, int]]]:
    """(full name prefix, [out, in]) of every quantized linear, in layer order."""
    for layer in range(config.num_layers):
        for suffix, shape in layer_linears(config, layer):
            yield layer_prefix(layer) + suffix, shape
