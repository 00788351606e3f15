"""Models used from several Python threads at once: two Models in parallel,
and one Model shared by several threads (its lock serialises the calls), each
giving the tokens of a single thread.

Imports only awqcore and numpy, so tools/sanitizers.sh (tsan) also runs this
file with an extension built under ThreadSanitizer (`--noconftest`: the
shared fixtures import torch), where a data race in the runtime fails the run.
The model is a seed of the fuzz corpus: a small valid file that needs no
quantizer.
"""
from __future__ import annotations

import threading
from pathlib import Path

import awqcore

MODEL = Path(__file__).resolve().parents[1] / "cpp" / "fuzz" / "corpus" / "llama-f16.awqbin"
PROMPTS = [[1, 5, 3, 7], [2, 4, 6], [3, 3, 0], [7, 1]]


def generate(model, prompt):
    return model.generate(prompt, max_new_tokens=10, stop=[])


def test_models_work_from_several_threads():
    alone = awqcore.Model(MODEL, threads=2, max_seq_len=32)
    expected = [generate(alone, p) for p in PROMPTS]
    got: dict[tuple, list[int]] = {}
    errors: list[BaseException] = []

    def run(model, index, key):
        try:
            got[key] = generate(model, PROMPTS[index])
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    models = [awqcore.Model(MODEL, threads=2, max_seq_len=32) for _ in range(2)]
    threads = [threading.Thread(target=run, args=(models[i], i, ("own", i))) for i in range(2)]
    threads += [threading.Thread(target=run, args=(alone, i, ("shared", i))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert [got[("own", i)] for i in range(2)] == expected[:2]
    assert [got[("shared", i)] for i in range(4)] == expected
