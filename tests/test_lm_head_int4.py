"""The int4 lm_head (`awqcore quantize --lm-head int4`, docs/format.md): the
pipeline stores the lm_head as a 4-bit linear, RTN at the file's group size,
untying a tied model; the C++ runtime's logits match the torch reference of
the same dequantized weights (read by the pure-Python reader, independent of
the C++ loader), and not the reference with the lm_head left in f16.

Tolerance: REL_TOL_TINY of test_runtime_vs_reference (f32 on both sides, the
lm_head one more length-d sum like the table it replaces)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import awqcore
from awqcore.awqbin import read_awqbin
from awqcore.awqbin_source import AwqbinSource
from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.quantize import quantize_model
from awqcore.quantize.rtn import unpack_int4
from awqcore.reference import ReferenceModel
from checks import assert_context_dependent, assert_greedy_matches, max_relative_error

REL_TOL_TINY = 1e-5
GROUP = 32


@pytest.fixture(scope="module", params=[("llama", "f16"), ("qwen2", "int8")],
                ids=["llama-untied-f16", "qwen2-tied-int8"])
def int4_head_file(request, tmp_path_factory):
    arch, embeddings = request.param
    source = SyntheticSource(tiny_config(arch), seed=7)
    path = tmp_path_factory.mktemp("tiny") / f"tiny-{arch}-int4-head.awqbin"
    summary = quantize_model(source, path, method="rtn", group_size=GROUP, progress=False,
                             embeddings=embeddings, lm_head="int4")
    assert summary["lm_head"] == "int4"
    return arch, embeddings, source, path


def test_pipeline_stores_an_untied_int4_lm_head(int4_head_file):
    arch, embeddings, source, path = int4_head_file
    f = read_awqbin(path)
    c = source.config
    assert c.tie_word_embeddings is (arch == "qwen2")
    assert f.metadata["model.tie_word_embeddings"] == 0
    shapes = {n: (e.dtype, e.shape) for n, e in f.tensors.items() if n.startswith("lm_head")}
    assert shapes == {"lm_head.qweight": ("u8", (c.vocab_size, c.hidden_size // 2)),
                      "lm_head.scales": ("f16", (c.vocab_size, c.hidden_size // GROUP)),
                      "lm_head.zeros": ("u8", (c.vocab_size, c.hidden_size // GROUP))}
    table = "model.embed_tokens.weight" + ("_q8" if embeddings == "int8" else "")
    assert table in f.tensors
    # RTN of the source's lm_head (the embedding when tied): every weight within
    # half a step of its group's scale, codes 0..15.
    original = source.get("model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight")
    deq = AwqbinSource(path).get("lm_head.weight")
    step = np.repeat(np.asarray(f.tensor("lm_head.scales"), dtype=np.float64), GROUP, axis=1)
    err = np.abs(deq.astype(np.float64) - original)
    print(f"tiny {arch}: int4 lm_head max |w - deq| / scale = {(err / step).max():.3f} (bound 0.5)")
    assert (err <= step / 2 * (1 + 1e-3)).all()
    assert unpack_int4(np.asarray(f.tensor("lm_head.qweight"))).max() <= 15


def test_runtime_matches_reference_with_int4_lm_head(int4_head_file):
    arch, _, source, path = int4_head_file
    model = awqcore.Model(path, threads=2, max_seq_len=64, activations="f32")
    quantized = AwqbinSource(path)
    lm_head_name = "model.embed_tokens.weight" if source.config.tie_word_embeddings else "lm_head.weight"

    def f16_lm_head(name: str) -> np.ndarray:
        if name == "lm_head.weight":
            return source.get(lm_head_name).astype(np.float16).astype(np.float32)
        return quantized.get(name)

    ids = np.random.default_rng(3).integers(0, model.config["vocab_size"], size=40).tolist()
    ours = model.forward(ids)
    reference = ReferenceModel(quantized.config, quantized.get)
    with torch.no_grad():
        theirs = reference.forward(ids).numpy()
        with_f16 = ReferenceModel(quantized.config, f16_lm_head).forward(ids).numpy()
    error, distance = max_relative_error(ours, theirs), max_relative_error(ours, with_f16)
    print(f"tiny {arch} int4 lm_head: max relative logit error {error:.2e}; "
          f"{distance:.2e} from the f16-lm_head reference")
    assert error < REL_TOL_TINY
    assert distance > 10 * error
    assert_context_dependent(assert_greedy_matches(model, reference, ids[:8], 24))


def test_cli_defaults_and_lm_head_flag(tmp_path, capsys):
    from awqcore.cli import main

    spec = "synthetic:arch=qwen2,layers=1"
    default, int4 = tmp_path / "default.awqbin", tmp_path / "int4.awqbin"
    assert main(["quantize", spec, "--group-size", "32", "-q", "--out", str(default)]) == 0
    assert "int8 embedding tables, " in capsys.readouterr().out
    assert "model.embed_tokens.weight_q8" in read_awqbin(default).tensors
    assert main(["quantize", spec, "--group-size", "32", "-q", "--embeddings", "f16",
                 "--lm-head", "int4", "--out", str(int4)]) == 0
    assert "f16 embedding tables, int4 lm_head" in capsys.readouterr().out
    tensors = read_awqbin(int4).tensors
    assert "model.embed_tokens.weight" in tensors and "lm_head.qweight" in tensors
    with pytest.raises(ValueError, match="lm_head must be one of table, int4"):
        quantize_model(SyntheticSource(tiny_config("llama")), tmp_path / "x.awqbin",
                       lm_head="int8", progress=False)
