"""The `awqcore` command's paths end to end on tiny models: `run` (streaming,
--chat, the stop reason, --repetition-penalty), `quantize --export-hf` then
`convert`, `quantize --no-clip`, and `ppl --kl-base / --fp-reference`, each
against what the Python API or an independent computation gives."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import awqcore
from awqcore.awqbin import read_awqbin
from awqcore.chat import render_chat
from awqcore.cli import main
from awqcore.importers import load_source
from awqcore.importers.synthetic import CHATML_TEMPLATE, SyntheticSource, tiny_config
from awqcore.quantize.pipeline import quantize_model
from awqcore.reference import ReferenceModel
from tiny_models import ONE_LAYER_SPEC

SHARP = "sharp-tiny"  # a name the ppl test maps to _Sharp
PROMPT = "the quick brown fox"


class _Recorder:
    """A stdout that keeps each write, to see the text arrive in pieces."""

    def __init__(self):
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        self.pieces.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _greedy_text(path: str, ids: list[int], n: int, **options) -> str:
    model = awqcore.Model(path, threads=2)
    tokens = model.generate(ids, max_new_tokens=n, **options)
    return model.tokenizer.decode(tokens, skip_special_tokens=True)


def test_run_streams_the_generated_text(one_layer_awqbin, monkeypatch, capsys):
    recorder = _Recorder()
    monkeypatch.setattr(sys, "stdout", recorder)
    assert main(["run", one_layer_awqbin, "-p", PROMPT, "-n", "12", "--threads", "2"]) == 0
    err = capsys.readouterr().err
    tok = awqcore.Model(one_layer_awqbin).tokenizer
    expected = _greedy_text(one_layer_awqbin, tok.encode(PROMPT).ids, 12)
    assert "".join(recorder.pieces) == expected + "\n"
    # Streamed: the text came in several writes before the closing newline.
    assert len([p for p in recorder.pieces[:-1] if p]) >= 2, recorder.pieces
    assert "prefill: " in err and "stopped: " in err


def test_run_says_when_the_context_cut_the_output_short(one_layer_awqbin, capsys):
    n_prompt = len(awqcore.Model(one_layer_awqbin).tokenizer.encode(PROMPT).ids)
    assert main(["run", one_layer_awqbin, "-p", PROMPT, "-n", "12", "--threads", "2",
                 "--max-seq-len", str(n_prompt + 2)]) == 0
    err = capsys.readouterr().err
    assert f"stopped: context_full (prompt + output reached --max-seq-len {n_prompt + 2})" in err


def test_render_chat_follows_the_template():
    # What the ChatML template's definition gives, written out by hand.
    expected = "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(CHATML_TEMPLATE, [{"role": "user", "content": "hi there"}], "", "") == \
        expected
    with pytest.raises(ValueError, match="no chat template"):
        render_chat("", [], "", "")
    with pytest.raises(ValueError, match="chat template: no system"):
        render_chat("{{ raise_exception('no system') }}", [], "", "")


def test_run_chat_generates_after_the_rendered_template(one_layer_awqbin, capsys):
    assert main(["run", one_layer_awqbin, "-p", PROMPT, "-n", "10", "--chat",
                 "--threads", "2"]) == 0
    out = capsys.readouterr().out
    tok = awqcore.Model(one_layer_awqbin).tokenizer
    text = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.token_to_id("<|im_start|>") in ids  # the markers are special tokens, not bytes
    assert out == _greedy_text(one_layer_awqbin, ids, 10) + "\n"


def test_repetition_penalty_end_to_end(one_layer_awqbin, capsys):
    """Greedy with a CTRL penalty (logit / p if positive, else * p, for every id
    already in the sequence, prompt included), recomputed here from exact
    forward() logits, equals generate(); the CLI flag reaches it."""
    model = awqcore.Model(one_layer_awqbin, threads=2, activations="f32")
    prompt = model.tokenizer.encode(PROMPT).ids
    penalty, n = 1.8, 12
    sequence = list(prompt)
    for _ in range(n):
        logits = model.forward(sequence)[-1].astype(np.float64)
        seen = np.unique(sequence)
        logits[seen] = np.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        sequence.append(int(np.argmax(logits)))
    expected = sequence[len(prompt):]
    got = model.generate(prompt, max_new_tokens=n, stop=[], repetition_penalty=penalty)
    assert got == expected
    assert got != model.generate(prompt, max_new_tokens=n, stop=[]), "the penalty changed nothing"

    assert main(["run", one_layer_awqbin, "-p", PROMPT, "-n", "8", "--threads", "2",
                 "--repetition-penalty", str(penalty)]) == 0
    out = capsys.readouterr().out
    assert out == _greedy_text(one_layer_awqbin, prompt, 8, repetition_penalty=penalty) + "\n"


def _int4_tensors(path) -> dict[str, np.ndarray]:
    f = read_awqbin(path)
    return {n: np.asarray(f.tensor(n)) for n in f.tensors
            if n.endswith((".qweight", ".scales", ".zeros"))}


def test_quantize_export_hf_then_convert(tmp_path, capsys):
    out, folder, back = tmp_path / "m.awqbin", tmp_path / "hf", tmp_path / "back.awqbin"
    assert main(["quantize", ONE_LAYER_SPEC, "--out", str(out), "--method", "rtn",
                 "--group-size", "32", "-q", "--export-hf", str(folder)]) == 0
    assert f"wrote {folder}: AutoAWQ GEMM checkpoint" in capsys.readouterr().out
    assert main(["convert", str(folder), "--out", str(back)]) == 0
    assert "7 int4 linears (group size 32)" in capsys.readouterr().out
    original, converted = _int4_tensors(out), _int4_tensors(back)
    assert len(original) == 21 and original.keys() == converted.keys()
    for name in original:
        assert np.array_equal(original[name], converted[name]), name


def test_quantize_no_clip_reaches_the_awq_search(tmp_path, capsys):
    """--no-clip gives the file quantize_model(clip=False) gives, which differs
    from the default's (the clip search moves some weights)."""
    calibration = ["--calib-samples", "2", "--calib-seqlen", "32"]
    cli_file = tmp_path / "cli.awqbin"
    assert main(["quantize", ONE_LAYER_SPEC, "--method", "awq", "--no-clip", "--group-size", "32",
                 "-q", "--out", str(cli_file), *calibration]) == 0
    options = dict(method="awq", group_size=32, progress=False, calib_samples=2, calib_seqlen=32)
    quantize_model(load_source(ONE_LAYER_SPEC), tmp_path / "no_clip.awqbin", clip=False,
                   **options)
    quantize_model(load_source(ONE_LAYER_SPEC), tmp_path / "clip.awqbin", **options)
    ours, no_clip, clip = (_int4_tensors(tmp_path / f"{n}.awqbin")
                           for n in ("cli", "no_clip", "clip"))
    assert all(np.array_equal(ours[n], no_clip[n]) for n in ours)
    assert not all(np.array_equal(ours[n], clip[n]) for n in ours)


def _printed(output: str, prefix: str) -> list[str]:
    return next(line for line in output.splitlines() if line.startswith(prefix)).split()


class _Sharp(SyntheticSource):
    """The synthetic model with its final norm scaled 30x: random std-0.02
    weights give near-uniform next-token distributions (perplexity ~ the
    vocabulary, KL ~4e-5 nats, the same in either direction); scaled logits
    are peaked, as a trained model's are."""

    def get(self, name):
        t = super().get(name)
        return t * 30 if name == "model.norm.weight" else t


def test_ppl_kl_base_and_fp_reference(tmp_path, capsys, monkeypatch):
    """The printed reference perplexity, KL and top-1 agreement against the
    same numbers computed here with torch's own log_softmax and kl_div."""
    import awqcore.importers

    sharp = _Sharp(tiny_config("llama", num_layers=1), seed=3)
    tiny = str(tmp_path / "sharp.awqbin")
    quantize_model(sharp, tiny, method="rtn", group_size=32, progress=False)
    monkeypatch.setattr(awqcore.importers, "load_source",
                        lambda name: sharp if name == SHARP else load_source(name))
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"document {i}: {PROMPT} jumps over the lazy dog" for i in range(6)))
    args = ["ppl", tiny, "--text", str(text), "--seqlen", "16", "--max-windows", "3", "-q",
            "--threads", "2"]
    assert main([*args, "--kl-base", SHARP, "--fp-reference", SHARP]) == 0
    both = capsys.readouterr().out
    assert main([*args, "--fp-reference", SHARP]) == 0  # fp computed on its own
    alone = capsys.readouterr().out

    model = awqcore.Model(tiny, threads=2, max_seq_len=16, activations="f32")
    ids = model.tokenizer.encode(text.read_text()).ids
    windows = [ids[i * 16:(i + 1) * 16] for i in range(3)]
    reference = ReferenceModel(sharp.config, sharp.get)
    nll, kl, agree = [], [], []
    with torch.no_grad():
        for w in windows:
            base = torch.log_softmax(reference.forward(w).double()[:-1], -1)
            ours = torch.log_softmax(torch.from_numpy(model.forward(w)).double()[:-1], -1)
            nll.append(-base[torch.arange(15), torch.tensor(w[1:])])
            kl.append(torch.nn.functional.kl_div(ours, base, log_target=True,
                                                 reduction="none").sum(-1))
            agree.append(base.argmax(-1) == ours.argmax(-1))
    fp = float(torch.cat(nll).mean().exp())
    mean_kl = float(torch.cat(kl).mean())
    top1 = 100 * float(torch.cat(agree).double().mean())

    for output in (both, alone):
        fp_line = [line for line in output.splitlines()
                   if line.startswith("perplexity") and SHARP in line]
        assert len(fp_line) == 1 and float(fp_line[0].split()[1]) == pytest.approx(fp, rel=1e-6, abs=1e-3)
    words = _printed(both, "vs ")
    assert float(words[words.index("int4)") + 1]) == pytest.approx(mean_kl, abs=1e-5)
    assert float(words[-1].rstrip("%")) == pytest.approx(top1, abs=1e-2)
    assert "vs " not in alone
    # The distributions are sharp enough that the KL's direction shows in the
    # printed digits (KL(int4 || base) differs by more than the rounding).
    assert 1e-3 < mean_kl < 1.0 and 50 < top1 < 100, (mean_kl, top1)
