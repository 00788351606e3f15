"""tools/quality_sweep.py's variant names: what each asks for, and a clear error for one
that is malformed, before any calibration runs."""
from __future__ import annotations

import re

import pytest

from tool_modules import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("quality_sweep")


@pytest.mark.parametrize("variant,expected", [
    ("rtn", ("rtn", None, [])),
    ("awq-gptq", ("awq-gptq", None, [])),
    ("awq-gptq:0.1", ("awq-gptq", 0.1, [])),
    ("awq-full", ("awq", None, [("full", "")])),
    ("awq-gptq-heldout", ("awq-gptq", None, [("heldout", "")])),
    ("awq-gptq-full:1.0@no-down", ("awq-gptq", 1.0, [("full", "no-down")])),
    ("awq-gptq-full@attn+mild@mlp", ("awq-gptq", None, [("full", "attn"), ("mild", "mlp")])),
])
def test_variant_names_parse(tool, variant, expected):
    assert tool.parse_variant(variant) == expected


@pytest.mark.parametrize("variant,message", [
    ("awq", "unknown method 'awq'"),
    ("awq-gptq-wide", "unknown method"),
    ("awq-full:0.1", "needs a GPTQ method"),
    ("awq-gptq@attn", "needs a clip search"),
    ("awq-full@mpl", "needs a clip search and a scope"),
    ("awq-full+mild@mlp", "'+' needs a first clip search with an @ scope"),
    ("awq-full@attn+mild", "is not SEARCH@SCOPE"),
    ("awq-full@attn+mlid@mlp", "is not SEARCH@SCOPE"),
    ("awq-full@attn+mild@mpl", "is not SEARCH@SCOPE"),
])
def test_malformed_variants_name_the_problem(tool, variant, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tool.parse_variant(variant)


def test_a_model_with_experts_is_refused_before_calibration(tool, tmp_path, capsys):
    """The sweep derives dense layers' variants only: a model with experts gets a clear
    error naming it, not a KeyError from deep inside the calibration pass."""
    text = tmp_path / "t.txt"
    text.write_text("some text")
    spec = "synthetic:arch=mixtral,layers=1,experts=4,top_k=2,expert_ffn=64,seed=3"
    with pytest.raises(SystemExit):
        tool.main([spec, "--ood-text", str(text), "--group-size", "32", "--threads", "1"])
    assert "has experts; the sweep covers dense models only" in capsys.readouterr().err
