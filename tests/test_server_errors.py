"""`awqcore serve`'s error answers, in OpenAI's shape with the right status:
malformed or mistyped requests, bad sampling values, context overflow (400),
API key (401), unknown model (404), body too large (413), full queue (503);
and graceful shutdown on SIGTERM. httpx sends what the openai client cannot."""
from __future__ import annotations

import json
import signal
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")

from server_process import ServerProcess, running_server  # noqa: E402

MODEL_NAME = "smollm2"
API_KEY = "sk-test"
MAX_SEQ_LEN = 1024
MAX_BODY_BYTES = 16384


@pytest.fixture(scope="module")
def server(smollm2_awqbin):
    """One sequence at a time and one waiting: the third request finds the queue full."""
    with running_server(smollm2_awqbin, "--threads", "2", "--max-batch", "1", "--max-queue",
                        "1", "--max-seq-len", str(MAX_SEQ_LEN), "--max-body-bytes",
                        str(MAX_BODY_BYTES), "--model-name", MODEL_NAME, "--shutdown-timeout",
                        "1", api_key=API_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with server.openai_client() as c:
        yield c


def error_of(response, status: int) -> dict:
    """The OpenAI error object of `response`, which must have `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b"\xff\xfe", None),
    (json.dumps({**CHAT, "max_tokens": "8"}), "max_tokens"),
    (json.dumps({**CHAT, "max_tokens": 8.5}), "max_tokens"),
    (json.dumps({**CHAT, "max_tokens": True}), "max_tokens"),
    (json.dumps({**CHAT, "temperature": "hot"}), "temperature"),
    (json.dumps({**CHAT, "stream": "yes"}), "stream"),
    (json.dumps({**CHAT, "stop": 5}), "stop"),
    (json.dumps({**CHAT, "messages": "Hi"}), "messages"),
    (json.dumps({**CHAT, "messages": []}), "messages"),
    (json.dumps({**CHAT, "messages": [{"role": "robot", "content": "Hi"}]}),
     "messages[0].role"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": 7}]}),
     "messages[0].content"),
    (json.dumps({**CHAT, "unknown_field": 1}), "unknown_field"),
    (json.dumps({**CHAT, "stream_options": {"include_usage": True}}), "stream_options"),
    (json.dumps({**CHAT, "logprobs": True}), "logprobs"),
])
def test_malformed_or_mistyped_request_is_400(server, body, param):
    with server.http() as http:
        error = error_of(http.post("/v1/chat/completions", content=body,
                                   headers={"Content-Type": "application/json"}), 400)
    print(error)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.5), ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5), ("top_k", -1),
    ("seed", -1), ("seed", 2**64), ("max_tokens", 0), ("n", 2), ("presence_penalty", 0.5),
])
def test_bad_sampling_value_is_400(client, field, value):
    arguments = {"max_tokens": 2, field: value} if field != "max_tokens" else {field: value}
    with pytest.raises(openai.BadRequestError) as caught:
        if field == "top_k":  # an extension the client has no argument for
            client.completions.create(model=MODEL_NAME, prompt="Hi", extra_body={field: value},
                                      max_tokens=2)
        else:
            client.completions.create(model=MODEL_NAME, prompt="Hi", **arguments)
    print(caught.value)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == field
    assert str(value) in caught.value.body["message"]


def test_context_overflow_is_400_naming_the_numbers(client):
    prompt = "word " * 100
    prompt_tokens = client.completions.create(  # the server's own count
        model=MODEL_NAME, prompt=prompt, max_tokens=1).usage.prompt_tokens
    max_tokens = MAX_SEQ_LEN - prompt_tokens + 5
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens)
    message = caught.value.body["message"]
    print(message)
    assert caught.value.body["code"] == "context_length_exceeded"
    for number in (MAX_SEQ_LEN, prompt_tokens, max_tokens, prompt_tokens + max_tokens):
        assert str(number) in message
    # Without max_tokens a prompt that fills the context leaves no room.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt="word " * (2 * MAX_SEQ_LEN))
    assert caught.value.body["code"] == "context_length_exceeded"
    assert str(MAX_SEQ_LEN) in caught.value.body["message"]


def test_empty_or_out_of_vocabulary_prompt_is_400(client):
    for prompt in ("", [], [0, 10**9]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=2)
        print(caught.value.body["message"])
        assert caught.value.body["param"] == "prompt"


def test_api_key_missing_or_wrong_is_401(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0,
                       timeout=60) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.status_code == 401
    import httpx

    for path in ("/v1/models", "/v1/completions", "/tokenize"):
        response = httpx.request("GET" if path == "/v1/models" else "POST", f"{server.url}{path}",
                                 json={"prompt": "Hi"}, timeout=60)
        assert error_of(response, 401)["code"] == "invalid_api_key"
    # Probes and scrapers need no key.
    assert httpx.get(f"{server.url}/health", timeout=60).status_code == 200
    assert httpx.get(f"{server.url}/metrics", timeout=60).status_code == 200


def test_unknown_model_is_404(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=CHAT["messages"], max_tokens=2)
    assert caught.value.body["code"] == "model_not_found" and "gpt-17" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
    with server.http() as http:
        assert error_of(http.get("/v1/no-such-endpoint"), 404)


def test_body_too_large_is_413(server):
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]})
    with server.http() as http:
        error = error_of(http.post("/v1/chat/completions", content=body,
                                   headers={"Content-Type": "application/json"}), 413)
        assert str(MAX_BODY_BYTES) in error["message"]

        def chunked():  # no Content-Length: refused while reading
            for start in range(0, len(body), 1000):
                yield body[start:start + 1000].encode()

        error_of(http.post("/v1/chat/completions", content=chunked(),
                           headers={"Content-Type": "application/json"}), 413)


def test_full_queue_is_503_at_once(server, client):
    """max_batch 1, max_queue 1: one request runs, one waits, the third gets 503."""
    # Long enough (ignore_eos, ~1000 tokens) to be running still when the third comes.
    long = {"model": MODEL_NAME, "prompt": "Count: 1, 2, 3,", "max_tokens": 1000,
            "temperature": 0, "stream": True, "ignore_eos": True}
    with server.http() as http, server.http() as http2:
        with http.stream("POST", "/v1/completions", json=long) as running:
            # Keep the iterator: a discarded one is closed, and httpcore then
            # closes the connection, which cancels the request.
            running_lines = running.iter_lines()
            next(running_lines)  # it is decoding
            with http2.stream("POST", "/v1/completions", json=long) as waiting:
                assert waiting.status_code == 200
                server.wait_for_metric("awqcore_queue_length", lambda v: v == 1)
                start = time.monotonic()
                with pytest.raises(openai.InternalServerError) as caught:
                    client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
                assert time.monotonic() - start < 10  # answered at once, not after the others
                assert caught.value.status_code == 503
                assert caught.value.body["code"] == "queue_full"
    # Both streams closed: their slots are free again.
    server.wait_for_metric("awqcore_batch_size", lambda v: v == 0)
    server.wait_for_metric("awqcore_queue_length", lambda v: v == 0)
    assert client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2).choices


def test_sigterm_ends_streams_cleanly(smollm2_awqbin):
    """SIGTERM during a stream: the stream ends with a last chunk and [DONE]
    (cancelled after --shutdown-timeout 1 s), and the server exits."""
    process = ServerProcess(smollm2_awqbin, "--threads", "2", "--max-batch", "1",
                            "--max-seq-len", "4096", "--shutdown-timeout", "1")
    try:
        # ~4000 tokens: still running when the 1 s deadline cancels it.
        body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 4000, "temperature": 0,
                "stream": True, "ignore_eos": True}
        with process.http() as http, http.stream("POST", "/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            process.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]", rest[-3:]
        last = json.loads(rest[-2][len("data: "):])
        assert last["choices"][0]["finish_reason"] == "abort"
        assert process.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        process.stop()
