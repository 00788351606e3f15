"""Batched generation through the Python API: `Model.generate([p1, p2, ...])`
gives what `generate(p)` gives for each prompt alone under greedy decoding
(tiny random models and the real SmolLM2), per-prompt sampling streams and
errors that name the bad prompt."""
from __future__ import annotations


import numpy as np
import pytest

import awqcore


@pytest.fixture(scope="module")
def tiny(tiny_awqbin):
    _, path = tiny_awqbin
    return path


def prompts_of_lengths(lengths, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(5, vocab, n)] for n in lengths]


@pytest.mark.parametrize("max_batch", [3, 2, 5])
def test_batch_equals_one_by_one_on_tiny_models(tiny, max_batch):
    model = awqcore.Model(tiny, threads=2, max_seq_len=48, max_batch=max_batch)
    vocab = model.config["vocab_size"]
    assert model.config["max_batch"] == max_batch
    # 1 token, a few, and one that leaves room for only 3 new tokens.
    prompts = prompts_of_lengths([1, 4, 9, 45, 17], vocab)
    for options in (dict(max_new_tokens=12, stop=[]), dict(max_new_tokens=12)):
        expected = [model.generate(p, **options) for p in prompts]
        assert len(expected[3]) <= 3
        got = model.generate(prompts, **options)
        assert isinstance(got, list) and all(isinstance(t, list) for t in got)
        assert got == expected, (max_batch, options)
    # Tuples and a 2-D array of prompts are lists of prompts too.
    same = prompts_of_lengths([6, 6], vocab, seed=1)
    assert model.generate(np.array(same), max_new_tokens=5, stop=[]) == \
        model.generate([tuple(p) for p in same], max_new_tokens=5, stop=[])


def test_single_prompt_behaviour_is_unchanged(tiny):
    model = awqcore.Model(tiny, threads=2, max_seq_len=48, max_batch=2)
    out = model.generate([1, 2, 3], max_new_tokens=4, stop=[])
    assert isinstance(out, list) and all(isinstance(t, int) for t in out) and len(out) == 4
    assert model.generate(np.array([1, 2, 3]), max_new_tokens=4, stop=[]) == out
    assert model.generate(iter([1, 2, 3]), max_new_tokens=4, stop=[]) == out
    assert model.generate([[1, 2, 3]], max_new_tokens=4, stop=[]) == [out]


def test_bad_batches_name_the_prompt(tiny):
    model = awqcore.Model(tiny, threads=2, max_seq_len=48, max_batch=2)
    vocab = model.config["vocab_size"]
    cases = [
        (lambda: model.generate([[1], []]), "prompt 1: empty prompt"),
        (lambda: model.generate([[1], [2], [3, vocab]]),
         f"prompt 2: token id {vocab} at position 1 is out of range"),
        (lambda: model.generate([list(range(1, 50)), [1]]), "prompt 0: .*max_seq_len 48"),
        (lambda: model.generate([[1], [2]], max_new_tokens=-1), "max_new_tokens"),
        (lambda: model.generate([[1], [2]], top_p=0.0), "top_p"),
        (lambda: model.generate([[1], [2]], on_token=print), "single prompt"),
        (lambda: list(model.stream([[1], [2]])), "single prompt"),
        (lambda: awqcore.Model(tiny, max_batch=0), "max_batch"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="prompt 1: token id at position 0 is str 'a'"):
        model.generate([[1], ["a"]])
    assert model.generate([[1], [2, 3]], max_new_tokens=2, stop=[]) == \
        [model.generate([1], max_new_tokens=2, stop=[]), model.generate([2, 3], max_new_tokens=2, stop=[])]


def test_seeded_sampling_gives_prompt_i_the_stream_seed_plus_i(tiny):
    model = awqcore.Model(tiny, threads=2, max_seq_len=48, max_batch=3)
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=20, stop=[])
    prompts = [[1, 2], [3], [4, 5, 6]]
    got = model.generate(prompts, seed=7, **kwargs)
    assert got == [model.generate(p, seed=7 + i, **kwargs) for i, p in enumerate(prompts)]
    assert model.generate(prompts, seed=7, **kwargs) == got


def test_smollm2_batch_equals_one_by_one(smollm2_awqbin):
    """The real model, greedy: 3 prompts (per-token GEMV path) and 5 prompts
    decoded together (the tiled GEMM path from 4 live sequences on)."""
    model = awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=96, max_batch=5)
    tok = model.tokenizer
    texts = ["The capital of France is", "def fibonacci(n):",
             "Once upon a time, in a small village at the foot of the mountains, there lived",
             "1, 2, 3, 4,", "The chemical symbol of gold is"]
    prompts = [tok.encode(t).ids for t in texts]
    assert len({len(p) for p in prompts}) >= 4
    expected = [model.generate(p, max_new_tokens=16, stop=[]) for p in prompts]
    assert model.generate(prompts[:3], max_new_tokens=16, stop=[]) == expected[:3]
    assert model.generate(prompts, max_new_tokens=16, stop=[]) == expected
