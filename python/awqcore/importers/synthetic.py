"""Random models of any shape, for tests and speed benchmarks.

Each tensor is generated on demand from a seed derived from (seed, name), so a
7B-shaped model costs nothing until a tensor is asked for, and a tensor's values
do not depend on which tensors were generated before it.
"""
from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from ..source import ModelConfig, TokenizerInfo
from . import expected_tensor_shapes

BIAS_STD = 0.1  # q/k/v biases: small next to the projections' O(1) outputs, but visible
NORM_SPREAD = 0.1  # norm weights uniform in 1 ± NORM_SPREAD
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# Family -> the decoder-layer description of its tiny config: every feature the family
# has, at sizes where it acts within a short prompt (windows of 8 positions, rope
# scaling whose original context is 32 positions).
FAMILIES = {
    "llama": dict(),
    "llama3": dict(architecture="llama", rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, original_max_position_embeddings=32,
        low_freq_factor=1.0, high_freq_factor=4.0)),
    "mistral": dict(sliding_window=8),
    "qwen2": dict(tie_word_embeddings=True, attention_bias=True),
    # Qwen3: H*hd = 128 differs from d = 64, as Qwen3's explicit head_dim allows.
    "qwen3": dict(qk_norm=True, head_dim=32, rope_theta=1000000.0, max_position_embeddings=128,
                  rope_scaling=dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=32, beta_fast=32.0,
        beta_slow=1.0, truncate=True, attention_factor=0.1 * math.log(4.0) + 1.0)),
    "gemma3": dict(tie_word_embeddings=True, norm_placement="sandwich", activation="gelu_tanh",
                   qk_norm=True, attention_scale=24 ** -0.5, embedding_scale=8.0,
                   final_logit_softcap=5.0, sliding_window=8,
                   layer_types=["sliding_attention", "full_attention"], rope_theta=1000000.0,
                   rope_local_theta=10000.0,
                   rope_scaling=dict(rope_type="linear", factor=4.0)),
    # Mixtral: Mistral's attention, 4 experts of width 64, top-2, renormalized.
    "mixtral": dict(sliding_window=8, intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=64, norm_topk_prob=True),
    # Qwen3-MoE: Qwen3's attention; layer 0 dense (mlp_only_layers=[0]), 8 experts of width
    # 32, top-3 (not a power of two), the chosen weights not renormalized.
    "qwen3_moe": dict(qk_norm=True, head_dim=32, rope_theta=1000000.0, num_layers=3,
                      num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                      norm_topk_prob=False, moe_layers=[0, 1, 1]),
}


def tiny_config(family: str = "llama", **overrides) -> ModelConfig:
    """A small model of the given family (FAMILIES: d=64, 2 layers, 4/2 heads of 16,
    vocab 300) with every feature of its decoder-layer description switched on.

    Llama is untied and Qwen2 tied (as Qwen2.5's small models), so the two
    configs cover both lm_head paths; fields can be overridden by keyword.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture or family {family!r} "
                         f"(known: {', '.join(FAMILIES)})")
    fields = dict(
        architecture=family, name=f"tiny-{family}", vocab_size=300, hidden_size=64,
        intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, attention_bias=False)
    fields.update(FAMILIES[family])
    fields.update(overrides)
    return ModelConfig(**fields)


def llama2_7b_config() -> ModelConfig:
    """Llama-2-7B's shapes (from its config.json), for speed benchmarks on random weights."""
    return ModelConfig(
        architecture="llama", name="llama-2-7b-shapes", vocab_size=32000, hidden_size=4096,
        intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, attention_bias=False)


def mixtral_small_config(dense: bool = False) -> ModelConfig:
    """Mixtral's shape scaled to fit a small machine: 8 experts of width 3584, top-2,
    d = 1024, 16 layers, 8 query heads of 128 sharing 2 key/value heads (Mixtral's 4:1),
    vocabulary 32000; 1.4 G expert parameters, ~0.8 GB at 4 bits. dense: the same model
    with all 8 experts chosen per token (k = E), which reads every expert, for contrast."""
    return ModelConfig(
        architecture="mixtral", name="mixtral-small-shapes" + ("-dense" if dense else ""),
        vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_layers=16,
        num_heads=8, num_kv_heads=2, head_dim=128, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, num_experts=8, num_experts_per_tok=8 if dense else 2,
        moe_intermediate_size=3584, norm_topk_prob=True)


def qwen3_moe_small_config(dense: bool = False) -> ModelConfig:
    """Qwen3-30B-A3B's shape scaled down: 64 experts of width 768, top-8 renormalized,
    d = 1024, 16 layers, 16 query heads of 128 (H·hd = 2d, as Qwen3-30B's 32 x 128 over
    2048) sharing 4 key/value heads, q/k norms, vocabulary 32000; 2.4 G expert
    parameters, ~1.3 GB at 4 bits. dense: all 64 experts chosen per token."""
    return ModelConfig(
        architecture="qwen3_moe", name="qwen3-moe-small-shapes" + ("-dense" if dense else ""),
        vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_layers=16,
        num_heads=16, num_kv_heads=4, head_dim=128, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        attention_bias=False, qk_norm=True, num_experts=64,
        num_experts_per_tok=64 if dense else 8, moe_intermediate_size=768, norm_topk_prob=True)


# Named shapes of "synthetic:<name>", for speed benchmarks.
NAMED_SHAPES = {
    "llama2-7b": llama2_7b_config,
    "mixtral-small": mixtral_small_config,
    "mixtral-small-dense": lambda: mixtral_small_config(dense=True),
    "qwen3-moe-small": qwen3_moe_small_config,
    "qwen3-moe-small-dense": lambda: qwen3_moe_small_config(dense=True),
}


def byte_level_tokenizer():
    """A `tokenizers.Tokenizer`: byte-level BPE (GPT-2's byte alphabet, no merges) plus the
    ChatML specials.

    Ids 0..255 are the 256 byte symbols and 256.. the special tokens, so every
    string round-trips and the vocabulary fits the tiny configs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for bytes
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


# Fields a "synthetic:" spec may set, and how to parse each.
SPEC_FIELDS = {"arch": str, "layers": int, "hidden": int, "ffn": int, "heads": int,
               "kv_heads": int, "head_dim": int, "vocab": int, "tied": int, "seed": int,
               "experts": int, "top_k": int, "expert_ffn": int}


def source_from_spec(spec: str) -> "SyntheticSource":
    """A random model from a command-line spec, so any shape can be quantized and timed:
    a NAMED_SHAPES entry ("synthetic:llama2-7b", "synthetic:mixtral-small", ...) or
    "synthetic:" followed by comma-separated key=value pairs over the arch's tiny config
    (e.g. "synthetic:layers=48,hidden=1024,ffn=4096,heads=16,kv_heads=4,vocab=32000").
    Keys: arch, layers, hidden, ffn, heads, kv_heads, head_dim (default hidden/heads),
    vocab, tied (0/1), seed; with an MoE arch also experts, top_k, expert_ffn."""
    body = spec.removeprefix("synthetic:")
    if body in NAMED_SHAPES:
        return SyntheticSource(NAMED_SHAPES[body]())
    values = {}
    for item in filter(None, body.split(",")):
        key, sep, text = item.partition("=")
        if not sep or key not in SPEC_FIELDS:
            raise ValueError(f"bad synthetic model spec item {item!r} in {spec!r}: expected "
                             f"key=value with key one of {', '.join(SPEC_FIELDS)}")
        try:
            values[key] = SPEC_FIELDS[key](text)
        except ValueError:
            raise ValueError(f"bad value {text!r} for {key!r} in {spec!r}") from None
    arch = values.pop("arch", "llama")
    config = tiny_config(arch, name=spec)
    mapping = {"layers": "num_layers", "hidden": "hidden_size", "ffn": "intermediate_size",
               "heads": "num_heads", "kv_heads": "num_kv_heads", "head_dim": "head_dim",
               "vocab": "vocab_size", "experts": "num_experts", "top_k": "num_experts_per_tok",
               "expert_ffn": "moe_intermediate_size"}
    fields = {mapping[k]: v for k, v in values.items() if k in mapping}
    if "tied" in values:
        fields["tie_word_embeddings"] = bool(values["tied"])
    if "head_dim" not in fields:
        hidden = fields.get("hidden_size", config.hidden_size)
        heads = fields.get("num_heads", config.num_heads)
        if hidden % heads:
            raise ValueError(f"{spec!r}: hidden={hidden} is not a multiple of heads={heads}; "
                             "give head_dim")
        fields["head_dim"] = hidden // heads
    if "num_kv_heads" not in fields and "num_heads" in fields:
        fields["num_kv_heads"] = fields["num_heads"]
    return SyntheticSource(dataclasses.replace(config, **fields), seed=values.get("seed", 0))


class SyntheticSource:
    """A SourceModel with random weights: every matrix [out, in] (linears, embedding and
    lm_head tables) N(0, 1/in), biases N(0, 0.1²), norms (the multiplier, also for
    Gemma's 1 + w) uniform in 1 ± 0.1.

    Variance 1/in keeps each linear's output as large as its input, so the attention and
    MLP outputs outweigh a token's own embedding in the residual stream, scores are far
    from uniform and logits spread by about 1: greedy decoding then depends on the whole
    context and on the rotary positions. (With a fixed 0.02, a tied model's residual stream
    is its input embedding and greedy repeats the last prompt token whatever the context.)
    For Llama-2-7B's shapes 1/in gives std 0.016 (d=4096) and 0.0095 (down_proj), close to
    the usual initializer_range of 0.02.
    """

    def __init__(self, config: ModelConfig, seed: int = 0):
        n_tokens = 256 + len(SPECIAL_TOKENS)
        if config.vocab_size < n_tokens:
            raise ValueError(f"vocab_size={config.vocab_size} is smaller than the synthetic "
                             f"tokenizer's {n_tokens} tokens")
        self.config = config
        self.seed = seed
        self.source = f"synthetic random weights (seed {seed})"
        self._shapes = expected_tensor_shapes(config)
        tokenizer = byte_level_tokenizer()
        eos = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
        self.tokenizer = TokenizerInfo(json=tokenizer.to_str(), chat_template=CHATML_TEMPLATE,
                                       bos_token_id=-1, eos_token_ids=eos)

    def tensor_names(self) -> list[str]:
        return list(self._shapes)

    def get(self, name: str) -> np.ndarray:
        if name not in self._shapes:
            raise KeyError(f"tensor {name!r} is not in the synthetic {self.config.name} model")
        shape = self._shapes[name]
        # crc32, unlike hash(), is the same in every process.
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        if name.endswith("norm.weight"):
            return rng.uniform(1 - NORM_SPREAD, 1 + NORM_SPREAD, size=shape).astype(np.float32)
        std = BIAS_STD if len(shape) == 1 else 1.0 / np.sqrt(shape[-1])
        return rng.standard_normal(size=shape, dtype=np.float32) * np.float32(std)
