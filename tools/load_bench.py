#!/usr/bin/env python3
"""Load benchmark of an OpenAI-compatible server: N concurrent streams.

    python tools/load_bench.py --model smollm2.awqbin              (starts awqcore serve)
    python tools/load_bench.py --url http://127.0.0.1:8000         (a running server)
    python tools/load_bench.py --model smollm2.awqbin --engine     (and the same load
                                                                    through awqcore.Engine)
    python tools/load_bench.py --model smollm2.awqbin \\
        --llama-gguf SmolLM2-135M-Instruct.Q4_1.gguf               (and llama-cpp-python's server)

For each concurrency level (default 1, 4, 8, 16) it starts that many clients at
once, each streaming --requests completions of exactly --max-tokens tokens
(ignore_eos; llama-cpp-python: min_tokens; several --max-tokens values run
every level with each) from its own prompt (prompt lengths
differ per client), and reports aggregate output tok/s (all tokens over the
wall time of the level), time to first token (p50/p95) and inter-token latency
(gaps between streamed chunks, p50/p95; a chunk may carry several tokens when
the server coalesces them). Printed as a markdown table; --json writes every
number. A warm-up request precedes the levels.

The client is one asyncio process reading raw HTTP/1.1 (no HTTP library) and
takes little CPU, but on a small machine it still shares the cores with the
server: the table gives CPU milliseconds per output token of the server (all
threads; in brackets its main thread, which runs a Python server's event
loop) and of this client (from /proc's 10 ms ticks: meaningful over
hundreds of tokens), and the progress lines the engine's forward-pass
seconds (prefill, decode) from awqcore serve's /metrics. CPU times hold on a
machine other work slows down; wall times do not. --engine adds the same load
through awqcore.Engine in this process with no HTTP at all: the ceiling the
server can reach with this engine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional
from urllib.parse import urlsplit

WORDS = ("the quick brown fox jumps over the lazy dog while a cat watches from the warm "
         "window and birds sing in the tall green trees near the old river").split()


def prompt_for(client: int, base_words: int, shared_words: int = 0) -> str:
    """A different prompt per client, base_words to ~2x base_words words, that
    shares only its first three words with the others (the word list starts
    at another place), so prefix reuse finds little to keep; after
    shared_words words every prompt starts with (a system prompt's stand-in)."""
    count = base_words + (client * 7) % (base_words + 1)
    first = (client * 5) % len(WORDS)
    shared = " ".join(WORDS[i % len(WORDS)] for i in range(shared_words))
    return ((shared + "\n\n" if shared else "") + "Continue this story: "
            + " ".join(WORDS[(first + i) % len(WORDS)] for i in range(count)))


@dataclass
class Stream:
    ttft: Optional[float] = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    parsed = urlsplit(url)
    if parsed.scheme != "http":
        raise ValueError(f"only http:// URLs are supported (got {url})")
    host, port = parsed.hostname, parsed.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    return reader, writer, f"{host}:{port}"


async def _body_pieces(reader: asyncio.StreamReader, headers: dict) -> AsyncIterator[bytes]:
    """The response body as it arrives: de-chunked (Transfer-Encoding: chunked)
    or read to the end of the connection. A chunked body cut short (the
    server closed the connection mid-chunk) is a ConnectionError saying so."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await reader.readline()
            try:
                size = int(line.split(b";")[0], 16)
                piece = await reader.readexactly(size + 2)  # + CRLF
            except (ValueError, asyncio.IncompleteReadError):
                raise ConnectionError(f"the server ended a chunked body early (at {line[:40]!r})"
                                      ) from None
            if size == 0:
                return
            yield piece[:-2]
    while piece := await reader.read(65536):
        yield piece


async def one_stream(url: str, body: dict, auth: dict, usage: bool) -> Stream:
    """One streamed completion over its own connection; token times are those
    at which content events arrive. Plain asyncio streams rather than an HTTP
    library: the client shares the CPU with the server, so it spends as
    little as it can per event (one read and one json.loads)."""
    result = Stream()
    payload = json.dumps(body).encode()
    reader, writer, host = await _open(url)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                     f"Accept: text/event-stream\r\nConnection: close\r\n{head}\r\n"
                     .encode() + payload)
        start = time.perf_counter()
        last = None
        status = (await reader.readline()).decode("latin-1").split()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "200":
            rest = b"".join([piece async for piece in _body_pieces(reader, headers)])
            raise RuntimeError(f"HTTP {' '.join(status[1:])}: {rest[:300]!r}")
        buffer = b""
        async for piece in _body_pieces(reader, headers):
            now = time.perf_counter()
            # SSE lines may end in CRLF (sse-starlette's default, llama-cpp-python's server).
            buffer = (buffer + piece).replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                data = json.loads(event[6:])
                if data.get("usage") and usage:
                    result.tokens = data["usage"]["completion_tokens"]
                if not data.get("choices") or not data["choices"][0].get("text"):
                    continue
                if last is None:
                    result.ttft = now - start
                else:
                    result.gaps.append(now - last)
                last = now
                if not usage:
                    result.tokens += 1  # a server without stream usage: one chunk per token
    finally:
        writer.close()
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def level(url: str, clients: int, args, peer_llama: bool) -> dict:
    async def client(i: int) -> list[Stream]:
        out = []
        for r in range(args.requests):
            body = {"prompt": prompt_for(i + r, args.prompt_words, args.shared_words),
                    "max_tokens": args.max_tokens, "temperature": 0, "stream": True}
            if peer_llama:
                body["min_tokens"] = args.max_tokens
            else:
                body.update(ignore_eos=True, stream_options={"include_usage": True})
            out.append(await asyncio.wait_for(
                one_stream(url, body, _auth(args), usage=not peer_llama), args.timeout))
        return out

    start = time.perf_counter()
    streams = [s for group in await asyncio.gather(*(client(i) for i in range(clients)))
               for s in group]
    return summary(clients, streams, time.perf_counter() - start, args)


def engine_level(engine, clients: int, args) -> dict:
    """The same load through awqcore.Engine in this process, no HTTP: each
    client's prompts, tokenized as the server does, submitted together; token
    times are those at which the Engine's dispatcher delivers them."""
    tokenizer = engine.tokenizer

    def client(i: int, stream: Stream, done: threading.Event, r: int = 0) -> None:
        start = time.perf_counter()
        last = [None]

        def on_event(_id, token, finish_reason, error) -> None:
            if finish_reason is not None:
                if error:
                    print(f"error: {error}", file=sys.stderr)
                if r + 1 < args.requests:
                    client(i, streams[i][r + 1], done, r + 1)
                else:
                    done.set()
                return
            now = time.perf_counter()
            if last[0] is None:
                stream.ttft = now - start
            else:
                stream.gaps.append(now - last[0])
            last[0] = now
            stream.tokens += 1

        ids = tokenizer.encode(prompt_for(i + r, args.prompt_words, args.shared_words)).ids
        engine.submit(ids, max_new_tokens=args.max_tokens, stop_ids=[], on_event=on_event)

    streams = [[Stream() for _ in range(args.requests)] for _ in range(clients)]
    done = [threading.Event() for _ in range(clients)]
    start = time.perf_counter()
    for i in range(clients):
        client(i, streams[i][0], done[i])
    for event in done:
        event.wait(args.timeout)
    return summary(clients, [s for group in streams for s in group],
                   time.perf_counter() - start, args)


def summary(clients: int, streams: list[Stream], wall: float, args) -> dict:
    tokens = sum(s.tokens for s in streams)
    ttfts = [s.ttft for s in streams if s.ttft is not None]
    gaps = [g for s in streams for g in s.gaps]
    short = sum(1 for s in streams if s.tokens < args.max_tokens)
    if short:
        print(f"warning: {short} of {len(streams)} streams ended before {args.max_tokens} "
              "tokens", file=sys.stderr)
    return {"clients": clients, "max_tokens": args.max_tokens, "requests": len(streams),
            "short_streams": short,
            "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "ttft_p50_s": percentile(ttfts, 0.5),
            "ttft_p95_s": percentile(ttfts, 0.95), "itl_p50_s": percentile(gaps, 0.5),
            "itl_p95_s": percentile(gaps, 0.95)}


def _auth(args) -> dict:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def run_levels(url: str, name: str, args, peer_llama: bool = False,
               server_pid: Optional[int] = None) -> list[dict]:
    warm_up = argparse.Namespace(**{**vars(args), "requests": 1, "max_tokens": 4})
    asyncio.run(level(url, 1, warm_up, peer_llama))
    rows = []
    for clients in args.concurrency:
        before, forward = CpuTimes(server_pid), engine_seconds(url, args)
        result = asyncio.run(level(url, clients, args, peer_llama))
        result.update(CpuTimes(server_pid).per_token(before, result))
        if forward is not None:
            after = engine_seconds(url, args)
            result.update(prefill_s=after[0] - forward[0], decode_s=after[1] - forward[1])
        rows.append(_row(name, result, args))
    return rows


def engine_seconds(url: str, args) -> Optional[tuple[float, float]]:
    """awqcore serve's forward-pass seconds so far (prefill, decode), from
    /metrics; None for a server without them."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=args.timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = dict(re.findall(r"^awqcore_engine_(prefill|decode)_seconds_total (\S+)$", text,
                            re.MULTILINE))
    return (float(found["prefill"]), float(found["decode"])) if len(found) == 2 else None


class CpuTimes:
    """CPU seconds used so far by this process (the load client) and, on Linux,
    by a server process: all its threads, and its main thread alone (for a
    Python server, the event loop's HTTP and text work). Unlike wall times,
    these hold on a machine that other work slows down."""

    def __init__(self, server_pid: Optional[int]):
        self.pid = server_pid
        self.client = time.process_time()
        self.server = self.loop = None
        if server_pid is not None and os.path.exists(f"/proc/{server_pid}/stat"):
            tick = os.sysconf("SC_CLK_TCK")
            self.server = sum(_proc_cpu(f"/proc/{server_pid}/task/{t}/stat", tick)
                              for t in os.listdir(f"/proc/{server_pid}/task"))
            self.loop = _proc_cpu(f"/proc/{server_pid}/task/{server_pid}/stat", tick)

    def per_token(self, before: "CpuTimes", result: dict) -> dict:
        """CPU milliseconds per output token since `before`."""
        tokens = max(1, result["tokens"])
        out = {"client_cpu_ms_per_token": (self.client - before.client) * 1e3 / tokens}
        if self.server is not None and before.server is not None:
            out["server_cpu_ms_per_token"] = (self.server - before.server) * 1e3 / tokens
            out["server_main_thread_cpu_ms_per_token"] = (self.loop - before.loop) * 1e3 / tokens
        return out


def _proc_cpu(path: str, tick: int) -> float:
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a thread that ended between listing and reading
        return 0.0
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime


def run_engine_levels(args) -> list[dict]:
    import awqcore

    most = max(args.concurrency)
    rows = []
    with awqcore.Engine(args.model, max_batch=args.max_batch, threads=args.threads,
                        max_queue=max(64, most), **_engine_options(args)) as engine:
        engine.generate(engine.tokenizer.encode("warm up").ids, max_new_tokens=4)
        for clients in args.concurrency:
            before, stats = time.process_time(), engine.stats()
            result = engine_level(engine, clients, args)
            cpu = (time.process_time() - before) * 1e3 / max(1, result["tokens"])
            after = engine.stats()
            result.update(server_cpu_ms_per_token=cpu,
                          prefill_s=after["prefill_seconds"] - stats["prefill_seconds"],
                          decode_s=after["decode_seconds"] - stats["decode_seconds"])
            rows.append(_row(f"awqcore.Engine, no HTTP (max batch {args.max_batch})", result,
                             args))
    return rows


def _engine_options(args) -> dict:
    options = {name: getattr(args, name) for name in ("prefill_chunk", "prefill_budget")
               if getattr(args, name) is not None}
    return {**options, "prefix_reuse": not args.no_prefix_reuse}


def _row(name: str, result: dict, args) -> dict:
    if not args.quiet:
        forward = (f", forward passes {result['prefill_s']:.2f} s prefill + "
                   f"{result['decode_s']:.2f} s decode of {result['wall_s']:.2f} s"
                   if "prefill_s" in result else "")
        print(f"{name}: {result['clients']} streams of {result['max_tokens']} tokens: "
              f"{result['tok_s']:.1f} tok/s, TTFT p50 "
              f"{result['ttft_p50_s'] * 1e3:.0f} ms, ITL p50 {result['itl_p50_s'] * 1e3:.1f} ms"
              f", p95 {result['itl_p95_s'] * 1e3:.1f} ms{forward}", file=sys.stderr, flush=True)
    return {"server": name, **result}


def start_server(command: list[str], ready: re.Pattern, timeout: float = 300
                 ) -> tuple[subprocess.Popen, str]:
    """Starts a server process; returns it and its URL once `ready` matches a log line."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:  # all along, so the server never blocks on a full pipe
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    log = []
    while (line := lines.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
        log.append(line)
        if match := ready.search(line):
            return process, match.group(1)
    process.kill()
    raise RuntimeError(f"{' '.join(command[:4])} exited: {''.join(log[-20:])}")


def per_max_tokens(args) -> list[argparse.Namespace]:
    """The arguments once per --max-tokens value, each with that one value."""
    return [argparse.Namespace(**{**vars(args), "max_tokens": tokens})
            for tokens in args.max_tokens]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    lines = ["| server | max tokens | streams | output tok/s | TTFT p50 (ms) | TTFT p95 (ms) "
             "| ITL p50 (ms) | ITL p95 (ms) | CPU ms/token: server (main thread) / client |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = f"{r['server_cpu_ms_per_token']:.2f}" if "server_cpu_ms_per_token" in r else "-"
        if "server_main_thread_cpu_ms_per_token" in r:
            cpu += f" ({r['server_main_thread_cpu_ms_per_token']:.2f})"
        if "client_cpu_ms_per_token" in r:
            cpu += f" / {r['client_cpu_ms_per_token']:.2f}"
        lines.append(f"| {r['server']} | {r['max_tokens']} | {r['clients']} | {r['tok_s']:.1f} | "
                     f"{r['ttft_p50_s'] * 1e3:.0f} | {r['ttft_p95_s'] * 1e3:.0f} | "
                     f"{r['itl_p50_s'] * 1e3:.1f} | {r['itl_p95_s'] * 1e3:.1f} | {cpu} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--model", help="a .awqbin file: start `awqcore serve` on it")
    parser.add_argument("--api-key", help="the running server's key (--url)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[64],
                        help="tokens per stream (64); several: every concurrency level with "
                        "each, on one server start")
    parser.add_argument("--requests", type=int, default=1,
                        help="streams each client runs one after another (default 1)")
    parser.add_argument("--prompt-words", type=int, default=32,
                        help="prompt length of client 0 in words; others up to twice it")
    parser.add_argument("--shared-words", type=int, default=0,
                        help="words every prompt starts with, as a shared system prompt (0)")
    parser.add_argument("--max-batch", type=int, default=8, help="awqcore serve --max-batch (8)")
    parser.add_argument("--threads", type=int, default=None, help="server threads (all cores)")
    parser.add_argument("--prefill-chunk", type=int, default=None,
                        help="awqcore serve --prefill-chunk (its default when not given)")
    parser.add_argument("--no-prefix-reuse", action="store_true",
                        help="awqcore serve --no-prefix-reuse")
    parser.add_argument("--prefill-budget", type=int, default=None,
                        help="awqcore serve --prefill-budget (its default when not given)")
    parser.add_argument("--engine", action="store_true",
                        help="with --model: also run the same load through awqcore.Engine in "
                        "this process, without HTTP (the ceiling the server can reach)")
    parser.add_argument("--llama-gguf", help="also benchmark llama-cpp-python's server on this "
                        "GGUF (it serves one request at a time, the others wait)")
    parser.add_argument("--llama-python", default=sys.executable,
                        help="a Python with llama-cpp-python and its server extra (default: "
                        "this one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    args = parser.parse_args()

    rows: list[dict] = []
    servers = []
    try:
        if args.url:
            for each in per_max_tokens(args):
                rows += run_levels(args.url.rstrip("/"), "server", each)
        else:
            command = [sys.executable, "-m", "awqcore", "serve", args.model, "--port", "0",
                       "--max-batch", str(args.max_batch), "--log-level", "warning",
                       "--max-queue", str(max(64, max(args.concurrency)))]
            if args.threads:
                command += ["--threads", str(args.threads)]
            if args.prefill_chunk:
                command += ["--prefill-chunk", str(args.prefill_chunk)]
            if args.prefill_budget:
                command += ["--prefill-budget", str(args.prefill_budget)]
            if args.no_prefix_reuse:
                command.append("--no-prefix-reuse")
            process, url = start_server(command, re.compile(r"at (http://[\d.]+:\d+)"))
            servers.append(process)
            for each in per_max_tokens(args):
                rows += run_levels(url, f"awqcore (max batch {args.max_batch})", each,
                                   server_pid=process.pid)
            process.terminate()
            process.wait(timeout=60)
            if args.engine:
                for each in per_max_tokens(args):
                    rows += run_engine_levels(each)
        if args.llama_gguf:
            port = free_port()
            # interrupt_requests off: by default a new request ends the running
            # stream early (with [DONE]) instead of waiting its turn.
            command = [args.llama_python, "-m", "llama_cpp.server", "--model", args.llama_gguf,
                       "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                       "--interrupt_requests", "False"]
            if args.threads:
                command += ["--n_threads", str(args.threads)]
            process, url = start_server(command, re.compile(
                r"Uvicorn running on (http://[\d.]+:\d+)"))
            servers.append(process)
            for each in per_max_tokens(args):
                rows += run_levels(url, "llama-cpp-python server", each, peer_llama=True,
                                   server_pid=process.pid)
    finally:
        for process in servers:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    print(table(rows))
    if args.json:
        from awqcore.atomic_write import write_atomic

        write_atomic(args.json, json.dumps(
            {"max_tokens": args.max_tokens, "requests_per_client": args.requests,
             "prompt_words": args.prompt_words, "shared_words": args.shared_words, "cpu_count": os.cpu_count(), "rows": rows},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
