"""Batched generation through the Python API: `Model.generate([p1, p2, ...])`
gives what `generate(p)` gives for each prompt alone under greedy decoding
(tiny random models and the real SmolLM2), per-prompt sampling streams and
errors that name the bad prompt. More prompts than max_batch, so prompts join
slots that others freed, and stop ids that occur, so sequences end mid-batch."""
from __future__ import annotations


import numpy as np
import pytest

import awqcore
from checks import assert_context_dependent


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
    free = [model.generate(p, max_new_tokens=12, stop=[]) for p in prompts]
    assert len(free[3]) <= 3
    for tokens in free:
        assert_context_dependent(tokens)
    stop_id = free[1][3]  # occurs: prompt 1 (at least) ends after at most 4 tokens
    for options in (dict(max_new_tokens=12, stop=[]), dict(max_new_tokens=12),
                    dict(max_new_tokens=12, stop=[stop_id])):
        expected = [model.generate(p, **options) for p in prompts]
        got = model.generate(prompts, **options)
        assert isinstance(got, list) and all(isinstance(t, list) for t in got)
        assert got == expected, (max_batch, options)
    assert len(expected[1]) <= 4 and expected[1][-1] == stop_id
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
    """5 prompts over 2 slots with every sampling option: prompts 2..4 take slots that
    others freed, so a seed by slot instead of by prompt gives them other tokens (checked
    below), and a stop id that occurs ends prompt 1 early, changing when slots free."""
    model = awqcore.Model(tiny, threads=2, max_seq_len=48, max_batch=2)
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9,
                  repetition_penalty=1.3)
    prompts = prompts_of_lengths([2, 1, 3, 5, 4], model.config["vocab_size"], seed=2)
    free = [model.generate(p, seed=7 + i, stop=[], **kwargs) for i, p in enumerate(prompts)]
    for option, neutral in (("top_p", 1.0), ("repetition_penalty", 1.0)):  # both matter here
        assert free != [model.generate(p, seed=7 + i, stop=[], **{**kwargs, option: neutral})
                        for i, p in enumerate(prompts)], option
    stop_id = free[1][2]
    expected = [model.generate(p, seed=7 + i, stop=[stop_id], **kwargs)
                for i, p in enumerate(prompts)]
    assert len(expected[1]) <= 3 and expected[1][-1] == stop_id
    for i in range(2, 5):  # the streams of slots 0 and 1 differ from prompt i's own
        assert all(model.generate(prompts[i], seed=7 + slot, stop=[stop_id], **kwargs)
                   != expected[i] for slot in (0, 1)), i
    got = model.generate(prompts, seed=7, stop=[stop_id], **kwargs)
    assert got == expected
    assert model.generate(prompts, seed=7, stop=[stop_id], **kwargs) == got


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
