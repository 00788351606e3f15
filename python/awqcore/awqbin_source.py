"""A `.awqbin` file seen as a SourceModel: its int4 linears dequantized to f32.

This is how tests and evaluation build the torch reference of *the same
quantized weights* the C++ runtime runs: read with the pure-Python reader
(independent of the C++ one), dequantize with numpy, hand the getter to
awqcore.reference.ReferenceModel.
"""
from __future__ import annotations

import os

import numpy as np

from .awqbin import read_awqbin
from .errors import FormatError
from .quantize.rtn import dequantize_int4
from .source import ModelConfig, TokenizerInfo

_QUANT_SUFFIXES = (".qweight", ".scales", ".zeros")


class AwqbinSource:
    def __init__(self, path: str | os.PathLike):
        self._file = read_awqbin(path)
        meta = self._file.metadata

        def need(key: str):
            if key not in meta:
                raise FormatError(f"{path}: metadata key {key!r} is missing")
            return meta[key]

        self.config = ModelConfig(
            architecture=need("general.architecture"),
            name=meta.get("general.name", ""),
            vocab_size=need("model.vocab_size"),
            hidden_size=need("model.hidden_size"),
            intermediate_size=need("model.intermediate_size"),
            num_layers=need("model.num_layers"),
            num_heads=need("model.num_heads"),
            num_kv_heads=need("model.num_kv_heads"),
            head_dim=need("model.head_dim"),
            max_position_embeddings=need("model.max_position_embeddings"),
            rope_theta=float(need("model.rope_theta")),
            rms_norm_eps=float(need("model.rms_norm_eps")),
            tie_word_embeddings=bool(need("model.tie_word_embeddings")),
            attention_bias=bool(need("model.attention_bias")),
        )
        self.group_size = int(need("quant.group_size"))
        self.tokenizer = TokenizerInfo(
            json=meta.get("tokenizer.json", ""),
            chat_template=meta.get("tokenizer.chat_template", ""),
            bos_token_id=int(meta.get("tokenizer.bos_token_id", -1)),
            eos_token_ids=list(meta.get("tokenizer.eos_token_ids", [])))
        self.source = f"{os.fspath(path)} (dequantized int4 g{self.group_size})"
        stored = set(self._file.tensors)
        # Quantized linears appear under their Hugging Face ".weight" name.
        self._names = sorted({n[: -len(s)] + ".weight" if n.endswith(s) else n
                              for n in stored for s in _QUANT_SUFFIXES if n.endswith(s)} |
                             {n for n in stored if not n.endswith(_QUANT_SUFFIXES)})

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> np.ndarray:
        if name in self._file.tensors:
            return np.array(self._file.tensor(name), dtype=np.float32)  # a writable copy
        prefix = name[: -len(".weight")] if name.endswith(".weight") else name
        if prefix + ".qweight" in self._file.tensors:
            parts = [self._file.tensor(prefix + s) for s in _QUANT_SUFFIXES]
            return dequantize_int4(*parts, self.group_size)
        raise KeyError(f"tensor {name!r} is not in {self.source}")
