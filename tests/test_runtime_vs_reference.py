"""The C++ forward pass against an independent torch reference of the same
quantized weights (dequantized by the pure-Python reader), for each architecture.

The runtime runs with activations="f32" here: its default int8 decode
activations (W4A8) are an approximation of this arithmetic by design, checked
against it in test_int8_decode_stays_close_to_f32.

Tolerance: both sides compute in float32 from identical dequantized weights and
differ only in summation order (the runtime's blocked row sums against torch's BLAS)
and the softmax/exp implementations. A length-K f32 sum of terms of random sign
carries a relative rounding error of about u*sqrt(K) (u = 2^-24 = 6.0e-8), and the
roundings of successive ops are independent, so over n ops in series they add in
quadrature: u * sqrt(K) * sqrt(n).
  tiny models: K <= 128 (MLP), n = 2 layers x 5 (qkv, scores, o, gate/up, down) + lm_head
  = 11: 6.0e-8 * 11.3 * 3.3 = 2.2e-6; REL_TOL_TINY = 1e-5 (4.5x that; measured 9e-7).
  SmolLM2-135M: K <= 1536, n = 30 x 5 + 1 = 151: 6.0e-8 * 39 * 12.3 = 2.9e-5;
  REL_TOL_SMOLLM2 = 1e-4 (3.4x that; measured 5e-6).
A wrong rotary pairing, no rotary, a transposed weight or an f16-rounded residual
stream move the logits by far more. Measured on the tiny models (seed 7) with the
reference so broken: interleaved rotary pairs 0.99 (Llama) / 0.92 (Qwen2), no rotary
0.96 / 1.1, the residual stream rounded to f16 after each layer 3.7e-4 / 2.7e-4.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import awqcore
from awqcore.awqbin import read_awqbin
from awqcore.awqbin_source import AwqbinSource
from awqcore.importers.synthetic import SyntheticSource, tiny_config
from awqcore.reference import ReferenceModel
from checks import (assert_context_dependent, assert_greedy_matches, assert_logits_match,
                    max_relative_error, reference_logits)

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
        "France. It is named after the engineer Gustave Eiffel, whose company designed it.")
REL_TOL_TINY = 1e-5
REL_TOL_SMOLLM2 = 1e-4


def reference_of(path) -> ReferenceModel:
    source = AwqbinSource(path)
    return ReferenceModel(source.config, source.get)


@pytest.fixture(scope="module")
def smollm2(smollm2_awqbin):
    return awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=256, activations="f32"), reference_of(smollm2_awqbin)


def test_smollm2_logits_match_reference(smollm2):
    model, reference = smollm2
    ids = model.tokenizer.encode(TEXT).ids
    assert len(ids) > 30
    ours = model.forward(ids)
    theirs = reference_logits(reference, ids)
    assert ours.shape == theirs.shape == (len(ids), model.config["vocab_size"])
    assert_logits_match(ours, theirs, REL_TOL_SMOLLM2, f"SmolLM2 int4 g64, {len(ids)} tokens")


def test_smollm2_greedy_matches_reference_for_32_tokens(smollm2):
    model, reference = smollm2
    ids = model.tokenizer.encode("The capital of France is").ids
    ours = model.generate(ids, max_new_tokens=32, stop=[])
    with torch.no_grad():
        theirs = reference.greedy_generate(ids, 32)
    assert ours == theirs, (model.tokenizer.decode(ours), model.tokenizer.decode(theirs))
    assert "Paris" in model.tokenizer.decode(ours)


def test_tiny_models_match_reference(tiny_awqbin):
    arch, path = tiny_awqbin
    model = awqcore.Model(path, threads=2, max_seq_len=64, activations="f32")
    reference = reference_of(path)
    assert model.config["architecture"] == arch
    assert model.config["attention_bias"] == (arch == "qwen2")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config["vocab_size"], size=40).tolist()
    ours = model.forward(ids)
    theirs = reference_logits(reference, ids)
    error = max_relative_error(ours, theirs)
    print(f"tiny {arch}: max relative logit error {error:.2e}")
    assert error < REL_TOL_TINY
    assert_context_dependent(assert_greedy_matches(model, reference, ids[:8], 32))


def test_tiny_int8_tables_match_reference(tiny_int8_awqbin):
    """int8 embedding/lm_head tables (untied Llama: two, tied Qwen2: one): the C++
    logits match the reference of the same dequantized tables, and are much
    farther from a reference that keeps the tables in f16, so this comparison
    tells the two forms apart."""
    arch, path = tiny_int8_awqbin
    tensors = read_awqbin(path).tensors
    assert "model.embed_tokens.weight_q8" in tensors and "model.embed_tokens.weight" not in tensors
    assert ("lm_head.weight_q8" in tensors) is (arch == "llama")
    assert not any(n.endswith(".weight") and ("embed" in n or "lm_head" in n) for n in tensors)
    model = awqcore.Model(path, threads=2, max_seq_len=64, activations="f32")
    source = AwqbinSource(path)
    original = SyntheticSource(tiny_config(arch), seed=7)  # what conftest quantized

    def f16_tables(name: str) -> np.ndarray:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return original.get(name).astype(np.float16).astype(np.float32)
        return source.get(name)

    ids = np.random.default_rng(1).integers(0, model.config["vocab_size"], size=40).tolist()
    ours = model.forward(ids)
    with torch.no_grad():
        theirs = ReferenceModel(source.config, source.get).forward(ids).numpy()
        with_f16 = ReferenceModel(source.config, f16_tables).forward(ids).numpy()
    error = max_relative_error(ours, theirs)
    distance_to_f16 = max_relative_error(ours, with_f16)
    print(f"tiny {arch} int8 tables: max relative logit error {error:.2e}; "
          f"{distance_to_f16:.2e} from the f16-table reference")
    assert error < REL_TOL_TINY
    assert distance_to_f16 > 10 * error
    assert_context_dependent(assert_greedy_matches(model, ReferenceModel(source.config, source.get),
                                                   ids[:8], 32))


def test_smollm2_int8_table_matches_reference(smollm2_int8_awqbin):
    model = awqcore.Model(smollm2_int8_awqbin, threads=2, max_seq_len=256, activations="f32")
    reference = reference_of(smollm2_int8_awqbin)
    ids = model.tokenizer.encode(TEXT).ids
    ours = model.forward(ids)
    theirs = reference_logits(reference, ids)
    assert_logits_match(ours, theirs, REL_TOL_SMOLLM2,
                        f"SmolLM2 int4 g64, int8 table, {len(ids)} tokens")
    prompt = model.tokenizer.encode("The capital of France is").ids
    generated = model.generate(prompt, max_new_tokens=32, stop=[])
    with torch.no_grad():
        assert generated == reference.greedy_generate(prompt, 32)
    assert "Paris" in model.tokenizer.decode(generated)


def test_prefill_equals_token_by_token(tiny_awqbin):
    """Logits of a prefill equal those of feeding one token at a time: the KV
    cache holds exactly what a full recomputation would."""
    _, path = tiny_awqbin
    model = awqcore.Model(path, threads=1, max_seq_len=64, activations="f32")
    ids = list(range(3, 23))
    full = model.forward(ids)
    one_by_one = np.stack([model.forward(ids[: t + 1])[-1] for t in range(len(ids))])
    assert max_relative_error(one_by_one, full) < 1e-5
    assert max_relative_error(model.forward(ids, chunk_tokens=1), full) < 1e-5
    # int8 activations: each token's are rounded on their own, and the int4
    # linears compute a token the same in calls of any size, so calls of 1
    # and of 8 tokens compute the same thing.
    int8 = awqcore.Model(path, threads=1, max_seq_len=64)
    assert np.array_equal(int8.forward(ids, chunk_tokens=1), int8.forward(ids, chunk_tokens=8))


@pytest.mark.parametrize("table", ["f16", "int8"])
def test_int8_decode_stays_close_to_f32(table, smollm2_awqbin, smollm2_int8_awqbin):
    """The default decode arithmetic (int8 activations, W4A8; with an int8
    table also a W8A8 lm_head) against the exact f32 one on SmolLM2, every
    position computed as a decode step computes it. Rounding moves each
    activation by <= 1/254 of its 32-block's max, ~3e-3 of a linear's output
    (test_simd_kernels); through 30 layers the next-token distributions stay
    close: mean KL measured 3.1e-3 nats with the f16 table, 3.6e-3 with the
    int8 one (tolerance 2e-2; both with the f16 KV cache), the top-1 token
    the same at >= 90% of positions (measured 98.6% of 74 for both). A
    broken W4A8 or W8A8 path (a wrong nibble or scale) gives KL of order 1 and
    near-random top-1."""
    path = smollm2_awqbin if table == "f16" else smollm2_int8_awqbin
    int8 = awqcore.Model(path, threads=2, max_seq_len=256)
    exact = awqcore.Model(path, threads=2, max_seq_len=256, activations="f32")
    ids = int8.tokenizer.encode(TEXT + " " + TEXT).ids
    a = int8.forward(ids, chunk_tokens=8).astype(np.float64)
    b = exact.forward(ids, chunk_tokens=8).astype(np.float64)
    kl, top1 = _kl_and_top1(a, b)
    print(f"SmolLM2 ({table} table) int8 vs f32 decode over {len(ids)} positions: mean KL {kl:.2e} nats, "
          f"top-1 agreement {100 * top1:.1f}%")
    assert kl < 2e-2
    assert top1 >= 0.9


def _kl_and_top1(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean KL(b || a) of the next-token distributions, and the fraction of
    positions with the same top-1 token."""
    la = a - a.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    return float((np.exp(lb) * (lb - la)).sum(-1).mean()), float((a.argmax(-1) == b.argmax(-1)).mean())


def test_int8_prefill_stays_close_to_f32_and_to_decode(smollm2_awqbin):
    """The default prefill (the int4 linears take int8 activations in calls
    of any size: the int8 GEMM) against the exact f32 prefill of the same
    weights (itself within REL_TOL_SMOLLM2 of the torch reference, above), over
    a prompt of 74 tokens in one call, and against the int8 decode steps.
    Against f32: the same rounding as decode, so the same bounds as
    test_int8_decode_stays_close_to_f32 (KL < 2e-2 nats, top-1 >= 90%).
    Against decode: on AVX2 CPUs every int4 linear computes a token bit for
    bit as a decode step does (test_gemm_kernels) and only the attention's
    summation order differs (measured: KL 0); on AVX-512 ones the decode GEMV
    sums in another order too, and a difference of one f32 rounding can move
    an activation's int8 rounding by a step, which then spreads through the
    layers: the two are then as far apart as either is from f32 (measured
    2.4e-3 nats, top-1 97.3%), so the same bounds. A prefill that took the
    wrong token's activations or scales gives KL of order 1."""
    int8 = awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=256)
    exact = awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=256, activations="f32")
    ids = int8.tokenizer.encode(TEXT + " " + TEXT).ids
    prefill = int8.forward(ids).astype(np.float64)
    decode = int8.forward(ids, chunk_tokens=1).astype(np.float64)
    kl_f32, top1_f32 = _kl_and_top1(prefill, exact.forward(ids).astype(np.float64))
    kl_decode, top1_decode = _kl_and_top1(prefill, decode)
    print(f"SmolLM2 int8 prefill over {len(ids)} positions: vs f32 prefill mean KL {kl_f32:.2e} nats, "
          f"top-1 {100 * top1_f32:.1f}%; vs int8 decode mean KL {kl_decode:.2e}, top-1 "
          f"{100 * top1_decode:.1f}%")
    assert kl_f32 < 2e-2 and top1_f32 >= 0.9
    assert kl_decode < 2e-2 and top1_decode >= 0.9


def test_threads_do_not_change_logits(tiny_awqbin):
    _, path = tiny_awqbin
    ids = list(range(1, 30))
    one = awqcore.Model(path, threads=1, activations="f32").forward(ids)
    two = awqcore.Model(path, threads=2, activations="f32").forward(ids)
    assert max_relative_error(two, one) < 1e-5


def _printed_perplexity(output: str) -> float:
    line = next(line for line in output.splitlines() if line.startswith("perplexity"))
    return float(line.split()[1])


def test_ppl_command_matches_reference_perplexity(tiny_awqbin, tmp_path, capsys):
    """`awqcore ppl` (exact f32 arithmetic unless --decode-path) against the torch
    reference's perplexity over the same windows. Each token's nll moves by at most
    2 * REL_TOL_TINY * max|logit| (~1e-4 here), so the perplexity by ~1e-4 relative, plus
    the printing's 3 decimals. --decode-path against the runtime's own decode-step
    arithmetic (int8 activations, f16 KV cache: forward in calls of
    INT8_DECODE_MAX_TOKENS tokens) over the same windows: the same computation, so
    equal to the printed digits."""
    from awqcore.cli import main
    from awqcore.evaluate import perplexity, token_windows

    _, path = tiny_awqbin
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join([TEXT] * 8))
    assert main(["ppl", str(path), "--text", str(text), "--seqlen", "24", "--max-windows", "3",
                 "-q", "--threads", "2"]) == 0
    output = capsys.readouterr().out
    assert "3 non-overlapping windows x 24 tokens" in output and "runtime exact" in output
    ours = _printed_perplexity(output)

    decode_model = awqcore.Model(path, threads=2, max_seq_len=24)
    windows = token_windows(decode_model.tokenizer.encode("\n\n".join([TEXT] * 8)).ids, 24, 3)
    reference = reference_of(path)
    with torch.no_grad():
        theirs = perplexity(lambda w: reference.forward(w).numpy(), windows, progress=False)
    assert ours == pytest.approx(theirs.perplexity, rel=1e-4, abs=1e-3)

    assert main(["ppl", str(path), "--text", str(text), "--seqlen", "24", "--max-windows", "3",
                 "-q", "--threads", "2", "--decode-path"]) == 0
    output = capsys.readouterr().out
    assert "decode-step arithmetic" in output
    decode = _printed_perplexity(output)
    step = awqcore.INT8_DECODE_MAX_TOKENS
    decode_steps = perplexity(lambda w: decode_model.forward(w, chunk_tokens=step), windows,
                              progress=False)
    print(f"ppl command {ours:.3f}, torch reference {theirs.perplexity:.4f}, "
          f"--decode-path {decode:.3f}, forward(chunk_tokens={step}) {decode_steps.perplexity:.4f}")
    assert decode == pytest.approx(decode_steps.perplexity, rel=1e-6, abs=1e-3)
    # The int8 rounding is visible at the printed precision, so the line above tells
    # the decode-step arithmetic from the exact one.
    assert abs(decode - ours) > 1e-2
