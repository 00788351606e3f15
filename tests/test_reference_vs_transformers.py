"""The torch reference against transformers itself, for every family.

awqcore.reference is written from transformers' definitions; this is the
independent check that it got them right. For each family a tiny random model
is built by transformers from a config.json as the Hub spells it, given sharp
random weights (tiny_models.SharpSource: randomized norms and biases), saved by
transformers' own save_pretrained (so the importer also reads the
transformers-5 config keys, e.g. Gemma 3's per-layer-type rope_parameters),
imported by HFSource and run by ReferenceModel; transformers runs the same
model with eager attention.

Tolerance: both sides compute in float32 from the same weights; they differ
in summation order and in the rotary angles, which the reference computes in
float64 and transformers in float32 (an angle p·f of up to ~70 radians carries
~4e-6 of absolute rounding). Measured over 72 tokens: 4e-7 to 2.3e-6 (Mistral)
of the largest logit, so 2e-5 leaves a margin of 8x or more. Each feature,
broken on purpose in the reference, moves the logits by 5e-2 (YaRN without
its truncation) to 1.9: Gemma's norms as w instead of 1 + w 1.9, Gemma without
its soft-cap 1.9, a window one position wider 0.59 (Mistral) and 1.3 (Gemma),
Llama 3 without its scaling 0.86, YaRN without its attention factor 0.16,
Gemma's attention scale as 1/sqrt(hd) 0.46, Qwen3 without q/k norms 0.82,
Qwen2 without biases 0.96.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from awqcore.importers.hf_model import HFSource
from awqcore.reference import ReferenceModel
from checks import assert_reference_matches_transformers
from tiny_models import FAMILY_NAMES, SharpSource, hf_config_json, write_hf_tokenizer

transformers = pytest.importorskip("transformers")

REL_TOL = 2e-5


def transformers_model(tmp_path, source: SharpSource):
    """The family's transformers model with the source's weights, and the folder its
    save_pretrained wrote (plus the source's tokenizer files)."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(hf_config_json(source.config)))
    config = transformers.AutoConfig.from_pretrained(config_dir)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float().eval()
    weights = {n: torch.from_numpy(t) for n, t in source.hf_tensors().items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # A tied lm_head is the embedding, not a tensor of its own.
    assert missing == (["lm_head.weight"] if source.config.tie_word_embeddings else [])
    assert unexpected == []
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    write_hf_tokenizer(folder, source)
    return model, folder


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reference_matches_transformers(family, tmp_path):
    source = SharpSource(family, seed=1)
    model, folder = transformers_model(tmp_path, source)
    imported = HFSource(folder)
    assert imported.config == dataclasses.replace(source.config, name=imported.config.name)
    assert_reference_matches_transformers(ReferenceModel(imported.config, imported.get), model,
                                          source.config.vocab_size, REL_TOL, family)
