"""A `.awqbin` file seen as a SourceModel: its int4 linears and int8 tables
dequantized to f32.

This is how tests and evaluation build the torch reference of *the same
quantized weights* the C++ runtime runs: read with the pure-Python reader
(independent of the C++ one), dequantize with numpy, hand the getter to
awqcore.reference.ReferenceModel. An int8 table (`X.weight_q8` +
`X.weight_q8_scales`) appears as `X.weight`, checked for dtype and shape here
since the reader itself validates only the container. An MoE layer's stacked
experts (`mlp.experts.up_proj.qweight` [E, f, d/2], ...) appear one expert at a
time, as `mlp.experts.N.up_proj.weight`, the names every SourceModel uses; their
shapes, the router's and the tensors a layer of each kind may hold are checked
at construction.
"""
from __future__ import annotations

import os

import numpy as np

from .awqbin import config_from_metadata, read_awqbin
from .errors import FormatError
from .quantize.int8_table import BLOCK, dequantize_int8_table
from .quantize.rtn import dequantize_int4
from .source import (EXPERT_PROJECTIONS, ROUTER_NAME, TokenizerInfo, expert_linear,
                     layer_prefix, stacked_expert_name)

_QUANT_SUFFIXES = (".qweight", ".scales", ".zeros")
_TABLE_SUFFIXES = (".weight_q8", ".weight_q8_scales")  # an int8 table's two tensors


class AwqbinSource:
    def __init__(self, path: str | os.PathLike):
        self._file = read_awqbin(path)
        meta = self._file.metadata

        self.config = config_from_metadata(meta, os.fspath(path))
        if "quant.group_size" not in meta:
            raise FormatError(f"{path}: metadata key 'quant.group_size' is missing")
        self.group_size = int(meta["quant.group_size"])
        self.tokenizer = TokenizerInfo(
            json=meta.get("tokenizer.json", ""),
            chat_template=meta.get("tokenizer.chat_template", ""),
            bos_token_id=int(meta.get("tokenizer.bos_token_id", -1)),
            eos_token_ids=list(meta.get("tokenizer.eos_token_ids", [])))
        self.source = f"{os.fspath(path)} (dequantized int4 g{self.group_size})"
        self._path = os.fspath(path)
        stored = set(self._file.tensors)
        # Quantized linears and int8 tables appear under their Hugging Face
        # ".weight" name.
        suffixes = _QUANT_SUFFIXES + _TABLE_SUFFIXES
        # expert linear prefix -> (stacked prefix, expert index)
        self._experts = self._check_experts()
        stacked = {p + s for p, _ in self._experts.values() for s in _QUANT_SUFFIXES}
        self._names = sorted({n[: -len(s)] + ".weight"
                              for n in stored - stacked for s in suffixes if n.endswith(s)} |
                             {n for n in stored if not n.endswith(suffixes)} |
                             {p + ".weight" for p in self._experts})

    def _check_experts(self) -> dict[str, tuple[str, int]]:
        """Each MoE layer's router [E, d] f32 and stacked experts [E, rows, ...]; no
        experts or router in a dense layer. Returns the expert linears by prefix."""
        c, tensors, g = self.config, self._file.tensors, self.group_size
        d, f, E = c.hidden_size, c.moe_intermediate_size, c.num_experts
        experts: dict[str, tuple[str, int]] = {}
        for layer in range(c.num_layers):
            p = layer_prefix(layer)
            router = p + ROUTER_NAME + ".weight"
            held = [n for n in tensors if n.startswith(p + "mlp.experts.") or n == router]
            if not c.is_moe_layer(layer):
                if held:
                    raise FormatError(f"{self._path}: tensor {held[0]!r} in layer {layer}, "
                                      "which model.moe_layers makes a dense MLP layer")
                continue
            dense = [n for n in tensors if n.startswith(p + "mlp.") and n not in held]
            if dense:
                raise FormatError(f"{self._path}: tensor {dense[0]!r} in layer {layer}, an "
                                  "MoE layer (its MLP is the router and stacked experts)")
            expected = {router: ("f32", (E, d))}
            for proj in EXPERT_PROJECTIONS:
                out_f, in_f = (d, f) if proj == "down_proj" else (f, d)
                name = p + stacked_expert_name(proj)
                expected.update({name + ".qweight": ("u8", (E, out_f, in_f // 2)),
                                 name + ".scales": ("f16", (E, out_f, in_f // g)),
                                 name + ".zeros": ("u8", (E, out_f, in_f // g))})
                experts.update({p + expert_linear(e, proj): (name, e) for e in range(E)})
            for name, (dtype, shape) in expected.items():
                entry = tensors.get(name)
                if entry is None:
                    raise FormatError(f"{self._path}: missing tensor {name!r} (layer {layer} "
                                      f"is an MoE layer of {E} experts)")
                if (entry.dtype, entry.shape) != (dtype, shape):
                    raise FormatError(f"{self._path}: tensor {name!r}: expected {dtype} "
                                      f"{list(shape)} (model.num_experts={E}), found "
                                      f"{entry.dtype} {list(entry.shape)}")
            extra = sorted(set(held) - set(expected))
            if extra:
                raise FormatError(f"{self._path}: unexpected tensor {extra[0]!r}")
        return experts

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> np.ndarray:
        prefix = name[: -len(".weight")] if name.endswith(".weight") else name
        if any(prefix + s in self._file.tensors for s in _TABLE_SUFFIXES):
            return self._int8_table(prefix)
        if name in self._file.tensors:
            return np.array(self._file.tensor(name), dtype=np.float32)  # a writable copy
        if prefix in self._experts:  # one expert's slice of the stacked tensors
            stacked, e = self._experts[prefix]
            parts = [self._file.tensor(stacked + s)[e] for s in _QUANT_SUFFIXES]
            return dequantize_int4(*parts, self.group_size)
        if prefix + ".qweight" in self._file.tensors:
            parts = [self._file.tensor(prefix + s) for s in _QUANT_SUFFIXES]
            return dequantize_int4(*parts, self.group_size)
        raise KeyError(f"tensor {name!r} is not in {self.source}")

    def _int8_table(self, prefix: str) -> np.ndarray:
        """prefix.weight_q8 i8 [vocab, d] and prefix.weight_q8_scales f16 [vocab, d/32],
        dequantized; FormatError naming the tensor when either is missing or malformed,
        or when the f16 form is stored as well."""
        c = self.config
        if prefix + ".weight" in self._file.tensors:
            raise FormatError(f"{self._path}: tensors '{prefix}.weight' and '{prefix}.weight_q8': "
                              "the file holds both forms of one table (expected one)")
        if c.hidden_size % BLOCK:
            raise FormatError(f"{self._path}: tensor '{prefix}.weight_q8': model.hidden_size="
                              f"{c.hidden_size} is not a multiple of {BLOCK}")
        expected = {".weight_q8": ("i8", (c.vocab_size, c.hidden_size)),
                    ".weight_q8_scales": ("f16", (c.vocab_size, c.hidden_size // BLOCK))}
        parts = []
        for suffix, (dtype, shape) in expected.items():
            entry = self._file.tensors.get(prefix + suffix)
            if entry is None:
                raise FormatError(f"{self._path}: missing tensor '{prefix}{suffix}' (an int8 "
                                  "table needs both its codes and its scales)")
            if (entry.dtype, entry.shape) != (dtype, shape):
                raise FormatError(f"{self._path}: tensor '{prefix}{suffix}': expected {dtype} "
                                  f"{list(shape)}, found {entry.dtype} {list(entry.shape)}")
            parts.append(self._file.tensor(prefix + suffix))
        return dequantize_int8_table(*parts)
