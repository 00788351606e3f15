"""The server's counters, rendered as Prometheus text (exposition format 0.0.4).

The server counts what it sees per HTTP request (responses by status,
finished generations by reason, tokens, time to first token, request
duration); the engine's own counters (queue length, running sequences, decode
steps, forward-pass time) are read from Engine.stats() at each scrape.
Everything here runs on the event loop thread, so no lock is needed.
"""
from __future__ import annotations

from collections import Counter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "awqcore"

# Seconds; time to first token spans a queued request's wait too, so the
# buckets reach minutes.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.bounds = buckets
        self.counts = [0] * len(buckets)  # observations <= bound, per bound (not cumulative)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def samples(self) -> list[str]:
        """The sample lines after the metric's name (cumulative buckets, sum, count)."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append(f'_bucket{{le="{bound:g}"}} {running}')
        out += [f'_bucket{{le="+Inf"}} {self.count}', f"_sum {self.sum:.6f}",
                f"_count {self.count}"]
        return out


class Metrics:
    def __init__(self):
        self.responses: Counter = Counter()  # (endpoint, status) -> count
        self.finished: Counter = Counter()   # finish_reason -> generations
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.request_duration = Histogram(DURATION_BUCKETS)

    def response(self, endpoint: str, status: int) -> None:
        self.responses[(endpoint, status)] += 1

    def first_token(self, seconds: float) -> None:
        self.time_to_first_token.observe(seconds)

    def generation_finished(self, reason: str, prompt_tokens: int, completion_tokens: int,
                            seconds: float) -> None:
        self.finished[reason] += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.request_duration.observe(seconds)

    def render(self, engine: dict) -> str:
        """All metrics as Prometheus text; `engine` is Engine.stats()."""
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            full = f"{PREFIX}_{name}"
            out.append(f"# HELP {full} {help_text}")
            out.append(f"# TYPE {full} {kind}")
            out.extend(f"{full}{s}" for s in samples)

        metric("http_responses_total", "counter", "HTTP responses by endpoint and status.",
               [f'{{endpoint="{e}",status="{s}"}} {n}'
                for (e, s), n in sorted(self.responses.items())])
        metric("requests_finished_total", "counter",
               "Generations finished, by OpenAI finish reason.",
               [f'{{finish_reason="{r}"}} {n}' for r, n in sorted(self.finished.items())])
        metric("prompt_tokens_total", "counter", "Prompt tokens of finished generations.",
               [f" {self.prompt_tokens}"])
        metric("generation_tokens_total", "counter", "Tokens generated for finished generations.",
               [f" {self.completion_tokens}"])
        metric("time_to_first_token_seconds", "histogram",
               "From a generation request's submission to the engine to its first token.",
               self.time_to_first_token.samples())
        metric("request_duration_seconds", "histogram",
               "From a generation request's submission to the engine to its last token.",
               self.request_duration.samples())
        metric("queue_length", "gauge", "Requests waiting for a free sequence slot.",
               [f" {engine.get('waiting', 0)}"])
        metric("batch_size", "gauge", "Sequences decoding together now.",
               [f" {engine.get('running', 0)}"])
        metric("max_batch", "gauge", "Sequences that can decode together.",
               [f" {engine.get('max_batch', 0)}"])
        metric("max_queue", "gauge", "Requests that can wait; one more is answered 503.",
               [f" {engine.get('max_queue', 0)}"])
        steps = engine.get("decode_steps", 0)
        generated = engine.get("generated_tokens", 0)
        decode_seconds = engine.get("decode_seconds", 0.0)
        metric("engine_decode_steps_total", "counter", "Decode steps the engine ran.",
               [f" {steps}"])
        metric("engine_generated_tokens_total", "counter", "Tokens the engine generated.",
               [f" {generated}"])
        metric("engine_prompt_tokens_total", "counter", "Prompt tokens the engine prefilled.",
               [f" {engine.get('prompt_tokens', 0)}"])
        metric("engine_prefill_seconds_total", "counter", "Forward-pass time in prefill.",
               [f" {engine.get('prefill_seconds', 0.0):.6f}"])
        metric("engine_decode_seconds_total", "counter", "Forward-pass time in decode steps.",
               [f" {decode_seconds:.6f}"])
        metric("mean_batch_size", "gauge", "Generated tokens per decode step so far.",
               [f" {generated / steps if steps else 0.0:.4f}"])
        metric("decode_tokens_per_second", "gauge",
               "Generated tokens per second of decode-step time so far (all sequences).",
               [f" {generated / decode_seconds if decode_seconds > 0 else 0.0:.3f}"])
        return "\n".join(out) + "\n"
