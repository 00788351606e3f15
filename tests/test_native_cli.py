"""awqcore-cli, the native CLI the wheel puts next to `awqcore`: its greedy text
on SmolLM2 (quantized RTN as the other tests do) equals `awqcore run`'s, plain
and --chat; --tokenize prints what `tokenizers` gives; errors exit non-zero."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import awqcore
from awqcore.cli import main

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def cli() -> str:
    # The scripts folder of the environment the package is installed in.
    path = shutil.which("awqcore-cli", path=os.path.dirname(sys.executable)) or \
        shutil.which("awqcore-cli")
    assert path, "awqcore-cli is not installed next to the Python interpreter"
    return path


def run_cli(cli, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([cli, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_greedy_text_equals_awqcore_run(cli, smollm2_awqbin, capsys, chat):
    args = ["-p", PROMPT, "-n", "16", "--threads", "2", "--max-seq-len", "128"]
    args += ["--chat"] if chat else []
    assert main(["run", str(smollm2_awqbin), *args]) == 0
    python = capsys.readouterr()
    native = run_cli(cli, "-m", str(smollm2_awqbin), *args)
    assert native.stdout == python.out
    assert len(native.stdout.split()) >= 5, native.stdout  # a real continuation, not "" == ""
    assert "prefill: " in native.stderr and "decode: " in native.stderr
    assert "stopped: " in native.stderr


def test_tokenize_prints_the_ids_of_the_file(cli, smollm2_awqbin, tmp_path):
    text = "Hello, world!\n  indented\tline with 123 numbers, émigré and 世界 🙂<|im_end|>\n"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    out = run_cli(cli, "-m", str(smollm2_awqbin), "--tokenize", "-f", str(path)).stdout
    expected = awqcore.Model(smollm2_awqbin).tokenizer.encode(text, add_special_tokens=False).ids
    assert out == " ".join(map(str, expected)) + "\n"


def test_errors_exit_nonzero_with_a_message(cli, tmp_path):
    missing = run_cli(cli, "-m", str(tmp_path / "missing.awqbin"), "-p", "x", check=False)
    assert missing.returncode == 1 and "missing.awqbin" in missing.stderr
    usage = run_cli(cli, "-m", "x.awqbin", check=False)
    assert usage.returncode == 2 and "give a prompt" in usage.stderr
    bad = run_cli(cli, "-m", "x.awqbin", "-p", "x", "-n", "many", check=False)
    assert bad.returncode == 2 and "-n" in bad.stderr


def test_version(cli):
    assert run_cli(cli, "--version").stdout.strip() == f"awqcore-cli {awqcore.__version__}"
