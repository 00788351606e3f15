"""Gemma 3 270M (the gemma3-270m built-in) end to end: quantized with RTN at
group size 128, the C++ runtime against the torch reference of the same int4
weights, and the file's tokenizer against llama.cpp's. Slow (a 253 MB GGUF
with a 262,144-token vocabulary); skips without the registry packages.

The tolerance is that of test_runtime_vs_reference.py (both sides in float32
from identical dequantized weights, differing in summation order only)."""
from __future__ import annotations

import pytest
import torch

import awqcore
from awqcore.awqbin_source import AwqbinSource
from awqcore.importers import load_source, registry
from awqcore.quantize.pipeline import quantize_model
from awqcore.reference import ReferenceModel
from checks import assert_logits_match

pytestmark = pytest.mark.slow

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
        "France. It is named after the engineer Gustave Eiffel, whose company designed it.")
REL_TOL = 1e-3


@pytest.fixture(scope="module")
def gemma3_awqbin(tmp_path_factory):
    try:
        registry.gemma3_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    path = tmp_path_factory.mktemp("gemma3") / "gemma3-rtn-g128.awqbin"
    quantize_model(load_source("gemma3-270m"), path, method="rtn", group_size=128,
                   progress=False)
    return path


@pytest.fixture(scope="module")
def gemma3(gemma3_awqbin):
    source = AwqbinSource(gemma3_awqbin)
    model = awqcore.Model(gemma3_awqbin, threads=2, max_seq_len=256, activations="f32")
    return model, ReferenceModel(source.config, source.get)


def test_gemma3_logits_match_reference(gemma3):
    model, reference = gemma3
    ids = model.tokenizer.encode(TEXT).ids
    assert ids[0] == 2 and len(ids) > 30  # <bos> added, as llama.cpp does
    ours = model.forward(ids)
    with torch.no_grad():
        theirs = reference.forward(ids).numpy()
    assert ours.shape == theirs.shape == (len(ids), 262_144)
    assert_logits_match(ours, theirs, REL_TOL, "Gemma 3 270M int4 g128")


def test_gemma3_greedy_matches_reference(gemma3):
    model, reference = gemma3
    prompt = model.tokenizer.encode("The capital of France is").ids
    ours = model.generate(prompt, max_new_tokens=16, temperature=0.0, stop=[])
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(16):
            ids.append(int(reference.forward(ids)[-1].argmax()))
    assert ours == ids[len(prompt):]
    assert len(set(ours)) > 3  # a real continuation, not one token repeated


def test_gemma3_file_tokenizes_as_llama_cpp(gemma3):
    llama_cpp = pytest.importorskip("llama_cpp")
    model, _ = gemma3
    vocab = llama_cpp.Llama(model_path=str(registry.gemma3_gguf_path()), vocab_only=True,
                            verbose=False)
    for text in (TEXT, "<start_of_turn>user\nHi 🤖<end_of_turn>\n", "  x\n\n\ty  "):
        assert model.tokenizer.encode(text).ids == vocab.tokenize(
            text.encode("utf-8"), add_bos=True, special=True)
