"""AutoAWQ export (`--export-hf`) and `convert` of Mixtral and Qwen3-MoE: AutoAWQ's
module names for every expert, the router in f16, and a bit-exact round trip of the
int4 tensors (docs/format.md, "Mixture of experts")."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from awqcore.awqbin import config_from_metadata, read_awqbin
from awqcore.importers.autoawq_format import convert_hf, export_hf, to_gemm
from awqcore.quantize import quantize_model
from tiny_models import MOE_FAMILY_NAMES, SharpSource

# AutoAWQ's names for expert N's projections and the router, spelled out per family.
EXPERT_NAMES = {
    "mixtral": ("block_sparse_moe.experts.{e}.w1", "block_sparse_moe.experts.{e}.w3",
                "block_sparse_moe.experts.{e}.w2", "block_sparse_moe.gate.weight"),
    "qwen3_moe": ("mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj",
                  "mlp.experts.{e}.down_proj", "mlp.gate.weight"),
}


@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_moe_export_then_convert_is_bit_exact(family, tmp_path):
    source = SharpSource(family, seed=6)
    c = source.config
    original = tmp_path / "model.awqbin"
    quantize_model(source, original, "rtn", 32, progress=False)
    folder = export_hf(original, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == family
    a = read_awqbin(original)
    gate, up, down, router = EXPERT_NAMES[family]
    with safe_open(folder / "model.safetensors", framework="numpy") as f:
        names = set(f.keys())
        for layer in range(c.num_layers):
            p = f"model.layers.{layer}."
            if not c.is_moe_layer(layer):
                assert p + "mlp.gate_proj.qweight" in names
                continue
            assert f.get_tensor(p + router).dtype == np.float16
            for proj, name in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
                stacked = [a.tensor(f"{p}mlp.experts.{proj}.{s}") for s in ("qweight", "scales",
                                                                               "zeros")]
                for e in range(c.num_experts):
                    expected = to_gemm(*(t[e] for t in stacked))
                    for part, want in zip(("qweight", "qzeros", "scales"), expected):
                        got = f.get_tensor(f"{p}{name.format(e=e)}.{part}")
                        np.testing.assert_array_equal(got, want, err_msg=f"{p}{name} {e} {part}")
    # No stacked tensor is left: AutoAWQ has one module per expert.
    assert not any(f".experts.{p}." in n for n in names for p in ("gate_proj", "up_proj",
                                                                   "down_proj"))
    back = tmp_path / "back.awqbin"
    convert_hf(folder, back)
    b = read_awqbin(back)
    assert list(a.tensors) == list(b.tensors)
    int4 = [n for n in a.tensors if n.endswith((".qweight", ".scales", ".zeros"))]
    for name in int4:
        np.testing.assert_array_equal(a.tensor(name), b.tensor(name), err_msg=name)
        assert a.tensors[name].crc == b.tensors[name].crc
    for name in set(a.tensors) - set(int4):  # through f16, as AutoAWQ stores them
        np.testing.assert_array_equal(np.asarray(a.tensor(name)).astype(np.float16),
                                      np.asarray(b.tensor(name)), err_msg=name)
    assert config_from_metadata(b.metadata, "back") == config_from_metadata(a.metadata, "a")


@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_moe_export_config_reads_in_transformers(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    source = SharpSource(family, seed=6)
    c = source.config
    quantize_model(source, tmp_path / "m.awqbin", "rtn", 32, progress=False)
    hf = transformers.AutoConfig.from_pretrained(export_hf(tmp_path / "m.awqbin", tmp_path / "hf"))
    assert hf.model_type == family
    assert hf.num_experts_per_tok == c.num_experts_per_tok
    if family == "mixtral":
        assert (hf.num_local_experts, hf.intermediate_size) == (c.num_experts,
                                                                c.moe_intermediate_size)
    else:
        assert (hf.num_experts, hf.moe_intermediate_size, hf.norm_topk_prob) == \
            (c.num_experts, c.moe_intermediate_size, c.norm_topk_prob)
        model = transformers.Qwen3MoeForCausalLM(hf)  # its layers: dense where ours are
        assert [int(hasattr(layer.mlp, "experts")) for layer in model.model.layers] == \
            c.moe_layers
