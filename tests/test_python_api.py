"""The Python API's contract: argument errors, stop rules, streaming, callbacks,
sampling reproducibility and the GIL being released during compute."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import awqcore
from checks import assert_context_dependent


@pytest.fixture(scope="module")
def model(tiny_awqbin):
    _, path = tiny_awqbin
    return awqcore.Model(path, threads=2, max_seq_len=48)


def test_bad_arguments_raise_value_error(model):
    vocab = model.config["vocab_size"]
    cases = [
        (lambda: model.generate([]), "empty prompt"),
        (lambda: model.generate([1, vocab]), f"token id {vocab} at position 1 is out of range"),
        (lambda: model.generate([-1]), "token id -1 at position 0 is out of range"),
        (lambda: model.forward(list(range(1, 50))), "max_seq_len"),
        (lambda: model.generate([1], temperature=-1.0), "temperature"),
        (lambda: model.generate([1], top_p=1.5), "top_p"),
        (lambda: model.generate([1], top_k=-2), "top_k"),
        (lambda: model.generate([1], repetition_penalty=0.0), "repetition_penalty"),
        (lambda: model.generate([1], max_new_tokens=-1), "max_new_tokens"),
        (lambda: model.generate([1], stop=[vocab + 5]), "stop id"),
        (lambda: model.generate("hello"), "encode text"),
        (lambda: model.forward([1, 2], chunk_tokens=0), "chunk_tokens"),
        (lambda: awqcore.Model(model.path, activations="int4"), "activations"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    # The model still works after every rejected call.
    assert len(model.generate([1, 2, 3], max_new_tokens=4, stop=[])) == 4


def test_prompt_longer_than_context(model):
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(list(range(1, 60)), max_new_tokens=2)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError):
        awqcore.Model(tmp_path / "absent.awqbin")
    not_a_model = tmp_path / "text.awqbin"
    not_a_model.write_text("hello, I am not a model" * 20)
    with pytest.raises(awqcore.FormatError, match="magic"):
        awqcore.Model(not_a_model)


def test_stop_rules(model):
    ids = [4, 8, 15, 16, 23, 42]
    free = model.generate(ids, max_new_tokens=12, stop=[])
    assert len(free) == 12
    assert_context_dependent(free)
    # Stopping at the 4th token's id: output ends there (stop token included).
    stop_token = free[3]
    first = free.index(stop_token)
    assert model.generate(ids, max_new_tokens=12, stop=[stop_token]) == free[: first + 1]


def test_on_token_can_stop_and_exceptions_propagate(model):
    seen: list[int] = []
    out = model.generate([1, 2, 3], max_new_tokens=20, stop=[],
                         on_token=lambda t: seen.append(t) or len(seen) < 5)
    assert out == seen and len(out) == 5

    class Boom(Exception):
        pass

    def explode(token):
        raise Boom(f"token {token}")

    with pytest.raises(Boom):
        model.generate([1, 2, 3], max_new_tokens=5, on_token=explode)
    assert len(model.generate([1, 2, 3], max_new_tokens=3, stop=[])) == 3


def test_stream_equals_generate(model):
    ids = [9, 8, 7]
    expected = model.generate(ids, max_new_tokens=10, stop=[])
    assert_context_dependent(expected)
    assert list(model.stream(ids, max_new_tokens=10, stop=[])) == expected
    # Closing a stream early stops the worker; the model is usable right after.
    stream = model.stream(ids, max_new_tokens=40, stop=[])
    next(stream)
    stream.close()
    assert len(model.generate(ids, max_new_tokens=2, stop=[])) == 2


def test_sampling_is_reproducible_with_a_seed(model):
    kwargs = dict(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, stop=[])
    a = model.generate([1, 2], seed=123, **kwargs)
    b = model.generate([1, 2], seed=123, **kwargs)
    assert a == b
    others = {tuple(model.generate([1, 2], seed=s, **kwargs)) for s in range(5)}
    assert len(others) > 1, "different seeds should give different samples"


def test_cpu_model_reports_no_device_memory(model):
    assert model.config["device"] == "cpu" and model.config["device_memory_bytes"] == 0


def test_forward_returns_float32_logits(model):
    logits = model.forward([1, 2, 3])
    assert logits.dtype == np.float32 and logits.shape == (3, model.config["vocab_size"])
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("prompts, max_batch", [([1, 2, 3, 4], 1),
                                                ([[1, 2, 3, 4], [5, 6]], 2)])
def test_gil_is_released_during_generate(smollm2_awqbin, prompts, max_batch):
    """A Python thread keeps running while generate computes (one prompt, or a
    batch): the counter of a busy-looping thread advances during the call."""
    big = awqcore.Model(smollm2_awqbin, threads=1, max_seq_len=64, max_batch=max_batch)
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.05)
    before = counter[0]
    started = time.perf_counter()
    big.generate(prompts, max_new_tokens=8, stop=[])
    elapsed = time.perf_counter() - started
    during = counter[0] - before
    stop.set()
    thread.join()
    # With the GIL held for `elapsed` seconds, the spinner would be starved
    # (only the 5 ms switch interval slices at most). Released, it loops
    # freely: at least ~100k increments per second on any machine.
    assert during > 100_000 * elapsed * 0.5, (during, elapsed)


def test_last_timing_splits_prefill_and_decode(model):
    """The runtime's own timing of its forward passes, which `awqcore bench`
    divides token counts by: one new token needs no decode step; more need
    one step each after the prefill, for a single prompt and for a batch."""
    model.generate([1, 2, 3], max_new_tokens=1, stop=[])
    t = model.last_timing()
    assert t["prefill_s"] > 0 and t["decode_s"] == 0
    model.generate([1, 2, 3], max_new_tokens=4, stop=[])
    t = model.last_timing()
    assert t["prefill_s"] > 0 and t["decode_s"] > 0
    model.generate([[1, 2, 3], [4, 5]], max_new_tokens=3, stop=[])
    t = model.last_timing()
    assert t["prefill_s"] > 0 and t["decode_s"] > 0


def test_run_command_on_a_missing_cuda_device_is_a_one_line_error(tiny_awqbin, capsys):
    """Without a CUDA build or device, `awqcore run --device cuda` exits 2 with
    the runtime's reason, not a traceback. With a GPU it runs (test_cuda.py
    covers the results)."""
    from awqcore.cli import main

    info = awqcore.cuda_device_info()
    code = main(["run", str(tiny_awqbin[1]), "-p", "hello", "-n", "2", "--device", "cuda"])
    err = capsys.readouterr().err
    if awqcore.built_with_cuda() and not info.startswith("no CUDA device"):
        assert code == 0 and "MiB of device memory" in err
    else:
        assert code == 2 and err.startswith("awqcore: error: ") and "CUDA" in err
