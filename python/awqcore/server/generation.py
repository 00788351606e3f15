"""One engine request as seen from the event loop.

The Engine calls on_event on its Python dispatcher thread, once per token.
Those events collect in the request's inbox, and the loop is woken once per
batch of them (one call_soon_threadsafe while a wakeup is pending, not one
per token): the reader then turns every token that arrived into one piece of
text. So a reader that falls behind (a busy loop, 16 streams on 2 cores)
sends several tokens' text in one chunk, as OpenAI clients accept, instead
of paying the loop and HTTP cost per token. The dispatcher never waits for
the loop. Text goes through TextStream (whole characters, stop strings).
When the reader stops early (stop string, client gone, task cancelled) the
engine request is cancelled at once, which frees its sequence slot within
one decode step.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import AsyncIterator, Optional

from .metrics import Metrics
from .protocol import APIError, Sampling
from .text import TextStream

# The engine's finish reasons as OpenAI's: the model's end token and a stop string
# are "stop", a token limit or a full context are "length". A request the server
# cancels (shutting down) has no OpenAI name; it ends with vLLM's "abort".
FINISH_REASONS = {"stop_token": "stop", "max_new_tokens": "length", "context_full": "length",
                  "cancelled": "abort"}


class GenerationFailed(Exception):
    """The engine reported an error for this request (e.g. non-finite logits)."""


class Generation:
    """Submits on construction (raising awqcore.QueueFull or ValueError at once);
    pieces() then yields the answer's text."""

    def __init__(self, engine, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 tokenizer, metrics: Metrics, registry: set):
        self._loop = asyncio.get_running_loop()
        # (token, finish_reason, error) events the dispatcher delivered and the
        # reader has not taken; _wakeup_pending: a wakeup is scheduled on the loop.
        self._inbox: list[tuple] = []
        self._inbox_lock = threading.Lock()
        self._wakeup_pending = False
        self._arrived = asyncio.Event()
        self._engine = engine
        self._metrics = metrics
        self._registry = registry
        self._text = TextStream(tokenizer, sampling.stop)
        self.prompt_tokens = len(ids)
        # Of prompt_tokens, those the engine found in its slot's cache (set on
        # the dispatcher thread before the first token's event; 0 until then).
        self.cached_prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self._start = time.perf_counter()
        self._first_token: Optional[float] = None
        self._cancelled = False
        self.request_id = engine.submit(ids, max_new_tokens=max_new_tokens,
                                        temperature=sampling.temperature, top_k=sampling.top_k,
                                        top_p=sampling.top_p, seed=sampling.seed,
                                        stop_ids=[] if sampling.ignore_eos else None,
                                        on_event=self._on_event, on_start=self._on_start)
        registry.add(self)

    def _on_start(self, request_id: int, cached_prompt_tokens: int) -> None:
        """Runs on the engine's dispatcher thread, before any _on_event."""
        self.cached_prompt_tokens = cached_prompt_tokens

    def _on_event(self, request_id: int, token: Optional[int], finish_reason: Optional[str],
                  error: Optional[str]) -> None:
        """Runs on the engine's dispatcher thread."""
        with self._inbox_lock:
            self._inbox.append((token, finish_reason, error))
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._arrived.set)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    async def _events(self) -> list[tuple]:
        """Every event that arrived since the last call; waits for one."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            with self._inbox_lock:
                events, self._inbox = self._inbox, []
                self._wakeup_pending = False
            if events:  # empty: a wakeup scheduled before the previous take
                return events

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._engine.cancel(self.request_id)

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text in pieces as tokens arrive (one piece for all the
        tokens that arrived together); finish_reason is set when it ends.
        Raises GenerationFailed if the engine reports an error."""
        try:
            while True:
                events = await self._events()
                end = events[-1] if events[-1][0] is None else None
                tokens = [event[0] for event in (events[:-1] if end else events)]
                if tokens:
                    if self._first_token is None:
                        self._first_token = time.perf_counter()
                        self._metrics.first_token(self._first_token - self._start)
                    piece = self._push(tokens)
                    if piece:
                        yield piece
                    if self._text.stopped:
                        self.cancel()  # the tokens after the stop string are not wanted
                        self._finish("stop")
                        return
                if end is None:
                    continue
                _, reason, error = end
                if error:
                    self._finish("error")
                    raise GenerationFailed(error)
                tail = self._text.finish()
                if tail:
                    yield tail
                self._finish(FINISH_REASONS.get(reason, reason))
                return
        finally:
            self.close()

    def _push(self, tokens: list[int]) -> str:
        """The text of `tokens`, counting them; with stop strings, only the
        tokens up to the one that completes a stop string count."""
        if not self._text.has_stops:
            self.completion_tokens += len(tokens)
            return self._text.push_many(tokens)
        pieces = []
        for token in tokens:
            self.completion_tokens += 1
            pieces.append(self._text.push(token))
            if self._text.stopped:
                break
        return "".join(pieces)

    def close(self) -> None:
        """Ends a generation whose reader left before it finished (frees its slot
        now); nothing once it has finished."""
        if self.finish_reason is None:
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
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_prompt_tokens}}


def failure(error: GenerationFailed) -> APIError:
    return APIError(500, f"generation failed: {error}", code="generation_failed")
