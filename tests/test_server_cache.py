"""usage.prompt_tokens_details.cached_tokens with the official `openai` client:
the prompt tokens the engine found in a slot's cache (prefix reuse) instead of
prefilling them, in chat and completion answers, streamed (the usage chunk of
stream_options.include_usage) and not; 0 for a prompt nothing shares a start
with and with --no-prefix-reuse; and the answer's text the same either way."""
from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import awqcore  # noqa: E402
from awqcore.chat import chat_prompt_ids  # noqa: E402

from server_process import running_server  # noqa: E402

MODEL_NAME = "smollm2"
MAX_SEQ_LEN = 512
ALWAYS_PREFILLED = awqcore._core.int8_decode_max_tokens + 1  # the engine keeps at most len - 9
# Each prompt's first word: no two share a first token, so a prompt that
# starts with one has nothing in common with any earlier prompt.
_topics = iter(["Harbor", "Quartz", "Violin", "Meadow", "Tundra", "Walnut", "Zephyr", "Copper"])


def long_text(topic: str) -> str:
    """About 100 tokens that start with `topic` (a word no other prompt starts with)."""
    return (f"{topic}: a story of a lighthouse keeper who counts the ships that pass each "
            "night, writes their names in a book, and one winter finds a name she has "
            "already written forty years before, in her own hand, on the first page of "
            "the book her grandmother left her. Tell what she does next, and why.")


def unique_topic() -> str:
    return next(_topics)


@pytest.fixture(scope="module")
def model(smollm2_awqbin):
    return awqcore.Model(smollm2_awqbin, threads=2, max_seq_len=MAX_SEQ_LEN)


@pytest.fixture(scope="module")
def client(smollm2_awqbin):
    with running_server(smollm2_awqbin, "--threads", "2", "--max-batch", "4", "--max-seq-len",
                        str(MAX_SEQ_LEN), "--model-name", MODEL_NAME) as process:
        with process.openai_client() as c:
            yield c


@pytest.fixture(scope="module")
def client_without_reuse(smollm2_awqbin):
    with running_server(smollm2_awqbin, "--threads", "2", "--max-batch", "4", "--max-seq-len",
                        str(MAX_SEQ_LEN), "--model-name", MODEL_NAME,
                        "--no-prefix-reuse") as process:
        with process.openai_client() as c:
            yield c


def completion(client, prompt: str, stream: bool) -> tuple[str, object]:
    """(text, usage) of a greedy 8-token completion."""
    if not stream:
        answer = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8,
                                           temperature=0)
        return answer.choices[0].text, answer.usage
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage


def chat(client, messages: list[dict], stream: bool) -> tuple[str, object]:
    """(text, usage) of a greedy 8-token chat answer."""
    if not stream:
        answer = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                                max_tokens=8, temperature=0)
        return answer.choices[0].message.content, answer.usage
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                                 max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
    return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
            chunks[-1].usage)


@pytest.mark.parametrize("stream", [False, True])
def test_a_repeated_completion_prompt_reports_its_cached_tokens(client, model, stream):
    prompt = long_text(unique_topic())
    ids = model.tokenizer.encode(prompt).ids
    first_text, first = completion(client, prompt, stream)
    assert first.prompt_tokens == len(ids)
    assert first.prompt_tokens_details.cached_tokens == 0  # no cached prompt starts with it
    second_text, second = completion(client, prompt, stream)
    # The slot keeps every row of the first prompt's prefill; the engine
    # prefills at least 9 tokens of any prompt.
    assert second.prompt_tokens_details.cached_tokens == len(ids) - ALWAYS_PREFILLED > 0
    assert second_text == first_text
    expected = model.tokenizer.decode(model.generate(ids, max_new_tokens=8),
                                      skip_special_tokens=True)
    assert second_text == expected


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_sharing_a_system_prompt_reports_the_shared_start(client, model, stream):
    system = {"role": "system", "content": long_text(unique_topic())}
    chats = [[system, {"role": "user", "content": question}]
             for question in ("Who wrote the name?", "What was the ship called?")]
    prompts = [chat_prompt_ids(model, messages) for messages in chats]
    common = next(i for i, (a, b) in enumerate(zip(*prompts)) if a != b)
    _, first = chat(client, chats[0], stream)
    text, second = chat(client, chats[1], stream)
    assert first.prompt_tokens_details.cached_tokens < common  # at most the template's start
    assert second.prompt_tokens_details.cached_tokens == min(
        common, len(prompts[1]) - ALWAYS_PREFILLED) > 0
    assert second.prompt_tokens == len(prompts[1])
    expected = model.tokenizer.decode(model.generate(prompts[1], max_new_tokens=8),
                                      skip_special_tokens=True)
    assert text == expected


@pytest.mark.parametrize("stream", [False, True])
def test_without_prefix_reuse_nothing_is_cached(client_without_reuse, model, stream):
    prompt = long_text(unique_topic())
    texts = []
    for _ in range(2):
        text, usage = completion(client_without_reuse, prompt, stream)
        assert usage.prompt_tokens_details.cached_tokens == 0
        texts.append(text)
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "Why?"}]
    for _ in range(2):
        _, usage = chat(client_without_reuse, messages, stream)
        assert usage.prompt_tokens_details.cached_tokens == 0
    ids = model.tokenizer.encode(prompt).ids
    assert texts == [model.tokenizer.decode(model.generate(ids, max_new_tokens=8),
                                            skip_special_tokens=True)] * 2
