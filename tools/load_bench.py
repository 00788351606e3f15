#!/usr/bin/env python3
"""Load benchmark of an OpenAI-compatible server: N concurrent streams.

    python tools/load_bench.py --model smollm2.awqbin              (starts awqcore serve)
    python tools/load_bench.py --url http://127.0.0.1:8000         (a running server)
    python tools/load_bench.py --model smollm2.awqbin \\
        --llama-gguf SmolLM2-135M-Instruct.Q4_1.gguf               (and llama-cpp-python's server)

For each concurrency level (default 1, 4, 8, 16) it starts that many clients at
once, each streaming --requests completions of exactly --max-tokens tokens
(ignore_eos; llama-cpp-python: min_tokens) from its own prompt (prompt lengths
differ per client), and reports aggregate output tok/s (all tokens over the
wall time of the level), time to first token (p50/p95) and inter-token latency
(gaps between streamed tokens, p50/p95). Printed as a markdown table; --json
writes every number. A warm-up request precedes the levels.
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
from dataclasses import dataclass, field
from typing import Optional

import httpx

WORDS = ("the quick brown fox jumps over the lazy dog while a cat watches from the warm "
         "window and birds sing in the tall green trees near the old river").split()


def prompt_for(client: int, base_words: int) -> str:
    """A different prompt length per client: base_words to ~2x base_words words."""
    count = base_words + (client * 7) % (base_words + 1)
    return "Continue this story: " + " ".join(WORDS[i % len(WORDS)] for i in range(count))


@dataclass
class Stream:
    ttft: Optional[float] = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0


async def one_stream(http: httpx.AsyncClient, body: dict, usage: bool) -> Stream:
    """One streamed completion; token times are those of the content chunks."""
    result = Stream()
    start = time.perf_counter()
    last = None
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if event.get("usage") and usage:
                result.tokens = event["usage"]["completion_tokens"]
            if not event.get("choices") or not event["choices"][0].get("text"):
                continue
            now = time.perf_counter()
            if last is None:
                result.ttft = now - start
            else:
                result.gaps.append(now - last)
            last = now
            if not usage:
                result.tokens += 1  # a server without stream usage: one chunk per token
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
        async with httpx.AsyncClient(base_url=url, timeout=args.timeout,
                                     headers=_auth(args)) as http:
            for r in range(args.requests):
                body = {"prompt": prompt_for(i + r, args.prompt_words),
                        "max_tokens": args.max_tokens, "temperature": 0, "stream": True}
                if peer_llama:
                    body["min_tokens"] = args.max_tokens
                else:
                    body.update(ignore_eos=True, stream_options={"include_usage": True})
                out.append(await one_stream(http, body, usage=not peer_llama))
        return out

    start = time.perf_counter()
    streams = [s for group in await asyncio.gather(*(client(i) for i in range(clients)))
               for s in group]
    wall = time.perf_counter() - start
    tokens = sum(s.tokens for s in streams)
    ttfts = [s.ttft for s in streams if s.ttft is not None]
    gaps = [g for s in streams for g in s.gaps]
    short = sum(1 for s in streams if s.tokens < args.max_tokens)
    if short:
        print(f"warning: {short} of {len(streams)} streams ended before {args.max_tokens} "
              "tokens", file=sys.stderr)
    return {"clients": clients, "requests": len(streams), "short_streams": short,
            "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "ttft_p50_s": percentile(ttfts, 0.5),
            "ttft_p95_s": percentile(ttfts, 0.95), "itl_p50_s": percentile(gaps, 0.5),
            "itl_p95_s": percentile(gaps, 0.95)}


def _auth(args) -> dict:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def run_levels(url: str, name: str, args, peer_llama: bool = False) -> list[dict]:
    asyncio.run(level(url, 1, argparse.Namespace(**{**vars(args), "requests": 1,
                                                    "max_tokens": 4}), peer_llama))  # warm-up
    rows = []
    for clients in args.concurrency:
        row = {"server": name, **asyncio.run(level(url, clients, args, peer_llama))}
        if not args.quiet:
            print(f"{name}: {clients} streams: {row['tok_s']:.1f} tok/s, TTFT p50 "
                  f"{row['ttft_p50_s'] * 1e3:.0f} ms, ITL p50 {row['itl_p50_s'] * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
        rows.append(row)
    return rows


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows: list[dict]) -> str:
    lines = ["| server | streams | output tok/s | TTFT p50 (ms) | TTFT p95 (ms) | ITL p50 (ms) "
             "| ITL p95 (ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['clients']} | {r['tok_s']:.1f} | "
                     f"{r['ttft_p50_s'] * 1e3:.0f} | {r['ttft_p95_s'] * 1e3:.0f} | "
                     f"{r['itl_p50_s'] * 1e3:.1f} | {r['itl_p95_s'] * 1e3:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--model", help="a .awqbin file: start `awqcore serve` on it")
    parser.add_argument("--api-key", help="the running server's key (--url)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream (64)")
    parser.add_argument("--requests", type=int, default=1,
                        help="streams each client runs one after another (default 1)")
    parser.add_argument("--prompt-words", type=int, default=32,
                        help="prompt length of client 0 in words; others up to twice it")
    parser.add_argument("--max-batch", type=int, default=8, help="awqcore serve --max-batch (8)")
    parser.add_argument("--threads", type=int, default=None, help="server threads (all cores)")
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
            rows += run_levels(args.url.rstrip("/"), "server", args)
        else:
            command = [sys.executable, "-m", "awqcore", "serve", args.model, "--port", "0",
                       "--max-batch", str(args.max_batch), "--log-level", "warning",
                       "--max-queue", str(max(64, max(args.concurrency)))]
            if args.threads:
                command += ["--threads", str(args.threads)]
            process, url = start_server(command, re.compile(r"at (http://[\d.]+:\d+)"))
            servers.append(process)
            rows += run_levels(url, f"awqcore (max batch {args.max_batch})", args)
            process.terminate()
            process.wait(timeout=60)
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
            rows += run_levels(url, "llama-cpp-python server", args, peer_llama=True)
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
             "prompt_words": args.prompt_words, "cpu_count": os.cpu_count(), "rows": rows},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
