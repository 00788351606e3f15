"""int8 embedding/lm_head tables (awqcore.quantize.int8_table, docs/format.md):
the quantizer's roundtrip bound, the scale rule, and the pipeline's option.

The bound |w - q*s| <= s/2 is checked per element in float64 against the f16
scale the file stores: q = round(w/s) errs by at most half a step, and since
q*s is exact in f32 the runtime's weight is exactly q*s. Rows are built to
reach the cases where a simpler rule breaks it: blocks whose f16 scale rounds
down (subnormal scales, absmax < 127 * 2^-14), all-zero blocks, outliers.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from awqcore.awqbin import read_awqbin
from awqcore.quantize import quantize_model
from awqcore.quantize.int8_table import (BLOCK, MAX_Q, dequantize_int8_table,
                                         quantize_int8_table)
from tiny_models import TinySource

SUBNORMAL_STEP = 2.0 ** -24  # the smallest f16


def table(seed: int, rows: int = 37, d: int = 96) -> np.ndarray:
    """Gaussian rows plus: an outlier, an all-zero block, a row of tiny values
    (subnormal f16 scales) and a block whose absmax/127 is 1.4 subnormal steps,
    so that the nearest f16 scale (1 step) lies below it. [rows, d] f32"""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, d)) * 0.05).astype(np.float32)
    w[1, 5] = 7.5
    w[2, BLOCK:2 * BLOCK] = 0.0
    w[3] *= 1e-4
    w[4, :BLOCK] = np.linspace(-1, 1, BLOCK, dtype=np.float32) * np.float32(127 * 1.4 * SUBNORMAL_STEP)
    return w


def block_absmax(w: np.ndarray) -> np.ndarray:
    return np.abs(w.astype(np.float64)).reshape(w.shape[0], -1, BLOCK).max(-1)  # [rows, d/32]


@pytest.mark.parametrize("seed", [0, 1])
def test_roundtrip_error_is_within_half_a_step(seed):
    w = table(seed)
    q, scales = quantize_int8_table(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scales.dtype == np.float16 and scales.shape == (w.shape[0], w.shape[1] // BLOCK)
    assert np.abs(q.astype(np.int64)).max() <= MAX_Q

    s = np.repeat(scales.astype(np.float64), BLOCK, axis=1)  # [rows, d]
    deq = dequantize_int8_table(q, scales)
    assert deq.dtype == np.float32
    # The runtime's weight is exactly q * s (7 + 11 significant bits fit f32).
    np.testing.assert_array_equal(deq.astype(np.float64), q.astype(np.float64) * s)
    err = np.abs(w.astype(np.float64) - deq)
    ratio = np.divide(err, s, out=np.zeros_like(err), where=s > 0)
    print(f"int8 table: max |w - q*s| / s = {ratio.max():.4f} (bound 0.5), "
          f"max relative error {err.max() / np.abs(w).max():.2e}")
    assert (err <= s / 2).all()
    assert ratio.max() > 0.45  # the bound is tight: rounding does reach ~half a step
    assert (deq[2, BLOCK:2 * BLOCK] == 0).all() and (scales[2, 1] == 0)


def test_scale_is_absmax_over_127_rounded_to_f16_then_moved_up_if_below():
    w = table(2)
    _, scales = quantize_int8_table(w)
    absmax = block_absmax(w)
    nearest = (absmax / MAX_Q).astype(np.float16)
    up = np.nextafter(nearest, np.float16(np.inf))
    expected = np.where(nearest.astype(np.float64) * MAX_Q < absmax, up, nearest)
    np.testing.assert_array_equal(scales, expected)
    assert (scales.astype(np.float64) * MAX_Q >= absmax).all()  # nothing is clipped
    # The constructed block does need the step up: its nearest f16 scale is one
    # subnormal step, its stored scale two.
    assert nearest[4, 0] == np.float16(SUBNORMAL_STEP) and scales[4, 0] == np.float16(2 * SUBNORMAL_STEP)


def test_rejects_bad_widths_and_values():
    with pytest.raises(ValueError, match=r"lm_head.weight: width 48 is not a multiple of 32"):
        quantize_int8_table(np.zeros((4, 48), np.float32), "lm_head.weight")
    with pytest.raises(ValueError, match=r"2-D"):
        quantize_int8_table(np.zeros(64, np.float32))
    w = np.zeros((3, 64), np.float32)
    w[2, 40] = np.nan
    with pytest.raises(ValueError, match=r"t: non-finite value in row 2, columns 32\.\.63"):
        quantize_int8_table(w, "t")
    w[2, 40] = 1e8  # absmax/127 beyond the largest f16
    with pytest.raises(ValueError, match=r"t: row 2 has \|w\| = 1e\+08 .* too large"):
        quantize_int8_table(w, "t")
    with pytest.raises(ValueError, match=r"scales"):
        dequantize_int8_table(np.zeros((2, 64), np.int8), np.zeros((2, 3), np.float16))


@pytest.mark.parametrize("architecture, tied", [("llama", False), ("qwen2", True)])
def test_pipeline_stores_int8_tables(tmp_path, architecture, tied):
    """embeddings="int8" replaces exactly the table tensors and nothing else."""
    source = TinySource(seed=4, architecture=architecture, tie_word_embeddings=tied)
    f16_summary = quantize_model(source, tmp_path / "f16.awqbin", group_size=32, progress=False)
    summary = quantize_model(source, tmp_path / "int8.awqbin", group_size=32, progress=False,
                             embeddings="int8")
    assert f16_summary["embeddings"] == "f16" and summary["embeddings"] == "int8"
    f16, int8 = read_awqbin(tmp_path / "f16.awqbin"), read_awqbin(tmp_path / "int8.awqbin")
    prefixes = ["model.embed_tokens"] + ([] if tied else ["lm_head"])
    replaced = {p + ".weight" for p in prefixes}
    added = {p + s for p in prefixes for s in (".weight_q8", ".weight_q8_scales")}
    assert set(int8.tensors) == (set(f16.tensors) - replaced) | added
    for name in set(f16.tensors) - replaced:
        np.testing.assert_array_equal(int8.tensor(name), f16.tensor(name), err_msg=name)
    for prefix in prefixes:
        q, scales = quantize_int8_table(source.get(prefix + ".weight"))
        assert int8.tensors[prefix + ".weight_q8"].dtype == "i8"
        np.testing.assert_array_equal(int8.tensor(prefix + ".weight_q8"), q)
        np.testing.assert_array_equal(int8.tensor(prefix + ".weight_q8_scales"), scales)
    assert int8.metadata == f16.metadata
    # Each 64 x 64 table shrinks from 2 bytes per weight to 1 + 2/32: 8192 -> 4096 +
    # 256 bytes of tensor data.
    data_bytes = [sum(e.nbytes for e in f.tensors.values()) for f in (f16, int8)]
    assert data_bytes[0] - data_bytes[1] == len(prefixes) * (8192 - 4096 - 256)
    assert summary["file_bytes"] < f16_summary["file_bytes"]
    assert summary["fp16_bytes"] == f16_summary["fp16_bytes"]


def test_pipeline_rejects_unknown_form_and_narrow_widths(tmp_path):
    from awqcore.importers.synthetic import SyntheticSource, tiny_config

    with pytest.raises(ValueError, match=r"embeddings must be one of f16, int8 \(got 'q4'\)"):
        quantize_model(TinySource(), tmp_path / "a.awqbin", embeddings="q4", progress=False)
    narrow = SyntheticSource(tiny_config("llama", hidden_size=48))
    with pytest.raises(ValueError, match=r"embeddings='int8' needs hidden_size to be a multiple "
                                         r"of 32 \(got 48\)"):
        quantize_model(narrow, tmp_path / "a.awqbin", embeddings="int8", progress=False)
    assert os.listdir(tmp_path) == []


def test_cli_flag_reaches_the_pipeline(tmp_path, monkeypatch, capsys):
    import awqcore.importers
    from awqcore.cli import main

    monkeypatch.setattr(awqcore.importers, "load_source", lambda name: TinySource())
    out = tmp_path / "m.awqbin"
    assert main(["quantize", "tiny", "--method", "rtn", "--group-size", "32", "--embeddings",
                 "int8", "-q", "--out", str(out)]) == 0
    assert "int8 embedding tables" in capsys.readouterr().out
    assert read_awqbin(out).tensors["model.embed_tokens.weight_q8"].dtype == "i8"
    with pytest.raises(SystemExit) as info:  # argparse's own exit
        main(["quantize", "tiny", "--embeddings", "bf16", "--out", str(out)])
    assert info.value.code == 2
    assert "invalid choice: 'bf16'" in capsys.readouterr().err
