"""A tiny llama/qwen2-shaped model for tests, written straight to .awqbin.

`TinySource` is a SourceModel of random weights (d=64, 2 layers, 4 query and
2 key/value heads of 16, MLP 128, vocabulary 64); `write_tiny_model` quantizes
it and writes the file with AwqbinWriter directly (not through the quantize
pipeline), so format tests do not depend on the pipeline they may be checking.
The same goes for the other files tests write here: Hugging Face folders of every
family (`SharpSource`) and tokenizer-only GGUF files (`write_tokenizer_gguf`).
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
# A one-layer tiny Llama in the CLI's spelling of a synthetic model (`awqcore quantize
# SPEC`); conftest's one_layer_awqbin is it quantized.
ONE_LAYER_SPEC = "synthetic:arch=llama,layers=1,seed=3"
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


class TensorDictSource:
    """SourceModel of `config` with the tiny 64-token tokenizer over a dict of f32
    tensors that the subclass fills; get returns copies so callers cannot alter them."""

    def __init__(self, config: ModelConfig, source: str):
        self.config = config
        self.tokenizer = TokenizerInfo(json=tiny_tokenizer_json(64), chat_template=CHATML_TEMPLATE,
                                       bos_token_id=1, eos_token_ids=[2])
        self.source = source
        self._tensors: dict[str, np.ndarray] = {}

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def get(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise KeyError(f"{self.source}: no tensor {name!r}")
        return self._tensors[name].copy()


class TinySource(TensorDictSource):
    """SourceModel of seeded random weights, llama (or qwen2 with q/k/v biases)."""

    def __init__(self, seed: int = 0, architecture: str = "llama",
                 tie_word_embeddings: bool = True):
        super().__init__(ModelConfig(
            architecture=architecture, name=f"tiny-{architecture}", vocab_size=64, hidden_size=64,
            intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
            max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=tie_word_embeddings, attention_bias=architecture == "qwen2"),
            f"random (seed {seed})")
        rng = np.random.default_rng(seed)
        for name, shape in expected_tensor_shapes(self.config).items():
            if name.endswith("norm.weight"):  # around 1, as trained RMSNorm weights are
                t = 1.0 + 0.1 * rng.standard_normal(shape)
            else:  # Kaiming-like scale keeps activations O(1) through the layers
                t = rng.standard_normal(shape) / np.sqrt(shape[-1])
            self._tensors[name] = t.astype(np.float32)


# CHATML_TEMPLATE reduced to docs/format.md's chat.* keys, by hand: every role is
# "<|im_start|>ROLE\n" + content + "<|im_end|>\n", anywhere, nothing trimmed.
CHATML_CHAT_KEYS = {
    "chat.format": "turns", "chat.start": "", "chat.system": "turn", "chat.order": "any",
    "chat.trim": "", "chat.generation_prompt": "<|im_start|>assistant\n",
    **{f"chat.{role}.{part}": text for role in ("system", "user", "assistant")
       for part, text in (("prefix", f"<|im_start|>{role}\n"), ("suffix", "<|im_end|>\n"))},
}


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
        **(CHATML_CHAT_KEYS if t.chat_template == CHATML_TEMPLATE else {}),
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


# --- Tiny checkpoints of every family, as Hugging Face folders ----------------

# Each family's tiny config (awqcore.importers.synthetic.FAMILIES) over a 64-token
# vocabulary, so tiny_tokenizer_json covers it.
FAMILY_NAMES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma3")
# The mixture-of-experts families, tested by their own files (test_moe_*.py).
MOE_FAMILY_NAMES = ("mixtral", "qwen3_moe")
_HF_CLASSES = {"llama": ("llama", "LlamaForCausalLM"), "mistral": ("mistral", "MistralForCausalLM"),
               "qwen2": ("qwen2", "Qwen2ForCausalLM"), "qwen3": ("qwen3", "Qwen3ForCausalLM"),
               "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
               "mixtral": ("mixtral", "MixtralForCausalLM"),
               "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM")}
# Mixtral's checkpoint names for the source's expert projections.
_MIXTRAL_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def family_config(family: str) -> ModelConfig:
    from awqcore.importers.synthetic import tiny_config
    return tiny_config(family, vocab_size=64)


class SharpSource(TensorDictSource):
    """SourceModel of one family with weights strong enough that greedy tokens depend on
    the context, sharper still than SyntheticSource's variance-1/in matrices:
    embeddings N(0, 1), linears N(0, (gain²)/in) with q/k gain 2 so attention is peaked,
    norm multipliers 1 + 0.3·N(0, 1) and biases N(0, 0.3²), so that a (1 + w) or a
    bias mistake moves the logits by O(1). Routers have gain 2: router logits of std ~2
    spread the softmax so that tokens pick different experts with clear margins.

    A tied model scores each token by its own embedding, so an embedding as large as
    the layers' outputs makes greedy repeat the last token whatever the context; there
    the embedding enters the residual at RMS 0.25 (after Gemma's embedding scale) and
    the final norm's multiplier is 16x larger, keeping logits of O(1..10)."""

    def __init__(self, family: str, seed: int = 0):
        super().__init__(family_config(family), f"sharp random {family} (seed {seed})")
        rng = np.random.default_rng(seed)
        for name, shape in expected_tensor_shapes(self.config).items():
            tied = self.config.tie_word_embeddings
            if name.endswith("norm.weight"):
                t = 1.0 + 0.3 * rng.standard_normal(shape)
                if tied and name == "model.norm.weight":
                    t *= 16.0
            elif name.endswith(".bias"):
                t = 0.3 * rng.standard_normal(shape)
            elif "embed_tokens" in name or name == "lm_head.weight":
                t = rng.standard_normal(shape)
                if tied:
                    t *= 0.25 / self.config.embedding_scale
            else:
                gain = 2.0 if ("q_proj" in name or "k_proj" in name
                               or name.endswith("mlp.gate.weight")) else 1.0
                t = gain * rng.standard_normal(shape) / np.sqrt(shape[-1])
            self._tensors[name] = t.astype(np.float32)

    def hf_tensors(self, fused_experts: bool = False) -> dict[str, np.ndarray]:
        """The tensors as a Hugging Face checkpoint holds them: Gemma's norms as w, the
        checkpoint's parameter, where the source (and the file format) hold 1 + w;
        Mixtral's experts and router under block_sparse_moe (w1 gate, w3 up, w2 down),
        as save_pretrained writes them. fused_experts: each layer's experts as
        transformers 5 holds them in memory instead, mlp.experts.gate_up_proj
        [E, 2f, d] (gate rows first) and mlp.experts.down_proj [E, d, f]."""
        gemma = self.config.architecture == "gemma3"
        out = {n: (t - np.float32(1.0) if gemma and n.endswith("norm.weight") else t)
               for n, t in self._tensors.items()}
        c = self.config
        for layer in range(c.num_layers):
            if not c.is_moe_layer(layer):
                continue
            p = layer_prefix(layer)
            experts = {(e, proj): out.pop(f"{p}mlp.experts.{e}.{proj}.weight")
                       for e in range(c.num_experts) for proj in _MIXTRAL_NAMES}
            if fused_experts:
                E = range(c.num_experts)
                out[p + "mlp.experts.gate_up_proj"] = np.stack(
                    [np.concatenate([experts[e, "gate_proj"], experts[e, "up_proj"]]) for e in E])
                out[p + "mlp.experts.down_proj"] = np.stack([experts[e, "down_proj"] for e in E])
            elif c.architecture == "mixtral":
                for (e, proj), t in experts.items():
                    out[f"{p}block_sparse_moe.experts.{e}.{_MIXTRAL_NAMES[proj]}.weight"] = t
            else:
                for (e, proj), t in experts.items():
                    out[f"{p}mlp.experts.{e}.{proj}.weight"] = t
            if c.architecture == "mixtral" and not fused_experts:
                out[p + "block_sparse_moe.gate.weight"] = out.pop(p + "mlp.gate.weight")
        return out


def hf_config_json(c: ModelConfig) -> dict:
    """config.json as the family's checkpoints on the Hub spell it (transformers 4 keys:
    rope_theta, rope_scaling, rope_local_base_freq)."""
    model_type, cls = _HF_CLASSES[c.architecture]
    cfg = {
        "architectures": [cls], "model_type": model_type, "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings, "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    if c.rope_scaling is not None:
        cfg["rope_scaling"] = {k: v for k, v in c.rope_scaling.items()
                               if k not in ("truncate", "attention_factor")}
    if c.architecture == "gemma3":
        cfg.update(hidden_activation="gelu_pytorch_tanh", sliding_window=c.sliding_window,
                   layer_types=c.layer_types, rope_local_base_freq=c.rope_local_theta,
                   query_pre_attn_scalar=round(c.attention_scale ** -2),
                   final_logit_softcapping=c.final_logit_softcap or None,
                   attn_logit_softcapping=None)
    else:
        cfg["hidden_act"] = "silu"
    if c.architecture in ("mistral", "mixtral"):
        cfg["sliding_window"] = c.sliding_window or None
    if c.architecture == "mixtral":
        cfg.update(num_local_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_tok)
    if c.architecture == "qwen3_moe":
        layers = c.moe_layers or [1] * c.num_layers
        cfg.update(num_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_tok,
                   moe_intermediate_size=c.moe_intermediate_size,
                   norm_topk_prob=c.norm_topk_prob, decoder_sparse_step=1,
                   mlp_only_layers=[i for i, moe in enumerate(layers) if not moe])
    return cfg


def write_hf_checkpoint(folder, source: SharpSource, dtype=None,
                        fused_experts: bool = False) -> None:
    """A Hugging Face folder of `source`: config.json, model.safetensors (f32, or
    `dtype`, a torch dtype), tokenizer.json and tokenizer_config.json; experts fused
    or one by one (SharpSource.hf_tensors)."""
    import json

    import torch
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {n: torch.from_numpy(np.ascontiguousarray(t))
               for n, t in source.hf_tensors(fused_experts).items()}
    if dtype is not None:
        tensors = {n: t.to(dtype) for n, t in tensors.items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config_json(source.config), f, indent=1)
    write_hf_tokenizer(folder, source)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, on the rows of a weight or a bias."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_model_writer(path, arch: str, c: ModelConfig):
    """A gguf.GGUFWriter for architecture `arch` holding the hyperparameters every
    converted model carries (layers, context, widths, heads, rotary dims and base, norm
    epsilon), as llama.cpp's converter writes them; the caller adds the rest."""
    import gguf

    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    return w


def write_tokenizer_gguf(path, model: str, pre: str, tokens: list[str], types: list[int],
                         scores: list[float] | None = None, merges: list[str] | None = None,
                         **extra) -> str:
    """A tensor-less GGUF holding only tokenizer metadata: tokenizer.ggml.model `model`
    ("gpt2" BPE with `merges`, "llama" SentencePiece with `scores`), its pre-tokenizer,
    and each `extra` key through GGUFWriter's add_<key>. Returns the path as a string."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    if merges is not None:
        writer.add_token_merges(merges)
    for key, value in extra.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return str(path)


def write_hf_tokenizer(folder, source) -> None:
    import json

    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write(source.tokenizer.json)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": source.tokenizer.chat_template, "bos_token": "<s>",
                   "eos_token": "</s>"}, f)
