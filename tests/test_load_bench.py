"""tools/load_bench.py's own parts: the HTTP/1.1 chunked-body reader its raw
asyncio client uses, and the per-client prompts; and one small run against
awqcore serve with two --max-tokens values."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

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


def test_several_max_tokens_run_every_level_with_each(smollm2_awqbin, tmp_path):
    out = tmp_path / "load.json"
    script = load_bench.__file__
    subprocess.run([sys.executable, script, "--model", str(smollm2_awqbin), "--threads", "2",
                    "--concurrency", "1", "2", "--max-tokens", "3", "6", "--prompt-words", "4",
                    "--json", str(out), "-q"], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["max_tokens"] == [3, 6]
    rows = [(r["max_tokens"], r["clients"], r["tokens"], r["short_streams"])
            for r in result["rows"]]
    # Each stream gives exactly its max_tokens (ignore_eos).
    assert rows == [(3, 1, 3, 0), (3, 2, 6, 0), (6, 1, 6, 0), (6, 2, 12, 0)]
