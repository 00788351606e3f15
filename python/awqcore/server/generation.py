"""One engine request as seen from the event loop.

The Engine calls on_event on its Python dispatcher thread; the event is handed
to the loop with call_soon_threadsafe and read from an asyncio.Queue, so the
request's coroutine never blocks a thread and the dispatcher never waits for
the loop. Text goes through TextStream (whole characters, stop strings). When
the reader stops early (stop string, client gone, task cancelled) the engine
request is cancelled at once, which frees its sequence slot within one decode
step.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Optional

from .metrics import Metrics
from .protocol import APIError, Sampling
from .text import TextStream

# The engine's finish reasons as OpenAI's: the model's end token and a stop string
# are "stop", a token limit or a full context are "length". "cancelled" (the
# server shutting down) has no OpenAI name and is passed on as it is.
FINISH_REASONS = {"stop_token": "stop", "max_new_tokens": "length", "context_full": "length",
                  "cancelled": "cancelled"}


class GenerationFailed(Exception):
    """The engine reported an error for this request (e.g. non-finite logits)."""


class Generation:
    """Submits on construction (raising awqcore.QueueFull or ValueError at once);
    pieces() then yields the answer's text."""

    def __init__(self, engine, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 tokenizer, metrics: Metrics, registry: set):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._engine = engine
        self._metrics = metrics
        self._registry = registry
        self._text = TextStream(tokenizer, sampling.stop)
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self._start = time.perf_counter()
        self._first_token: Optional[float] = None
        self._cancelled = False
        self.request_id = engine.submit(ids, max_new_tokens=max_new_tokens,
                                        temperature=sampling.temperature, top_k=sampling.top_k,
                                        top_p=sampling.top_p, seed=sampling.seed,
                                        stop_ids=[] if sampling.ignore_eos else None,
                                        on_event=self._on_event)
        registry.add(self)

    def _on_event(self, request_id: int, token: Optional[int], finish_reason: Optional[str],
                  error: Optional[str]) -> None:
        """Runs on the engine's dispatcher thread."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait,
                                            (token, finish_reason, error))
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._engine.cancel(self.request_id)

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text in pieces as tokens arrive; finish_reason is set when
        it ends. Raises GenerationFailed if the engine reports an error."""
        try:
            while True:
                token, reason, error = await self._events.get()
                if token is not None:
                    if self._first_token is None:
                        self._first_token = time.perf_counter()
                        self._metrics.first_token(self._first_token - self._start)
                    self.completion_tokens += 1
                    piece = self._text.push(token)
                    if piece:
                        yield piece
                    if self._text.stopped:
                        self.cancel()  # the tokens after the stop string are not wanted
                        self._finish("stop")
                        return
                    continue
                if error:
                    self._finish("error")
                    raise GenerationFailed(error)
                tail = self._text.finish()
                if tail:
                    yield tail
                self._finish(FINISH_REASONS.get(reason, reason))
                return
        finally:
            if self.finish_reason is None:  # the reader left early: free the slot now
                self.cancel()
                self._finish("disconnected")

    async def text(self) -> str:
        """The whole answer."""
        return "".join([piece async for piece in self.pieces()])

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self._registry.discard(self)
        self._metrics.generation_finished(reason, self.prompt_tokens, self.completion_tokens,
                                          time.perf_counter() - self._start)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def failure(error: GenerationFailed) -> APIError:
    return APIError(500, f"generation failed: {error}", code="generation_failed")
