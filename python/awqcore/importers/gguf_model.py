"""GGUF importer: llama.cpp files of the llama and qwen2 architectures.

The file is memory-mapped by `gguf.GGUFReader`; each `get()` dequantizes one
tensor, converts it to the Hugging Face [out, in] layout and, for the llama
architecture, undoes the q/k row permutation that llama.cpp's converter applies.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import gguf
import numpy as np

from ..source import SUPPORTED_ARCHITECTURES, ModelConfig, TokenizerInfo
from . import check_tensor_shapes

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
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None when it has no counterpart."""
    if m := _LAYER_RE.fullmatch(gguf_name):
        layer, base, kind = m.groups()
        if base in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[base]}.{kind}"
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
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"{self.path.name}: unknown architecture {arch!r} "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

        # HF name -> GGUF tensor. Unmapped tensors are refused rather than
        # skipped: e.g. llama 3's rope_freqs changes the rotary and would be
        # silently lost.
        self._tensors: dict[str, gguf.ReaderTensor] = {}
        for t in self.reader.tensors:
            hf = hf_name(t.name)
            if hf is None:
                raise ValueError(f"{self.path.name}: tensor {t.name!r} has no Hugging Face "
                                 f"counterpart in the {arch} architecture (unsupported)")
            self._tensors[hf] = t
        if "model.embed_tokens.weight" not in self._tensors:
            raise ValueError(f"{self.path.name}: tensor 'token_embd.weight' is missing")

        self.config = self._read_config(meta, arch, name)
        check_tensor_shapes({n: self._hf_shape(t) for n, t in self._tensors.items()},
                            self.config, self.path.name)
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
        scaling = meta.get(a + "rope.scaling.type", "none")
        if scaling != "none":
            raise ValueError(f"{self.path.name}: rope scaling {scaling!r} is not supported")
        # The embedding's row count is the vocabulary the weights cover; the
        # optional vocab_size key is absent from many files.
        vocab = int(self._tensors["model.embed_tokens.weight"].shape[1])
        return ModelConfig(
            architecture=arch,
            name=name or meta.get("general.name") or self.path.stem,
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=int(meta.require(a + "feed_forward_length")),
            num_layers=int(meta.require(a + "block_count")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=int(meta.require(a + "context_length")),
            rope_theta=_from_float32(meta.get(a + "rope.freq_base", 10000.0)),
            rms_norm_eps=_from_float32(meta.require(a + "attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            attention_bias="model.layers.0.self_attn.q_proj.bias" in self._tensors,
        )

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
        return list(self._tensors)

    @staticmethod
    def _dequantize(t: gguf.ReaderTensor, shape: tuple[int, ...]) -> np.ndarray:
        """The block-quantized tensor as float32 `shape`, dequantized in blocks of rows:
        gguf's dequantize makes several float temporaries of its input's size, which for
        a whole 151936 x 1536 embedding (Qwen2.5) would be gigabytes on top of the result."""
        raw = t.data.reshape(-1, t.data.shape[-1])  # [rows, bytes per row]
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

    def get(self, name: str) -> np.ndarray:
        t = self._tensor(name)
        shape = self._hf_shape(t)
        if t.data.dtype == np.uint8:  # block-quantized (and BF16): raw bytes per row
            w = self._dequantize(t, shape)
        else:
            # astype copies out of the read-only memory map, so callers may modify the result.
            w = t.data.reshape(shape).astype(np.float32)
        if self.config.architecture == "llama":
            if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
                w = undo_llama_permutation(w, self.config.num_heads)
            elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
                w = undo_llama_permutation(w, self.config.num_kv_heads)
        return np.ascontiguousarray(w)
