"""The Starlette application: routes, API-key check, body limit, responses.

Starlette rather than FastAPI: FastAPI's value is pydantic request models,
and its validation errors are 422s in its own shape; OpenAI's API answers 400
with {"error": {...}}, so protocol.py validates by hand and nothing of
FastAPI would remain in use. Starlette is the ASGI toolkit FastAPI is built
on, small and well kept.
"""
from __future__ import annotations

import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import errors
from ..chat import chat_prompt_ids
from .generation import Generation, GenerationFailed, failure
from .metrics import CONTENT_TYPE, Metrics
from .protocol import (APIError, Sampling, bad_request, parse_chat_request,
                       parse_completion_request, parse_detokenize_request, parse_json_object,
                       parse_tokenize_request)
from .streaming import ChunkFormat, EventStream, sse_events

log = logging.getLogger("awqcore.server")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: ~250k tokens of text, far past any context here


@dataclass
class ServerConfig:
    model_name: str
    max_seq_len: int
    api_key: Optional[str] = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class ServerState:
    def __init__(self, engine, config: ServerConfig):
        self.engine = engine
        self.config = config
        # Engine.model: .config, .tokenizer and .chat_template, as awqcore.chat reads them.
        self.model = engine.model
        self.vocab_size: int = self.model.config["vocab_size"]
        self.metrics = Metrics()
        self.generations: set[Generation] = set()  # running, for shutdown
        self.draining = False
        self.created = int(time.time())

    def cancel_all(self) -> None:
        """Ends every running generation now (each stream then sends its last
        chunk, finish_reason "abort", and [DONE])."""
        for generation in list(self.generations):
            generation.cancel()


def create_app(engine, config: ServerConfig) -> Starlette:
    """The ASGI app serving `engine` (an awqcore.Engine; the caller closes it)."""
    state = ServerState(engine, config)
    handlers = _Handlers(state)
    routes = [
        Route("/v1/chat/completions", handlers.endpoint("chat", handlers.chat), methods=["POST"]),
        Route("/v1/completions", handlers.endpoint("completions", handlers.completions),
              methods=["POST"]),
        Route("/v1/models", handlers.endpoint("models", handlers.models), methods=["GET"]),
        Route("/v1/models/{model:path}", handlers.endpoint("models", handlers.model_card),
              methods=["GET"]),
        Route("/tokenize", handlers.endpoint("tokenize", handlers.tokenize), methods=["POST"]),
        Route("/detokenize", handlers.endpoint("detokenize", handlers.detokenize),
              methods=["POST"]),
        # Probes and scrapers do not hold the API key (as in vLLM and llama.cpp's server).
        Route("/health", handlers.endpoint("health", handlers.health, auth=False),
              methods=["GET"]),
        Route("/metrics", handlers.endpoint("metrics", handlers.metrics, auth=False),
              methods=["GET"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = "not found" if exc.status_code == 404 else exc.detail
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                     f"{message}").body(), status_code=exc.status_code)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.server = state
    return app


def _json(payload: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Handlers:
    def __init__(self, state: ServerState):
        self.state = state
        self.config = state.config
        self.model = state.model

    def endpoint(self, name: str, handler: Callable[[Request], Awaitable[Response]],
                 auth: bool = True) -> Callable[[Request], Awaitable[Response]]:
        """`handler` with the API-key check, APIError -> OpenAI's error JSON, and
        the response counted in the metrics."""
        async def run(request: Request) -> Response:
            try:
                if auth:
                    self._check_api_key(request)
                response = await handler(request)
            except APIError as e:
                response = _json(e.body(), e.status)
            except Exception:  # noqa: BLE001 - a bug must answer 500, not drop the connection
                log.exception("%s %s failed", request.method, request.url.path)
                response = _json(APIError(500, "internal server error").body(), 500)
            self.state.metrics.response(name, response.status_code)
            return response
        return run

    def _check_api_key(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise APIError(401, "no API key given: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    def _check_model(self, name: Optional[str]) -> None:
        """`model` may be omitted; given, it must be the served model's name."""
        if name is not None and name != self.config.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves "
                           f"'{self.config.model_name}'", param="model", code="model_not_found")

    async def _body(self, request: Request) -> dict:
        """The JSON object in the body, refused with 413 past max_body_bytes (by its
        Content-Length at once, else while reading)."""
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise self._too_large(int(length))
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise self._too_large(size)
            chunks.append(chunk)
        return parse_json_object(b"".join(chunks))

    def _too_large(self, size: int) -> APIError:
        return APIError(413, f"the request body ({size} bytes or more) is larger than this "
                        f"server's limit of {self.config.max_body_bytes} bytes",
                        code="request_too_large")

    # ------------------------------------------------------------ generation

    async def chat(self, request: Request) -> Response:
        chat = parse_chat_request(await self._body(request))
        self._check_model(chat.model)
        if not self.model.chat_template:
            raise bad_request("this model has no chat template; use /v1/completions",
                              param="messages")
        try:
            ids = chat_prompt_ids(self.model, chat.messages)
        except ValueError as e:  # the template rejects the conversation (roles, order)
            raise bad_request(str(e), param="messages") from None
        return await self._generate(request, ids, chat.sampling, chat=True, what="messages")

    async def completions(self, request: Request) -> Response:
        completion = parse_completion_request(await self._body(request), self.state.vocab_size)
        self._check_model(completion.model)
        prompt = completion.prompt
        ids = self.model.tokenizer.encode(prompt).ids if isinstance(prompt, str) else prompt
        return await self._generate(request, ids, completion.sampling, chat=False,
                                    what="prompt")

    def _max_new_tokens(self, prompt_tokens: int, max_tokens: Optional[int], what: str) -> int:
        limit = self.config.max_seq_len
        if prompt_tokens == 0:
            raise bad_request(f"'{what}' encodes to no tokens", param=what)
        if max_tokens is None:
            if prompt_tokens >= limit:
                raise bad_request(f"this model's maximum context length is {limit} tokens, and "
                                  f"'{what}' takes {prompt_tokens} tokens, leaving none for "
                                  "the completion", param=what, code="context_length_exceeded")
            return limit - prompt_tokens
        if prompt_tokens + max_tokens > limit:
            raise bad_request(f"this model's maximum context length is {limit} tokens; you "
                              f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} "
                              f"in '{what}', {max_tokens} in the completion): shorten "
                              f"'{what}' or lower max_tokens", param=what,
                              code="context_length_exceeded")
        return max_tokens

    async def _generate(self, request: Request, ids: list[int], sampling: Sampling, chat: bool,
                        what: str) -> Response:
        if self.state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        max_new_tokens = self._max_new_tokens(len(ids), sampling.max_tokens, what)
        try:
            generation = Generation(self.state.engine, ids, max_new_tokens, sampling,
                                    self.model.tokenizer, self.state.metrics,
                                    self.state.generations)
        except errors.QueueFull as e:
            raise APIError(503, f"the server is busy: {e}; retry later",
                           code="queue_full") from None
        except ValueError as e:
            raise bad_request(str(e)) from None
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if sampling.stream:
            fmt = ChunkFormat(chat, response_id, created, self.config.model_name,
                              sampling.include_usage)
            return EventStream(sse_events(generation, fmt))
        text = await self._text_unless_disconnected(request, generation)
        if text is None:
            return Response(status_code=499)  # nobody is listening; uvicorn drops it
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": generation.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": generation.finish_reason}
        return _json({"id": response_id, "object": "chat.completion" if chat else
                      "text_completion", "created": created, "model": self.config.model_name,
                      "choices": [choice], "usage": generation.usage()})

    @staticmethod
    async def _text_unless_disconnected(request: Request, generation: Generation
                                        ) -> Optional[str]:
        """The whole answer, or None when the client disconnects first (the
        generation is then cancelled)."""
        result: dict = {}
        async with anyio.create_task_group() as group:
            async def collect() -> None:
                try:
                    result["text"] = await generation.text()
                except GenerationFailed as e:
                    result["error"] = e
                group.cancel_scope.cancel()

            group.start_soon(collect)
            await _wait_for_disconnect(request)
            group.cancel_scope.cancel()
        if "error" in result:
            raise failure(result["error"])
        return result.get("text")

    # ------------------------------------------------------------ the others

    async def models(self, request: Request) -> Response:
        return _json({"object": "list", "data": [self._card()]})

    async def model_card(self, request: Request) -> Response:
        self._check_model(request.path_params["model"])
        return _json(self._card())

    def _card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": self.state.created,
                "owned_by": "awqcore", "max_model_len": self.config.max_seq_len}

    async def health(self, request: Request) -> Response:
        if self.state.draining:
            return _json({"status": "shutting down"}, 503)
        return _json({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.state.metrics.render(self.state.engine.stats()),
                                 media_type=CONTENT_TYPE)

    async def tokenize(self, request: Request) -> Response:
        """{"prompt": text} or {"messages": [...]} -> {"tokens", "count", "max_model_len"}
        (vLLM's shape)."""
        req = parse_tokenize_request(await self._body(request))
        self._check_model(req.model)
        if req.messages is not None:
            if not self.model.chat_template:
                raise bad_request("this model has no chat template", param="messages")
            try:
                tokens = chat_prompt_ids(self.model, req.messages)
            except ValueError as e:
                raise bad_request(str(e), param="messages") from None
        else:
            tokens = self.model.tokenizer.encode(
                req.text, add_special_tokens=req.add_special_tokens).ids
        return _json({"tokens": tokens, "count": len(tokens),
                      "max_model_len": self.config.max_seq_len})

    async def detokenize(self, request: Request) -> Response:
        """{"tokens": [...]} -> {"prompt": text} (vLLM's shape; special tokens kept)."""
        req = parse_detokenize_request(await self._body(request), self.state.vocab_size)
        self._check_model(req.model)
        return _json({"prompt": self.model.tokenizer.decode(req.tokens,
                                                            skip_special_tokens=False)})
