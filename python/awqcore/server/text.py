"""Generated tokens to the text a client may see: incremental detokenization
that never splits a character, and stop strings matched across token boundaries.

Both are plain classes (no I/O) so that the rules are testable on their own:
the streamed pieces always concatenate to the text a non-streamed answer holds.
"""
from __future__ import annotations

from typing import Optional

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


class IncrementalDecoder:
    """Token ids in, new text out, never half a UTF-8 character.

    A character can span tokens (byte-level BPE splits an emoji into byte
    tokens; SentencePiece's byte fallback writes <0xF0><0x9F>...), and a token
    decoded alone can differ from the same token in context (spacing rules).
    So the text is always decoded over a short window that starts a few tokens
    back: `prefix` is the window's start, `read` where its already-emitted part
    ends. A window whose text ends in U+FFFD waits for more tokens; finish()
    writes whatever is left, as the whole sequence would decode.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token: int) -> str:
        return self.push_many((token,))

    def push_many(self, tokens) -> str:
        """push() of several tokens at once: the same text, two decodes in all."""
        self._ids.extend(tokens)
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) > len(done) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(done):]
        return ""

    def finish(self) -> str:
        """The text not yet returned (a trailing incomplete character decodes to U+FFFD)."""
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(done):]


class StopMatcher:
    """Finds the first stop string in a stream of text pieces.

    push(piece) returns the text that is safe to send: everything except a tail
    that could still be the start of a stop string. Once a stop string is
    found, push returns the text before it and `stopped` is true; nothing after
    it is ever returned. A stop string that began in text already sent cannot
    exist: that text was held back while it could still be one's start.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        first: Optional[int] = None
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0 and (first is None or at < first):
                first = at
        if first is not None:
            self.stopped = True
            self._held = ""
            return text[:first]
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def _partial_tail(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper start of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def finish(self) -> str:
        """The held-back tail, at the end of generation (it never became a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


class TextStream:
    """Tokens to client text: IncrementalDecoder then StopMatcher."""

    def __init__(self, tokenizer, stops: list[str]):
        self._decoder = IncrementalDecoder(tokenizer)
        self._stops = StopMatcher(stops)

    @property
    def has_stops(self) -> bool:
        return bool(self._stops.stops)

    @property
    def stopped(self) -> bool:
        """A stop string was found: the request is over."""
        return self._stops.stopped

    def push(self, token: int) -> str:
        return self._stops.push(self._decoder.push(token))

    def push_many(self, tokens: list[int]) -> str:
        return self._stops.push(self._decoder.push_many(tokens))

    def finish(self) -> str:
        return self._stops.push(self._decoder.finish()) + self._stops.finish()
