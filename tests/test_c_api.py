"""The C API (awqcore/awqcore_c.h) through ctypes, against the installed shared
library: the ABI is plain C. On SmolLM2 quantized as the other tests do: its
tokenizer agrees with `tokenizers`, its chat format with jinja2, its greedy
generation with the Python binding; bad handles and arguments give error codes."""
from __future__ import annotations

import ctypes as C
import os

import pytest

import awqcore
from awqcore.chat import chat_prompt_ids, render_chat
from awqcore.chat_format import special_token_texts
from checks import assert_context_dependent

OK, INVALID, FORMAT, RUNTIME, TOO_SMALL = 0, 1, 2, 3, 4


class Message(C.Structure):
    _fields_ = [("role", C.c_char_p), ("content", C.c_char_p)]


class Options(C.Structure):
    _fields_ = [("max_new_tokens", C.c_int), ("temperature", C.c_float), ("top_k", C.c_int),
                ("top_p", C.c_float), ("repetition_penalty", C.c_float), ("seed", C.c_uint64),
                ("has_seed", C.c_int), ("ignore_eos", C.c_int)]


CALLBACK = C.CFUNCTYPE(C.c_int, C.c_int32, C.POINTER(C.c_char), C.c_size_t, C.c_void_p)


@pytest.fixture(scope="module")
def lib():
    path = awqcore.c_library_path()
    assert os.path.isfile(path), f"the wheel installs no C API library at {path}"
    lib = C.CDLL(path)
    lib.awq_version.restype = C.c_char_p
    lib.awq_last_error.restype = C.c_char_p
    lib.awq_model_load.argtypes = [C.c_char_p, C.POINTER(C.c_void_p)]
    lib.awq_model_free.argtypes = [C.c_void_p]
    lib.awq_tokenize.argtypes = [C.c_void_p, C.c_char_p, C.c_size_t, C.c_int,
                                 C.POINTER(C.c_int32), C.c_size_t, C.POINTER(C.c_size_t)]
    lib.awq_detokenize.argtypes = [C.c_void_p, C.POINTER(C.c_int32), C.c_size_t, C.c_int,
                                   C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)]
    lib.awq_chat_format.argtypes = [C.c_void_p, C.POINTER(Message), C.c_size_t, C.c_int,
                                    C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)]
    lib.awq_session_create.argtypes = [C.c_void_p, C.c_int, C.c_int, C.POINTER(C.c_void_p)]
    lib.awq_session_free.argtypes = [C.c_void_p]
    lib.awq_generate_options_init.argtypes = [C.POINTER(Options)]
    lib.awq_generate.argtypes = [C.c_void_p, C.POINTER(C.c_int32), C.c_size_t,
                                 C.POINTER(Options), CALLBACK, C.c_void_p, C.POINTER(C.c_size_t)]
    return lib


@pytest.fixture(scope="module")
def model(lib, smollm2_awqbin):
    handle = C.c_void_p()
    assert lib.awq_model_load(os.fspath(smollm2_awqbin).encode(), C.byref(handle)) == OK, \
        lib.awq_last_error()
    yield handle
    lib.awq_model_free(handle)


def tokenize(lib, model, text: str, add_special=False) -> list[int]:
    data = text.encode()
    n = C.c_size_t()
    assert lib.awq_tokenize(model, data, len(data), add_special, None, 0, C.byref(n)) in (OK, TOO_SMALL)
    ids = (C.c_int32 * max(1, n.value))()
    assert lib.awq_tokenize(model, data, len(data), add_special, ids, n.value, C.byref(n)) == OK
    return list(ids[:n.value])


def text_call(lib, fn, *args) -> str:
    n = C.c_size_t()
    status = fn(*args, None, 0, C.byref(n))
    assert status == TOO_SMALL, (status, lib.awq_last_error())
    buffer = C.create_string_buffer(n.value + 1)
    assert fn(*args, buffer, n.value + 1, C.byref(n)) == OK, lib.awq_last_error()
    return buffer.raw[:n.value].decode()


def test_version(lib):
    assert lib.awq_version().decode() == awqcore.__version__


def test_tokenize_and_detokenize_agree_with_tokenizers(lib, model, smollm2_awqbin):
    tok = awqcore.Model(smollm2_awqbin).tokenizer
    for text in ["The capital of France is", "  spaces,\ttabs\nand newlines  ", "héllo 世界 🙂",
                 "<|im_start|>user\nhi<|im_end|>"]:
        ids = tokenize(lib, model, text)
        assert ids == tok.encode(text, add_special_tokens=False).ids, text
        assert tokenize(lib, model, text, add_special=True) == tok.encode(text).ids, text
        array = (C.c_int32 * len(ids))(*ids)
        for skip in (0, 1):
            assert text_call(lib, lib.awq_detokenize, model, array, len(ids), skip) == \
                tok.decode(ids, skip_special_tokens=bool(skip))


def test_chat_format_equals_jinja(lib, model, smollm2_awqbin):
    py = awqcore.Model(smollm2_awqbin)
    c = py.config
    bos, eos = special_token_texts(py.tokenizer, c["bos_token_id"], c["eos_token_ids"])
    for conversation in ([{"role": "user", "content": "What is 2+2?"}],
                         [{"role": "system", "content": "Be terse."},
                          {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "Bye"}]):
        messages = (Message * len(conversation))(
            *[Message(m["role"].encode(), m["content"].encode()) for m in conversation])
        for gen in (0, 1):
            got = text_call(lib, lib.awq_chat_format, model, messages, len(conversation), gen)
            assert got == render_chat(py.chat_template, conversation, bos, eos,
                                      add_generation_prompt=bool(gen))
        assert tokenize(lib, model, got) == chat_prompt_ids(py, conversation)


def test_greedy_generation_equals_python(lib, model, smollm2_awqbin):
    py = awqcore.Model(smollm2_awqbin, max_seq_len=64)
    prompt = py.tokenizer.encode("The capital of France is").ids
    expected = py.generate(prompt, max_new_tokens=12, stop=[])
    assert_context_dependent(expected)
    session = C.c_void_p()
    assert lib.awq_session_create(model, 64, 0, C.byref(session)) == OK, lib.awq_last_error()
    try:
        options = Options()
        lib.awq_generate_options_init(C.byref(options))
        options.max_new_tokens, options.ignore_eos = 12, 1
        tokens, pieces = [], []

        def on_token(token, text, length, _):
            if token >= 0:  # -1: the text of a character cut off by the end
                tokens.append(token)
            pieces.append(C.string_at(text, length))
            return 0

        ids = (C.c_int32 * len(prompt))(*prompt)
        n = C.c_size_t()
        assert lib.awq_generate(session, ids, len(prompt), C.byref(options), CALLBACK(on_token),
                                None, C.byref(n)) == OK, lib.awq_last_error()
        assert tokens == expected and n.value == 12
        assert b"".join(pieces).decode() == py.tokenizer.decode(expected, skip_special_tokens=True)
    finally:
        lib.awq_session_free(session)


def test_errors_are_codes_with_messages(lib, model):
    handle = C.c_void_p()
    assert lib.awq_model_load(b"/nonexistent/model.awqbin", C.byref(handle)) != OK
    assert handle.value is None and b"/nonexistent/model.awqbin" in lib.awq_last_error()
    assert lib.awq_model_load(None, C.byref(handle)) == INVALID
    n = C.c_size_t()
    assert lib.awq_tokenize(None, b"a", 1, 0, None, 0, C.byref(n)) == INVALID
    bogus = C.c_void_p(C.addressof(n))  # a pointer that is not a model handle
    assert lib.awq_tokenize(bogus, b"a", 1, 0, None, 0, C.byref(n)) == INVALID
    assert b"not a live awq_model" in lib.awq_last_error()
    bad = (Message * 1)(Message(b"tool", b"x"))
    assert lib.awq_chat_format(model, bad, 1, 1, None, 0, C.byref(n)) == INVALID
    assert b"role" in lib.awq_last_error()
    session = C.c_void_p()
    assert lib.awq_session_create(model, -5, 0, C.byref(session)) == INVALID
    assert session.value is None
