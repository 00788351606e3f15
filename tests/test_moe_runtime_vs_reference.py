"""The C++ runtime on Mixtral and Qwen3-MoE against the torch reference of the same
quantized weights, end to end: a tiny checkpoint (tiny_models.SharpSource: randomized
norms, routers of gain 2 so tokens spread over the experts) written as a Hugging Face
folder and as a GGUF file, imported, quantized with RTN and with AWQ (whose scales
fold into the router too), and run with activations="f32"; awqcore.reference runs the
dequantized weights the pure-Python reader reads back (AwqbinSource).

Checked: logits over 72 tokens through prefill, through decode (chunk_tokens=1, one
token per step through the KV cache) and odd chunks (5); greedy tokens token by token;
a batch of different prompts equal to each alone.

Tolerance: as tests/test_families_runtime.py, 2e-5 of the largest logit. Both sides
compute in f32 from identical weights and differ in summation order and exp; the
router's softmax and top-k see the same f32 logits up to that rounding, so every
token picks the same experts (a flip would move the logits by O(1): a wrong rank's
weight moves them by 0.6-0.75, test_moe_reference). Measured: printed per case.
"""
from __future__ import annotations

import numpy as np
import pytest

import awqcore
from awqcore.awqbin_source import AwqbinSource
from awqcore.importers import load_source
from awqcore.quantize.pipeline import quantize_model
from awqcore.reference import ReferenceModel
from checks import assert_greedy_matches, assert_logits_match, random_prompt, reference_logits
from test_moe_import import gguf_source, write_moe_gguf
from tiny_models import MOE_FAMILY_NAMES, SharpSource, write_hf_checkpoint

REL_TOL = 2e-5
PROMPT_TOKENS = 72
NEW_TOKENS = 12
# Two cases in CI (each family, each origin, each method once); the other six are slow.
FAST = {("mixtral", "gguf", "rtn"), ("qwen3_moe", "hf", "awq")}
CASES = [pytest.param((family, origin, method), id=f"{family}-{origin}-{method}",
                      marks=() if (family, origin, method) in FAST else pytest.mark.slow)
         for family in MOE_FAMILY_NAMES for origin in ("hf", "gguf") for method in ("rtn", "awq")]


def letters_text(tmp_path) -> str:
    """Calibration text in the tiny word-level vocabulary (single letters)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 60))
                                for _ in range(8)))
    return str(path)


@pytest.fixture(scope="module", params=CASES)
def moe_model(request, tmp_path_factory):
    family, origin, method = request.param
    folder = tmp_path_factory.mktemp(f"{family}-{origin}-{method}")
    if origin == "hf":
        write_hf_checkpoint(folder / "hf", SharpSource(family, seed=7))
        source = load_source(str(folder / "hf"))
    else:
        write_moe_gguf(folder / "m.gguf", gguf_source(family, seed=7))
        source = load_source(str(folder / "m.gguf"))
        # The GGUF carries tensors only: the tiny word-level tokenizer comes alongside.
        source.tokenizer = SharpSource(family).tokenizer
    options = dict(calib_samples=2, calib_seqlen=32, calib_text=letters_text(folder)) \
        if method == "awq" else {}
    path = folder / "model.awqbin"
    quantize_model(source, path, method, 32, progress=False, **options)
    model = awqcore.Model(path, threads=2, max_seq_len=128, max_batch=3, activations="f32")
    quantized = AwqbinSource(path)
    return "-".join(request.param), model, ReferenceModel(quantized.config, quantized.get)


@pytest.mark.parametrize("chunk_tokens", [None, 1, 5])
def test_logits_match_reference(moe_model, chunk_tokens):
    case, model, reference = moe_model
    ids = random_prompt(0, reference.config.vocab_size, PROMPT_TOKENS)
    ours = model.forward(ids, chunk_tokens=chunk_tokens)
    assert_logits_match(ours, reference_logits(reference, ids), REL_TOL,
                        f"{case} chunk_tokens={chunk_tokens}")


def test_greedy_tokens_match_reference(moe_model):
    case, model, reference = moe_model
    expected_all = [assert_greedy_matches(model, reference,
                                          random_prompt(seed, reference.config.vocab_size,
                                                        PROMPT_TOKENS),
                                          NEW_TOKENS, (case, seed))
                    for seed in (1, 2)]
    assert len({t for seq in expected_all for t in seq}) > 3, expected_all


def test_batch_of_different_prompts_equals_each_alone(moe_model):
    case, model, reference = moe_model
    prompt = random_prompt(3, reference.config.vocab_size, PROMPT_TOKENS)
    prompts = [prompt[:n] for n in (40, 7, 23)]
    batch = model.generate(prompts, max_new_tokens=8, stop=[])
    alone = [model.generate(p, max_new_tokens=8, stop=[]) for p in prompts]
    assert batch == alone, case
