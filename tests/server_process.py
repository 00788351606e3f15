"""`awqcore serve` started by a test: a child process on a free loopback port
(--port 0; the server prints the port it bound), stopped with SIGTERM, every
wait bounded."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

START_TIMEOUT_S = 120  # loading SmolLM2 takes seconds; a busy 2-core machine, more
STOP_TIMEOUT_S = 60


class ServerProcess:
    def __init__(self, model_path, *args: str, api_key: str | None = None):
        command = [sys.executable, "-m", "awqcore", "serve", str(model_path), "--host",
                   "127.0.0.1", "--port", "0", "--log-level", "warning", *args]
        if api_key is not None:
            command += ["--api-key", api_key]
        env = {k: v for k, v in os.environ.items() if k != "AWQCORE_API_KEY"}
        self.api_key = api_key
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        lines: queue.Queue = queue.Queue()

        def read() -> None:  # drains stderr so the server never blocks on a full pipe
            for line in self.process.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TimeoutError(f"the server did not start in {START_TIMEOUT_S} s: "
                                   f"{''.join(self.log)}") from None
            if line is None:
                raise RuntimeError(f"the server exited ({self.process.wait()}): "
                                   f"{''.join(self.log)}")
            match = re.search(r"awqcore serve: .* at (http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                break

    def openai_client(self):
        """The official client on this server; max_retries=0: a 503 or a
        timeout must reach the test, not be retried."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key or "none",
                             timeout=120, max_retries=0)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, by name with labels, e.g.
        'awqcore_requests_finished_total{finish_reason="stop"}'."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def wait_for_metric(self, name: str, predicate, timeout: float = 30) -> float:
        """Polls /metrics until predicate(value of `name`) holds; returns the value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics().get(name, 0.0)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} = {value} after {timeout} s")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signals the server and waits for it to exit; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the server ignored signal {sig} for {STOP_TIMEOUT_S} s: "
                                     f"{''.join(self.log)}") from None
        return self.process.returncode


@contextmanager
def running_server(model_path, *args: str, api_key: str | None = None) -> Iterator[ServerProcess]:
    """A ServerProcess for the block; stopped (SIGTERM) when it ends."""
    process = ServerProcess(model_path, *args, api_key=api_key)
    try:
        yield process
    finally:
        process.stop()
