"""`awqcore run --chat` without a prompt: an interactive multi-turn chat on
stdin (history kept, /reset, Ctrl-C stops only the answer), and `--version`."""
from __future__ import annotations

import io
import sys

import pytest

import awqcore
from awqcore.chat import chat_prompt_ids
from awqcore.cli import main

def _answer(model, conversation, n):
    tokens = model.generate(chat_prompt_ids(model, conversation), max_new_tokens=n)
    return model.tokenizer.decode(tokens, skip_special_tokens=True)


def test_interactive_chat_keeps_the_history(one_layer_awqbin, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("the quick fox\n\nbrown dog\n/reset\nbrown dog\n"))
    assert main(["run", one_layer_awqbin, "--chat", "-n", "6", "--threads", "2",
                 "--system", "be brief"]) == 0
    out = capsys.readouterr().out
    model = awqcore.Model(one_layer_awqbin, threads=2)
    system = {"role": "system", "content": "be brief"}
    first = _answer(model, [system, {"role": "user", "content": "the quick fox"}], 6)
    history = [system, {"role": "user", "content": "the quick fox"},
               {"role": "assistant", "content": first}, {"role": "user", "content": "brown dog"}]
    second = _answer(model, history, 6)
    fresh = _answer(model, [system, {"role": "user", "content": "brown dog"}], 6)
    assert second != fresh, "the history changed nothing: the test could not tell"
    assert out == f"{first}\n{second}\n{fresh}\n"


def test_ctrl_c_stops_the_answer_not_the_chat(one_layer_awqbin, monkeypatch, capsys):
    real_stream = awqcore.Model.stream

    def interrupted_stream(self, ids, **options):
        for i, token in enumerate(real_stream(self, ids, **options)):
            if i == 2:
                raise KeyboardInterrupt
            yield token

    monkeypatch.setattr(awqcore.Model, "stream", interrupted_stream)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n"))
    assert main(["run", one_layer_awqbin, "--chat", "-n", "8", "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("stopped: interrupted (Ctrl-C)") == 2, err


def test_run_without_prompt_or_chat_is_a_usage_error(one_layer_awqbin, capsys):
    assert main(["run", one_layer_awqbin]) == 2
    assert "give a prompt" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"awqcore {awqcore.__version__}"
