"""tools/quality_diagnose.py: its error measure, its layer list and one run end to end on
a tiny model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tool_modules import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("quality_diagnose")


def test_output_error_is_the_mean_squared_output_difference(tool):
    """The Gram form tr(D C D^T) / out equals mean_t |x_t D^T|^2 / out computed from the
    tokens themselves."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((300, 48)))
    w = torch.from_numpy(rng.standard_normal((5, 48)))
    wq = w + 0.1 * torch.from_numpy(rng.standard_normal((5, 48)))
    direct = float(((x @ (wq - w).T) ** 2).sum(1).mean()) / 5
    assert tool.output_error(wq, w, x.T @ x / len(x)) == pytest.approx(direct, rel=1e-10)


def test_errors_of_scaled_weights_are_in_the_fp_output_units(tool):
    """AWQ's variants are measured as the layer computes them, (x / s) (Q(W s) r^-1 ... )
    with the output rows multiplied back by r (the next group's scales folded into this
    linear's rows): compared here with the error of those outputs computed from the
    tokens themselves."""
    from awqcore.quantize.awq import fake_quantize
    from awqcore.quantize.clip import InputStats

    rng = np.random.default_rng(3)
    g, n = 32, 400
    x = torch.from_numpy(rng.standard_normal((n, 64)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((8, 64)).astype(np.float32))
    s = torch.from_numpy(rng.uniform(0.5, 2.0, 64).astype(np.float32))
    rows = torch.from_numpy(rng.uniform(0.2, 5.0, 8).astype(np.float32))
    w_scaled = w * s / rows[:, None]
    stats = InputStats(64, g, full_gram=True)
    stats.add(x[None], torch.zeros(1, dtype=torch.long))
    grams = {"calib": (stats, stats.hessian(torch.ones(64)), stats.hessian(s))}
    got = tool.linear_errors(w, w_scaled, s, rows, g, stats, grams, clipped=False)
    y = (x / s) @ (fake_quantize(w_scaled, g) * rows[:, None]).T  # [n, out]
    expected = float(((y - x @ w.T) ** 2).sum(1).mean()) / 8
    assert got["awq"]["calib"] == pytest.approx(expected, rel=1e-4)


def test_parse_layers(tool):
    assert tool.parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert tool.parse_layers(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\[8\] outside the model's layers 0..7"):
        tool.parse_layers("6-8", 8)
    assert tool.parse_layers("0, 2 - 3", 8) == [0, 2, 3]
    for bad in ("5-2", "x", "1-", ""):
        with pytest.raises(ValueError, match=r"is not a layer or a range lo-hi with lo <= hi"):
            tool.parse_layers(f"0,{bad}", 8)


def test_a_run_on_a_tiny_model(tool, tmp_path, capsys):
    """Every layer, scale group, linear and set gets numbers; GPTQ lowers the output
    error on the calibration tokens it was fitted to (its defining property, 0.4-0.5x
    RTN's here), and the clip bounds the calibration set picks "for itself" are the
    clip search's."""
    ood = tmp_path / "ood.txt"
    ood.write_text("def f(x):\n    return {'k': [x, x + 1]}\n\n" * 40)
    out = tmp_path / "diag.json"
    assert tool.main(["synthetic:arch=llama,layers=2,seed=3", "--ood-text", str(ood),
                      "--group-size", "32", "--calib-samples", "4", "--calib-seqlen", "32",
                      "--probe-samples", "2", "--loss-tokens", "64", "--threads", "1",
                      "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert sorted(report["layers"]) == ["0", "1"]
    summary = report["summary"]
    assert set(summary["scales"]) == {"qkv", "mlp", "down"}  # grouped-query: no v -> o
    for group in summary["scales"].values():
        assert set(group) == {"calib", "calib-all", "wiki", "ood"}
        assert all(math.isfinite(v["chosen"]) and v["best"] <= v["chosen"] + 1e-12
                   for v in group.values())
    linears = summary["linears"]
    assert len(linears) == 7
    for key, variants in linears.items():
        assert variants["gptq"]["calib"] < 1.0, key
        if "awq+clip" in variants:  # on the calibration set, its own bounds are AWQ's
            assert variants["awq+own clip"]["calib"] == pytest.approx(
                variants["awq+clip"]["calib"], rel=1e-6), key
    printed = capsys.readouterr().out
    assert "mlp.down_proj" in printed and "scale search" in printed


def test_a_model_with_experts_is_refused_before_calibration(tool, capsys):
    spec = "synthetic:arch=mixtral,layers=1,experts=4,top_k=2,expert_ffn=64,seed=3"
    with pytest.raises(SystemExit):
        tool.main([spec, "--group-size", "32", "--ood-text", "x.txt", "--threads", "1"])
    assert "has experts; the diagnosis covers dense models only" in capsys.readouterr().err
