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
               "kv_heads": int, "head_dim": int, "vocab": int, "tied": int, "seed": int}


def source_from_spec(spec: str) -> "SyntheticSource":
    """A random model from a command-line spec, so any shape can be quantized and timed:
    "synthetic:llama2-7b" (Llama-2-7B's shapes) or "synthetic:" followed by comma-separated
    key=value pairs over a Llama-style default (e.g.
    "synthetic:layers=48,hidden=1024,ffn=4096,heads=16,kv_heads=4,vocab=32000").
    Keys: arch, layers, hidden, ffn, heads, kv_heads, head_dim (default hidden/heads),
    vocab, tied (0/1), seed."""
    body = spec.removeprefix("synthetic:")
    if body == "llama2-7b":
        return SyntheticSource(llama2_7b_config())
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
               "vocab": "vocab_size"}
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
