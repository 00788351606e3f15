"""AutoAWQ GEMM export/import (awqcore.importers.autoawq_format) against the format's definition."""
from __future__ import annotations

import json

import numpy as np
import pytest

from awqcore.importers.autoawq_format import convert_hf, export_hf, pack_gemm, to_gemm
from awqcore.awqbin import config_from_metadata, read_awqbin
from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.quantize import quantize_model
from awqcore.quantize.rtn import unpack_int4


def literal_unpack(packed: np.ndarray) -> np.ndarray:
    """From the definition, one nibble at a time with Python ints: bits 4i..4i+3 of
    packed[r, j] hold column j*8 + [0, 2, 4, 6, 1, 3, 5, 7][i]. int32 [rows, n] -> [rows, 8n]"""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    rows, n = packed.shape
    out = np.full((rows, 8 * n), -1, dtype=np.int64)
    for r in range(rows):
        for j in range(n):
            word = int(packed[r, j]) & 0xFFFFFFFF  # the int32's two's-complement bits
            for i in range(8):
                out[r, j * 8 + order[i]] = (word >> (4 * i)) & 0xF
    return out


def test_hand_packed_word():
    # Columns 0..7 holding their own index: nibble i holds column order[i], so the word
    # reads, from the top nibble down, 7 5 3 1 6 4 2 0.
    assert pack_gemm(np.arange(8, dtype=np.uint8)[None]).view(np.uint32)[0, 0] == 0x75316420
    # A 15 in the nibble holding the sign bit (column 7) makes the int32 negative.
    assert pack_gemm(np.array([[0, 0, 0, 0, 0, 0, 0, 15]], np.uint8))[0, 0] == -(1 << 28)


def test_gemm_layout_matches_the_definition():
    rng = np.random.default_rng(0)
    out_f, in_f, g = 24, 64, 32
    qweight = rng.integers(0, 256, (out_f, in_f // 2), dtype=np.uint8)
    zeros = rng.integers(0, 16, (out_f, in_f // g), dtype=np.uint8)
    scales = rng.random((out_f, in_f // g)).astype(np.float16)
    gq, gz, gs = to_gemm(qweight, scales, zeros)
    assert gq.dtype == np.int32 and gq.shape == (in_f, out_f // 8)
    assert gz.dtype == np.int32 and gz.shape == (in_f // g, out_f // 8)
    assert gs.dtype == np.float16 and gs.shape == (in_f // g, out_f)
    # .awqbin: q[r, c] in byte c/2 of row r, low nibble when c is even (docs/format.md).
    q = np.stack([(qweight[:, c // 2] >> (4 * (c % 2))) & 0xF for c in range(in_f)], axis=1)
    np.testing.assert_array_equal(literal_unpack(gq), q.T)  # AutoAWQ rows are input columns
    np.testing.assert_array_equal(literal_unpack(gz), zeros.T)
    np.testing.assert_array_equal(gs, scales.T)


# The family's model_type in Hugging Face configs, spelled out (not read from FAMILIES).
MODEL_TYPES = {"llama": "llama", "llama3": "llama", "mistral": "mistral", "qwen2": "qwen2",
               "qwen3": "qwen3", "gemma3": "gemma3_text"}


@pytest.mark.parametrize("family", list(MODEL_TYPES))
def test_export_then_convert_is_bit_exact(tmp_path, family):
    source = SyntheticSource(tiny_config(family), seed=6)
    c = source.config
    original = tmp_path / "model.awqbin"
    quantize_model(source, original, method="rtn", group_size=32, progress=False)
    folder = export_hf(original, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32,
                                          "zero_point": True, "version": "gemm"}
    assert cfg["model_type"] == MODEL_TYPES[family]
    back = tmp_path / "back.awqbin"
    convert_hf(folder, back)
    a, b = read_awqbin(original), read_awqbin(back)
    assert list(a.tensors) == list(b.tensors)
    int4 = [n for n in a.tensors if n.endswith((".qweight", ".scales", ".zeros"))]
    assert len(int4) == 3 * 7 * c.num_layers
    for name in int4:
        assert a.tensor(name).dtype == b.tensor(name).dtype
        np.testing.assert_array_equal(a.tensor(name), b.tensor(name), err_msg=name)
        assert a.tensors[name].crc == b.tensors[name].crc
    # Unquantized tensors went through f16, as AutoAWQ stores them; Gemma's norms as
    # the checkpoint's w = stored - 1 (the file's multiplier is 1 + w).
    offset = np.float32(1.0 if family == "gemma3" else 0.0)
    norms = [n for n in a.tensors if n.endswith("norm.weight")]
    assert len(norms) == len(c.layer_norm_names()) * c.num_layers + 1
    for name in set(a.tensors) - set(int4):
        shift = offset if name in norms else np.float32(0)
        np.testing.assert_array_equal((np.asarray(a.tensor(name)) - shift).astype(np.float16),
                                      np.asarray(b.tensor(name)) - shift, err_msg=name)
    # The whole decoder-layer description survives (sliding windows, layer types, rope
    # scaling, q/k norm, scales, soft-cap), and so does the tokenizer.
    assert config_from_metadata(b.metadata, "back") == config_from_metadata(a.metadata, "a")
    for key in ("quant.group_size", "tokenizer.json", "tokenizer.eos_token_ids",
                "tokenizer.bos_token_id", "tokenizer.chat_template"):
        assert a.metadata[key] == b.metadata[key], key
    # The packed codes really are the model's: the first linear unpacks to the same q.
    name = "model.layers.0.self_attn.q_proj.qweight"
    assert np.array_equal(unpack_int4(b.tensor(name)), unpack_int4(a.tensor(name)))


@pytest.mark.parametrize("family", list(MODEL_TYPES))
def test_export_config_reads_in_transformers(tmp_path, family):
    """transformers (an independent reader) sees the family's config class and the
    description's fields in the exported config.json."""
    transformers = pytest.importorskip("transformers")
    source = SyntheticSource(tiny_config(family), seed=6)
    c = source.config
    quantize_model(source, tmp_path / "m.awqbin", method="rtn", group_size=32, progress=False)
    folder = export_hf(tmp_path / "m.awqbin", tmp_path / "hf")
    hf = transformers.AutoConfig.from_pretrained(folder)
    assert hf.model_type == MODEL_TYPES[family]
    assert (hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim,
            hf.hidden_size, hf.intermediate_size, hf.tie_word_embeddings) == \
        (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size,
         c.intermediate_size, c.tie_word_embeddings)
    if family in ("mistral", "gemma3"):
        assert hf.sliding_window == c.sliding_window
    if family == "gemma3":
        assert hf.layer_types == c.layer_types
        assert hf.query_pre_attn_scalar ** -0.5 == pytest.approx(c.attention_scale, rel=1e-12)
        assert hf.final_logit_softcapping == c.final_logit_softcap
    # rope: transformers 5 keeps it as rope_parameters (per layer type for Gemma 3),
    # transformers 4 as rope_theta + rope_scaling.
    params = getattr(hf, "rope_parameters", None)
    if params is not None:
        full = params.get("full_attention", params)
        assert full["rope_theta"] == c.rope_theta
        if c.rope_scaling:
            assert full["rope_type"] == c.rope_scaling["rope_type"]
            assert full["factor"] == c.rope_scaling["factor"]
        if family == "gemma3":
            assert params["sliding_attention"]["rope_theta"] == c.rope_local_theta
    else:
        assert hf.rope_theta == c.rope_theta
        assert (hf.rope_scaling or {}).get("factor") == (c.rope_scaling or {}).get("factor")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_writes_int8_tables_dequantized_to_f16(tmp_path, arch):
    """AutoAWQ has no int8 tables: the export stores W = q * s rounded to f16 under
    the ".weight" name, and converting back gives f16 tables within that rounding."""
    from safetensors.numpy import load_file

    from awqcore.quantize.int8_table import dequantize_int8_table

    source = SyntheticSource(tiny_config(arch), seed=6)
    original = tmp_path / "model.awqbin"
    quantize_model(source, original, method="rtn", group_size=32, progress=False,
                   embeddings="int8")
    folder = export_hf(original, tmp_path / "hf")
    exported = load_file(str(folder / "model.safetensors"))
    assert not any("_q8" in name for name in exported)
    a = read_awqbin(original)
    prefixes = ["model.embed_tokens"] + ([] if source.config.tie_word_embeddings else ["lm_head"])
    for prefix in prefixes:
        exact = dequantize_int8_table(a.tensor(prefix + ".weight_q8"),
                                      a.tensor(prefix + ".weight_q8_scales"))
        table = exported[prefix + ".weight"]
        assert table.dtype == np.float16
        np.testing.assert_array_equal(table, exact.astype(np.float16))
        # Rounding to f16 moves each weight by at most 2^-11 of itself (half an
        # f16 step); these small values include subnormal ones, hence the floor.
        assert (np.abs(table.astype(np.float32) - exact) <= np.abs(exact) * 2.0 ** -11 + 2.0 ** -25).all()
    assert ("lm_head.weight" in exported) is not source.config.tie_word_embeddings
    convert_hf(folder, tmp_path / "back.awqbin")
    back = read_awqbin(tmp_path / "back.awqbin")
    for prefix in prefixes:
        np.testing.assert_array_equal(back.tensor(prefix + ".weight"), exported[prefix + ".weight"])


def test_convert_rejects_other_quantizations(tmp_path):
    source = SyntheticSource(tiny_config("llama"), seed=1)
    quantize_model(source, tmp_path / "m.awqbin", method="rtn", group_size=32, progress=False)
    folder = export_hf(tmp_path / "m.awqbin", tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"]["version"] = "gemv"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"quantization_config.version is 'gemv'; only "
                                         r"version='gemm'"):
        convert_hf(folder, tmp_path / "x.awqbin")


def test_export_refuses_what_the_family_config_cannot_express(tmp_path):
    # transformers' Gemma 3 always multiplies the embedding by sqrt(hidden_size).
    source = SyntheticSource(tiny_config("gemma3", embedding_scale=2.0), seed=1)
    quantize_model(source, tmp_path / "m.awqbin", method="rtn", group_size=32, progress=False)
    with pytest.raises(ValueError, match=r"Gemma3ForCausalLM config.json cannot express this "
                                         r"model: embedding_scale 2.0 -> 8.0"):
        export_hf(tmp_path / "m.awqbin", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
