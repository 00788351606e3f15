"""tools/quality_peers.py without any peer installed: the share arithmetic, the
float checkpoint it hands a peer, the AutoAWQ patch's refusal, and a whole run on a
tiny model whose peer is missing (skipped, said so, the other rows evaluated)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from awqcore.awqbin_source import AwqbinSource
from awqcore.evaluate import window_nll
from awqcore.importers import expected_tensor_shapes, load_source
from awqcore.reference import ReferenceModel
from tool_modules import load_tool

SPEC = "synthetic:arch=llama,layers=1,seed=3"


@pytest.fixture(scope="module")
def tool():
    return load_tool("quality_peers")


def test_share_of_rtn_increase(tool):
    rows = tool.with_shares({"FP": {"wiki": 10.0}, "RTN": {"wiki": 14.0},
                             "awq": {"wiki": 11.0}, "worse": {"wiki": 16.0}})
    assert rows["FP"]["wiki"] == {"ppl": 10.0, "share": 0.0}
    assert rows["RTN"]["wiki"]["share"] == 1.0
    assert rows["awq"]["wiki"]["share"] == pytest.approx(0.25)  # 1 of RTN's 4
    assert rows["worse"]["wiki"]["share"] == pytest.approx(1.5)
    assert math.isnan(tool.share_of_rtn(11.0, 10.0, 10.0))  # RTN no worse: nothing to share
    table = tool.format_table(rows, ["wiki"]).splitlines()
    assert table[0].split() == ["wiki", "ppl", "share"]
    assert table[3].split() == ["awq", "11.000", "0.250"]


def test_missing_peer_names_the_install(tool, monkeypatch):
    monkeypatch.setitem(tool.PEERS, "autoawq", ("no_such_peer_module", "autoawq==0.2.9", "x"))
    version, why = tool.peer_status("autoawq", os.sys.executable)
    assert version is None
    assert "cannot import no_such_peer_module" in why and "pip install autoawq==0.2.9" in why


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_float_checkpoint_reads_back_as_the_source(tool, tmp_path, arch):
    """What the peer gets is what awqcore quantizes: our HF importer reads the
    folder back to the same f32 tensors (Gemma's norms through w = multiplier - 1)."""
    source = load_source(f"synthetic:arch={arch},layers=2,seed=5")
    tool.write_float_checkpoint(source, str(tmp_path))
    back = load_source(str(tmp_path))
    assert back.config.vocab_size == source.config.vocab_size
    for name in expected_tensor_shapes(source.config):
        assert np.array_equal(back.get(name), source.get(name)), name


def test_autoawq_patch_refuses_an_unknown_source(tool):
    src = "def f(self):\n    org_sd = {k: v for k, v in sd.items()}\n"
    with pytest.raises(RuntimeError, match="does not contain the aliasing line"):
        tool.patched_best_scale_source(src)
    fixed = tool.patched_best_scale_source("def f(self):\n    " + tool.AUTOAWQ_ALIASED + "\n")
    assert tool.AUTOAWQ_CLONED in fixed and tool.AUTOAWQ_ALIASED not in fixed


def test_run_with_the_peer_missing(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tool.PEERS, "autoawq", ("no_such_peer_module", "autoawq==0.2.9", "x"))
    ood = tmp_path / "ood.txt"
    ood.write_text("\n\n".join(f"def f{i}(x):\n    return x * {i} + 'abc'" for i in range(40)))
    out = tmp_path / "out.json"
    assert tool.main([SPEC, "--group-size", "32", "--calib-samples", "2", "--calib-seqlen", "32",
                      "--ood-text", str(ood), "--eval-seqlen", "16", "--wiki-windows", "2",
                      "--ood-windows", "2", "--threads", "1", "-q", "--json", str(out),
                      "--keep", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    assert "peers run: none; autoawq skipped:" in printed
    report = json.loads(out.read_text())
    assert report["peers"]["autoawq"]["ran"] is False
    rows = report["results"]
    assert list(rows) == ["FP", "RTN", "awqcore AWQ", "awqcore AWQ+GPTQ"]
    for name, text in ((n, t) for n in rows for t in ("wiki", "ood")):
        fp, rtn, ppl = (rows[r][text]["ppl"] for r in ("FP", "RTN", name))
        # A random tiny model's RTN may not be worse than FP: then there is no share.
        expected = (ppl - fp) / (rtn - fp) if rtn > fp else None
        assert rows[name][text]["share"] == pytest.approx(expected), (name, text, rows)
    # --reuse evaluates the kept files again instead of quantizing: the same
    # numbers; --methods leaves awq's row out.
    kept = tmp_path / "work" / "awq-gptq.awqbin"
    written = kept.stat().st_mtime_ns
    again = tmp_path / "again.json"
    assert tool.main([SPEC, "--group-size", "32", "--calib-samples", "2", "--calib-seqlen", "32",
                      "--ood-text", str(ood), "--eval-seqlen", "16", "--wiki-windows", "2",
                      "--ood-windows", "2", "--threads", "1", "-q", "--json", str(again),
                      "--keep", str(tmp_path / "work"), "--reuse", "--peers", "",
                      "--methods", "awq-gptq"]) == 0
    assert kept.stat().st_mtime_ns == written
    assert json.loads(again.read_text())["results"] == {
        name: row for name, row in rows.items() if name != "awqcore AWQ"}
    # The RTN row against the torch reference of the same file's dequantized
    # weights, on windows tokenized here: the C++ f32 path and torch agree to
    # float rounding, so the tool evaluated the file on the windows it says.
    quantized = AwqbinSource(str(tmp_path / "work" / "rtn.awqbin"))
    reference = ReferenceModel(quantized.config, quantized.get)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_str(quantized.tokenizer.json).encode(ood.read_text()).ids
    windows = [ids[i * 16:(i + 1) * 16] for i in range(2)]
    with torch.no_grad():
        nll = np.concatenate([window_nll(reference.forward(w).numpy(), w) for w in windows])
    assert rows["RTN"]["ood"]["ppl"] == pytest.approx(float(np.exp(nll.mean())), rel=1e-4)


def test_peer_python_per_peer(tool):
    args = tool.parse_args(["m", "--ood-text", "x", "--peer-python", "/a/python",
                            "--peer-python", "llmcompressor=/b/python"])
    assert args.peer_python == {"autoawq": "/a/python", "llmcompressor": "/b/python"}
    with pytest.raises(SystemExit):
        tool.parse_args(["m", "--ood-text", "x", "--peer-python", "nopeer=/b/python"])
    assert tool.parse_args(["m", "--ood-text", "x", "--methods", "awq-gptq"]).methods == [
        "rtn", "awq-gptq"]
    with pytest.raises(SystemExit):
        tool.parse_args(["m", "--ood-text", "x", "--methods", "awq,gptq"])


def test_peer_codes_convert_to_the_weights_they_encode(tool, tmp_path):
    """A peer's codes, zeros and f32 scales -> AutoAWQ folder -> `awqcore convert`:
    the .awqbin dequantizes to (code - zero) * f16(scale), computed here in numpy."""
    import shutil

    from safetensors.numpy import save_file

    from awqcore.importers.autoawq_format import convert_hf
    from awqcore.source import iter_linears

    source = load_source("synthetic:arch=llama,layers=1,seed=4")
    g, rng = 32, np.random.default_rng(0)
    raw, expected = {}, {}
    for prefix, (out_f, in_f) in iter_linears(source.config):
        codes = rng.integers(0, 16, (out_f, in_f), dtype=np.uint8)
        zeros = rng.integers(0, 16, (out_f, in_f // g), dtype=np.uint8)
        scales = rng.uniform(1e-3, 1e-1, (out_f, in_f // g)).astype(np.float32)
        raw.update({prefix + ".codes": codes, prefix + ".zeros": zeros,
                    prefix + ".scales": scales})
        wide = lambda t: np.repeat(t, g, axis=1).astype(np.float32)  # noqa: E731
        expected[prefix + ".weight"] = (codes - wide(zeros)) * wide(scales.astype(np.float16))
    for name in expected_tensor_shapes(source.config):
        if name not in expected:
            raw[name] = expected[name] = np.asarray(source.get(name), dtype=np.float32)
    save_file(raw, str(tmp_path / "codes.safetensors"))
    tool.autoawq_folder_from_codes(source, str(tmp_path / "codes.safetensors"),
                                   str(tmp_path / "gemm"), g)
    tool.write_float_checkpoint(source, str(tmp_path / "float"))
    shutil.copy(tmp_path / "float" / "tokenizer.json", tmp_path / "gemm")
    convert_hf(tmp_path / "gemm", tmp_path / "peer.awqbin")
    back = AwqbinSource(str(tmp_path / "peer.awqbin"))
    for name, want in expected.items():
        got = back.get(name)
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            want = want.astype(np.float16).astype(np.float32)  # the tables are f16
        assert np.array_equal(got, want), name
