"""awqcore.Engine: continuous batching of concurrent requests (a server's core).

    with awqcore.Engine("smollm2.awqbin", max_batch=8) as engine:
        ids = engine.tokenizer.encode("The capital of France is").ids
        print(engine.generate(ids, max_new_tokens=16))          # blocking
        for token in engine.stream(ids, max_new_tokens=16):     # one token at a time
            ...
        engine.submit(ids, on_event=callback)                   # what a server uses

The C++ engine (awqcore/engine.h) runs its own thread: requests join and
leave a running batch between decode steps, long prompts are prefilled in
chunks between them, and more than max_batch requests wait in a queue of
max_queue (one more raises awqcore.QueueFull at once). Its callbacks push
events into a C++ queue without the GIL; one Python dispatcher thread per
Engine waits on that queue with the GIL released and calls each request's
on_event, so Python code never runs on the engine thread.
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
import traceback
import weakref
from typing import Callable, Iterator, Optional, Sequence

from . import _LoadedFile, _check_model_path, _core, _integer
from .errors import Error

# A request's finish_reason: "stop_token" (its last token is a stop id),
# "max_new_tokens", "context_full" (prompt + tokens reached max_seq_len), or
# "cancelled" (cancel(), a closed stream, close(), or a failure: then error
# is set).
FINISH_REASONS = ("stop_token", "max_new_tokens", "context_full", "cancelled")

# Prompt tokens prefilled per engine iteration while a request streams (the
# C++ EngineOptions default; README, Serving, gives the measurements).
DEFAULT_PREFILL_BUDGET: int = _core.default_prefill_budget

EventCallback = Callable[[int, Optional[int], Optional[str], Optional[str]], None]
StartCallback = Callable[[int, int], None]


class Engine(_LoadedFile):
    """A model served to concurrent requests with continuous batching.

    max_batch: sequences decoding together (one KV cache of max_seq_len
    tokens each, allocated here). max_queue: requests that may wait for a
    free sequence; one more raises awqcore.QueueFull. prefill_chunk: prompt
    tokens prefilled per engine iteration, between decode steps;
    prefill_budget (default DEFAULT_PREFILL_BUDGET; >= prefill_chunk: no
    budget): the same while some request is past its first token, whose
    stream each prefill stalls (the scheduling rules are in
    awqcore/engine.h). prefix_reuse: a request whose
    prompt starts with the prompt of a free slot's last request (a shared
    system prompt, a chat's earlier turns) keeps those cached tokens and
    prefills only the rest (at least 9 tokens). threads, device, activations,
    verify: as awqcore.Model.

    Greedy results equal Model.generate's for the same prompt when max_batch
    <= 8 (decode steps of up to 8 sequences compute each token as alone) and
    both chunk sizes are 9 or more (a chunk of at most 8 tokens of a longer
    prompt sums in another order). A seed gives the same tokens as
    Model.generate with that seed, whatever else runs.

    Thread-safe: submit, cancel, stats, generate and stream may be called
    from any thread. The tokenizer, config, path and chat_template are the
    file's, as on awqcore.Model; `model` is this object (for code written
    against a Model).
    """

    def __init__(self, path: str | os.PathLike, *, max_batch: int = 8, max_seq_len: int = 4096,
                 max_queue: int = 64, prefill_chunk: int = 256,
                 prefill_budget: Optional[int] = None, prefix_reuse: bool = True,
                 threads: Optional[int] = None, device: str = "cpu", activations: str = "int8",
                 verify: bool = True):
        path = os.fspath(path)
        _check_model_path(path)
        if threads is not None:
            threads = _integer(threads, "threads", low=1)
        max_batch = _integer(max_batch, "max_batch", low=1)
        max_seq_len = _integer(max_seq_len, "max_seq_len", low=1)
        max_queue = _integer(max_queue, "max_queue", low=0)
        prefill_chunk = _integer(prefill_chunk, "prefill_chunk", low=1)
        prefill_budget = (DEFAULT_PREFILL_BUDGET if prefill_budget is None
                          else _integer(prefill_budget, "prefill_budget", low=1))
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda' (got {device!r})")
        if activations not in ("int8", "f32"):
            raise ValueError(f"activations must be 'int8' or 'f32' (got {activations!r})")
        self.path = path
        self._core = _core.Engine(path, threads or 0, max_seq_len, max_batch, max_queue,
                                  prefill_chunk, prefill_budget,
                                  bool(prefix_reuse), bool(verify), device, activations)
        self.config: dict = self._core.config()
        # Request id -> (on_event, on_start), registered under the lock
        # before the dispatcher can look the id up (it takes the lock too).
        self._callbacks: dict[int, tuple[EventCallback, Optional[StartCallback]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._dispatcher = threading.Thread(
            target=_dispatch, args=(self._core, self._lock, self._callbacks), daemon=True,
            name="awqcore-engine-events")
        self._dispatcher.start()
        _open_engines.add(self)

    @property
    def model(self) -> "Engine":
        return self

    def submit(self, ids: Sequence[int], *, on_event: EventCallback, max_new_tokens: int = 128,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed: Optional[int] = None,
               stop_ids: Optional[Sequence[int]] = None,
               on_start: Optional[StartCallback] = None) -> int:
        """Queues a request and returns its id.

        on_event(request_id, token, finish_reason, error) runs on the Engine's
        dispatcher thread: once per new token (finish_reason None), then
        exactly once with token None and finish_reason one of FINISH_REASONS
        (error: None, or the failure's message). It must be quick: every
        request's events wait for it. on_start(request_id,
        cached_prompt_tokens), if given, runs on the same thread before the
        request's first on_event, once it has a sequence slot: how many of
        its first prompt tokens that slot's cache held (prefix reuse), which
        it does not prefill; a request cancelled while waiting, or with
        max_new_tokens=0, never gets it. stop_ids=None stops at the model's
        end-of-sequence ids, [] never early. Raises awqcore.QueueFull when
        the queue is full, ValueError/TypeError for bad arguments,
        awqcore.Error after close().
        """
        if not callable(on_event):
            raise TypeError("on_event must be callable")
        if on_start is not None and not callable(on_start):
            raise TypeError("on_start must be callable or None")
        ids = self._check_ids(ids)
        args = self._generation_args(max_new_tokens, temperature, top_k, top_p,
                                     repetition_penalty, seed, stop_ids, stop_name="stop_ids")
        with self._lock:
            if self._closed:
                raise Error("the engine is closed: it accepts no more requests")
            request_id = self._core.submit(ids, *args)
            self._callbacks[request_id] = (on_event, on_start)
        return request_id

    def cancel(self, request_id: int) -> bool:
        """Ends a waiting or running request before its next decode step
        (finish_reason "cancelled"). False: unknown, finished or already
        cancelled."""
        return self._core.cancel(_integer(request_id, "request_id", low=0, high=2**64 - 1))

    def stats(self) -> dict:
        """waiting, running, max_batch, max_queue, submitted, finished,
        prompt_tokens (prefilled), prefill_chunks (the forward calls that
        prefilled them), reused_prompt_tokens (found in a slot's
        cache instead), generated_tokens, decode_steps, prefill_seconds,
        decode_seconds (forward-pass wall time)."""
        return self._core.stats()

    def generate(self, ids: Sequence[int], **options) -> list[int]:
        """Blocks until the request ends and returns its new tokens (options
        as submit's). Raises awqcore.Error if it failed."""
        done = threading.Event()
        tokens: list[int] = []
        failure: list[str] = []

        def on_event(_id, token, finish_reason, error):
            if token is not None:
                tokens.append(token)
                return
            if error is not None:
                failure.append(error)
            done.set()

        self._refuse_on_dispatcher("generate")
        self.submit(ids, on_event=on_event, **options)
        done.wait()
        if failure:
            raise Error(failure[0])
        return tokens

    def stream(self, ids: Sequence[int], **options) -> Iterator[int]:
        """Submits at once (errors and QueueFull raise here) and returns an
        iterator over the new tokens; closing it early (or dropping it)
        cancels the request. Raises awqcore.Error while iterating if the
        request failed."""
        self._refuse_on_dispatcher("stream")
        events: queue.SimpleQueue = queue.SimpleQueue()
        request_id = self.submit(ids, on_event=lambda *event: events.put(event), **options)
        return self._stream(request_id, events)

    def _stream(self, request_id: int, events: queue.SimpleQueue) -> Iterator[int]:
        finished = False
        try:
            while True:
                _id, token, finish_reason, error = events.get()
                if token is not None:
                    yield token
                    continue
                finished = True
                if error is not None:
                    raise Error(error)
                return
        finally:
            if not finished:
                self.cancel(request_id)

    def close(self) -> None:
        """Finishes every waiting and running request ("cancelled"), stops the
        engine thread, and, called from any thread but the dispatcher, waits
        until every finish event was delivered. Idempotent."""
        with self._lock:
            self._closed = True
        self._core.shutdown()
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): the requests end "cancelled" and the
        # dispatcher (which holds no reference to self) drains and exits.
        core = getattr(self, "_core", None)
        if core is not None:
            core.shutdown()

    def _refuse_on_dispatcher(self, method: str) -> None:
        if threading.current_thread() is self._dispatcher:
            raise Error(f"Engine.{method}() called from an on_event callback: it would wait for "
                        "the dispatcher thread it runs on; use submit() there")

    def __repr__(self) -> str:
        c = self.config
        return (f"awqcore.Engine({self.path!r}: {c['architecture']}, max_batch {c['max_batch']}, "
                f"max_seq_len {c['max_seq_len']}, {c['threads']} threads)")


def _dispatch(core, lock: threading.Lock, callbacks: dict) -> None:
    """The dispatcher thread: waits for events with the GIL released and
    hands each to its request's on_event, until shutdown drained them. It
    holds the C++ engine, not the Engine, so a dropped Engine is collected."""
    while True:
        events, more = core.wait_events(0.5)
        for request_id, token, finish_reason, error, cached_prompt_tokens in events:
            with lock:
                if finish_reason is None:
                    entry = callbacks.get(request_id)
                else:
                    entry = callbacks.pop(request_id, None)
            if entry is None:
                continue
            on_event, on_start = entry
            try:
                if cached_prompt_tokens is None:
                    on_event(request_id, token, finish_reason, error)
                elif on_start is not None:
                    on_start(request_id, cached_prompt_tokens)
            except BaseException:  # one request's bug (even sys.exit) must not stop the others' events
                traceback.print_exc()
        if not more:
            return


# Engines still open when the interpreter exits are closed before it
# finalizes: a dispatcher thread woken during finalization would be ended
# inside wait_events while it re-takes the GIL, which aborts the process.
_open_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_open_engines):
        engine.close()
