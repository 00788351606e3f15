"""Importing Mixtral and Qwen3-MoE: Hugging Face folders (experts one by one or fused),
GGUF files (stacked experts), the .awqbin metadata and expert tensors, and the errors
that name an inconsistent router, expert count or missing expert."""
from __future__ import annotations

import dataclasses
import json

import gguf
import numpy as np
import pytest
import torch

from awqcore.importers.gguf_model import GGUFSource
from awqcore.importers.hf_model import HFSource
from tiny_models import (MOE_FAMILY_NAMES, SharpSource, gguf_model_writer, hf_config_json,
                         llama_cpp_permute, write_hf_checkpoint)

transformers = pytest.importorskip("transformers")


def test_fused_experts_import_as_the_per_expert_ones(tmp_path):
    """transformers 5's fused gate_up_proj / down_proj give the same source tensors."""
    for family in MOE_FAMILY_NAMES:
        source = SharpSource(family, seed=3)
        write_hf_checkpoint(tmp_path / f"{family}-split", source)
        write_hf_checkpoint(tmp_path / f"{family}-fused", source, fused_experts=True)
        split, fused = HFSource(tmp_path / f"{family}-split"), HFSource(tmp_path / f"{family}-fused")
        assert sorted(split.tensor_names()) == sorted(fused.tensor_names()) == \
            sorted(source.tensor_names())
        for name in source.tensor_names():
            np.testing.assert_array_equal(fused.get(name), source.get(name), err_msg=name)
            np.testing.assert_array_equal(split.get(name), source.get(name), err_msg=name)


def _write(tmp_path, family: str, edit=None, drop: str | None = None, tensors=None) -> str:
    source = SharpSource(family, seed=4)
    folder = tmp_path / "bad"
    write_hf_checkpoint(folder, source)
    cfg = hf_config_json(source.config)
    if edit:
        cfg.update(edit)
    (folder / "config.json").write_text(json.dumps(cfg))
    if drop or tensors:
        from safetensors.torch import load_file, save_file
        weights = load_file(folder / "model.safetensors")
        if drop:
            del weights[drop]
        weights.update(tensors or {})
        save_file(weights, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("family,edit,drop,message", [
    ("mixtral", {"num_experts_per_tok": 5}, None, "num_experts_per_tok=5 must be in 1..num_experts=4"),
    ("qwen3_moe", {"num_experts_per_tok": 9}, None, "num_experts_per_tok=9 must be in 1..num_experts=8"),
    ("mixtral", {"num_local_experts": 3}, None,
     "model.layers.0.mlp.gate.weight' has shape \\[4, 64\\], expected \\[3, 64\\]"),
    ("qwen3_moe", {"num_experts": 9}, None, "missing tensor 'model.layers.1.mlp.experts.8.gate_proj"),
    ("mixtral", None, "model.layers.1.block_sparse_moe.experts.2.w3.weight",
     "missing tensor 'model.layers.1.mlp.experts.2.up_proj.weight'"),
    ("qwen3_moe", None, "model.layers.2.mlp.experts.7.down_proj.weight",
     "missing tensor 'model.layers.2.mlp.experts.7.down_proj.weight'"),
    ("qwen3_moe", None, "model.layers.1.mlp.gate.weight", "missing tensor 'model.layers.1.mlp.gate.weight'"),
    ("qwen3_moe", {"mlp_only_layers": [0, 1]}, None, "unexpected tensor 'model.layers.1.mlp"),
    ("qwen3_moe", {"shared_expert_intermediate_size": 64}, None, "shared experts are not supported"),
])
def test_inconsistent_moe_checkpoints_are_named(family, edit, drop, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        HFSource(_write(tmp_path, family, edit, drop))


def test_mixtral_router_with_wrong_row_count_is_named(tmp_path):
    folder = _write(tmp_path, "mixtral", tensors={
        "model.layers.1.block_sparse_moe.gate.weight": torch.zeros(5, 64)})
    with pytest.raises(ValueError, match="mlp.gate.weight' has shape \\[5, 64\\], expected \\[4, 64\\]"):
        HFSource(folder)


def test_qwen3_moe_sparse_step_and_dense_layers(tmp_path):
    """decoder_sparse_step and mlp_only_layers resolve as transformers' layers do."""
    from awqcore.importers.hf_model import _expert_fields

    cfg = {"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
           "moe_intermediate_size": 32, "decoder_sparse_step": 2, "mlp_only_layers": [3]}
    fields = _expert_fields(cfg, cfg.get, 6, "x")
    assert fields["moe_layers"] == [0, 1, 0, 0, 0, 1]
    config = transformers.Qwen3MoeConfig(num_hidden_layers=6, decoder_sparse_step=2,
                                         mlp_only_layers=[3], num_experts=8, hidden_size=32,
                                         intermediate_size=64, moe_intermediate_size=32,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                         vocab_size=64)
    model = transformers.Qwen3MoeForCausalLM(config)
    expected = [int(hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts"))
                for layer in model.model.layers]
    assert fields["moe_layers"] == expected


# --- GGUF: llama.cpp's stacked experts ------------------------------------------

_GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
               "mlp.gate": "ffn_gate_inp"}
_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_source(family: str, seed: int = 5) -> SharpSource:
    """The family's SharpSource without a sliding window (llama.cpp's llama architecture,
    Mixtral's, has none)."""
    source = SharpSource(family, seed=seed)
    source.config = dataclasses.replace(source.config, sliding_window=0)
    return source


def write_moe_gguf(path, source: SharpSource, experts_per_tok: int | None = None,
                   drop: str | None = None, q8_experts: bool = False) -> None:
    """`source` as llama.cpp's converter writes it: Mixtral as the llama architecture with
    an expert count (q/k rows permuted), Qwen3-MoE as qwen3moe; experts stacked per
    layer into ffn_{gate,up,down}_exps [E, rows, cols] (f32, or Q8_0 with q8_experts).
    `drop`: a GGUF tensor left out."""
    c = source.config
    arch = "llama" if c.architecture == "mixtral" else "qwen3moe"
    w = gguf_model_writer(path, arch, c)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_expert_count(c.num_experts)
    w.add_expert_used_count(experts_per_tok or c.num_experts_per_tok)
    if arch == "qwen3moe":
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_expert_weights_norm(c.norm_topk_prob)
    tensors = {}
    for name in source.tensor_names():
        t = source.get(name)
        parts = name.split(".")
        if parts[1] != "layers":
            tensors[_GGUF_GLOBAL[name]] = t
            continue
        layer, rest = parts[2], ".".join(parts[3:-1])
        if rest.startswith("mlp.experts."):
            continue  # stacked below
        if arch == "llama" and rest == "self_attn.q_proj":
            t = llama_cpp_permute(t, c.num_heads)
        elif arch == "llama" and rest == "self_attn.k_proj":
            t = llama_cpp_permute(t, c.num_kv_heads)
        tensors[f"blk.{layer}.{_GGUF_LAYER[rest]}.{parts[-1]}"] = t
    for layer in range(c.num_layers):
        if c.is_moe_layer(layer):
            for proj, gname in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"),
                                ("down_proj", "ffn_down_exps")):
                tensors[f"blk.{layer}.{gname}.weight"] = np.stack([
                    source.get(f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight")
                    for e in range(c.num_experts)])
    for name, t in tensors.items():
        if name == drop:
            continue
        if q8_experts and "_exps" in name:
            q8 = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(t, q8)
            w.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=q8)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_gguf_of_each_moe_family(family, tmp_path):
    source = gguf_source(family)
    path = tmp_path / f"{family}.gguf"
    write_moe_gguf(path, source)
    imported = GGUFSource(path)
    assert imported.config == dataclasses.replace(source.config, name=imported.config.name)
    assert sorted(imported.tensor_names()) == sorted(source.tensor_names())
    for name in source.tensor_names():
        np.testing.assert_array_equal(imported.get(name), source.get(name), err_msg=name)


def test_gguf_block_quantized_experts_dequantize_one_expert(tmp_path):
    """Q8_0 stacked experts: each expert's slice equals that expert's rows of the whole
    stacked tensor dequantized at once."""
    source = gguf_source("qwen3_moe")
    c = source.config
    path = tmp_path / "q8.gguf"
    write_moe_gguf(path, source, q8_experts=True)
    imported = GGUFSource(path)
    for layer in (1, 2):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            stacked = np.stack([source.get(f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight")
                                for e in range(c.num_experts)])
            whole = gguf.quants.dequantize(
                gguf.quants.quantize(stacked, gguf.GGMLQuantizationType.Q8_0),
                gguf.GGMLQuantizationType.Q8_0)
            for e in range(c.num_experts):
                name = f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"
                np.testing.assert_array_equal(imported.get(name), whole[e], err_msg=name)


@pytest.mark.parametrize("family,edit,message", [
    ("mixtral", dict(experts_per_tok=5), "num_experts_per_tok=5 must be in 1..num_experts=4"),
    ("qwen3_moe", dict(drop="blk.2.ffn_down_exps.weight"),
     "missing tensor 'model.layers.2.mlp.experts.0.down_proj.weight'"),
    ("mixtral", dict(drop="blk.1.ffn_gate_inp.weight"),
     "missing tensor 'model.layers.1.mlp.gate.weight'"),
])
def test_gguf_inconsistent_experts_are_named(family, edit, message, tmp_path):
    path = tmp_path / "bad.gguf"
    write_moe_gguf(path, gguf_source(family), **edit)
    with pytest.raises(ValueError, match=message):
        GGUFSource(path)


def test_gguf_expert_count_that_disagrees_with_the_tensors_is_named(tmp_path):
    source = gguf_source("mixtral")
    source.config = dataclasses.replace(source.config, num_experts=3)  # what the key says
    path = tmp_path / "bad.gguf"
    write_moe_gguf(path, source)  # the router keeps its 4 rows, the stack 3 experts
    with pytest.raises(ValueError, match="mlp.gate.weight' has shape \\[4, 64\\], expected \\[3, 64\\]"):
        GGUFSource(path)


def test_synthetic_moe_shapes():
    """The benchmark shapes: Mixtral-like (8 experts, top-2) and Qwen3-MoE-like (64,
    top-8, width 768), their all-experts twins, and MoE keys in a free spec."""
    from awqcore.importers.synthetic import source_from_spec

    mixtral = source_from_spec("synthetic:mixtral-small")
    c = mixtral.config
    assert (c.architecture, c.num_experts, c.num_experts_per_tok, c.hidden_size,
            c.moe_intermediate_size, c.num_layers, c.vocab_size) == \
        ("mixtral", 8, 2, 1024, 3584, 16, 32000)
    assert mixtral.get("model.layers.15.mlp.experts.7.down_proj.weight").shape == (1024, 3584)
    assert mixtral.get("model.layers.0.mlp.gate.weight").shape == (8, 1024)
    qwen = source_from_spec("synthetic:qwen3-moe-small").config
    assert (qwen.architecture, qwen.num_experts, qwen.num_experts_per_tok,
            qwen.moe_intermediate_size, qwen.qk_norm) == ("qwen3_moe", 64, 8, 768, True)
    for name in ("mixtral-small", "qwen3-moe-small"):
        base = source_from_spec(f"synthetic:{name}").config
        dense = source_from_spec(f"synthetic:{name}-dense").config
        assert dense.num_experts_per_tok == dense.num_experts == base.num_experts
        assert dataclasses.replace(dense, name=base.name, num_experts_per_tok=
                                   base.num_experts_per_tok) == base
    free = source_from_spec("synthetic:arch=qwen3_moe,experts=16,top_k=4,expert_ffn=64").config
    assert (free.num_experts, free.num_experts_per_tok, free.moe_intermediate_size) == (16, 4, 64)
