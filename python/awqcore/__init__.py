"""awqcore: 4-bit AWQ quantization with a standalone C++ runtime.

    import awqcore
    model = awqcore.Model("smollm2.awqbin")
    ids = model.tokenizer.encode("The capital of France is").ids
    print(model.tokenizer.decode(model.generate(ids, max_new_tokens=16)))

The runtime needs numpy and tokenizers only; quantization (`awqcore quantize`)
needs the `quantize` extra (torch, gguf, safetensors, tqdm).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from . import _core
from .errors import Error, FormatError

__all__ = ["Model", "Error", "FormatError", "__version__", "built_with_cuda", "cuda_device_info",
           "cmake_dir"]
__version__ = _core.version()
built_with_cuda = _core.built_with_cuda
cuda_device_info = _core.cuda_device_info


class Model:
    """A quantized model loaded from an `.awqbin` file, with its KV cache.

    threads: worker threads for the matrix products (None: all cores).
    max_seq_len: KV-cache capacity in tokens (prompt + generated).
    verify: check every tensor's CRC-32 at load.
    device: "cpu", or "cuda" to run the forward pass on GPU 0 (awqcore.Error
    when awqcore was built without CUDA or no device is present).
    max_batch: prompts `generate([...])` decodes together (one KV cache of
    max_seq_len tokens each, allocated here); more prompts wait for a free
    cache (on the GPU too).
    activations: "int8" (default) rounds the activations of the int4 linears
    to int8 per 32 columns in decode steps (W4A8, as llama.cpp does: 1.6-1.8x
    faster int4 kernels, next-token KL ~3e-3 nats), multiplies an int8 lm_head
    by int8 activations too (W8A8), and keeps the KV cache in f16 (half its
    memory); "f32" keeps all exact (W4A16, f32 cache). Prefill
    linears are f32 either way; the CUDA device ignores this (its cache is f16).

    One Model runs one call at a time; calls from several Python threads are
    serialised by a lock (the GIL is released while the C++ code computes).
    """

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None,
                 max_seq_len: int = 2048, verify: bool = True, device: str = "cpu",
                 max_batch: int = 1, activations: str = "int8"):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None (got {threads!r})")
        if not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"max_seq_len must be a positive integer (got {max_seq_len!r})")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda' (got {device!r})")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer (got {max_batch!r})")
        if activations not in ("int8", "f32"):
            raise ValueError(f"activations must be 'int8' or 'f32' (got {activations!r})")
        self.path = path
        self._core = _core.Model(path, threads or 0, max_seq_len, bool(verify), device, max_batch,
                                 activations)
        self.config: dict = self._core.config()
        self._lock = threading.Lock()
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The model's `tokenizers.Tokenizer`, rebuilt from the JSON in the file."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer
            text = self._core.metadata_string("tokenizer.json")
            if not text:
                raise FormatError(f"{self.path}: the file holds no tokenizer (tokenizer.json)")
            self._tokenizer = Tokenizer.from_str(text)
        return self._tokenizer

    @property
    def chat_template(self) -> str:
        return self._core.metadata_string("tokenizer.chat_template") or ""

    def forward(self, ids: Sequence[int], chunk_tokens: Optional[int] = None) -> np.ndarray:
        """Logits float32 [len(ids), vocab] for a fresh sequence (resets the cache).

        chunk_tokens: feed the ids in calls of this many tokens (default: one
        call, as a prompt's prefill). chunk_tokens=1 computes every position
        exactly as generation's decode steps do (int8 activations, unless the
        model was opened with activations="f32").
        """
        ids = self._check_ids(ids)
        if chunk_tokens is None:
            chunk_tokens = max(1, len(ids))
        if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be a positive integer (got {chunk_tokens!r})")
        with self._lock:
            return self._core.forward(ids, chunk_tokens)

    def generate(self, ids: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seed: Optional[int] = None,
                 stop: Optional[Iterable[int]] = None,
                 on_token: Optional[Callable[[int], Optional[bool]]] = None
                 ) -> list[int] | list[list[int]]:
        """Generates after `ids` and returns the new tokens only.

        temperature 0 is greedy. stop=None stops at the model's end-of-sequence
        ids; stop=[] never stops early (exactly max_new_tokens tokens).
        on_token(token) is called for each new token; returning False stops.
        An exception raised in on_token propagates to the caller.

        A list of prompts (lists of ids, any lengths) returns a list of token
        lists, each what generate(prompt) alone gives under greedy decoding;
        up to max_batch of them are decoded together, sharing each pass over
        the weights. With a seed, prompt i samples from the stream seed + i.
        on_token takes a single prompt only.
        """
        batch = self._is_batch(ids)
        if batch:
            prompts = [self._check_ids(p, where=f"prompt {i}: ") for i, p in enumerate(ids)]
            if on_token is not None:
                raise ValueError("on_token (and stream) take a single prompt, not a list of prompts")
        else:
            ids = self._check_ids(ids)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer (got {max_new_tokens!r})")
        if seed is not None and not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2**64) (got {seed!r})")
        if stop is not None:
            stop = self._check_ids(list(stop), what="stop id", allow_empty=True)
        if on_token is not None and not callable(on_token):
            raise ValueError("on_token must be callable")
        sampling = (max_new_tokens, float(temperature), int(top_k), float(top_p),
                    float(repetition_penalty), None if seed is None else int(seed), stop)
        with self._lock:
            if batch:
                return self._core.generate_batch(prompts, *sampling)
            return self._core.generate(ids, *sampling, on_token)

    def stream(self, ids: Sequence[int], **options) -> Iterator[int]:
        """Like generate(), but yields each token as it is produced.

        Generation runs in a worker thread (the GIL is released while it
        computes); closing the iterator early stops it at the next token.
        """
        if "on_token" in options:
            raise ValueError("stream() yields tokens itself; on_token is not accepted")
        tokens: queue.Queue = queue.Queue()
        done = object()
        cancelled = threading.Event()
        failure: list[BaseException] = []

        def on_token(token: int) -> bool:
            tokens.put(token)
            return not cancelled.is_set()

        def work() -> None:
            try:
                self.generate(ids, on_token=on_token, **options)
            except BaseException as e:  # handed to the consuming thread
                failure.append(e)
            finally:
                tokens.put(done)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (item := tokens.get()) is not done:
                yield item
        finally:
            cancelled.set()
            worker.join()
        if failure:
            raise failure[0]

    def reset(self) -> None:
        """Empties the KV cache."""
        with self._lock:
            self._core.reset()

    def last_timing(self) -> dict:
        """Seconds the last generate() spent in forward passes: {"prefill_s":
        the prompts, "decode_s": the decode steps}; sampling and callbacks
        excluded."""
        with self._lock:
            prefill_s, decode_s = self._core.last_timing()
        return {"prefill_s": prefill_s, "decode_s": decode_s}

    @staticmethod
    def _is_batch(ids) -> bool:
        """Whether `ids` is a list of prompts: an indexable non-string whose
        first element is itself iterable (a list of ids is a single prompt).
        Indexing, not iteration, so a one-shot iterator of ids loses nothing."""
        if isinstance(ids, (str, bytes)):
            return False
        try:
            first = ids[0]
        except (TypeError, IndexError, KeyError):
            return False
        return not isinstance(first, (str, bytes)) and hasattr(first, "__iter__")

    def _check_ids(self, ids: Sequence[int], what: str = "token id",
                   allow_empty: bool = False, where: str = "") -> list[int]:
        if isinstance(ids, (str, bytes)):
            raise ValueError(f"{where}expected a sequence of {what}s, got {type(ids).__name__} "
                             "(encode text with model.tokenizer first)")
        try:
            out = [int(i) for i in ids]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}expected a sequence of integer {what}s: {e}") from None
        if not out and not allow_empty:
            raise ValueError(f"{where}empty prompt: pass at least one token id")
        vocab = self.config["vocab_size"]
        for position, token in enumerate(out):
            if not 0 <= token < vocab:
                raise ValueError(f"{where}{what} {token} at position {position} is out of range "
                                 f"[0, {vocab})")
        return out

    def __repr__(self) -> str:
        c = self.config
        return (f"awqcore.Model({self.path!r}: {c['architecture']}, {c['num_layers']} layers, "
                f"d={c['hidden_size']}, int4 g{c['group_size']}, {c['threads']} threads)")


def cmake_dir() -> str:
    """Folder of the installed CMake package: pass it as -Dawqcore_DIR=... to
    find_package(awqcore) in a C++ project (see examples/embed)."""
    return os.path.join(os.path.dirname(__file__), "lib", "cmake", "awqcore")
