"""Every family from a Hugging Face folder and a GGUF file: the config each importer
reads, the tensors it returns (Gemma's norms as 1 + w), the errors for what is not
supported, and the `.awqbin` metadata round trip of the decoder-layer description.

The checkpoints are tiny_models.SharpSource (randomized norms and biases) written
by the test itself; the C++ forward pass on them is in test_families_runtime.py.
"""
from __future__ import annotations

import dataclasses
import json

import gguf
import numpy as np
import pytest
import torch

from awqcore.awqbin import config_from_metadata, model_metadata, read_awqbin
from awqcore.awqbin_source import AwqbinSource
from awqcore.errors import FormatError
from awqcore.importers import load_source
from awqcore.importers.gguf_model import GGUFSource
from awqcore.quantize.pipeline import quantize_model
from tiny_models import (FAMILY_NAMES, SharpSource, family_config, gguf_model_writer,
                         hf_config_json, llama_cpp_permute, write_hf_checkpoint)


def named(config, name):
    return dataclasses.replace(config, name=name)


@pytest.mark.parametrize("family,dtype", [(f, None) for f in FAMILY_NAMES] +
                         [("gemma3", torch.bfloat16), ("qwen3", torch.float16)])
def test_hf_folder_of_each_family(family, dtype, tmp_path):
    source = SharpSource(family, seed=3)
    folder = tmp_path / family
    write_hf_checkpoint(folder, source, dtype)
    imported = load_source(str(folder))
    assert imported.config == named(source.config, folder.name)
    stored = source.hf_tensors()
    assert sorted(imported.tensor_names()) == sorted(stored)
    for name, value in stored.items():
        if dtype is not None:  # what the checkpoint holds, widened as transformers does
            value = torch.from_numpy(value).to(dtype).float().numpy()
        if family == "gemma3" and name.endswith("norm.weight"):
            value = value + np.float32(1.0)  # the multiplier, computed in f32
        np.testing.assert_array_equal(imported.get(name), value, err_msg=name)


def test_chat_template_jinja_wins_over_tokenizer_config(tmp_path):
    source = SharpSource("gemma3")
    write_hf_checkpoint(tmp_path, source)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert load_source(str(tmp_path)).tokenizer.chat_template == "{{ messages[0]['content'] }}"


def _edit(cfg: dict, **changes) -> dict:
    out = {**cfg, **changes}
    return {k: v for k, v in out.items() if v is not None}


# family, config.json changes, the message the importer must give.
REFUSED_CONFIGS = [
    ("gemma3", dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"]),
     r"model_type 'gemma3' is a Gemma 3 vision-language checkpoint"),
    ("gemma3", dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"]),
     r"model_type 'gemma2' is Gemma 2"),
    ("llama", dict(model_type="phi3"), r"unknown model_type 'phi3' \(supported: llama, mistral"),
    ("llama", dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
     r"rope scaling type 'dynamic' is not supported"),
    ("llama", dict(rope_scaling={"type": "longrope", "factor": 2.0}),
     r"rope scaling type 'longrope' is not supported"),
    ("llama3", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
     r"rope scaling 'llama3' needs 'low_freq_factor'"),
    ("gemma3", dict(attn_logit_softcapping=50.0), r"attn_logit_softcapping=50.0 is not supported"),
    ("qwen3", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
     r"use_sliding_window \(sliding attention from layer 1\) is not supported for qwen3"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=0),
     r"use_sliding_window \(sliding attention from layer 0\) is not supported for qwen2"),
    ("llama", dict(hidden_act="gelu"), r"hidden_act='gelu' is not supported for llama"),
    ("gemma3", dict(hidden_activation="gelu"), r"hidden_activation='gelu' is not supported"),
    ("qwen3", dict(attention_bias=True), r"qwen3 attention_bias \(which includes o_proj\)"),
    ("gemma3", dict(layer_types=["full_attention"]), r"layer_types has 1 entries for 2 layers"),
]


@pytest.mark.parametrize("family,changes,message", REFUSED_CONFIGS)
def test_hf_unsupported_configs_are_named(family, changes, message, tmp_path):
    source = SharpSource(family)
    write_hf_checkpoint(tmp_path, source)
    (tmp_path / "config.json").write_text(json.dumps(_edit(hf_config_json(source.config),
                                                           **changes)))
    with pytest.raises(ValueError, match=message):
        load_source(str(tmp_path))


def test_hf_qwen_sliding_flag_without_sliding_layers_is_accepted(tmp_path):
    """use_sliding_window with max_window_layers >= the layer count slides no layer, as
    transformers' Qwen3 config derives layer_types."""
    source = SharpSource("qwen3")
    write_hf_checkpoint(tmp_path, source)
    (tmp_path / "config.json").write_text(json.dumps(_edit(
        hf_config_json(source.config), use_sliding_window=True, sliding_window=8,
        max_window_layers=2)))
    assert load_source(str(tmp_path)).config == named(source.config, tmp_path.name)


def test_hf_config_defaults_are_the_family_defaults(tmp_path):
    """Keys config.json may omit take transformers' default for the family: Gemma 3's
    layer pattern (every 6th global), rope bases, query_pre_attn_scalar 256, tied
    embedding; Mistral's window 4096 (and an explicit null: none)."""
    source = SharpSource("gemma3")
    write_hf_checkpoint(tmp_path, source)
    cfg = hf_config_json(source.config)
    for key in ("layer_types", "rope_local_base_freq", "rope_theta", "query_pre_attn_scalar",
                "tie_word_embeddings", "rope_scaling", "final_logit_softcapping"):
        del cfg[key]
    cfg["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = load_source(str(tmp_path)).config
    assert (c.layer_types, c.rope_local_theta, c.rope_theta, c.attention_scale,
            c.tie_word_embeddings, c.rope_scaling, c.final_logit_softcap) == \
        (["sliding_attention"] * 2, 10000.0, 1e6, 1 / 16, True, None, 0.0)

    mistral = tmp_path / "mistral"
    write_hf_checkpoint(mistral, SharpSource("mistral"))
    cfg = hf_config_json(SharpSource("mistral").config)
    del cfg["sliding_window"]
    (mistral / "config.json").write_text(json.dumps(cfg))
    assert load_source(str(mistral)).config.sliding_window == 4096
    (mistral / "config.json").write_text(json.dumps({**cfg, "sliding_window": None}))
    assert load_source(str(mistral)).config.sliding_window == 0


def test_hf_missing_family_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    write_hf_checkpoint(tmp_path, SharpSource("gemma3"))
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.post_feedforward_layernorm.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensor "
                       r"'model\.layers\.1\.post_feedforward_layernorm\.weight'"):
        load_source(str(tmp_path))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_awqbin_keeps_the_description(family, tmp_path):
    """Quantized and read back (pure-Python reader), the config is the source's, and
    the file holds the family's norms as f32 multipliers."""
    source = SharpSource(family, seed=4)
    path = tmp_path / "m.awqbin"
    quantize_model(source, path, "rtn", 32, progress=False)
    back = AwqbinSource(path)
    assert back.config == source.config
    f = read_awqbin(path)
    for name in source.tensor_names():
        if name.endswith("norm.weight") or name.endswith(".bias"):
            assert f.tensors[name].dtype == "f32", name
            np.testing.assert_array_equal(f.tensor(name), source.get(name), err_msg=name)
    # Llama and Qwen2 files carry none of the description's keys.
    extra = set(f.metadata) - set(model_metadata(family_config("llama")))
    description = {k for k in extra if k.startswith("model.")}
    assert (description == set()) == (family in ("llama", "qwen2"))


def test_awqbin_description_errors_are_format_errors():
    meta = model_metadata(family_config("gemma3"))
    with pytest.raises(FormatError, match=r"model.layer_types \[0, 2\] must be a list of 0 and 1"):
        config_from_metadata({**meta, "model.layer_types": [0, 2]}, "x.awqbin")
    with pytest.raises(FormatError, match="sliding layers but sliding_window is 0"):
        config_from_metadata({**meta, "model.sliding_window": 0}, "x.awqbin")
    with pytest.raises(FormatError, match="rope_scaling type 'dynamic'"):
        config_from_metadata({**meta, "model.rope_scaling.type": "dynamic"}, "x.awqbin")


# --- GGUF --------------------------------------------------------------------

_GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
# llama.cpp's names for Gemma 3's sandwich norms (constants.py, MODEL_TENSOR.ATTN_POST_NORM...).
_GGUF_GEMMA3_LAYER = {**_GGUF_LAYER, "post_attention_layernorm": "post_attention_norm",
                      "pre_feedforward_layernorm": "ffn_norm",
                      "post_feedforward_layernorm": "post_ffw_norm"}
_GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
                "lm_head": "output"}


def gguf_name(hf: str, arch: str) -> str:
    parts = hf.split(".")
    if parts[1] == "layers":
        table = _GGUF_GEMMA3_LAYER if arch == "gemma3" else _GGUF_LAYER
        return f"blk.{parts[2]}.{table['.'.join(parts[3:-1])]}.{parts[-1]}"
    return f"{_GGUF_GLOBAL['.'.join(parts[:-1])]}.{parts[-1]}"


def llama3_divisors(c) -> np.ndarray:
    """rope_freqs as llama.cpp's converter computes it: inv_freq / llama3-scaled inv_freq."""
    s = c.rope_scaling
    inv = c.rope_theta ** (-np.arange(0, c.head_dim, 2) / c.head_dim)
    wavelength = 2 * np.pi / inv
    out = []
    for w in wavelength:
        if w < s["original_max_position_embeddings"] / s["high_freq_factor"]:
            out.append(1.0)
        elif w > s["original_max_position_embeddings"] / s["low_freq_factor"]:
            out.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / w - s["low_freq_factor"]) / \
                (s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, np.float32)


def write_family_gguf(path, source: SharpSource, gguf_arch: str, rope_freqs=None) -> None:
    """`source` as llama.cpp's converter writes it: q/k rows permuted for llama only,
    Gemma's norms as 1 + w (what the source holds), Llama 3's scaling as rope_freqs
    (or the given `rope_freqs`)."""
    c = source.config
    w = gguf_model_writer(path, gguf_arch, c)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    s = c.rope_scaling
    if s is not None and s["rope_type"] == "llama3":
        w.add_rope_scaling_orig_ctx_len(s["original_max_position_embeddings"])
        w.add_tensor("rope_freqs.weight",
                     llama3_divisors(c) if rope_freqs is None else rope_freqs)
    elif s is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType(s["rope_type"]))
        w.add_rope_scaling_factor(s["factor"])
        if s["rope_type"] == "yarn":
            w.add_rope_scaling_orig_ctx_len(s["original_max_position_embeddings"])
    if gguf_arch == "gemma3":
        w.add_sliding_window(c.sliding_window)
        w.add_sliding_window_pattern(len(c.layer_types))  # every 2nd layer global
        w.add_rope_freq_base_swa(c.rope_local_theta)
        w.add_final_logit_softcapping(c.final_logit_softcap)
    for name in source.tensor_names():
        t = source.get(name)
        if gguf_arch == "llama" and "q_proj" in name:
            t = llama_cpp_permute(t, c.num_heads)
        elif gguf_arch == "llama" and "k_proj" in name:
            t = llama_cpp_permute(t, c.num_kv_heads)
        w.add_tensor(gguf_name(name, gguf_arch), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family,gguf_arch", [("llama3", "llama"), ("qwen3", "qwen3"),
                                              ("qwen2", "qwen2"), ("gemma3", "gemma3")])
def test_gguf_of_each_family(family, gguf_arch, tmp_path):
    source = SharpSource(family, seed=5)
    path = tmp_path / f"{family}.gguf"
    write_family_gguf(path, source, gguf_arch)
    imported = GGUFSource(path)
    expected = named(source.config, imported.config.name)
    if family == "gemma3":  # llama.cpp's Gemma 3 scale: 1/sqrt(head_dim) below 62 layers
        expected = dataclasses.replace(expected, attention_scale=source.config.head_dim ** -0.5)
    assert imported.config == expected
    assert sorted(imported.tensor_names()) == sorted(source.tensor_names())
    for name in source.tensor_names():  # Gemma's norms: 1 + w as stored, not 2 + w
        np.testing.assert_array_equal(imported.get(name), source.get(name), err_msg=name)


def test_gguf_rope_freqs_that_are_not_llama3_are_refused(tmp_path):
    source = SharpSource("llama3")
    divisors = llama3_divisors(source.config)
    divisors[1] *= 1.5
    path = tmp_path / "odd.gguf"
    write_family_gguf(path, source, "llama", rope_freqs=divisors)
    with pytest.raises(ValueError, match="rope_freqs does not match Llama 3 rope scaling"):
        GGUFSource(path)
