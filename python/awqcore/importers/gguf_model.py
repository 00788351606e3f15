"""GGUF importer: llama.cpp files of the llama (Llama 2/3, Mistral, and Mixtral: llama
with an expert count), qwen2, qwen3, qwen3moe and gemma3 architectures.

The file is memory-mapped by `gguf.GGUFReader`; each `get()` dequantizes one
tensor, converts it to the Hugging Face [out, in] layout and, for the llama
architecture only, undoes the q/k row permutation that llama.cpp's converter
applies. llama.cpp's converter already stores Gemma's norm weights as 1 + w,
the multiplier this format holds, so they pass through unchanged.

Experts: llama.cpp stacks each layer's experts (`ffn_gate_exps` [E, f, d] in
Hugging Face order, ...) and calls the router `ffn_gate_inp`; the source names
them one expert at a time (`mlp.experts.N.gate_proj.weight`), and `get()`
dequantizes only that expert's rows. A layer is MoE when it holds a router.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import gguf
import numpy as np
import torch

from ..reference import llama3_inverse_frequencies
from ..source import ModelConfig, TokenizerInfo
from . import check_tensor_shapes
from .rope_scaling import normalize_rope_scaling

# GGUF general.architecture values this importer reads (Mistral's files use llama).
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma3")

# Block-quantized tensors are dequantized this many elements (16 MB of float32) at a time.
DEQUANTIZE_BLOCK_ELEMENTS = 1 << 22

# GGUF tensor name (without .weight/.bias) -> Hugging Face name; {n} is the layer.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
}
# Stacked experts [E, rows, cols] -> the projection each expert's slice is.
_EXPERT_NAMES = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj",
                 "ffn_down_exps": "down_proj"}
# Gemma 3's four norms: llama.cpp's ffn_norm is the MLP's input norm, which Gemma
# calls pre_feedforward_layernorm (its post_attention_layernorm normalizes the
# attention output).
_GEMMA3_LAYER_NAMES = {**_LAYER_NAMES, "post_attention_norm": "post_attention_layernorm",
                       "ffn_norm": "pre_feedforward_layernorm",
                       "post_ffw_norm": "post_feedforward_layernorm"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor, or None when it has no counterpart."""
    if m := _LAYER_RE.fullmatch(gguf_name):
        layer, base, kind = m.groups()
        names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
        if base in names:
            return f"model.layers.{layer}.{names[base]}.{kind}"
        return None
    if (m := _GLOBAL_RE.fullmatch(gguf_name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def undo_llama_permutation(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation, on rows of a [rows, cols] weight or a [rows] bias.

    The converter maps Hugging Face's "rotate half" rotary (pairs i, i + hd/2)
    to llama.cpp's interleaved one (pairs 2i, 2i + 1) by reordering the rows of
    each head: w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2). Reshaping to
    (n_head, hd/2, 2, ...) and swapping back restores the original order.
    """
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ValueError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _from_float32(value: float) -> float:
    """The decimal a float32 metadata value was written from (1e-05, not 9.9999997e-06).

    GGUF stores these as float32; its shortest round-tripping decimal is the
    value in the original config, which is what the format's f64 fields should hold.
    """
    return float(str(np.float32(value)))


def _file_type_name(value: int | None) -> str:
    """'Q4_1' for general.file_type 3; files from newer llama.cpp may use numbers gguf lacks."""
    if value is None:
        return "unknown type"
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file type {value}"


def _llama3_from_rope_freqs(divisors: np.ndarray, theta: float, head_dim: int,
                            original: int, origin: str) -> dict:
    """Llama 3's rope scaling whose per-frequency divisors (inv_freq / scaled inv_freq, as
    llama.cpp's converter stores them in rope_freqs) match `divisors` [hd/2]. The file
    keeps only the divisors; Llama 3.1 to 3.3 all use low_freq_factor 1, high_freq_factor 4
    and an original context of 8192, with the stretch factor the largest divisor."""
    if divisors.shape != (head_dim // 2,):
        raise ValueError(f"{origin}: rope_freqs has {divisors.size} values, expected "
                         f"{head_dim // 2}")
    factor, low, high = float(divisors.max()), 1.0, 4.0
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    expected = (inv_freq / llama3_inverse_frequencies(inv_freq, factor, low, high,
                                                      original)).numpy()
    if not np.allclose(divisors, expected, rtol=1e-5, atol=0):
        raise ValueError(f"{origin}: rope_freqs does not match Llama 3 rope scaling (factor "
                         f"{factor}, low_freq_factor 1, high_freq_factor 4, original context "
                         f"{original}); other per-frequency factors are not supported")
    return normalize_rope_scaling(
        {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
         "high_freq_factor": high, "original_max_position_embeddings": original}, 0, origin)


class _Metadata:
    """Typed access to the key/value fields of a GGUF file, with errors naming the key."""

    def __init__(self, reader: gguf.GGUFReader, path: Path):
        self._fields = reader.fields
        self._path = path

    def get(self, key: str, default=None):
        field = self._fields.get(key)
        return field.contents() if field is not None else default

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise ValueError(f"{self._path.name}: GGUF metadata key {key!r} is missing")
        return value


class GGUFSource:
    """A SourceModel backed by a GGUF file (memory-mapped, dequantized per tensor)."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        # Memory-mapped. Kept public: parsing the metadata takes seconds for a large
        # vocabulary, and the tokenizer importer and tests read the same fields.
        self.reader = gguf.GGUFReader(self.path)
        meta = _Metadata(self.reader, self.path)
        arch = meta.require("general.architecture")
        if arch not in GGUF_ARCHITECTURES:
            raise ValueError(f"{self.path.name}: unknown architecture {arch!r} "
                             f"(supported: {', '.join(GGUF_ARCHITECTURES)})")

        # HF name -> GGUF tensor. Unmapped tensors are refused rather than
        # skipped, since each changes the computation; rope_freqs (Llama 3's
        # rope scaling as per-frequency divisors) is read into the config instead.
        self._tensors: dict[str, gguf.ReaderTensor] = {}
        self._rope_freqs = None
        # source name -> (stacked tensor, expert index); filled once E is known
        self._experts: dict[str, tuple[gguf.ReaderTensor, int]] = {}
        stacked: list[tuple[str, str, gguf.ReaderTensor]] = []  # (layer prefix, projection, t)
        for t in self.reader.tensors:
            if t.name == "rope_freqs.weight":
                self._rope_freqs = t
                continue
            m = _LAYER_RE.fullmatch(t.name)
            if m and m.group(2) in _EXPERT_NAMES and m.group(3) == "weight":
                stacked.append((f"model.layers.{m.group(1)}.", _EXPERT_NAMES[m.group(2)], t))
                continue
            hf = hf_name(t.name, arch)
            if hf is None:
                raise ValueError(f"{self.path.name}: tensor {t.name!r} has no Hugging Face "
                                 f"counterpart in the {arch} architecture (unsupported)")
            self._tensors[hf] = t
        if "model.embed_tokens.weight" not in self._tensors:
            raise ValueError(f"{self.path.name}: tensor 'token_embd.weight' is missing")

        self.config = self._read_config(meta, arch, name)
        shapes = {n: self._hf_shape(t) for n, t in self._tensors.items()}
        for prefix, proj, t in stacked:
            shape = self._hf_shape(t)
            if len(shape) != 3:
                raise ValueError(f"{self.path.name}: tensor {t.name!r} has shape {list(shape)}, "
                                 "expected [experts, rows, columns]")
            for e in range(shape[0]):
                source = f"{prefix}mlp.experts.{e}.{proj}.weight"
                self._experts[source] = (t, e)
                shapes[source] = shape[1:]
        check_tensor_shapes(shapes, self.config, self.path.name)
        self.source = f"{self.path.name} ({_file_type_name(meta.get('general.file_type'))})"

    def _read_config(self, meta: _Metadata, arch: str, name: str | None) -> ModelConfig:
        a = arch + "."
        d = int(meta.require(a + "embedding_length"))
        heads = int(meta.require(a + "attention.head_count"))
        kv_heads = int(meta.get(a + "attention.head_count_kv", heads))
        # key_length is the head size when present; the rotary dimension equals it
        # for these architectures, and d / H is llama.cpp's own fallback.
        head_dim = int(meta.get(a + "attention.key_length")
                       or meta.get(a + "rope.dimension_count") or d // heads)
        rope_dim = int(meta.get(a + "rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise ValueError(f"{self.path.name}: partial rotary (rope.dimension_count="
                             f"{rope_dim}, head_dim={head_dim}) is not supported")
        # The embedding's row count is the vocabulary the weights cover; the
        # optional vocab_size key is absent from many files.
        vocab = int(self._tensors["model.embed_tokens.weight"].shape[1])
        layers = int(meta.require(a + "block_count"))
        max_positions = int(meta.require(a + "context_length"))
        theta = _from_float32(meta.get(a + "rope.freq_base", 10000.0))
        if meta.get(a + "attn_logit_softcapping"):
            raise ValueError(f"{self.path.name}: {a}attn_logit_softcapping is not supported")
        fields: dict = {}
        if arch in ("qwen3", "qwen3moe"):
            fields["qk_norm"] = True
        experts = int(meta.get(a + "expert_count", 0) or 0)
        if experts or arch == "qwen3moe":
            fields.update(self._expert_fields(meta, a, arch, experts, layers))
        if arch == "gemma3":
            fields = self._gemma3_fields(meta, a, d, heads, head_dim, layers)
        elif meta.get(a + "attention.sliding_window"):
            raise ValueError(f"{self.path.name}: {a}attention.sliding_window is not supported "
                             f"for the {arch} architecture")
        architecture = {"qwen3moe": "qwen3_moe"}.get(arch, arch)
        if arch == "llama" and experts:
            architecture = "mixtral"
        try:
            return self._model_config(meta, a, architecture, name, vocab, d, layers, heads,
                                      kv_heads, head_dim, max_positions, theta, fields)
        except ValueError as e:
            raise ValueError(f"{self.path.name}: {e}") from None

    def _expert_fields(self, meta: _Metadata, a: str, arch: str, experts: int,
                       layers: int) -> dict:
        """E and k from expert_count / expert_used_count; each expert's width from
        expert_feed_forward_length (qwen3moe) or feed_forward_length (Mixtral's llama
        files); the MoE layers are those holding a router (ffn_gate_inp). llama.cpp
        renormalizes the chosen weights for both unless expert_weights_norm says not."""
        if not experts:
            raise ValueError(f"{self.path.name}: GGUF metadata key {a + 'expert_count'!r} "
                             "is missing")
        if meta.get(a + "expert_shared_count"):
            raise ValueError(f"{self.path.name}: shared experts are not supported")
        gating = meta.get(a + "expert_gating_func")
        if gating not in (None, 1):  # 1: softmax
            raise ValueError(f"{self.path.name}: {a}expert_gating_func={gating} is not "
                             "supported (softmax only)")
        width_key = a + ("expert_feed_forward_length" if arch == "qwen3moe"
                         else "feed_forward_length")
        # Mixtral's are all MoE: a layer without a router is then reported as missing one.
        routers = [arch != "qwen3moe" or f"model.layers.{i}.mlp.gate.weight" in self._tensors
                   for i in range(layers)]
        return dict(num_experts=experts,
                    num_experts_per_tok=int(meta.require(a + "expert_used_count")),
                    moe_intermediate_size=int(meta.require(width_key)),
                    norm_topk_prob=bool(meta.get(a + "expert_weights_norm", True)),
                    moe_layers=[int(r) for r in routers])

    def _model_config(self, meta: _Metadata, a: str, architecture: str, name: str | None,
                      vocab: int, d: int, layers: int, heads: int, kv_heads: int,
                      head_dim: int, max_positions: int, theta: float,
                      fields: dict) -> ModelConfig:
        return ModelConfig(
            architecture=architecture,
            name=name or meta.get("general.name") or self.path.stem,
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=int(meta.require(a + "feed_forward_length")),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=max_positions,
            rope_theta=theta,
            rms_norm_eps=_from_float32(meta.require(a + "attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            attention_bias="model.layers.0.self_attn.q_proj.bias" in self._tensors,
            rope_scaling=self._rope_scaling(meta, a, theta, head_dim, max_positions),
            **fields,
        )

    def _gemma3_fields(self, meta: _Metadata, a: str, d: int, heads: int, head_dim: int,
                       layers: int) -> dict:
        """Gemma 3's description as llama.cpp reads it: a sliding window with every
        `pattern`-th layer global (default 6), the sliding layers' base 10000 unless
        rope.freq_base_swa says otherwise, attention scale 1/sqrt(hd) except for the
        62-layer 27B (1/sqrt(d/H), its query_pre_attn_scalar)."""
        window = int(meta.require(a + "attention.sliding_window"))
        pattern = meta.get(a + "attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # per layer: true where the layer slides
            if len(pattern) != layers:
                raise ValueError(f"{self.path.name}: {a}attention.sliding_window_pattern has "
                                 f"{len(pattern)} entries for {layers} layers")
            sliding = [bool(p) for p in pattern]
        else:
            pattern = int(pattern)
            sliding = [pattern <= 0 or (i + 1) % pattern != 0 for i in range(layers)]
        scalar = d / heads if layers == 62 else head_dim
        softcap = meta.get(a + "final_logit_softcapping")
        return dict(
            norm_placement="sandwich", activation="gelu_tanh", qk_norm=True,
            attention_scale=float(scalar) ** -0.5, embedding_scale=math.sqrt(d),
            final_logit_softcap=_from_float32(softcap) if softcap else 0.0,
            sliding_window=window,
            layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
            rope_local_theta=_from_float32(meta.get(a + "rope.freq_base_swa", 10000.0)))

    def _rope_scaling(self, meta: _Metadata, a: str, theta: float, head_dim: int,
                      max_positions: int) -> dict | None:
        """The rope scaling from rope.scaling.* keys, or Llama 3's from the rope_freqs
        tensor (checked against the llama3 formula, since its parameters are not stored)."""
        kind = meta.get(a + "rope.scaling.type", "none")
        if self._rope_freqs is not None:
            if kind not in ("none", "linear") or meta.get(a + "rope.scaling.factor", 1.0) != 1.0:
                raise ValueError(f"{self.path.name}: rope_freqs together with rope scaling "
                                 f"{kind!r} is not supported")
            return _llama3_from_rope_freqs(
                np.asarray(self._rope_freqs.data, dtype=np.float64).reshape(-1), theta, head_dim,
                int(meta.get(a + "rope.scaling.original_context_length", 8192)), self.path.name)
        if kind == "none":
            return None
        raw = {"rope_type": kind, "factor": meta.get(a + "rope.scaling.factor")}
        if kind == "yarn":
            if meta.get(a + "rope.scaling.yarn_log_multiplier") or \
                    meta.get(a + "rope.scaling.yarn_ext_factor") not in (None, -1.0, 1.0):
                raise ValueError(f"{self.path.name}: these YaRN options are not supported")
            raw.update(original_max_position_embeddings=meta.get(
                a + "rope.scaling.original_context_length"),
                beta_fast=meta.get(a + "rope.scaling.yarn_beta_fast"),
                beta_slow=meta.get(a + "rope.scaling.yarn_beta_slow"))
        return normalize_rope_scaling(raw, max_positions, self.path.name)

    @staticmethod
    def _hf_shape(t: gguf.ReaderTensor) -> tuple[int, ...]:
        # GGUF lists ne0 (the contiguous, input dimension) first.
        return tuple(int(n) for n in reversed(t.shape.tolist()))

    @functools.cached_property
    def tokenizer(self) -> TokenizerInfo:
        # Built on first use: rebuilding the tokenizer walks the whole vocabulary
        # and merge list, which tensor-only work (e.g. quantizing) never needs.
        from .gguf_tokenizer import tokenizer_from_gguf
        return tokenizer_from_gguf(self.reader)

    def tensor_names(self) -> list[str]:
        return list(self._tensors) + list(self._experts)

    @staticmethod
    def _dequantize(t: gguf.ReaderTensor, shape: tuple[int, ...],
                    expert: int | None = None) -> np.ndarray:
        """The block-quantized tensor (or one expert's slice [rows, cols] of stacked
        experts) as float32 `shape`, dequantized in blocks of rows: gguf's dequantize
        makes several float temporaries of its input's size, which for a whole
        151936 x 1536 embedding (Qwen2.5) would be gigabytes on top of the result."""
        raw = t.data.reshape(-1, t.data.shape[-1])  # [rows, bytes per row]
        if expert is not None:
            raw = raw[expert * shape[0]:(expert + 1) * shape[0]]
        out = np.empty(shape, dtype=np.float32)
        flat = out.reshape(raw.shape[0], -1)  # [rows, columns], a view of out
        step = max(1, DEQUANTIZE_BLOCK_ELEMENTS // flat.shape[1])
        for r in range(0, raw.shape[0], step):
            flat[r:r + step] = gguf.quants.dequantize(raw[r:r + step], t.tensor_type)
        return out

    def _tensor(self, name: str) -> gguf.ReaderTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in {self.path.name}") from None

    def _expert(self, name: str) -> np.ndarray:
        t, e = self._experts[name]
        shape = self._hf_shape(t)[1:]  # [rows, cols]
        if t.data.dtype == np.uint8:  # block-quantized: raw bytes per row
            return self._dequantize(t, shape, e)
        return t.data.reshape(-1, *shape)[e].astype(np.float32)

    def get(self, name: str) -> np.ndarray:
        if name in self._experts:
            return self._expert(name)
        t = self._tensor(name)
        shape = self._hf_shape(t)
        if t.data.dtype == np.uint8:  # block-quantized (and BF16): raw bytes per row
            w = self._dequantize(t, shape)
        else:
            # astype copies out of the read-only memory map, so callers may modify the result.
            w = t.data.reshape(shape).astype(np.float32)
        if self.config.architecture in ("llama", "mixtral"):  # llama.cpp's llama architecture
            if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
                w = undo_llama_permutation(w, self.config.num_heads)
            elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
                w = undo_llama_permutation(w, self.config.num_kv_heads)
        return np.ascontiguousarray(w)
