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
        for name, kind, help_text, samples in METRICS:
            full = f"{PREFIX}_{name}"
            out.append(f"# HELP {full} {help_text}")
            out.append(f"# TYPE {full} {kind}")
            out.extend(f"{full}{s}" for s in samples(self, engine))
        return "\n".join(out) + "\n"


def _value(value: float) -> list[str]:
    """One unlabelled sample; floats keep microsecond resolution."""
    return [f" {value:.6f}" if isinstance(value, float) else f" {value}"]


def _labelled(counts: Counter, *label_names: str) -> list[str]:
    """One sample per key of `counts`; a tuple key holds one value per label."""
    out = []
    for key, n in sorted(counts.items()):
        values = key if isinstance(key, tuple) else (key,)
        labels = ",".join(f'{label}="{v}"' for label, v in zip(label_names, values))
        out.append(f"{{{labels}}} {n}")
    return out


def _stat(key: str):
    """Samples of one Engine.stats() field (absent before the engine reports it)."""
    return lambda metrics, engine: _value(engine.get(key, 0))


def _ratio(numerator: str, denominator: str):
    """Samples of engine[numerator] / engine[denominator], 0 while the denominator is 0."""
    def samples(metrics, engine):
        den = engine.get(denominator, 0)
        return _value(engine.get(numerator, 0) / den if den > 0 else 0.0)
    return samples


# Every exported metric: (name after PREFIX, Prometheus type, help text,
# samples(metrics, engine stats) -> the sample lines after the metric's name).
METRICS = (
    ("http_responses_total", "counter", "HTTP responses by endpoint and status.",
     lambda m, e: _labelled(m.responses, "endpoint", "status")),
    ("requests_finished_total", "counter", "Generations finished, by OpenAI finish reason.",
     lambda m, e: _labelled(m.finished, "finish_reason")),
    ("prompt_tokens_total", "counter", "Prompt tokens of finished generations.",
     lambda m, e: _value(m.prompt_tokens)),
    ("generation_tokens_total", "counter", "Tokens generated for finished generations.",
     lambda m, e: _value(m.completion_tokens)),
    ("time_to_first_token_seconds", "histogram",
     "From a generation request's submission to the engine to its first token.",
     lambda m, e: m.time_to_first_token.samples()),
    ("request_duration_seconds", "histogram",
     "From a generation request's submission to the engine to its last token.",
     lambda m, e: m.request_duration.samples()),
    ("queue_length", "gauge", "Requests waiting for a free sequence slot.", _stat("waiting")),
    ("batch_size", "gauge", "Sequences decoding together now.", _stat("running")),
    ("max_batch", "gauge", "Sequences that can decode together.", _stat("max_batch")),
    ("max_queue", "gauge", "Requests that can wait; one more is answered 503.",
     _stat("max_queue")),
    ("engine_decode_steps_total", "counter", "Decode steps the engine ran.",
     _stat("decode_steps")),
    ("engine_generated_tokens_total", "counter", "Tokens the engine generated.",
     _stat("generated_tokens")),
    ("engine_prompt_tokens_total", "counter", "Prompt tokens the engine prefilled.",
     _stat("prompt_tokens")),
    ("engine_reused_prompt_tokens_total", "counter",
     "Prompt tokens found in a sequence slot's cache and not prefilled (prefix reuse).",
     _stat("reused_prompt_tokens")),
    ("engine_prefill_seconds_total", "counter", "Forward-pass time in prefill.",
     _stat("prefill_seconds")),
    ("engine_decode_seconds_total", "counter", "Forward-pass time in decode steps.",
     _stat("decode_seconds")),
    ("mean_batch_size", "gauge", "Generated tokens per decode step so far.",
     _ratio("generated_tokens", "decode_steps")),
    ("decode_tokens_per_second", "gauge",
     "Generated tokens per second of decode-step time so far (all sequences).",
     _ratio("generated_tokens", "decode_seconds")),
)
