"""Request validation for the OpenAI-compatible endpoints, and OpenAI's error shape.

Every problem with a request becomes an APIError carrying the HTTP status and
the JSON body OpenAI's API returns ({"error": {"message", "type", "param",
"code"}}), so clients that parse OpenAI's errors (the `openai` package raises
BadRequestError, AuthenticationError, NotFoundError, ...) read ours the same way.
The checks are written out here rather than with a schema library: the rules
that matter (bool is not an integer, a field OpenAI knows but we do not
support, a sampling value out of range) each need their own message.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

MAX_STOP_STRINGS = 4  # OpenAI's limit on `stop`
MAX_SEED = 2**64 - 1  # the runtime's sampler seed is a uint64


class APIError(Exception):
    """An error answered as {"error": {...}} with `status`."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, type: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# OpenAI's `type` per status.
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                404: "invalid_request_error", 405: "invalid_request_error",
                413: "invalid_request_error", 503: "server_error"}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object, else 400 naming what is wrong."""
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {e.msg} at line {e.lineno} "
                          f"column {e.colno}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(value: Any, neutral: Any) -> bool:
    """value == neutral as JSON means it: 0 equals 0.0, false does not equal 0."""
    if _is_number(neutral):
        return _is_number(value) and value == neutral
    return type(value) is type(neutral) and value == neutral


class _Fields:
    """Typed access to a request object's fields, each error naming its field."""

    def __init__(self, body: dict, known: set[str]):
        unknown = sorted(set(body) - known)
        if unknown:
            raise bad_request(f"unrecognized request argument supplied: {unknown[0]}",
                              param=unknown[0])
        self.body = body

    def get(self, name: str) -> Any:
        return self.body.get(name)

    def integer(self, name: str, low: Optional[int] = None, high: Optional[int] = None
                ) -> Optional[int]:
        value = self.body.get(name)
        if value is None:
            return None
        if not _is_int(value):
            raise bad_request(f"'{name}' must be an integer, not {_json_type(value)}", param=name)
        if (low is not None and value < low) or (high is not None and value > high):
            rule = (f"between {low} and {high}" if low is not None and high is not None
                    else f"at least {low}" if low is not None else f"at most {high}")
            raise bad_request(f"'{name}' must be {rule} (got {value})", param=name)
        return value

    def number(self, name: str, default: float, low: float, high: float,
               low_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if not _is_number(value) or not math.isfinite(value):
            raise bad_request(f"'{name}' must be a number, not {_json_type(value)}", param=name)
        if value < low or value > high or (low_open and value == low):
            rule = f"{'greater than' if low_open else 'at least'} {low} and at most {high}"
            raise bad_request(f"'{name}' must be {rule} (got {value})", param=name)
        return float(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise bad_request(f"'{name}' must be a boolean, not {_json_type(value)}", param=name)
        return value

    def string(self, name: str) -> Optional[str]:
        value = self.body.get(name)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"'{name}' must be a string, not {_json_type(value)}", param=name)
        return value

    def unsupported(self, name: str, neutral: tuple = (None,)) -> None:
        """A field OpenAI defines that this server does not implement: accepted
        only at its neutral value, so nothing a client asks for is silently ignored."""
        value = self.body.get(name)
        if not any(_same(value, n) for n in neutral):
            raise bad_request(f"'{name}' is not supported by this server (got {value!r})",
                              param=name)


@dataclass
class Sampling:
    """What every generation request shares."""
    max_tokens: Optional[int]  # None: until the context is full
    temperature: float
    top_p: float
    top_k: int
    seed: Optional[int]
    stop: list[str]
    stream: bool
    include_usage: bool
    ignore_eos: bool  # extension (vLLM's name): generate past the model's end token


# Fields both endpoints take (OpenAI's names; top_k and ignore_eos are extensions
# that vLLM's server also accepts).
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
           "stream_options", "n", "user", "presence_penalty", "frequency_penalty", "logit_bias",
           "logprobs", "ignore_eos"}
_CHAT = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                   "tools", "tool_choice", "parallel_tool_calls", "store", "metadata"}
_COMPLETION = _COMMON | {"prompt", "echo", "best_of", "suffix"}


def _sampling(f: _Fields, max_tokens: Optional[int]) -> Sampling:
    if f.integer("n", low=1) not in (None, 1):
        raise bad_request(f"'n' must be 1: this server returns one choice per request "
                          f"(got {f.get('n')})", param="n")
    f.unsupported("presence_penalty", (None, 0))
    f.unsupported("frequency_penalty", (None, 0))
    f.unsupported("logit_bias", (None, {}))
    f.string("user")
    stop = f.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("'stop' must be a string or an array of strings", param="stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' takes at most {MAX_STOP_STRINGS} strings (got {len(stop)})",
                          param="stop")
    if any(s == "" for s in stop):
        raise bad_request("'stop' strings must not be empty", param="stop")
    stream = f.boolean("stream")
    options = f.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true",
                              param="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad_request("'stream_options' must be an object with at most "
                              "'include_usage'", param="stream_options")
        include_usage = _Fields(options, {"include_usage"}).boolean("include_usage")
    return Sampling(max_tokens=max_tokens,
                    temperature=f.number("temperature", 1.0, 0.0, 2.0),
                    top_p=f.number("top_p", 1.0, 0.0, 1.0, low_open=True),
                    top_k=f.integer("top_k", low=0) or 0,
                    seed=f.integer("seed", low=0, high=MAX_SEED),
                    stop=list(dict.fromkeys(stop)), stream=stream, include_usage=include_usage,
                    ignore_eos=f.boolean("ignore_eos"))


@dataclass
class ChatRequest:
    model: Optional[str]
    messages: list[dict]  # {"role": system|user|assistant, "content": str}
    sampling: Sampling


@dataclass
class CompletionRequest:
    model: Optional[str]
    prompt: Union[str, list[int]]
    sampling: Sampling


def parse_chat_request(body: dict) -> ChatRequest:
    f = _Fields(body, _CHAT)
    model = f.string("model")
    f.unsupported("logprobs", (None, False))
    f.unsupported("top_logprobs", (None, 0))
    f.unsupported("tools", (None, []))
    f.unsupported("tool_choice", (None, "none"))
    f.boolean("parallel_tool_calls")
    f.boolean("store")
    if f.get("metadata") is not None and not isinstance(f.get("metadata"), dict):
        raise bad_request("'metadata' must be an object", param="metadata")
    response_format = f.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise bad_request("'response_format' is not supported by this server except "
                          "{\"type\": \"text\"}", param="response_format")
    max_tokens = f.integer("max_tokens", low=1)
    max_completion_tokens = f.integer("max_completion_tokens", low=1)
    if max_tokens is not None and max_completion_tokens is not None \
            and max_tokens != max_completion_tokens:
        raise bad_request("'max_tokens' and 'max_completion_tokens' differ; give one",
                          param="max_tokens")
    messages = _messages(f.get("messages"))
    return ChatRequest(model, messages, _sampling(f, max_completion_tokens or max_tokens))


def _messages(value: Any) -> list[dict]:
    if value is None:
        raise bad_request("'messages' is required", param="messages")
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty array of message objects",
                          param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object, not {_json_type(message)}",
                              param=where)
        role = message.get("role")
        # "developer" is OpenAI's newer name for the system role.
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"{where}.role must be 'system', 'developer', 'user' or "
                              f"'assistant' (got {message.get('role')!r})", param=f"{where}.role")
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise bad_request(f"{where}: unsupported field '{sorted(extra)[0]}'", param=where)
        out.append({"role": role, "content": _content(message.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or an array of {"type": "text", "text": ...}
    parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise bad_request(f"{where}.content[{j}] must be a text part "
                                  "{\"type\": \"text\", \"text\": ...} (this model reads text only)",
                                  param=f"{where}.content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request(f"{where}.content must be a string or an array of text parts, not "
                      f"{_json_type(content)}", param=f"{where}.content")


def parse_completion_request(body: dict, vocab_size: int) -> CompletionRequest:
    f = _Fields(body, _COMPLETION)
    model = f.string("model")
    f.unsupported("logprobs", (None, 0))
    f.unsupported("echo", (None, False))
    f.unsupported("best_of", (None, 1))
    f.unsupported("suffix", (None,))
    max_tokens = f.integer("max_tokens", low=1)
    return CompletionRequest(model, _prompt(f.get("prompt"), vocab_size),
                             _sampling(f, max_tokens))


def _prompt(value: Any, vocab_size: int) -> Union[str, list[int]]:
    """A string or an array of token ids; an array holding exactly one of those
    is the same (OpenAI's batch form, limited here to one prompt as n is to 1)."""
    if value is None:
        raise bad_request("'prompt' is required", param="prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(_is_int(t) for t in value):
        for position, token in enumerate(value):
            if not 0 <= token < vocab_size:
                raise bad_request(f"'prompt' token id {token} at position {position} is out "
                                  f"of range [0, {vocab_size})", param="prompt")
        return list(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list))
                                                          for p in value):
        raise bad_request(f"'prompt' holds {len(value)} prompts; this server takes one per "
                          "request", param="prompt")
    raise bad_request("'prompt' must be a string or a non-empty array of token ids",
                      param="prompt")


@dataclass
class TokenizeRequest:
    text: Optional[str] = None
    messages: Optional[list[dict]] = None
    add_special_tokens: bool = True
    model: Optional[str] = None


def parse_tokenize_request(body: dict) -> TokenizeRequest:
    """vLLM's /tokenize: {"prompt": text} or {"messages": [...]}; add_special_tokens
    (default true) applies to a prompt."""
    f = _Fields(body, {"model", "prompt", "messages", "add_special_tokens",
                       "add_generation_prompt"})
    model = f.string("model")
    if (f.get("prompt") is None) == (f.get("messages") is None):
        raise bad_request("give exactly one of 'prompt' (text) and 'messages'")
    if f.get("messages") is not None:
        if not f.boolean("add_generation_prompt", True):
            raise bad_request("'add_generation_prompt' false is not supported",
                              param="add_generation_prompt")
        return TokenizeRequest(messages=_messages(f.get("messages")), model=model)
    return TokenizeRequest(text=f.string("prompt"),
                           add_special_tokens=f.boolean("add_special_tokens", True), model=model)


@dataclass
class DetokenizeRequest:
    tokens: list[int] = field(default_factory=list)
    model: Optional[str] = None


def parse_detokenize_request(body: dict, vocab_size: int) -> DetokenizeRequest:
    f = _Fields(body, {"model", "tokens"})
    model = f.string("model")
    tokens = f.get("tokens")
    if not isinstance(tokens, list) or not all(_is_int(t) for t in tokens):
        raise bad_request("'tokens' must be an array of token ids", param="tokens")
    for position, token in enumerate(tokens):
        if not 0 <= token < vocab_size:
            raise bad_request(f"'tokens' id {token} at position {position} is out of range "
                              f"[0, {vocab_size})", param="tokens")
    return DetokenizeRequest(tokens, model)
