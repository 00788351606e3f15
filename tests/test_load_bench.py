"""tools/load_bench.py's own parts: the HTTP/1.1 chunked-body reader its raw
asyncio client uses, and the per-client prompts."""
from __future__ import annotations

import asyncio

import pytest

from tool_modules import load_tool

load_bench = load_tool("load_bench")


def body(data: bytes) -> list[bytes]:
    async def read() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [piece async for piece in load_bench._body_pieces(
            reader, {"transfer-encoding": "chunked"})]
    return asyncio.run(read())


def test_a_chunked_body_is_read_piece_by_piece():
    assert body(b"3\r\nabc\r\na;ext=1\r\n0123456789\r\n0\r\n\r\n") == [b"abc", b"0123456789"]


@pytest.mark.parametrize("cut", [b"3\r\nab", b"3\r\nabc\r\n", b"zz\r\n", b""])
def test_a_body_cut_short_is_a_connection_error(cut):
    with pytest.raises(ConnectionError, match="ended a chunked body early"):
        body(cut)


def test_prompts_differ_after_their_common_instruction():
    prompts = [load_bench.prompt_for(client, 32) for client in range(16)]
    starts = {tuple(p.split(": ", 1)[1].split()[:3]) for p in prompts}
    assert len(starts) > 8  # the story words start at different places
    assert all(32 <= len(p.split()) - 3 <= 65 for p in prompts)


def test_shared_words_start_every_prompt():
    prompts = [load_bench.prompt_for(client, 8, shared_words=50) for client in range(4)]
    shared = prompts[0].split("\n\n")[0]
    assert len(shared.split()) == 50
    assert all(p.startswith(shared + "\n\nContinue this story: ") for p in prompts)
    assert len({p.split("\n\n")[1] for p in prompts}) == 4
