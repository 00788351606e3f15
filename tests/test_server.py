"""`awqcore serve` with the official `openai` client: answers equal to
Model.generate's, streaming, stop strings, seeds, disconnects, 16 concurrent
clients; and the text rules (whole characters, stop strings across tokens) on
their own. Error answers are in test_server_errors.py."""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import awqcore  # noqa: E402
from awqcore.chat import chat_prompt_ids  # noqa: E402
from awqcore.server.generation import Generation  # noqa: E402
from awqcore.server.metrics import Metrics  # noqa: E402
from awqcore.server.protocol import Sampling  # noqa: E402
from awqcore.server.streaming import ChunkFormat, sse  # noqa: E402
from awqcore.server.text import IncrementalDecoder, StopMatcher, TextStream  # noqa: E402

from server_process import running_server  # noqa: E402

MODEL_NAME = "smollm2"
API_KEY = "test-key"
MAX_SEQ_LEN = 512
FINISH = {"stop_token": "stop", "max_new_tokens": "length", "context_full": "length"}


@pytest.fixture(scope="module")
def server(smollm2_awqbin):
    with running_server(smollm2_awqbin, "--threads", "2", "--max-batch", "8", "--max-seq-len",
                        str(MAX_SEQ_LEN), "--model-name", MODEL_NAME, api_key=API_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with server.openai_client() as c:
        yield c


@pytest.fixture(scope="module")
def model(smollm2_awqbin):
    """The reference: the same file through Model.generate (a batch of 8 at a time;
    each batched answer is what generate(prompt) alone gives under greedy decoding)."""
    return awqcore.Model(smollm2_awqbin, threads=2, max_batch=8, max_seq_len=MAX_SEQ_LEN)


def reference(model, ids, max_new_tokens, **sampling) -> tuple[str, int, str]:
    """(text, completion tokens, OpenAI finish reason) of Model.generate."""
    tokens = model.generate(ids, max_new_tokens=max_new_tokens, **sampling)
    return (model.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens),
            FINISH[model.last_stop_reason])


def chat_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


# ------------------------------------------------------------------ text rules

class _ByteFallbackTokenizer:
    """A SentencePiece-style tokenizer with byte-fallback tokens <0xNN>, built with
    `tokenizers`: a character outside its vocabulary decodes only once all its
    byte tokens are there (each alone decodes to U+FFFD)."""

    def __new__(cls):
        from tokenizers import Tokenizer, decoders, models

        vocab = {f"<0x{b:02X}>": b for b in range(256)}
        vocab.update({"▁hi": 256, "▁there": 257, "!": 258})
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "),
                                               decoders.ByteFallback(), decoders.Fuse()])
        return tokenizer


def test_incremental_decoder_never_splits_a_character():
    byte_fallback = _ByteFallbackTokenizer()
    cases = [(byte_fallback, [256] + [b for b in "🙂".encode()] + [257]
              + [b for b in "é".encode()] + [258]),
             (byte_fallback, [256] + list("😀".encode())[:3])]  # ends mid-character
    for tokenizer, ids in cases:
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.push(t) for t in ids]
        pieces.append(decoder.finish())
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        print(ids, pieces, repr(whole))
        assert "".join(pieces) == whole
        # Every piece but the last (finish) is whole characters.
        assert not any("\ufffd" in p for p in pieces[:-1])
    # The test exercises splits: single byte tokens alone decode to U+FFFD.
    assert byte_fallback.decode([0xF0]) == "\ufffd"


def test_incremental_decoder_byte_level_bpe(model):
    tokenizer = model.tokenizer
    text = "héllo 世界 🙂 naïve — ok"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids), "no character spans tokens"
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(t) for t in ids] + [decoder.finish()]
    assert not any("\ufffd" in p for p in pieces), pieces
    assert "".join(pieces) == text


def test_stop_matcher_holds_back_only_possible_starts():
    m = StopMatcher(["STOP", "xyz"])
    assert m.push("abc S") == "abc "   # "S" could start STOP
    assert m.push("T") == ""           # "ST"
    assert m.push("x") == "ST"         # no stop starts with "STx"; "x" could start "xyz"
    assert m.push("yQ") == "xyQ"       # "xyQ" is no stop
    assert m.push("aSTO") == "a"
    assert m.push("P tail") == ""      # STOP complete: nothing after it
    assert m.stopped
    assert m.push("more") == "" and m.finish() == ""
    m = StopMatcher(["ab"])
    assert m.push("xa") == "x"
    assert m.finish() == "a"           # generation ended: the held "a" was never a stop
    # The earliest stop wins, whichever is listed first.
    m = StopMatcher(["later", "now"])
    assert m.push("it is now later") == "it is " and m.stopped


def test_text_stream_stop_across_tokens(model):
    tokenizer = model.tokenizer
    ids = tokenizer.encode("The cat sat on the mat, said the man", add_special_tokens=False).ids
    full = tokenizer.decode(ids)
    stream = TextStream(tokenizer, ["mat, sa"])  # spans several tokens
    sent = ""
    for count, token in enumerate(ids, 1):
        sent += stream.push(token)
        if stream.stopped:
            break
    assert sent == full[:full.index("mat, sa")]
    assert count < len(ids)


def test_incremental_decoder_push_many_equals_push_one_by_one(model):
    tokenizer = model.tokenizer
    ids = tokenizer.encode("héllo 世界 🙂 naïve — ok, and more", add_special_tokens=False).ids
    one = IncrementalDecoder(tokenizer)
    by_one = "".join(one.push(t) for t in ids) + one.finish()
    many = IncrementalDecoder(tokenizer)
    pieces = [many.push_many(ids[i:i + 3]) for i in range(0, len(ids), 3)] + [many.finish()]
    assert "".join(pieces) == by_one == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces), pieces


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_content_chunk_bytes_equal_the_chunk_encoded_whole(chat, include_usage):
    fmt = ChunkFormat(chat, "chatcmpl-0123", 1700000000, 'model "q" \\ é', include_usage)
    for text in ["a", "", ' "quoted" \\ back\nslash', "é 世界 🙂", "\x00\x1f"]:
        assert fmt.content(text) == sse(fmt.chunk(text)), text
        assert json.loads(fmt.content(text)[len(b"data: "):])["choices"][0][
            "delta" if chat else "text"] == ({"content": text} if chat else text)


class DispatcherEngine:
    """An engine whose submit() keeps on_event, so a test plays the dispatcher;
    cancel() records the ids it is given."""

    def __init__(self):
        self.cancelled: list[int] = []

    def submit(self, ids, on_event, **options):
        self.on_event = on_event
        return 7

    def cancel(self, request_id):
        self.cancelled.append(request_id)
        return True


def greedy_sampling(max_tokens: int, stop: list[str]) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=None,
                    stop=stop, stream=True, include_usage=False, ignore_eos=False)


def test_tokens_that_arrive_together_are_sent_as_one_piece(model):
    """Events delivered before the reader runs reach it as one batch: one text
    piece for all their tokens (a multi-token delta), then the finish."""
    ids = model.tokenizer.encode("The cat sat on the mat", add_special_tokens=False).ids

    async def run():
        engine, registry = DispatcherEngine(), set()
        generation = Generation(engine, [1, 2], len(ids), greedy_sampling(len(ids), []),
                                model.tokenizer, Metrics(), registry)
        for token in ids[:3]:
            engine.on_event(7, token, None, None)
        pieces = generation.pieces()
        first = await pieces.__anext__()
        for token in ids[3:]:
            engine.on_event(7, token, None, None)
        engine.on_event(7, None, "max_new_tokens", None)
        rest = [piece async for piece in pieces]
        return first, rest, generation

    first, rest, generation = asyncio.run(run())
    assert first == model.tokenizer.decode(ids[:3])
    assert len(rest) == 1 and first + rest[0] == model.tokenizer.decode(ids)
    assert generation.completion_tokens == len(ids) and generation.finish_reason == "length"


def test_a_stop_string_inside_a_batch_of_tokens_ends_the_answer_there(model):
    """Tokens that arrive together are one batch for the reader: a stop string
    that a token in the middle of the batch completes (across two tokens)
    ends the text before it, counts the tokens up to that one only, and
    cancels the request; the batch's later tokens are dropped."""
    text = "The cat sat on the mat and then the dog came"
    ids = model.tokenizer.encode(text, add_special_tokens=False).ids
    stop = " the mat"
    decoded = [model.tokenizer.decode(ids[:k]) for k in range(len(ids) + 1)]
    completing = next(k for k in range(len(ids) + 1) if stop in decoded[k])
    assert 1 < completing < len(ids) - 2  # mid-batch, with tokens after it

    async def run():
        engine = DispatcherEngine()
        generation = Generation(engine, [1, 2], len(ids), greedy_sampling(len(ids), [stop]),
                                model.tokenizer, Metrics(), set())
        for token in ids:  # all before the reader runs: one batch
            engine.on_event(7, token, None, None)
        return await generation.text(), generation, engine

    answer, generation, engine = asyncio.run(run())
    assert answer == text[:text.index(stop)]
    assert generation.completion_tokens == completing
    assert generation.finish_reason == "stop" and engine.cancelled == [7]


# ------------------------------------------------------------ the openai client

def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    assert httpx.get(f"{server.url}/health", timeout=30).json() == {"status": "ok"}


def test_chat_greedy_equals_generate(client, model):
    messages = chat_messages("What is the capital of France?")
    ids = chat_prompt_ids(model, messages)
    text, count, finish = reference(model, ids, 12)
    answer = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12,
                                            temperature=0)
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == text
    assert choice.finish_reason == finish
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), count)

    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_completion_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == finish and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count


def test_completion_greedy_equals_generate(client, model):
    prompt = "The three primary colors are"
    ids = model.tokenizer.encode(prompt).ids
    text, count, finish = reference(model, ids, 10)
    answer = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=10,
                                       temperature=0)
    assert answer.choices[0].text == text
    assert answer.choices[0].finish_reason == finish
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), count)
    # Token ids as the prompt, streamed.
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL_NAME, prompt=ids, max_tokens=10, temperature=0, stream=True)]
    assert "".join(pieces) == text


def test_stream_wire_format(server, model):
    """The raw events: `data: {json}` blocks, usage last, `data: [DONE]` at the end."""
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 5,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(p["object"] == "text_completion" and p["id"] == payloads[0]["id"]
               for p in payloads)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 5
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
    text, _, _ = reference(model, model.tokenizer.encode(body["prompt"]).ids, 5)
    assert "".join(p["choices"][0]["text"] for p in payloads[:-1]) == text


def _split_stop(model, ids, max_new_tokens) -> tuple[str, int]:
    """A stop string that starts inside one generated token and ends inside the
    next, occurring first there; and the index of that next token."""
    tokens = model.generate(ids, max_new_tokens=max_new_tokens, stop=[])
    full = model.tokenizer.decode(tokens, skip_special_tokens=True)
    for i in range(2, len(tokens) - 1):
        cut = len(model.tokenizer.decode(tokens[:i], skip_special_tokens=True))
        after = model.tokenizer.decode(tokens[:i + 1], skip_special_tokens=True)
        if cut >= 2 and len(after) >= cut + 2 and full.startswith(after):
            stop = full[cut - 2:cut + 2]
            if full.find(stop) == cut - 2:
                return stop, i
    raise AssertionError(f"no token boundary fits a split stop string in {full!r}")


def test_stop_string_split_across_tokens(client, model):
    prompt = "Here is a list of fruits: apples, bananas,"
    ids = model.tokenizer.encode(prompt).ids
    stop, second = _split_stop(model, ids, 16)
    full, _, _ = reference(model, ids, 16, stop=[])
    expected = full[:full.index(stop)]
    print(f"stop {stop!r} spans tokens {second - 1} and {second}; expected {expected!r}")
    # ignore_eos: the server generates past an end token as the reference (stop=[]) did.
    answer = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16,
                                       temperature=0, stop=[stop, "never-generated"],
                                       extra_body={"ignore_eos": True})
    assert answer.choices[0].text == expected
    assert answer.choices[0].finish_reason == "stop"
    # Generation ends at the token that completes the stop string.
    assert answer.usage.completion_tokens == second + 1
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=0, stop=stop, stream=True,
        extra_body={"ignore_eos": True})]
    assert "".join(pieces) == expected


def test_seed_reproducible_and_equal_to_generate(client, model):
    messages = chat_messages("Write a word.")
    ids = chat_prompt_ids(model, messages)
    sampling = {"temperature": 1.0, "top_p": 0.95}

    def sample(seed: int) -> str:
        return client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10,
                                              seed=seed, extra_body={"top_k": 50},
                                              **sampling).choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    text, _, _ = reference(model, ids, 10, seed=1234, top_k=50, **sampling)
    assert first == text
    assert len({first, sample(1), sample(2)}) > 1, "different seeds gave the same text"


def test_disconnect_cancels_the_request(server):
    """A stream closed after two chunks, and a non-streamed request whose
    connection closes while it decodes, each free their sequence at once:
    running drops to 0 long before max_tokens."""
    key = 'awqcore_requests_finished_total{finish_reason="disconnected"}'
    body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 480, "temperature": 0,
            "ignore_eos": True, "stream": True}
    before = server.metrics()
    with server.http() as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = (line for line in response.iter_lines() if line)
            assert next(lines).startswith("data: ") and next(lines).startswith("data: ")
    server.wait_for_metric("awqcore_batch_size", lambda v: v == 0)
    after = server.metrics()
    generated = after["awqcore_engine_generated_tokens_total"] - \
        before["awqcore_engine_generated_tokens_total"]
    print(f"stream: {generated} tokens generated for 2 received")
    assert generated < 50
    assert after.get(key, 0) == before.get(key, 0) + 1

    # Not streamed: the answer would come at the end, so the test closes the
    # socket once the request is decoding.
    payload = json.dumps({**body, "stream": False}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
               f"{API_KEY}\r\nContent-Type: application/json\r\nContent-Length: "
               f"{len(payload)}\r\n\r\n").encode() + payload
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        server.wait_for_metric("awqcore_engine_generated_tokens_total",
                               lambda v: v > after["awqcore_engine_generated_tokens_total"])
    server.wait_for_metric(key, lambda v: v == before.get(key, 0) + 2)
    server.wait_for_metric("awqcore_batch_size", lambda v: v == 0)
    generated = server.metrics()["awqcore_engine_generated_tokens_total"] - \
        after["awqcore_engine_generated_tokens_total"]
    print(f"not streamed: {generated} tokens generated before the close took effect")
    assert generated < 100


def _concurrent_round(server, model, prompts, max_tokens, expected) -> None:
    """Every prompt at once from its own client thread (odd ones streamed); each
    answer must equal its one-by-one greedy result `expected`."""
    answers: list = [None] * len(prompts)
    errors: list = []

    def ask(i: int) -> None:
        try:
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=300,
                               max_retries=0) as c:
                if i % 2:
                    answers[i] = "".join(ch.choices[0].text for ch in c.completions.create(
                        model=MODEL_NAME, prompt=prompts[i], max_tokens=max_tokens[i],
                        temperature=0, stream=True))
                else:
                    answers[i] = c.completions.create(model=MODEL_NAME, prompt=prompts[i],
                                                      max_tokens=max_tokens[i],
                                                      temperature=0).choices[0].text
        except Exception as e:  # noqa: BLE001 - reported below with the prompt
            errors.append((i, e))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for i, prompt in enumerate(prompts):
        assert answers[i] == expected[i], (i, prompt, answers[i], expected[i])


def test_16_concurrent_clients_then_a_second_round(server, model):
    words = "the quick brown fox jumps over the lazy dog while the cat sleeps".split()
    prompts = [" ".join(words[:(3 + 5 * i) % len(words) + 1] * (1 + i % 3)) for i in range(16)]
    max_tokens = [2 + (i * 5) % 7 for i in range(16)]
    tokens = model.generate([model.tokenizer.encode(p).ids for p in prompts],
                            max_new_tokens=max(max_tokens))
    # Greedy decoding is prefix-consistent: the first k tokens of a longer run are
    # the run of k (up to a stop token, where both end).
    expected = [model.tokenizer.decode(t[:k], skip_special_tokens=True)
                for t, k in zip(tokens, max_tokens)]
    _concurrent_round(server, model, prompts, max_tokens, expected)
    metrics = server.metrics()
    assert metrics["awqcore_batch_size"] == 0 and metrics["awqcore_queue_length"] == 0
    # A second round in the other order: freed slots serve new requests.
    _concurrent_round(server, model, prompts[::-1], max_tokens[::-1], expected[::-1])


def test_tokenize_detokenize(server, model):
    with server.http() as http:
        text = "Tokenize this, please."
        got = http.post("/tokenize", json={"prompt": text}).json()
        assert got["tokens"] == model.tokenizer.encode(text).ids
        assert got["count"] == len(got["tokens"]) and got["max_model_len"] == MAX_SEQ_LEN
        messages = chat_messages("Hello")
        got = http.post("/tokenize", json={"messages": messages}).json()
        assert got["tokens"] == chat_prompt_ids(model, messages)
        back = http.post("/detokenize", json={"tokens": got["tokens"]}).json()["prompt"]
        assert back == model.tokenizer.decode(got["tokens"], skip_special_tokens=False)
        assert "Hello" in back


def test_metrics_count_requests_and_tokens(server, client):
    before = server.metrics()
    answer = client.completions.create(model=MODEL_NAME, prompt="One two three", max_tokens=4,
                                       temperature=0)
    after = server.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta('awqcore_http_responses_total{endpoint="completions",status="200"}') == 1
    assert delta("awqcore_generation_tokens_total") == answer.usage.completion_tokens
    assert delta("awqcore_prompt_tokens_total") == answer.usage.prompt_tokens
    assert delta("awqcore_time_to_first_token_seconds_count") == 1
    assert delta("awqcore_engine_generated_tokens_total") == answer.usage.completion_tokens
    assert after["awqcore_max_batch"] == 8


def test_a_repeated_system_prompt_is_prefilled_once(server, client, model):
    """Two chats with the same system message, one after the other: the
    second keeps the first's cached rows of their common start (less the 9
    tokens the engine always prefills) and prefills the rest, and its answer
    is Model.generate's."""
    system = {"role": "system", "content": "You answer in one short sentence about the sea, "
                                          "waves, boats, fish and the harbour town."}
    chats = [[system, {"role": "user", "content": question}]
             for question in ("What is a boat?", "Why is the sea salty?")]
    prompts = [chat_prompt_ids(model, messages) for messages in chats]
    common = next(i for i, (a, b) in enumerate(zip(*prompts)) if a != b)
    for messages in chats:  # the first fills a slot; the second finds it
        before = server.metrics()
        answer = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                                max_tokens=5, temperature=0)
        reused = (server.metrics()["awqcore_engine_reused_prompt_tokens_total"]
                  - before.get("awqcore_engine_reused_prompt_tokens_total", 0))
    assert reused == min(common, len(prompts[1]) - 9) > 0
    assert answer.usage.prompt_tokens_details.cached_tokens == reused
    text, tokens, _ = reference(model, prompts[1], 5)
    assert (answer.choices[0].message.content, answer.usage.completion_tokens) == (text, tokens)
