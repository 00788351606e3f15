"""Chat templates reduced to fixed strings per turn (python/awqcore/chat_format.py)
and rendered by C++ (awqcore::ChatFormat): every supported family's real
template, rendered for several conversations, equals jinja2's rendering."""
from __future__ import annotations

import pytest

from awqcore import _core
from awqcore.chat import render_chat
from awqcore.chat_format import (NotReducible, chat_format_metadata, derive_chat_format,
                                 render_turns, verification_conversations)
from awqcore.errors import FormatError
from awqcore.source import TokenizerInfo
from chat_templates import TEMPLATES


def _m(role, content):
    return {"role": role, "content": content}


# Beyond the quantizer's own verification set: whitespace that only Unicode
# knows as such (str.strip() removes it, so a trimming template does), longer
# multi-turn chats, and a conversation that is only a system message and a user one.
EXTRA = [
    [_m("user", "\u3000\u00a0ideographic and no-break spaces\u2003\x1c"),
     _m("assistant", "\u2028line separator\u2029 \u0085")],
    [_m("system", "\tsys\n"), _m("user", "a"), _m("assistant", "b"), _m("user", "c"),
     _m("assistant", "d"), _m("user", "e")],
    [_m("user", "x" * 300), _m("assistant", "<|im_end|> literal markers <end_of_turn>")],
]


def _cpp(keys, conversation, gen):
    return _core.apply_chat_format(keys, [(m["role"], m["content"]) for m in conversation], gen)


def _jinja(name, conversation, gen):
    template, bos, eos = TEMPLATES[name]
    return render_chat(template, conversation, bos, eos, add_generation_prompt=gen)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_cpp_rendering_equals_jinja(name):
    template, bos, eos = TEMPLATES[name]
    fmt = derive_chat_format(template, bos, eos)
    keys = fmt.metadata()
    checked = 0
    conversations = verification_conversations() + EXTRA
    # Each also without its system messages: all that Mistral's template takes.
    conversations += [[m for m in c if m["role"] != "system"] for c in conversations
                      if any(m["role"] == "system" for m in c)]
    for conversation in conversations:
        for gen in (False, True):
            try:
                expected = _jinja(name, conversation, gen)
            except ValueError:
                # The template rejects it (Mistral: any system message; Gemma 3:
                # roles not alternating): so must C++, with an error.
                with pytest.raises(ValueError):
                    _cpp(keys, conversation, gen)
                continue
            if fmt.system == "first" and any(m["role"] == "system" for m in conversation[1:]):
                continue
            got = _cpp(keys, conversation, gen)
            assert got == expected, (name, conversation, gen, got, expected)
            assert render_turns(fmt, conversation, gen) == expected
            checked += 1
    assert checked >= 20, checked


def test_templates_reduce_to_their_known_shape():
    """What each template does, read off the templates by hand."""
    forms = {name: derive_chat_format(*TEMPLATES[name]) for name in TEMPLATES}
    assert forms["smollm2"].default_system.startswith("You are a helpful AI assistant named SmolLM")
    assert forms["qwen2"].default_system.startswith("You are Qwen, created by Alibaba Cloud.")
    assert forms["gemma3"].system == "fold" and forms["gemma3"].start == "<bos>"
    assert forms["gemma3"].alternate and forms["gemma3"].trim["user"]
    assert forms["llama3"].start == "<|begin_of_text|>" and forms["llama3"].trim["assistant"]
    assert forms["mistral"].system == "none" and forms["mistral"].suffix["assistant"] == "</s>"
    assert forms["mistral"].generation_prompt == ""


@pytest.mark.parametrize("name", ["gemma3", "mistral"])
def test_cpp_rejects_what_the_template_rejects(name):
    keys = derive_chat_format(*TEMPLATES[name]).metadata()
    bad = [[_m("user", "a"), _m("user", "b")], [_m("assistant", "a")], [_m("tool", "x")]]
    for conversation in bad:
        with pytest.raises(ValueError):
            _jinja(name, conversation, True)
        with pytest.raises(ValueError, match="message 0|message 1"):
            _cpp(keys, conversation, True)


CONTENT_DEPENDENT = ("{% for m in messages %}{% if m['content'] | length > 6 %}[long]{% endif %}"
                     "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}")


def test_irreducible_template_is_reported_not_stored():
    with pytest.raises(NotReducible):
        derive_chat_format(CONTENT_DEPENDENT, "", "")
    info = TokenizerInfo(json="", chat_template=CONTENT_DEPENDENT, bos_token_id=-1,
                         eos_token_ids=[])
    keys, note = chat_format_metadata(info)
    assert keys == {} and "cannot be reduced" in note and "Python" in note


def test_malformed_keys_are_named():
    keys = derive_chat_format(*TEMPLATES["smollm2"]).metadata()
    for key, value in [("chat.system", "sometimes"), ("chat.trim", "usr"),
                       ("chat.order", "random"), ("chat.format", "jinja")]:
        with pytest.raises(FormatError, match=key.replace(".", r"\.")):
            _cpp({**keys, key: value}, [_m("user", "hi")], True)
    missing = dict(keys)
    del missing["chat.user.prefix"]
    with pytest.raises(FormatError, match=r"chat\.user\.prefix"):
        _cpp(missing, [_m("user", "hi")], True)


def test_quantize_stores_the_keys_or_notes_why(tmp_path):
    from awqcore.awqbin import read_awqbin
    from awqcore.importers.synthetic import SyntheticSource, tiny_config
    from awqcore.quantize.pipeline import quantize_model

    source = SyntheticSource(tiny_config("llama"), seed=7)
    summary = quantize_model(source, tmp_path / "chatml.awqbin", group_size=32, progress=False)
    meta = read_awqbin(tmp_path / "chatml.awqbin").metadata
    assert meta["chat.format"] == "turns" and meta["chat.user.prefix"] == "<|im_start|>user\n"
    assert not summary["report"].get("notes")

    source.tokenizer.chat_template = CONTENT_DEPENDENT
    summary = quantize_model(source, tmp_path / "odd.awqbin", group_size=32, progress=False)
    assert not any(k.startswith("chat.") for k in read_awqbin(tmp_path / "odd.awqbin").metadata)
    assert any("cannot be reduced" in note for note in summary["report"]["notes"])
