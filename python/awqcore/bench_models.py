"""Models for `awqcore bench` that need no quantization run: a "synthetic:..."
spec (e.g. synthetic:llama2-7b) becomes a .awqbin of random int4 codes written
tensor by tensor, so a 7B-shaped file (~3.9 GB) is made in seconds to a minute
without ever holding or writing the 13 GB float model.

The file has the shapes, dtypes and byte counts of a quantized model of that
config (int4 linears with f16 scales and u8 zeros at the group size, tables in
the chosen form), so a decode step reads exactly what a real one would; its
values are not RTN of the synthetic source's weights: codes are uniform in
0..15 around a zero point of 8 and scales give each linear's weights a standard
deviation of ~1/sqrt(in), which keeps activations and logits finite.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .awqbin import AwqbinWriter
from .importers.synthetic import source_from_spec
from .quantize.int8_table import quantize_int8_table
from .quantize.pipeline import build_metadata
from .source import LINEAR_NAMES, layer_prefix, linear_shapes

UNIFORM_CODE_STD = np.sqrt((16 ** 2 - 1) / 12)  # std of a code uniform in 0..15: 4.61


def _int4_linear(rng: np.random.Generator, out: int, inp: int, group: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (qweight u8 [out, in/2], scales f16 [out, in/g], zeros u8 [out, in/g])."""
    qweight = np.frombuffer(rng.bytes(out * inp // 2), dtype=np.uint8).reshape(out, inp // 2)
    scale = 1.0 / (UNIFORM_CODE_STD * np.sqrt(inp))
    scales = (rng.uniform(0.8, 1.2, size=(out, inp // group)) * scale).astype(np.float16)
    zeros = np.full((out, inp // group), 8, dtype=np.uint8)
    return qweight, scales, zeros


def _table(rng: np.random.Generator, rows: int, d: int, form: str) -> dict[str, np.ndarray]:
    """A random [rows, d] table (std 1/sqrt(d)) in `form`, by tensor suffix; made in
    blocks of rows so a 262k x 1536 table never exists in f32 at once."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, 8192):
        block = rng.standard_normal((min(8192, rows - start), d), dtype=np.float32)
        block *= np.float32(1.0 / np.sqrt(d))
        if form == "f16":
            parts.setdefault(".weight", []).append(block.astype(np.float16))
        else:
            q, scales = quantize_int8_table(block)
            parts.setdefault(".weight_q8", []).append(q)
            parts.setdefault(".weight_q8_scales", []).append(scales)
    return {suffix: np.concatenate(blocks) for suffix, blocks in parts.items()}


def write_random_int4_file(spec: str, path: str | os.PathLike, group_size: int = 128,
                           embeddings: str = "int8", lm_head: str = "table",
                           progress: bool = True) -> str:
    """Writes the random-code .awqbin of the synthetic model `spec` (see the module
    docstring) to `path`, atomically; returns the path."""
    source = source_from_spec(spec)
    c = source.config
    for width in {c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim}:
        if width % group_size:
            raise ValueError(f"{spec}: width {width} is not a multiple of the group size {group_size}")
    rng = np.random.default_rng(source.seed)
    shapes = linear_shapes(c)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    with AwqbinWriter(path) as writer:
        for suffix, array in _table(rng, c.vocab_size, c.hidden_size, embeddings).items():
            writer.add_tensor("model.embed_tokens" + suffix, array)
        for layer in range(c.num_layers):
            p = layer_prefix(layer)
            for norm in c.layer_norm_names():
                width = c.head_dim if norm.startswith("self_attn.") else c.hidden_size
                writer.add_tensor(f"{p}{norm}.weight", rng.uniform(0.9, 1.1, width).astype(np.float32))
            for name in LINEAR_NAMES:
                out, inp = shapes[name]
                for part, array in zip(("qweight", "scales", "zeros"),
                                       _int4_linear(rng, out, inp, group_size)):
                    writer.add_tensor(f"{p}{name}.{part}", array)
                if c.attention_bias and name in ("self_attn.q_proj", "self_attn.k_proj",
                                                 "self_attn.v_proj"):
                    writer.add_tensor(f"{p}{name}.bias",
                                      (rng.standard_normal(out) * 0.1).astype(np.float32))
            say(f"random int4 {spec}: layer {layer + 1}/{c.num_layers}")
        writer.add_tensor("model.norm.weight", rng.uniform(0.9, 1.1, c.hidden_size).astype(np.float32))
        if lm_head == "int4":
            for part, array in zip(("qweight", "scales", "zeros"),
                                   _int4_linear(rng, c.vocab_size, c.hidden_size, group_size)):
                writer.add_tensor("lm_head." + part, array)
        elif not c.tie_word_embeddings:
            for suffix, array in _table(rng, c.vocab_size, c.hidden_size, embeddings).items():
                writer.add_tensor("lm_head" + suffix, array)
        writer.finish(build_metadata(source, "rtn", group_size, untie=lm_head == "int4"))
    return os.fspath(path)
