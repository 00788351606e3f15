"""The C++ forward pass of every family against the torch reference of the same
quantized weights.

Each family's tiny checkpoint (tiny_models.SharpSource: randomized norms and
biases, weights sharp enough that the context decides the next token) is written
as a Hugging Face folder, imported, quantized (RTN, g32) and run by the runtime
with activations="f32"; awqcore.reference runs the dequantized weights read back
by the pure-Python reader. Prompts of 72 tokens pass the sliding windows (8) and
the rope scalings' original context (32) many times over. The decode path
(chunk_tokens=1, one token per step through the KV cache) and odd chunks (5, so
chunks straddle window edges) are compared too, and greedy generation token by token.

Tolerance: both sides compute in float32 from identical dequantized weights and
differ only in summation order and in the transcendental functions (exp, tanh,
the rotary angles): measured 4e-7 to 2.9e-6 of the largest logit (printed per
family and path), so 2e-5 is a margin of 7x or more, while every feature of the
description moves the logits by >=5e-2 when it is wrong (the sizes are listed in
test_reference_vs_transformers; a runtime that ignores Llama 3's rope scaling is
0.75 away here).
"""
from __future__ import annotations

import pytest

import awqcore
from awqcore.awqbin_source import AwqbinSource
from awqcore.importers import load_source
from awqcore.quantize.pipeline import quantize_model
from awqcore.reference import ReferenceModel
from checks import assert_greedy_matches, assert_logits_match, random_prompt, reference_logits
from tiny_models import FAMILY_NAMES, SharpSource, write_hf_checkpoint

REL_TOL = 2e-5
PROMPT_TOKENS = 72
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_model(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    write_hf_checkpoint(folder / "hf", SharpSource(family, seed=7))
    path = folder / "model.awqbin"
    quantize_model(load_source(str(folder / "hf")), path, "rtn", 32, progress=False)
    model = awqcore.Model(path, threads=2, max_seq_len=128, activations="f32")
    source = AwqbinSource(path)
    return family, model, ReferenceModel(source.config, source.get)


@pytest.mark.parametrize("chunk_tokens", [None, 1, 5])
def test_logits_match_reference(family_model, chunk_tokens):
    family, model, reference = family_model
    ids = random_prompt(0, reference.config.vocab_size, PROMPT_TOKENS)
    ours = model.forward(ids, chunk_tokens=chunk_tokens)
    assert_logits_match(ours, reference_logits(reference, ids), REL_TOL,
                        f"{family} chunk_tokens={chunk_tokens}")


def test_greedy_tokens_match_reference(family_model):
    family, model, reference = family_model
    expected_all = [assert_greedy_matches(model, reference,
                                          random_prompt(seed, reference.config.vocab_size,
                                                        PROMPT_TOKENS),
                                          NEW_TOKENS, (family, seed))
                    for seed in (1, 2, 3)]
    # The test can only catch a wrong attention if the context decides the tokens.
    assert len({t for seq in expected_all for t in seq}) > 3, expected_all
    assert len({tuple(seq) for seq in expected_all}) == 3, expected_all
