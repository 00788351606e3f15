#!/usr/bin/env python3
"""Summed decode rate of N concurrent streams through awqcore.Engine against
Model.generate of the same N prompts as one static batch (GenerateBatch): the
engine's scheduling, callbacks and Python dispatch should cost nothing
measurable next to the forward passes.

    python tools/engine_bench.py smollm2.awqbin --threads 2 --streams 1 4 8 --repeat 3

Each configuration runs --repeat times, the two sides interleaved (alternating
which goes first) so that a change in machine load hits both; the median wall time of each is reported
(prefill included on both sides: the same prompts, the same tokens), and
the median share of the engine's wall time spent outside forward passes (its
own overhead, which machine load does not hide).
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import awqcore


def engine_run(engine: awqcore.Engine, prompts: list[list[int]],
               new_tokens: int) -> tuple[float, float]:
    """Wall seconds for every prompt submitted at once, and the share of them
    spent outside forward passes (scheduling, callbacks, Python dispatch)."""
    done = [threading.Event() for _ in prompts]
    before = engine.stats()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.submit(prompt, max_new_tokens=new_tokens, stop_ids=[],
                      on_event=lambda _id, token, reason, error, i=i: reason and done[i].set())
    for event in done:
        event.wait()
    wall = time.perf_counter() - start
    after = engine.stats()
    forward = sum(after[k] - before[k] for k in ("prefill_seconds", "decode_seconds"))
    return wall, (wall - forward) / wall


def batch_run(model: awqcore.Model, prompts: list[list[int]], new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(prompts, max_new_tokens=new_tokens, stop=[])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    most = max(args.streams)
    max_seq_len = args.prompt_tokens + args.new_tokens
    model = awqcore.Model(args.model, threads=args.threads, max_seq_len=max_seq_len,
                          max_batch=most)
    vocab = model.config["vocab_size"]
    prompts = [[(101 * s + 7 * j + 3) % vocab for j in range(args.prompt_tokens)]
               for s in range(most)]
    print(f"{args.model}: {args.prompt_tokens} prompt + {args.new_tokens} new tokens per stream, "
          f"{model.config['threads']} threads, median of {args.repeat} interleaved runs")
    print(f"{'streams':>7} {'GenerateBatch tok/s':>20} {'Engine tok/s':>13} {'ratio':>6} "
          f"{'Engine outside forward':>23}")
    with awqcore.Engine(args.model, threads=args.threads, max_seq_len=max_seq_len,
                        max_batch=most, prefill_chunk=args.prompt_tokens) as engine:
        for n in args.streams:
            batch_s, engine_s, outside = [], [], []
            def record(run: tuple[float, float]) -> None:
                engine_s.append(run[0])
                outside.append(run[1])

            for rep in range(args.repeat):  # alternating which side goes first
                runs = [lambda: batch_s.append(batch_run(model, prompts[:n], args.new_tokens)),
                        lambda: record(engine_run(engine, prompts[:n], args.new_tokens))]
                for run in runs[::-1] if rep % 2 else runs:
                    run()
            tokens = n * args.new_tokens
            batch_rate = tokens / statistics.median(batch_s)
            engine_rate = tokens / statistics.median(engine_s)
            print(f"{n:>7} {batch_rate:>20.1f} {engine_rate:>13.1f} {engine_rate / batch_rate:>6.2f} "
                  f"{100 * statistics.median(outside):>22.2f}%", flush=True)


if __name__ == "__main__":
    main()
