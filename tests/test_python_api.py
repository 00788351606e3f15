"""The Python API's contract: argument errors, stop rules and stop reasons,
streaming, callbacks (and calls from inside them), sampling reproducibility,
resource errors and the GIL being released during compute."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import awqcore
from checks import assert_context_dependent, max_relative_error


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
        (lambda: model.forward([1, 2], chunk_tokens=0), "chunk_tokens"),
        (lambda: awqcore.Model(model.path, activations="int4"), "activations"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    # The model still works after every rejected call.
    assert len(model.generate([1, 2, 3], max_new_tokens=4, stop=[])) == 4


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate([1, 1.7]), "token id at position 1 is float 1.7"),
    (lambda m: m.generate([1, "5"]), "token id at position 1 is str '5'"),
    (lambda m: m.generate([True, 2]), "token id at position 0 is bool True"),
    (lambda m: m.generate([np.float32(3.0)]), "token id at position 0 is float32"),
    (lambda m: m.generate(np.array([1.0, 2.0])), "token id at position 0 is float64"),
    (lambda m: m.forward([[1], 2]), "token id at position 0 is list"),
    (lambda m: m.generate([[1, 2], [3, 4.5]]), "prompt 1: token id at position 1 is float"),
    (lambda m: m.generate("hello"), "encode text with model.tokenizer"),
    (lambda m: m.generate(5), "expected a sequence of token ids, got int 5"),
    (lambda m: m.generate([1], top_k=1.5), "top_k must be an integer .got float 1.5"),
    (lambda m: m.generate([1], max_new_tokens=4.0), "max_new_tokens must be an integer"),
    (lambda m: m.generate([1], max_new_tokens=True), "max_new_tokens must be an integer"),
    (lambda m: m.generate([1], seed="7"), "seed must be an integer .got str '7'"),
    (lambda m: m.generate([1], seed=1.0), "seed must be an integer"),
    (lambda m: m.generate([1], stop=5), "stop must be None or an iterable of token ids"),
    (lambda m: m.generate([1], stop="ab"), "stop must be None or an iterable"),
    (lambda m: m.generate([1], stop=[2.0]), "stop id at position 0 is float"),
    (lambda m: m.generate([1], temperature="0.5"), "temperature must be a number"),
    (lambda m: m.generate([1], top_p=None), "top_p must be a number"),
    (lambda m: m.generate([1], repetition_penalty=False), "repetition_penalty must be a number"),
    (lambda m: m.forward([1], chunk_tokens=2.0), "chunk_tokens must be an integer"),
])
def test_arguments_take_integers_only_naming_the_argument(model, call, message):
    """No silent coercion: int(1.7) == 1 and int('5') == 5 would pick tokens the
    caller never asked for."""
    with pytest.raises(TypeError, match=message):
        call(model)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate([1, 2**31]), "token id 2147483648 at position 1 is out of range"),
    (lambda m: m.generate([1], max_new_tokens=2**31), r"max_new_tokens must be in \[0, 2147483647\]"),
    (lambda m: m.generate([1], top_k=2**31), r"top_k must be at most 2147483647"),
    (lambda m: m.generate([1], seed=2**64), r"seed must be in \[0, 18446744073709551615\]"),
    (lambda m: m.generate([1], seed=-1), "seed must be in"),
    (lambda m: m.forward([1], chunk_tokens=2**40), "chunk_tokens must be in"),
])
def test_values_beyond_the_runtime_ints_are_value_errors(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_numpy_integers_are_ids(model):
    ids = [3, 9, 4]
    expected = model.generate(ids, max_new_tokens=3, stop=[])
    assert model.generate(np.array(ids, dtype=np.int32), max_new_tokens=np.int64(3),
                          stop=np.array([], dtype=np.int64), seed=np.uint64(5)) == expected
    assert model.generate([np.int16(3), np.uint8(9), 4], max_new_tokens=3, stop=[]) == expected
    assert model.generate([[np.int64(3), 9, 4]], max_new_tokens=3, stop=[]) == [expected]


def test_bad_constructor_arguments_name_the_argument(tiny_awqbin):
    path = tiny_awqbin[1]
    with pytest.raises(TypeError, match="max_seq_len must be an integer .got float"):
        awqcore.Model(path, max_seq_len=64.0)
    with pytest.raises(TypeError, match="threads must be an integer .got bool"):
        awqcore.Model(path, threads=True)
    with pytest.raises(ValueError, match=r"max_batch must be in \[1, 2147483647\] .got 2147483648"):
        awqcore.Model(path, max_batch=2**31)


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


def test_stop_reason_says_why_generation_ended(tiny_awqbin):
    """A short result is never silent: the context running out, a stop id, the
    callback and max_new_tokens are told apart, for one prompt and per prompt
    of a batch."""
    m = awqcore.Model(tiny_awqbin[1], threads=2, max_seq_len=16, max_batch=2)
    assert m.last_stop_reason is None
    free = m.generate([1, 5, 7], max_new_tokens=6, stop=[])
    assert m.last_stop_reason == "max_new_tokens" and len(free) == 6
    assert m.generate(list(range(1, 15)), max_new_tokens=6, stop=[]) == \
        m.generate(list(range(1, 15)), max_new_tokens=2, stop=[])
    assert m.last_stop_reason == "max_new_tokens"
    assert len(m.generate(list(range(1, 15)), max_new_tokens=6, stop=[])) == 2
    assert m.last_stop_reason == "context_full"
    assert m.generate(list(range(1, 17)), max_new_tokens=6) == []
    assert m.last_stop_reason == "context_full"
    assert m.generate([1, 5, 7], max_new_tokens=6, stop=[free[2]])[-1] == free[2]
    assert m.last_stop_reason == "stop_token"
    m.generate([1, 5, 7], max_new_tokens=6, stop=[], on_token=lambda t: False)
    assert m.last_stop_reason == "callback"
    stream = m.stream([1, 5, 7], max_new_tokens=6, stop=[])
    next(stream)
    stream.close()
    assert m.last_stop_reason == "callback"
    out = m.generate([[1, 5, 7], list(range(1, 15)), list(range(1, 17))], max_new_tokens=6,
                     stop=[])
    assert [len(o) for o in out] == [6, 2, 0]
    assert m.last_stop_reason == ["max_new_tokens", "context_full", "context_full"]
    with pytest.raises(ValueError):
        m.generate([1], temperature=-1.0)
    assert m.last_stop_reason is None
    assert set(awqcore.STOP_REASONS) == {"stop_token", "max_new_tokens", "context_full",
                                         "callback"}


def _finishes(target, seconds: float = 60.0) -> bool:
    """Runs target in a daemon thread; False if it is still running after
    `seconds` (a hang, which must fail the test rather than block the run)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def test_calls_from_inside_on_token_raise_instead_of_deadlocking(tiny_awqbin):
    m = awqcore.Model(tiny_awqbin[1], threads=2, max_seq_len=32)
    expected = m.generate([1, 2, 3], max_new_tokens=3, stop=[])
    for method in ("generate", "forward", "reset"):
        errors: list[BaseException] = []

        def reenter(token, method=method):
            if method == "reset":
                m.reset()
            else:
                getattr(m, method)([4, 5])

        def run():
            try:
                m.generate([1, 2, 3], max_new_tokens=3, stop=[], on_token=reenter)
            except BaseException as e:  # checked below, in the test's thread
                errors.append(e)

        assert _finishes(run), f"on_token calling {method} deadlocked"
        assert len(errors) == 1 and isinstance(errors[0], awqcore.Error), errors
        assert f"Model.{method}() called while this Model is generating" in str(errors[0])
    # The lock was released: the model works, from this thread and others.
    assert m.generate([1, 2, 3], max_new_tokens=3, stop=[]) == expected
    out: list = []
    assert _finishes(lambda: out.append(m.generate([1, 2, 3], max_new_tokens=3, stop=[])))
    assert out == [expected]


def test_kv_cache_larger_than_memory_is_a_clear_error(tiny_awqbin):
    """The sizes are checked before allocating: ~2^58 bytes of KV cache is an
    awqcore.Error naming them, not MemoryError: std::bad_alloc."""
    with pytest.raises(awqcore.Error, match=r"KV cache \d+ MiB for max_seq_len 2147483647 x "
                       r"max_batch 524288 in f16.*but the machine has \d+ MiB"):
        awqcore.Model(tiny_awqbin[1], max_seq_len=2**31 - 1, max_batch=2**19)
    with pytest.raises(awqcore.Error, match="in f32"):
        awqcore.Model(tiny_awqbin[1], max_seq_len=2**31 - 1, max_batch=2**19, activations="f32")


def test_non_finite_logits_raise(tmp_path):
    """A final norm weight of 3e38 is finite (the file is valid) but overflows
    f32 in the forward pass: generate raises instead of returning the same
    arbitrary token over and over."""
    from awqcore.importers.synthetic import SyntheticSource, tiny_config
    from awqcore.quantize.pipeline import quantize_model

    class Overflowing(SyntheticSource):
        def get(self, name):
            t = super().get(name)
            return np.full_like(t, 3e38) if name == "model.norm.weight" else t

    path = tmp_path / "overflow.awqbin"
    quantize_model(Overflowing(tiny_config("llama"), seed=1), path, method="rtn", group_size=32,
                   progress=False)
    m = awqcore.Model(path, threads=2, max_seq_len=16, max_batch=2)
    assert not np.isfinite(m.forward([1, 2])).all()  # forward returns what it computed
    with pytest.raises(awqcore.Error, match="the logits of the next token are not finite"):
        m.generate([1, 2], max_new_tokens=4, stop=[])
    with pytest.raises(awqcore.Error, match="the logits of prompt 0's next token are not finite"):
        m.generate([[1, 2], [3]], max_new_tokens=4, stop=[])


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_model_path_that_is_not_a_regular_file_is_rejected(tmp_path, kind):
    """open() of a FIFO blocks until a writer appears: the path is checked
    first, with a FormatError naming what it is."""
    path = tmp_path / "model.awqbin"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    errors: list[BaseException] = []

    def load():
        try:
            awqcore.Model(path)
        except BaseException as e:
            errors.append(e)

    assert _finishes(load, 20), "opening a FIFO as a model blocked"
    assert len(errors) == 1 and isinstance(errors[0], awqcore.FormatError), errors
    assert f"is a {kind.upper() if kind == 'fifo' else kind}, not a regular .awqbin file" in \
        str(errors[0])


def test_weights_copied_to_huge_pages_or_mapped_give_the_same_logits(smollm2_awqbin, monkeypatch):
    """A file over one huge page is copied out of its mapping at load unless
    AWQCORE_MAP_WEIGHTS=1; both must give the same logits. Where the CPU has
    AVX-512 VNNI the copy's int4 codes are regrouped into tiles
    (ops/int4_tiles.h) while the mapping keeps the rows: the kernels compute
    the same sums in the same order on both, so the logits are equal bit for
    bit, for decode-sized calls (6 tokens), the prefill GEMM (20 tokens) and
    f32 activations. Where the kernel has transparent huge pages (Linux with
    THP enabled or madvise), the copy shows up as AnonHugePages of this
    process."""
    ids = [1, 504, 3458, 314, 4827, 28]
    long_ids = ids * 3 + [1, 504]

    def anon_huge_kb() -> int:
        try:
            with open("/proc/self/smaps_rollup") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
        except (OSError, StopIteration):
            return -1

    before = anon_huge_kb()
    copied = awqcore.Model(smollm2_awqbin, threads=1, max_seq_len=32)
    after = anon_huge_kb()
    copied_f32 = awqcore.Model(smollm2_awqbin, threads=1, max_seq_len=32, activations="f32")
    monkeypatch.setenv("AWQCORE_MAP_WEIGHTS", "1")
    mapped = awqcore.Model(smollm2_awqbin, threads=1, max_seq_len=32)
    mapped_f32 = awqcore.Model(smollm2_awqbin, threads=1, max_seq_len=32, activations="f32")
    for prompt in (ids, long_ids):
        np.testing.assert_array_equal(copied.forward(prompt), mapped.forward(prompt))
        np.testing.assert_array_equal(copied_f32.forward(prompt), mapped_f32.forward(prompt))
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    if before >= 0 and os.path.exists(thp) and "[never]" not in open(thp).read():
        assert after - before >= 32 * 1024, (before, after)  # the 88 MB file: most of it


def test_int8_table_copied_or_mapped_gives_close_logits(smollm2_int8_awqbin, monkeypatch):
    """With the weights copied, an int8 lm_head is regrouped into tiles where
    the CPU has AVX-512 VNNI; AWQCORE_MAP_WEIGHTS=1 keeps the shared mapping
    and so the file's rows, which the row kernels read at that level too.
    The products are the same exact ones, summed in another order: within
    1e-5 relative (measured ~1e-6; a wrong row, block or scale moves logits
    by their own size), with int8 and with f32 activations."""
    ids = [1, 504, 3458, 314, 4827, 28]
    copied = awqcore.Model(smollm2_int8_awqbin, threads=1, max_seq_len=32)
    copied_f32 = awqcore.Model(smollm2_int8_awqbin, threads=1, max_seq_len=32, activations="f32")
    monkeypatch.setenv("AWQCORE_MAP_WEIGHTS", "1")
    mapped = awqcore.Model(smollm2_int8_awqbin, threads=1, max_seq_len=32)
    mapped_f32 = awqcore.Model(smollm2_int8_awqbin, threads=1, max_seq_len=32, activations="f32")
    for a, b, what in ((copied, mapped, "int8"), (copied_f32, mapped_f32, "f32")):
        error = max_relative_error(a.forward(ids), b.forward(ids))
        print(f"int8 table, {what} activations: copied vs mapped relative error {error:.2e}")
        assert error < 1e-5, (what, error)
