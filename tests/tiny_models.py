"""A tiny llama/qwen2-shaped model for tests, written straight to .awqbin.

`TinySource` is a SourceModel of random weights (d=64, 2 layers, 4 query and
2 key/value heads of 16, MLP 128, vocabulary 64); `write_tiny_model` quantizes
it and writes the file with AwqbinWriter directly (not through the quantize
pipeline), so format tests do not depend on the pipeline they may be checking.
"""
from __future__ import annotations

import os

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from awqcore.awqbin import AwqbinWriter
from awqcore.importers import expected_tensor_shapes
from awqcore.quantize.int8_table import quantize_int8_table
from awqcore.quantize.rtn import quantize_int4
from awqcore.source import LINEAR_NAMES, ModelConfig, TokenizerInfo, layer_prefix

GROUP_SIZE = 32
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer_json(vocab_size: int = 64) -> str:
    """A word-level tokenizer: specials, then lowercase words 'a'..'z', 'w26'...

    Special tokens: 0 <unk>, 1 <s> (bos), 2 </s> (eos), 3 <|im_start|>, 4 <|im_end|>.
    """
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    words = [chr(ord("a") + i) for i in range(26)]
    words += [f"w{i}" for i in range(26, vocab_size - len(specials))]
    vocab = {tok: i for i, tok in enumerate(specials + words[: vocab_size - len(specials)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    return tok.to_str()


class TinySource:
    """SourceModel of seeded random weights, llama (or qwen2 with q/k/v biases)."""

    def __init__(self, seed: int = 0, architecture: str = "llama",
                 tie_word_embeddings: bool = True):
        self.config = ModelConfig(
            architecture=architecture, name=f"tiny-{architecture}", vocab_size=64, hidden_size=64,
            intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
            max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=tie_word_embeddings, attention_bias=architecture == "qwen2")
        self.tokenizer = TokenizerInfo(json=tiny_tokenizer_json(64), chat_template=CHATML_TEMPLATE,
                                       bos_token_id=1, eos_token_ids=[2])
        self.source = f"random (seed {seed})"
        rng = np.random.default_rng(seed)
        self._tensors: dict[str, np.ndarray] = {}
        for name, shape in expected_tensor_shapes(self.config).items():
            if name.endswith("norm.weight"):  # around 1, as trained RMSNorm weights are
                t = 1.0 + 0.1 * rng.standard_normal(shape)
            else:  # Kaiming-like scale keeps activations O(1) through the layers
                t = rng.standard_normal(shape) / np.sqrt(shape[-1])
            self._tensors[name] = t.astype(np.float32)

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def get(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise KeyError(f"{self.source}: no tensor {name!r}")
        return self._tensors[name].copy()


def tiny_metadata(source: TinySource, group_size: int = GROUP_SIZE) -> dict:
    """The metadata docs/format.md requires, spelled out independently of the pipeline."""
    c, t = source.config, source.tokenizer
    return {
        "general.architecture": c.architecture, "general.name": c.name,
        "general.source": source.source,
        "model.vocab_size": c.vocab_size, "model.hidden_size": c.hidden_size,
        "model.intermediate_size": c.intermediate_size, "model.num_layers": c.num_layers,
        "model.num_heads": c.num_heads, "model.num_kv_heads": c.num_kv_heads,
        "model.head_dim": c.head_dim, "model.max_position_embeddings": c.max_position_embeddings,
        "model.rope_theta": c.rope_theta, "model.rms_norm_eps": c.rms_norm_eps,
        "model.tie_word_embeddings": c.tie_word_embeddings,
        "model.attention_bias": c.attention_bias,
        "quant.method": "rtn", "quant.bits": 4, "quant.group_size": group_size,
        "quant.zero_point": 1,
        "tokenizer.json": t.json, "tokenizer.chat_template": t.chat_template,
        "tokenizer.bos_token_id": t.bos_token_id, "tokenizer.eos_token_ids": t.eos_token_ids,
    }


def write_tiny_model(path: str | os.PathLike, source: TinySource | None = None,
                     group_size: int = GROUP_SIZE, embeddings: str = "f16") -> TinySource:
    """Writes `source` (default TinySource()) as a valid .awqbin; returns the source.
    The embedding/lm_head tables are f16 or (embeddings="int8") int8 + f16 scales."""
    source = source or TinySource()
    c = source.config

    def add_table(w: AwqbinWriter, prefix: str) -> None:
        table = source.get(prefix + ".weight")
        if embeddings == "f16":
            w.add_tensor(prefix + ".weight", table.astype(np.float16))
            return
        q, scales = quantize_int8_table(table)
        w.add_tensor(prefix + ".weight_q8", q)
        w.add_tensor(prefix + ".weight_q8_scales", scales)

    with AwqbinWriter(path) as w:
        add_table(w, "model.embed_tokens")
        for layer in range(c.num_layers):
            p = layer_prefix(layer)
            w.add_tensor(p + "input_layernorm.weight", source.get(p + "input_layernorm.weight"))
            w.add_tensor(p + "post_attention_layernorm.weight",
                         source.get(p + "post_attention_layernorm.weight"))
            for suffix in LINEAR_NAMES:
                qweight, scales, zeros = quantize_int4(source.get(f"{p}{suffix}.weight"), group_size)
                w.add_tensor(f"{p}{suffix}.qweight", qweight)
                w.add_tensor(f"{p}{suffix}.scales", scales)
                w.add_tensor(f"{p}{suffix}.zeros", zeros)
                if f"{p}{suffix}.bias" in source.tensor_names():
                    w.add_tensor(f"{p}{suffix}.bias", source.get(f"{p}{suffix}.bias"))
        w.add_tensor("model.norm.weight", source.get("model.norm.weight"))
        if not c.tie_word_embeddings:
            add_table(w, "lm_head")
        w.finish(tiny_metadata(source, group_size))
    return source
