"""Builds and runs the C++ tests (ctest) and the embedding example.

The example is built against the *installed* package (find_package(awqcore)
through awqcore.cmake_dir()), as a user's C++ program would be.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import awqcore
from awqcore.chat import chat_prompt_ids
from checks import assert_context_dependent

REPO = Path(__file__).resolve().parents[1]
JOBS = str(max(1, min(2, os.cpu_count() or 1)))


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cmake")


def test_ctest_suite(build_dir):
    """Every cpp/tests/test_*.cpp: kernels vs scalar references, file validation, sampler."""
    # The pip install has already compiled cuda/ with nvcc; recompiling it here
    # costs minutes on CI's 2 cores and tests nothing more without a GPU.
    has_gpu = awqcore.built_with_cuda() and not awqcore.cuda_device_info().startswith("no CUDA")
    run(["cmake", "-S", str(REPO), "-B", str(build_dir / "tests"), "-DAWQCORE_BUILD_TESTS=ON",
         "-DCMAKE_BUILD_TYPE=Release", f"-DAWQCORE_CUDA={'AUTO' if has_gpu else 'OFF'}"])
    run(["cmake", "--build", str(build_dir / "tests"), "-j", JOBS])
    result = run(["ctest", "--test-dir", str(build_dir / "tests"), "--output-on-failure"])
    print(result.stdout)
    # ctest exits non-zero on any failure (checked by run). Also every
    # cpp/tests/test_*.cpp must have run and passed: a suite that was not
    # built or not registered would otherwise go unnoticed. A binary skips
    # only by its skip return code (ctest: "Skipped"), and only the GPU suites
    # (test_cuda_*) may, and only without a GPU.
    outcomes = dict(re.findall(r"Test +#\d+: (\S+) \.+[ *]*(Passed|Skipped|Failed|Not Run)",
                               result.stdout))
    expected = {path.stem for pattern in ("test_*.cpp", "test_*.c")
                for path in (REPO / "cpp" / "tests").glob(pattern)}
    assert set(outcomes) == expected, (sorted(outcomes), sorted(expected))
    may_skip = set() if has_gpu else {name for name in expected if name.startswith("test_cuda_")}
    for name, outcome in outcomes.items():
        assert outcome == "Passed" or (outcome == "Skipped" and name in may_skip), (name, outcome)


def test_embedding_examples_match_python(build_dir, tiny_awqbin):
    """examples/embed, built against the installed CMake package: the C++ program
    (text in, text out) prints the greedy text the Python binding gives, plain
    and as a chat; the C program (the shared C API) the same chat answer."""
    config_dir = awqcore.cmake_dir()
    assert os.path.isfile(os.path.join(config_dir, "awqcoreConfig.cmake")), config_dir
    example_build = build_dir / "embed"
    run(["cmake", "-S", str(REPO / "examples" / "embed"), "-B", str(example_build),
         f"-Dawqcore_DIR={config_dir}", "-DCMAKE_BUILD_TYPE=Release"])
    run(["cmake", "--build", str(example_build), "-j", JOBS])
    _, path = tiny_awqbin
    model = awqcore.Model(path)
    tok = model.tokenizer
    prompt = "the quick brown fox"
    plain = model.generate(tok.encode(prompt).ids, max_new_tokens=12)
    assert_context_dependent(plain)
    out = run([str(example_build / "embed_generate"), str(path), "-n", "12", prompt]).stdout
    assert out == tok.decode(plain, skip_special_tokens=True) + "\n"
    chat = model.generate(chat_prompt_ids(model, [{"role": "user", "content": prompt}]),
                          max_new_tokens=12)
    expected = tok.decode(chat, skip_special_tokens=True) + "\n"
    assert run([str(example_build / "embed_generate"), str(path), "-n", "12", "--chat",
                prompt]).stdout == expected
    assert run([str(example_build / "embed_chat_c"), str(path), prompt, "12"]).stdout == expected


def test_cuda_query_reports_cleanly():
    """The CUDA query never crashes: a device description, or a clear 'no CUDA device'."""
    info = awqcore.cuda_device_info()
    if not awqcore.built_with_cuda():
        assert info == "built without CUDA"
    else:
        assert info.startswith("no CUDA device") or "sm_" in info, info
