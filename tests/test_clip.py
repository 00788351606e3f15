"""AWQ's clip modes (awqcore.quantize.clip) and the calibration options of the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from awqcore.awqbin import read_awqbin
from awqcore.cli import main
from awqcore.importers import load_source
from awqcore.quantize import quantize_model
from awqcore.quantize.awq import fake_quantize
from awqcore.quantize.clip import (CLIP_GRID, CLIP_STEPS, InputStats, clamp_to_shrinks,
                                   clip_shrinks, search_clip)

SPEC = "synthetic:arch=llama,layers=1,seed=3"


def group_errors(w: torch.Tensor, shrink: torch.Tensor, gram: torch.Tensor, g: int
                 ) -> torch.Tensor:
    """[out, G]: d^T C d of each group after clamping to +-shrink * its max |w| and
    quantizing."""
    out_f, in_f = w.shape
    wg = w.reshape(out_f, -1, g)
    bound = shrink * wg.abs().amax(-1, keepdim=True)
    d = fake_quantize(torch.clamp(wg, -bound, bound).reshape(out_f, in_f), g).reshape(wg.shape) - wg
    return torch.einsum("ojk,jkl,ojl->oj", d, gram, d)


def test_heldout_clip_keeps_a_bound_only_where_the_other_half_agrees():
    """Each (row, group) gets the shrink chosen on the first Gram where that shrink also
    lowers the error under the second Gram, and no clipping elsewhere; with differing
    halves both outcomes occur."""
    g = 32
    rng = np.random.default_rng(1)
    w = torch.from_numpy(rng.standard_normal((16, 64)).astype(np.float32))
    grams = []
    for seed in (2, 3):  # two token sets with different channel correlations
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((300, 64))
                             .astype(np.float32))
        x = x * torch.from_numpy(np.random.default_rng(seed + 10).uniform(0.2, 3, 64)
                                 .astype(np.float32))
        xg = x.reshape(300, 2, g).transpose(0, 1)  # [G, n, g]
        grams.append(xg.transpose(1, 2) @ xg / 300)
    chosen = search_clip(w, grams[0], g, fake_quantize)
    shrink = search_clip(w, grams[0], g, fake_quantize, check_gram=grams[1])
    none = torch.ones_like(chosen)
    helps = group_errors(w, chosen, grams[1], g) < group_errors(w, none, grams[1], g)
    expected = torch.where(helps[..., None], chosen, none)
    torch.testing.assert_close(shrink, expected, rtol=0, atol=0)
    clipped = (chosen < 1)[..., 0]  # [out, G]
    assert bool((clipped & helps).any()) and bool((clipped & ~helps).any())


def test_mild_clip_shrinks_less_than_full():
    g = 32
    rng = np.random.default_rng(4)
    w = torch.from_numpy(rng.standard_normal((32, 64)).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal((200, 64)).astype(np.float32))
    stats = InputStats(64, g)
    stats.add(x.reshape(2, 100, 64), torch.tensor([0, 1]))
    ones = torch.ones(64)
    full = clip_shrinks(w, stats, ones, "full", fake_quantize)
    mild = clip_shrinks(w, stats, ones, "mild", fake_quantize)
    assert float(full.min()) >= 1 - (CLIP_STEPS - 1) / CLIP_GRID - 1e-6
    # Mild searches a prefix of full's grid: the same answer wherever full's is in it.
    assert float(mild.min()) >= 0.85 - 1e-6
    within = full >= 0.85 - 1e-6
    assert bool(within.any()) and torch.equal(mild[within], full[within])
    with pytest.raises(ValueError, match="unknown clip mode 'wide'"):
        clip_shrinks(w, stats, ones, "wide", fake_quantize)


def test_shrinks_are_the_search_grid_and_one_for_an_empty_group():
    """The searches return fractions of each group's max |w| (the form GPTQ takes): its
    grid points 1 - i/CLIP_GRID exactly, and 1 for an all-zero group; clamping to them
    bounds each group by that fraction of its max |w| and leaves an empty group zero."""
    g = 32
    rng = np.random.default_rng(5)
    w = torch.from_numpy(rng.standard_normal((16, 96)).astype(np.float32))
    w[3, g:2 * g] = 0
    x = torch.from_numpy(rng.standard_normal((2, 100, 96)).astype(np.float32))
    stats = InputStats(96, g)
    stats.add(x, torch.tensor([0, 1]))
    shrink = clip_shrinks(w, stats, torch.ones(96), "full", fake_quantize)
    assert shrink.shape == (16, 3, 1) and float(shrink[3, 1, 0]) == 1.0
    grid = torch.tensor([1 - i / CLIP_GRID for i in range(CLIP_STEPS)])
    assert bool(torch.isin(shrink, grid).all())
    assert float(shrink.min()) < 1  # some group is clipped: the test sees a shrink
    clamped = w.clone()
    clamp_to_shrinks(clamped, shrink, g)
    absmax = w.reshape(16, 3, g).abs().amax(-1, keepdim=True)
    bound = (shrink * absmax).expand(16, 3, g).reshape(16, 96)  # [out, in]
    inside = w.abs() <= bound
    assert torch.equal(clamped[inside], w[inside])
    assert torch.equal(clamped[~inside], torch.sign(w[~inside]) * bound[~inside])
    assert bool((~inside).any())
    # A group whose error is never finite (a NaN Gram) keeps shrink 1: no clipping.
    gram = stats.scaled_gram(torch.ones(96))
    gram[2] = float("nan")
    unclipped = search_clip(w, gram, g, fake_quantize)
    assert bool((unclipped[:, 2] == 1).all()) and torch.equal(unclipped[:, :2], shrink[:, :2])


@pytest.mark.parametrize("spec,method,default", [
    (SPEC, "awq-gptq", "attn"),
    ("synthetic:arch=mixtral,layers=1,experts=4,top_k=2,expert_ffn=64,seed=3", "awq", "full")])
def test_attention_only_clip_is_full_on_attention_and_off_on_the_mlp(tmp_path, spec, method,
                                                                     default):
    """Each layer's searches see full-precision inputs and weights, so --clip attn gives
    the attention's linears exactly --clip full's codes and the MLP's (experts included)
    exactly --clip off's; full and off differ on both, so either mix-up fails. Without
    --clip, awq-gptq clips the attention only and awq (AutoAWQ's algorithm) everything."""
    options = dict(method=method, group_size=32, progress=False, calib_samples=2,
                   calib_seqlen=32)
    files = {}
    for clip in ("full", "attn", "off", None):
        clip_option = {} if clip is None else {"clip": clip}
        quantize_model(load_source(spec), tmp_path / f"{clip}.awqbin", **clip_option, **options)
        files[clip] = read_awqbin(tmp_path / f"{clip}.awqbin")
    names = [n for n in files["attn"].tensors if n.endswith(".qweight")]
    attention = [n for n in names if ".self_attn." in n]
    mlp = [n for n in names if ".mlp." in n]
    assert attention and mlp and len(attention) + len(mlp) == len(names), names

    def same(clip: str, name: str) -> bool:
        return np.array_equal(files["attn"].tensor(name), files[clip].tensor(name))

    assert all(same("full", n) for n in attention) and all(same("off", n) for n in mlp)
    assert not all(same("off", n) for n in attention) and not all(same("full", n) for n in mlp)
    assert all(np.array_equal(files[None].tensor(n), files[default].tensor(n)) for n in names)


def test_cli_calibration_options_reach_the_quantizer(tmp_path):
    """--method awq-gptq --clip heldout --device cpu writes the file quantize_model
    writes with those options, and it differs from --clip off's."""
    calibration = ["--calib-samples", "2", "--calib-seqlen", "32"]
    cli_file = tmp_path / "cli.awqbin"
    assert main(["quantize", SPEC, "--method", "awq-gptq", "--clip", "heldout", "--device",
                 "cpu", "--group-size", "32", "-q", "--out", str(cli_file), *calibration]) == 0
    options = dict(method="awq-gptq", group_size=32, progress=False, calib_samples=2,
                   calib_seqlen=32, device="cpu")
    for clip in ("heldout", "off"):
        quantize_model(load_source(SPEC), tmp_path / f"{clip}.awqbin", clip=clip, **options)
    ours, heldout, off = (read_awqbin(tmp_path / f"{n}.awqbin") for n in ("cli", "heldout", "off"))
    assert ours.metadata["quant.method"] == "awq-gptq"
    names = [n for n in ours.tensors if n.endswith(".qweight")]
    assert all(np.array_equal(ours.tensor(n), heldout.tensor(n)) for n in names)
    assert not all(np.array_equal(ours.tensor(n), off.tensor(n)) for n in names)


def test_bad_clip_mode_and_device_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"clip must be one of full, heldout, mild, attn, off"):
        quantize_model(load_source(SPEC), tmp_path / "x.awqbin", method="awq", clip="wide",
                       progress=False, calib_samples=2, calib_seqlen=32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' asked for, but torch sees no CUDA"):
            quantize_model(load_source(SPEC), tmp_path / "x.awqbin", method="awq",
                           device="cuda", progress=False, calib_samples=2, calib_seqlen=32)


@pytest.mark.parametrize("spec,expected", [
    (SPEC, "awq-gptq"),
    ("synthetic:arch=mixtral,layers=1,experts=4,top_k=2,expert_ffn=64,seed=3", "awq")])
def test_cli_default_method_calibrates(tmp_path, spec, expected):
    """`awqcore quantize MODEL` uses the best measured calibrated method (README, "AWQ"),
    not round-to-nearest; a model with experts, which GPTQ does not cover, gets `awq`
    instead of an error. The parser's method list is the pipeline's."""
    from awqcore.cli import QUANTIZE_METHODS
    from awqcore.quantize.pipeline import DEFAULT_METHOD, QUANTIZERS

    assert set(QUANTIZE_METHODS) == set(QUANTIZERS) and DEFAULT_METHOD == "awq-gptq"
    out = tmp_path / "default.awqbin"
    assert main(["quantize", spec, "--group-size", "32", "-q", "--calib-samples", "2",
                 "--calib-seqlen", "32", "--out", str(out)]) == 0
    assert read_awqbin(out).metadata["quant.method"] == expected


def test_quantize_parser_choices_are_the_librarys():
    """cli.py spells out the choices (importing the quantize package would load torch
    for every command); each must stay the library's own list."""
    from awqcore.cli import build_parser
    from awqcore.quantize.clip import CLIP_MODES
    from awqcore.quantize.int8_table import TABLE_FORMS
    from awqcore.quantize.pipeline import LM_HEAD_FORMS
    from awqcore.quantize.rtn import SUPPORTED_GROUP_SIZES

    quantize = build_parser()._subparsers._group_actions[0].choices["quantize"]
    choices = {a.dest: a.choices for a in quantize._actions if a.choices}
    assert set(choices["clip"]) == set(CLIP_MODES)
    assert set(choices["embeddings"]) == set(TABLE_FORMS)
    assert set(choices["lm_head"]) == set(LM_HEAD_FORMS)
    assert set(choices["group_size"]) == set(SUPPORTED_GROUP_SIZES)
