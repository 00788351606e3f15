"""awqcore.Engine (python/awqcore/engine.py): concurrent requests from Python
threads against one-by-one Model.generate (the independent reference),
streams, cancellation, the bounded queue, argument errors and stats. The
C++ scheduling itself is tested in cpp/tests/test_engine.cpp."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

import awqcore
from awqcore.engine import FINISH_REASONS


def _prompts(count: int, vocab: int) -> list[list[int]]:
    """Prompts of 1 .. 24 tokens: different lengths, ids spread over the vocabulary."""
    return [[(97 * i + 31 * j + 5) % vocab for j in range(1 + (i * 13) % 24)] for i in range(count)]


@pytest.mark.parametrize("prefill_budget", [None, 12])
def test_sixteen_concurrent_requests_equal_one_by_one_generate(smollm2_awqbin,
                                                               prefill_budget):
    """16 threads submit at once (max_batch 8: half wait for a slot), with
    different prompt lengths and max_tokens, half stopping at eos: each gets
    Model.generate's greedy tokens and finish reason; also when the prompts
    that arrive while others stream go in 12-token chunks."""
    model = awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=256)
    vocab = model.config["vocab_size"]
    prompts = _prompts(16, vocab)
    options = [dict(max_new_tokens=2 + (i * 5) % 9, stop_ids=[] if i % 2 else None)
               for i in range(16)]
    expected = []
    for prompt, o in zip(prompts, options):
        expected.append((model.generate(prompt, max_new_tokens=o["max_new_tokens"],
                                        stop=o["stop_ids"]), model.last_stop_reason))
    del model
    with awqcore.Engine(smollm2_awqbin, threads=2, max_seq_len=256, max_batch=8,
                        prefill_budget=prefill_budget) as engine:
        got: dict[int, tuple] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(16)

        def run(i: int) -> None:
            try:
                tokens: list[int] = []
                done = threading.Event()
                reason: list = []

                def on_event(_id, token, finish_reason, error):
                    assert threading.current_thread().name == "awqcore-engine-events"
                    if token is not None:
                        tokens.append(token)
                    else:
                        reason.append((finish_reason, error))
                        done.set()

                start.wait()
                engine.submit(prompts[i], on_event=on_event, **options[i])
                assert done.wait(300)
                got[i] = (tokens, reason)
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for i in range(16):
            tokens, reasons = got[i]
            assert tokens == expected[i][0], (i, prompts[i][:5], options[i])
            assert reasons == [(expected[i][1], None)], i
        stats = engine.stats()
        assert stats["submitted"] == stats["finished"] == 16
        assert stats["waiting"] == stats["running"] == 0
        assert stats["generated_tokens"] == sum(len(e[0]) for e in expected)
        assert stats["prompt_tokens"] == sum(len(p) for p in prompts)
        assert stats["max_batch"] == 8 and stats["max_queue"] == 64
        assert stats["decode_steps"] > 0 and stats["decode_seconds"] > 0
        assert engine.config["vocab_size"] == vocab and engine.config["max_batch"] == 8
        # The file's tokenizer, as on Model.
        assert engine.tokenizer.decode(engine.tokenizer.encode("Paris").ids) == "Paris"
        assert engine.model is engine


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_a_shared_prompt_start_is_prefilled_once(smollm2_awqbin, prefix_reuse):
    """Requests one after another that share a 30-token start (a system
    prompt): from the second on, the engine keeps those cached rows and
    prefills the rest; the tokens are Model.generate's either way."""
    model = awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=128)
    vocab = model.config["vocab_size"]
    system = [(53 * j + 7) % vocab for j in range(30)]
    prompts = [system + [(97 * i + 31 * j + 5) % vocab for j in range(15)] for i in range(4)]
    expected = [model.generate(p, max_new_tokens=4, stop=[]) for p in prompts]
    del model
    with awqcore.Engine(smollm2_awqbin, threads=2, max_seq_len=128, max_batch=2,
                        prefix_reuse=prefix_reuse) as engine:
        got = [engine.generate(p, max_new_tokens=4, stop_ids=[]) for p in prompts]
        stats = engine.stats()
        assert engine.config["prefix_reuse"] is prefix_reuse
    assert got == expected
    reused = 3 * len(system) if prefix_reuse else 0
    assert stats["reused_prompt_tokens"] == reused
    assert stats["prompt_tokens"] == sum(len(p) for p in prompts) - reused


@pytest.fixture
def tiny_engine(tiny_awqbin):
    _, path = tiny_awqbin
    with awqcore.Engine(path, threads=2, max_seq_len=64, max_batch=2, max_queue=2) as engine:
        yield engine, path


def test_a_lone_prompt_is_one_chunk_and_the_budget_is_at_most_the_chunk(tiny_awqbin):
    """The prefill budget applies only while a request streams: a 40-token
    prompt alone goes in as one prefill_chunk of 64, not as budget-sized
    pieces; a budget over prefill_chunk is prefill_chunk."""
    _, path = tiny_awqbin
    with awqcore.Engine(path, threads=2, max_seq_len=64, prefill_chunk=64,
                        prefill_budget=10) as engine:
        engine.generate(list(range(1, 41)), max_new_tokens=2)
        assert (engine.stats()["prompt_tokens"], engine.stats()["prefill_chunks"]) == (40, 1)
        assert engine.config["prefill_budget"] == 10
    with awqcore.Engine(path, max_seq_len=64, prefill_chunk=16, prefill_budget=100) as engine:
        assert engine.config["prefill_budget"] == 16
    with awqcore.Engine(path, max_seq_len=64) as engine:
        assert engine.config["prefill_budget"] == awqcore.engine.DEFAULT_PREFILL_BUDGET


def test_generate_and_stream_give_model_generate_tokens(tiny_engine):
    engine, path = tiny_engine
    model = awqcore.Model(path, threads=2, max_seq_len=64)
    for seed in (None, 5):
        sampling = dict(temperature=0.8, top_k=10, seed=seed) if seed else {}
        expected = model.generate([1, 2, 3], max_new_tokens=9, stop=[], **sampling)
        assert engine.generate([1, 2, 3], max_new_tokens=9, stop_ids=[], **sampling) == expected
        assert list(engine.stream([1, 2, 3], max_new_tokens=9, stop_ids=[], **sampling)) == expected


def test_closing_a_stream_cancels_its_request(tiny_awqbin):
    _, path = tiny_awqbin
    # 4000 tokens: far more than the tiny model makes before the close below.
    with awqcore.Engine(path, threads=2, max_seq_len=4096, max_batch=2) as engine:
        stream = engine.stream([4, 5], max_new_tokens=4000, stop_ids=[])
        assert len([next(stream), next(stream)]) == 2
        stream.close()
        # The cancel ended it: the slot is free, nothing is left running.
        for _ in range(1000):
            if engine.stats()["running"] == 0:
                break
            threading.Event().wait(0.01)
        stats = engine.stats()
        assert stats["running"] == 0 and stats["finished"] == stats["submitted"] == 1
        assert stats["generated_tokens"] < 4000


def test_cancel_and_finish_reasons(tiny_awqbin):
    _, path = tiny_awqbin
    # 4000 tokens take seconds on the tiny model, so the cancel after the
    # first token always finds the request running, however fast the machine.
    engine = awqcore.Engine(path, threads=2, max_seq_len=4096, max_batch=2)
    events: list = []
    done = threading.Event()
    started = threading.Event()

    def on_event(_id, token, finish_reason, error):
        events.append((token, finish_reason, error))
        started.set()
        if finish_reason is not None:
            done.set()

    with engine:
        request_id = engine.submit([1, 2], on_event=on_event, max_new_tokens=4000, stop_ids=[])
        assert started.wait(60)
        assert engine.cancel(request_id)
        assert done.wait(60)
        assert events[-1] == (None, "cancelled", None)
        assert all(e[1] is None for e in events[:-1]) and len(events) < 4001
        assert not engine.cancel(request_id)
    assert set(FINISH_REASONS) == {"stop_token", "max_new_tokens", "context_full", "cancelled"}


def test_a_full_queue_raises_queue_full(tiny_engine):
    engine, _ = tiny_engine
    # max_batch 2, max_queue 2: requests of 60 tokens keep both slots busy
    # while more are submitted, far faster than the engine ends them, so the
    # third waiting one is refused at once (the exact count is the C++
    # test's, whose callbacks can hold the engine thread).
    ids: list[int] = []
    sink = lambda *event: None  # noqa: E731
    with pytest.raises(awqcore.QueueFull, match="the request queue is full"):
        for _ in range(200):
            ids.append(engine.submit([1, 2], on_event=sink, max_new_tokens=60, stop_ids=[]))
    assert 2 <= len(ids) < 200
    assert issubclass(awqcore.QueueFull, awqcore.Error)
    for request_id in ids:
        engine.cancel(request_id)


def test_bad_arguments_raise_value_errors(tiny_engine):
    engine, path = tiny_engine
    vocab = engine.config["vocab_size"]
    sink = lambda *event: None  # noqa: E731
    with pytest.raises(ValueError, match="empty prompt"):
        engine.submit([], on_event=sink)
    with pytest.raises(ValueError, match=f"token id {vocab} at position 1 is out of range"):
        engine.submit([1, vocab], on_event=sink)
    with pytest.raises(ValueError, match="leaves no room for a new token in max_seq_len 64"):
        engine.submit([1] * 64, on_event=sink)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.submit([1], on_event=sink, max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        engine.submit([1], on_event=sink, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        engine.submit([1], on_event=sink, top_p=0.0)
    with pytest.raises(TypeError, match="stop_ids must be None or an iterable"):
        engine.submit([1], on_event=sink, stop_ids=3)
    with pytest.raises(TypeError, match="on_event must be callable"):
        engine.submit([1], on_event=None)
    with pytest.raises(ValueError, match="max_batch must be in"):
        awqcore.Engine(path, max_batch=0)
    with pytest.raises(ValueError, match="prefill_chunk must be in"):
        awqcore.Engine(path, prefill_chunk=0)
    with pytest.raises(ValueError, match="prefill_budget must be in"):
        awqcore.Engine(path, prefill_budget=0)
    assert engine.stats()["submitted"] == 0


def test_close_cancels_running_requests_and_refuses_new_ones(tiny_awqbin):
    _, path = tiny_awqbin
    engine = awqcore.Engine(path, threads=2, max_seq_len=4096, max_batch=1)
    tokens: dict[int, int] = {}
    reasons: dict[int, list[str]] = {}
    started = threading.Event()

    def on_event(request_id, token, finish_reason, error):
        started.set()
        if token is not None:
            tokens[request_id] = tokens.get(request_id, 0) + 1
        else:
            reasons.setdefault(request_id, []).append(finish_reason)

    ids = [engine.submit([1, 2], on_event=on_event, max_new_tokens=4000, stop_ids=[])
           for _ in range(3)]
    assert started.wait(60)
    engine.close()
    engine.close()  # idempotent
    # Delivered before close() returned, once each; the first may have ended
    # on its own (a fast machine), the last waited behind two of 4000 tokens.
    assert sorted(reasons) == sorted(ids) and all(len(r) == 1 for r in reasons.values())
    for request_id in ids:
        assert (reasons[request_id] == ["cancelled"]
                or (reasons[request_id] == ["max_new_tokens"] and tokens[request_id] == 4000))
    assert reasons[ids[-1]] == ["cancelled"] and ids[-1] not in tokens
    with pytest.raises(awqcore.Error, match="closed"):
        engine.submit([1], on_event=on_event)


def test_a_process_that_never_closes_its_engine_exits_cleanly(tiny_awqbin):
    """An Engine left open (idle, or with a request running) at interpreter
    exit is closed before finalization: the process exits 0, not by abort."""
    _, path = tiny_awqbin
    script = (
        "import sys, threading, awqcore\n"
        "engine = awqcore.Engine(sys.argv[1], threads=1, max_seq_len=4096, max_batch=2)\n"
        "idle = awqcore.Engine(sys.argv[1], threads=1, max_seq_len=64, max_batch=1)\n"
        "started = threading.Event()\n"
        "engine.submit([1, 2], on_event=lambda *e: started.set(), max_new_tokens=4000,"
        " stop_ids=[])\n"
        "assert started.wait(60)\n"
        "print('exiting', flush=True)\n")
    result = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exiting" in result.stdout and "terminate" not in result.stderr
