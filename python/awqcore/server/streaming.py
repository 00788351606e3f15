"""Server-sent events in OpenAI's chunk format, and the response that sends them.

A chat stream is: a first chunk with the assistant role, one chunk per text
piece (the text of every token that arrived since the last one), a chunk
with the finish reason, (with stream_options.include_usage) a chunk with the
usage and no choices, then `data: [DONE]`. A completion stream
is the same without the role chunk. An error after the stream has begun is
sent as a `data: {"error": ...}` event, then `data: [DONE]`.
"""
from __future__ import annotations

import json
from typing import AsyncIterator, Optional

import anyio
from starlette.responses import StreamingResponse

from .generation import Generation, GenerationFailed, failure

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sse(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else _json(payload)}\n\n".encode()


class ChunkFormat:
    """The fields every chunk of one response repeats.

    content(text) is the event of a text chunk, the one sent per piece: the
    JSON around the text is the same in every such chunk, so it is encoded
    once here and only the text per chunk (sse(chunk(text)) gives the same
    bytes, with ~10x the work)."""

    _TEXT = "\x00"  # a placeholder no JSON encoding of a chunk's other fields holds

    def __init__(self, chat: bool, response_id: str, created: int, model: str,
                 include_usage: bool):
        self.chat = chat
        self.head = {"id": response_id,
                     "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": model}
        self.include_usage = include_usage
        before, after = sse(self.chunk(self._TEXT)).split(_json(self._TEXT).encode())
        self._content_prefix, self._content_suffix = before, after

    def content(self, text: str) -> bytes:
        return self._content_prefix + _json(text).encode() + self._content_suffix

    def chunk(self, text: Optional[str], finish_reason: Optional[str] = None,
              role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else \
                ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None,
                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None,
                      "finish_reason": finish_reason}
        out = {**self.head, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None  # OpenAI: null on every chunk but the last
        return out

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.head, "choices": [], "usage": usage}


async def sse_events(generation: Generation, fmt: ChunkFormat) -> AsyncIterator[bytes]:
    # The finally covers a client gone before pieces() starts (while the role
    # chunk is being sent): its request must end too.
    try:
        if fmt.chat:
            yield sse(fmt.chunk(None, role=True))
        try:
            async for piece in generation.pieces():
                yield fmt.content(piece)
        except GenerationFailed as e:
            yield sse(failure(e).body())
            yield sse("[DONE]")
            return
        yield sse(fmt.chunk(None if fmt.chat else "", generation.finish_reason))
        if fmt.include_usage:
            yield sse(fmt.usage_chunk(generation.usage()))
        yield sse("[DONE]")
    finally:
        generation.close()


class EventStream(StreamingResponse):
    """A text/event-stream response that stops the moment the client disconnects.

    It always listens for http.disconnect next to sending (Starlette does so
    only for ASGI servers below spec 2.4, and otherwise notices a closed
    connection only at the next send): the body iterator is cancelled at
    once, so its generation's engine request is cancelled within one decode
    step even while text is being held back (a partial stop string)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes]):
        super().__init__(events, headers=SSE_HEADERS)

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the connection broke while sending
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            # Cancelled between two chunks, the iterator still waits at a yield:
            # closing it runs its cleanup (the engine cancel) now, not at garbage collection.
            await self.body_iterator.aclose()
