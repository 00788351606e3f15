"""Random models of any shape, for tests and speed benchmarks.

Each tensor is generated on demand from a seed derived from (seed, name), so a
7B-shaped model costs nothing until a tensor is asked for, and a tensor's values
do not depend on which tensors were generated before it.
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ..source import ModelConfig, TokenizerInfo
from . import expected_tensor_shapes

LINEAR_STD = 0.02  # like the usual initializer_range; keeps activations O(1)
NORM_SPREAD = 0.1  # norm weights uniform in 1 ± NORM_SPREAD
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_config(arch: str = "llama", **overrides) -> ModelConfig:
    """A small model of the given architecture (d=64, 2 layers, 4/2 heads of 16, vocab 300).

    Llama is untied and Qwen2 tied (as Qwen2.5's small models), so the two
    configs cover both lm_head paths; fields can be overridden by keyword.
    """
    config = ModelConfig(
        architecture=arch, name=f"tiny-{arch}", vocab_size=300, hidden_size=64,
        intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=arch == "qwen2", attention_bias=arch == "qwen2")
    return dataclasses.replace(config, **overrides)


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


class SyntheticSource:
    """A SourceModel with random weights: linears N(0, 0.02²), norms uniform in 1 ± 0.1."""

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
        return rng.standard_normal(size=shape, dtype=np.float32) * np.float32(LINEAR_STD)
