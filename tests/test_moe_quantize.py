"""Quantizing Mixtral and Qwen3-MoE: the .awqbin layout of stacked experts (RTN,
checked against quantize_int4 of each source expert, independently of the
pipeline), AWQ's MoE scale folding (function unchanged, router included), and
the experts that calibration routes no token to."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from awqcore.awqbin import FormatError, read_awqbin
from awqcore.awqbin_source import AwqbinSource
from awqcore.importers.synthetic import tiny_config
from awqcore.quantize import quantize_model
from awqcore.quantize.awq_moe import MoeAwqQuantizer
from awqcore.quantize.pipeline import layer_float_names
from awqcore.quantize.rtn import quantize_int4
from awqcore.reference import ReferenceModel
from awqcore.source import layer_prefix
from test_awq import OutlierSource, calib_text
from tiny_models import MOE_FAMILY_NAMES, SharpSource

G = 32


@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_rtn_file_stacks_each_expert_as_its_own_linear(family, tmp_path):
    """Stacked expert e is byte for byte quantize_int4 of source expert e; the router is
    f32 as the source has it; dense layers keep mlp.*; the metadata round-trips."""
    source = SharpSource(family, seed=2)
    c = source.config
    path = tmp_path / "m.awqbin"
    summary = quantize_model(source, path, "rtn", G, progress=False)
    f = read_awqbin(path)
    assert AwqbinSource(path).config == c
    meta = f.metadata
    assert (meta["model.num_experts"], meta["model.num_experts_per_tok"],
            meta["model.moe_intermediate_size"], meta["model.norm_topk_prob"]) == \
        (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size, int(c.norm_topk_prob))
    assert meta.get("model.moe_layers") == c.moe_layers  # absent (all MoE) for mixtral
    d, ff, E = c.hidden_size, c.moe_intermediate_size, c.num_experts
    for layer in range(c.num_layers):
        p = layer_prefix(layer)
        if not c.is_moe_layer(layer):
            assert p + "mlp.gate_proj.qweight" in f.tensors
            assert not any(n.startswith(p + "mlp.experts") for n in f.tensors)
            continue
        assert not any(n.startswith(p + "mlp." + m) for m in ("gate_proj", "up_proj",
                                                              "down_proj") for n in f.tensors)
        router = f.tensor(p + "mlp.gate.weight")
        assert router.dtype == np.float32
        np.testing.assert_array_equal(router, source.get(p + "mlp.gate.weight"))
        for proj, (out_f, in_f) in (("gate_proj", (ff, d)), ("up_proj", (ff, d)),
                                    ("down_proj", (d, ff))):
            stacked = [f.tensor(f"{p}mlp.experts.{proj}.{s}") for s in ("qweight", "scales", "zeros")]
            assert [t.shape for t in stacked] == [(E, out_f, in_f // 2), (E, out_f, in_f // G),
                                                  (E, out_f, in_f // G)]
            for e in range(E):
                expected = quantize_int4(source.get(f"{p}mlp.experts.{e}.{proj}.weight"), G)
                for ours, theirs in zip(stacked, expected):
                    np.testing.assert_array_equal(ours[e], theirs, err_msg=f"{p}{proj}[{e}]")
    moe = sum(c.is_moe_layer(i) for i in range(c.num_layers))
    assert summary["quantized_linears"] == c.num_layers * 4 + moe * 3 * E + \
        (c.num_layers - moe) * 3


def _rewrite(path, out, drop=None, replace=None, meta=None):
    """`path`'s tensors and metadata with one tensor dropped or replaced, written to `out`."""
    from awqcore.awqbin import AwqbinWriter
    f = read_awqbin(path)
    with AwqbinWriter(out) as w:
        for name in f.tensors:
            if name == drop:
                continue
            w.add_tensor(name, (replace or {}).get(name, np.array(f.tensor(name))))
        w.finish({**f.metadata, **(meta or {})})
    return out


def test_reader_names_inconsistent_expert_tensors(tmp_path):
    source = SharpSource("qwen3_moe", seed=2)
    path = tmp_path / "m.awqbin"
    quantize_model(source, path, "rtn", G, progress=False)
    f = read_awqbin(path)
    cases = [
        (dict(drop="model.layers.1.mlp.experts.up_proj.zeros"),
         "missing tensor 'model.layers.1.mlp.experts.up_proj.zeros'"),
        (dict(replace={"model.layers.2.mlp.gate.weight": np.zeros((7, 64), np.float32)}),
         "model.layers.2.mlp.gate.weight': expected f32 \\[8, 64\\]"),
        (dict(replace={"model.layers.1.mlp.experts.down_proj.qweight":
                       np.array(f.tensor("model.layers.1.mlp.experts.down_proj.qweight"))[:7]}),
         "down_proj.qweight': expected u8 \\[8, 64, 16\\]"),
        (dict(meta={"model.moe_layers": [1, 1, 1]}),
         "tensor 'model.layers.0.mlp.(gate|up|down)_proj.\\w+' in layer 0, an MoE layer"),
        (dict(meta={"model.moe_layers": [0, 0, 1]}),
         "in layer 1, which model.moe_layers makes a dense MLP layer"),
        (dict(meta={"model.num_experts_per_tok": 9}), "num_experts_per_tok=9 must be in 1..num"),
    ]
    for i, (edit, message) in enumerate(cases):
        bad = _rewrite(path, tmp_path / f"bad{i}.awqbin", **edit)
        with pytest.raises(FormatError, match=message):
            AwqbinSource(bad)


def folded_moe_model(source, options: dict):
    """Every layer through MoeAwqQuantizer's folding (no quantization), as the pipeline
    would run it; returns the folded float tensors and the quantizer."""
    c = source.config
    quantizer = MoeAwqQuantizer(source, G, progress=False, **options)
    folded = {}
    for layer in range(c.num_layers):
        weights = {n: source.get(n) for n in layer_float_names(source, layer)}
        if c.is_moe_layer(layer):
            scaled = quantizer._fold_moe_layer(layer, weights)
        else:
            scaled = quantizer.fold_layer(layer, weights)
        folded.update(weights)
        for key, value in scaled.items():
            folded[layer_prefix(layer) + key + ".weight"] = value.numpy()
    return folded, quantizer


@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_moe_scale_folding_leaves_the_fp_function_unchanged(family, tmp_path):
    """The shared gate/up scale folds into the norm AND the router (whose logits would
    otherwise change, and with them the experts chosen); each expert's down scale into
    its own up. Tolerance as test_awq's folding test: a few f32 roundings of every weight."""
    config = dataclasses.replace(tiny_config(family), num_kv_heads=4)  # v -> o folds too
    source = OutlierSource(config, seed=5)
    folded, quantizer = folded_moe_model(source, dict(
        calib_samples=2, calib_seqlen=32, clip=False, calib_text=calib_text(tmp_path)))
    assert "moe gate/up" in quantizer.ratios and "expert down" in quantizer.ratios
    get = lambda n: folded.get(n, source.get(n))  # noqa: E731
    ids = np.random.default_rng(1).integers(0, 256, size=24).tolist()
    original = ReferenceModel(config, source.get).forward(ids)
    after = ReferenceModel(config, get).forward(ids)
    scale = float(original.abs().max())
    rng = np.random.default_rng(2)

    def rounded(n: str) -> np.ndarray:
        t = source.get(n)
        return t if t.ndim < 2 else (t * (1 + rng.uniform(-2**-24, 2**-24, t.shape))
                                     ).astype(np.float32)
    floor = float((ReferenceModel(config, rounded).forward(ids) - original).abs().max())
    torch.testing.assert_close(after, original, rtol=0, atol=max(1e-5 * scale, 4 * floor))

    moe_layer = next(i for i in range(config.num_layers) if config.is_moe_layer(i))
    p = layer_prefix(moe_layer)
    ratio = folded[p + "post_attention_layernorm.weight"] / \
        source.get(p + "post_attention_layernorm.weight")
    assert ratio.max() / ratio.min() > 2  # the outlier channels took real scales
    # Without the router's share of the scale the function changes.
    unfolded_router = ReferenceModel(config, lambda n: source.get(n) if n.endswith(
        "mlp.gate.weight") else get(n))
    assert float((unfolded_router.forward(ids) - original).abs().max()) > 1e-2 * scale


def test_experts_without_calibration_tokens_fall_back_to_rtn(tmp_path):
    """64 experts, top-1, 16 calibration tokens: at least 48 experts per MoE layer get no
    token. They are counted, and their down_proj is exactly round-to-nearest."""
    config = tiny_config("qwen3_moe", num_experts=64, num_experts_per_tok=1)
    source = OutlierSource(config, seed=3)
    path = tmp_path / "awq.awqbin"
    summary = quantize_model(source, path, "awq", G, progress=False, calib_samples=1,
                             calib_seqlen=16, calib_text=calib_text(tmp_path))
    unrouted = summary["report"]["unrouted_experts"]
    assert sorted(unrouted) == [1, 2]  # the MoE layers; layer 0 is dense
    assert all(48 <= n < 64 for n in unrouted.values()), unrouted
    assert any("got no calibration token" in note for note in summary["report"]["notes"])
    f = read_awqbin(path)
    stored = [f.tensor(f"model.layers.1.mlp.experts.down_proj.{s}")
              for s in ("qweight", "scales", "zeros")]
    rtn = [e for e in range(64) if all(np.array_equal(t[e], q) for t, q in zip(
        stored, quantize_int4(source.get(f"model.layers.1.mlp.experts.{e}.down_proj.weight"), G)))]
    assert len(rtn) >= unrouted[1]


def test_moe_layer_drops_non_finite_sequences_as_the_dense_layer(tmp_path):
    """A calibration sequence gone non-finite before an MoE layer is dropped from
    every sample and reported with the dense layers' note (the shared
    AwqQuantizer._drop_non_finite); the folded weights stay finite."""
    source = OutlierSource(tiny_config("mixtral"), seed=2)
    quantizer = MoeAwqQuantizer(source, G, progress=False, calib_samples=4, calib_seqlen=32,
                                calib_text=calib_text(tmp_path))
    quantizer.x[1, 5, 3] = float("nan")
    weights = {n: source.get(n) for n in layer_float_names(source, 0)}
    scaled = quantizer._fold_moe_layer(0, weights)
    assert quantizer.notes == ["layer 0: dropped 1 of 4 calibration sequences whose "
                               "activations became non-finite"]
    assert quantizer.x.shape[0] == 3 and bool(quantizer.x.isfinite().all())
    assert quantizer.loss_mask.shape[0] == 3 and quantizer.loss_weight.shape[0] == 3
    assert all(bool(torch.as_tensor(v).isfinite().all()) for v in scaled.values())


@pytest.mark.slow
@pytest.mark.parametrize("family", MOE_FAMILY_NAMES)
def test_awq_moe_file_is_valid_and_close_to_the_float_model(family, tmp_path):
    """AWQ end to end on a tiny MoE: a valid file whose dequantized model stays as close
    to the float model as round-to-nearest's does (within 10%, on held-out tokens)."""
    config = tiny_config(family)
    source = OutlierSource(config, seed=4)
    options = dict(calib_samples=4, calib_seqlen=64, calib_text=calib_text(tmp_path))
    quantize_model(source, tmp_path / "awq.awqbin", "awq", G, progress=False, **options)
    quantize_model(source, tmp_path / "rtn.awqbin", "rtn", G, progress=False)
    ids = np.random.default_rng(9).integers(0, 256, size=48).tolist()
    fp = ReferenceModel(config, source.get).forward(ids)
    errors = {}
    for method in ("awq", "rtn"):
        q = AwqbinSource(tmp_path / f"{method}.awqbin")
        errors[method] = float((ReferenceModel(q.config, q.get).forward(ids) - fp).pow(2).mean())
    print(f"{family}: logit MSE vs float, awq {errors['awq']:.3g}, rtn {errors['rtn']:.3g}")
    assert errors["awq"] < 1.1 * errors["rtn"]
