"""`awqcore serve`: an OpenAI-compatible HTTP server over awqcore.Engine.

    awqcore serve smollm2.awqbin --port 8000
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Needs the `server` extra (pip install 'awqcore[server]': Starlette and uvicorn;
importing this package without them raises ImportError).
The Engine decodes every running request together on its own thread (the GIL
released); the event loop only validates, detokenizes and sends.
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Optional

import uvicorn

from .app import DEFAULT_MAX_BODY_BYTES, ServerConfig, create_app

__all__ = ["serve", "create_app", "ServerConfig", "DEFAULT_MAX_BODY_BYTES"]


def serve(path: str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_seq_len: int = 4096, max_queue: int = 64, prefill_chunk: int = 256,
          prefill_budget: Optional[int] = None, prefix_reuse: bool = True,
          threads: Optional[int] = None, device: str = "cpu", api_key: Optional[str] = None, model_name: Optional[str] = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, shutdown_timeout: float = 10.0,
          log_level: str = "info") -> None:
    """Serves the model at `path` until SIGINT/SIGTERM.

    Shutdown is graceful: no new connection is accepted, running requests go
    on for up to `shutdown_timeout` seconds, then the rest are cancelled, each
    stream ending with a last chunk (finish_reason "abort", as vLLM's) and [DONE].
    """
    from .. import Engine

    engine = Engine(path, max_batch=max_batch, max_seq_len=max_seq_len, max_queue=max_queue,
                    prefill_chunk=prefill_chunk, prefill_budget=prefill_budget,
                    prefix_reuse=prefix_reuse, threads=threads, device=device)
    try:
        name = model_name or os.path.splitext(os.path.basename(path))[0]
        app = create_app(engine, ServerConfig(model_name=name, max_seq_len=max_seq_len,
                                              api_key=api_key, max_body_bytes=max_body_bytes))
        # uvicorn's own deadline is a backstop for a client that stops reading
        # (its stream cannot finish even once cancelled).
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                http="h11", timeout_graceful_shutdown=shutdown_timeout + 5)
        _GracefulServer(config, app.state.server, engine, shutdown_timeout).run()
    finally:
        engine.close()


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, which on SIGINT/SIGTERM stops accepting connections and
    waits for the running ones; this adds the deadline after which the running
    generations are cancelled (so their streams end cleanly rather than be cut),
    and says where it listens once the port is bound (--port 0 picks a free one)."""

    def __init__(self, config: uvicorn.Config, state, engine, shutdown_timeout: float):
        super().__init__(config)
        self._state = state
        self._engine = engine
        self._shutdown_timeout = shutdown_timeout

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"awqcore serve: {self._state.config.model_name} at http://{host}:{port} "
                  f"(context {self._state.config.max_seq_len} tokens)", file=sys.stderr,
                  flush=True)

    async def shutdown(self, sockets=None) -> None:
        self._state.draining = True
        deadline = asyncio.get_running_loop().call_later(self._shutdown_timeout,
                                                         self._state.cancel_all)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()
            self._engine.close()
