"""awqcore: 4-bit AWQ quantization with a standalone C++ runtime.

    import awqcore
    model = awqcore.Model("smollm2.awqbin")
    ids = model.tokenizer.encode("The capital of France is").ids
    print(model.tokenizer.decode(model.generate(ids, max_new_tokens=16)))

The runtime needs numpy and tokenizers only; quantization (`awqcore quantize`)
needs the `quantize` extra (torch, gguf, safetensors, tqdm).
"""
from __future__ import annotations

import contextlib
import os
import queue
import stat
import sys
import threading
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from . import _core
from .errors import Error, FormatError, QueueFull

__all__ = ["Model", "Engine", "Error", "FormatError", "QueueFull", "STOP_REASONS", "INT8_DECODE_MAX_TOKENS",
           "__version__", "built_with_cuda", "cuda_device_info", "cpu_kernels_info", "cmake_dir",
           "c_library_path"]
__version__ = _core.version()
# Calls of at most this many tokens also give an int8 lm_head int8
# activations (activations="int8"; the int4 linears take them in every call):
# forward(ids, chunk_tokens=INT8_DECODE_MAX_TOKENS) scores every position with
# decode-step arithmetic.
INT8_DECODE_MAX_TOKENS: int = _core.int8_decode_max_tokens
built_with_cuda = _core.built_with_cuda
cuda_device_info = _core.cuda_device_info
# The CPU kernels' instruction set level in use and those available (AWQCORE_ISA
# picks a lower one), e.g. "avx512vnni (available: scalar avx2 avx512 avx512vnni)".
cpu_kernels_info = _core.cpu_kernels_info


class _LoadedFile:
    """What a Model and an Engine share about their loaded file: path, config
    (a dict), the tokenizer and chat template from its metadata, and the
    checks of token ids against its vocabulary. Subclasses set path, config
    and _core (a C++ object with metadata_string)."""

    path: str
    config: dict
    _tokenizer = None

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

    def _check_ids(self, ids: Iterable[int], what: str = "token id",
                   allow_empty: bool = False, where: str = "") -> list[int]:
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{where}expected a sequence of {what}s, got {type(ids).__name__} "
                            "(encode text with model.tokenizer first)")
        if isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype.kind in "iu":
            out = ids.tolist()
        else:
            if not hasattr(ids, "__iter__"):
                raise TypeError(f"{where}expected a sequence of {what}s, got "
                                f"{type(ids).__name__} {ids!r}")
            out = list(ids)
            for position, token in enumerate(out):
                if not _is_integer(token):
                    raise TypeError(f"{where}{what} at position {position} is "
                                    f"{type(token).__name__} {token!r}; {what}s must be Python "
                                    "or numpy integers")
            out = [int(token) for token in out]
        if not out and not allow_empty:
            raise ValueError(f"{where}empty prompt: pass at least one token id")
        vocab = self.config["vocab_size"]
        for position, token in enumerate(out):
            if not 0 <= token < vocab:
                raise ValueError(f"{where}{what} {token} at position {position} is out of range "
                                 f"[0, {vocab})")
        return out

    def _generation_args(self, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                         seed, stop, stop_name: str = "stop") -> tuple:
        """The generation options in the order the bindings take them, each
        type-checked with an error naming it (the runtime checks the ranges)."""
        max_new_tokens = _integer(max_new_tokens, "max_new_tokens", low=0)
        top_k = _integer(top_k, "top_k")
        if seed is not None:
            seed = _integer(seed, "seed", low=0, high=2**64 - 1)
        if stop is not None:
            if isinstance(stop, (str, bytes)) or not hasattr(stop, "__iter__"):
                raise TypeError(f"{stop_name} must be None or an iterable of token ids (got "
                                f"{type(stop).__name__} {stop!r}; for one id write "
                                f"{stop_name}=[id])")
            stop = self._check_ids(stop, what="stop id", allow_empty=True)
        return (max_new_tokens, _real(temperature, "temperature"), top_k,
                _real(top_p, "top_p"), _real(repetition_penalty, "repetition_penalty"),
                seed, stop)


class Model(_LoadedFile):
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
    to int8 per 32 columns in every call, decode steps and prefill alike
    (W4A8, as llama.cpp does: 1.6-1.8x faster decode kernels, a 3-4x faster
    prefill GEMM, next-token KL ~3e-3 nats), multiplies an int8 lm_head by
    int8 activations too in calls of at most INT8_DECODE_MAX_TOKENS tokens
    (W8A8), and keeps the KV cache in f16 (half its memory); "f32" keeps all
    exact (W4A16, f32 cache). The CUDA device ignores this (its cache is f16).

    One Model runs one call at a time; calls from several Python threads are
    serialised by a lock (the GIL is released while the C++ code computes). A
    call from inside its own on_token callback raises awqcore.Error (it would
    wait for itself).
    """

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None,
                 max_seq_len: int = 2048, verify: bool = True, device: str = "cpu",
                 max_batch: int = 1, activations: str = "int8"):
        path = os.fspath(path)
        _check_model_path(path)
        if threads is not None:
            threads = _integer(threads, "threads", low=1)
        max_seq_len = _integer(max_seq_len, "max_seq_len", low=1)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda' (got {device!r})")
        max_batch = _integer(max_batch, "max_batch", low=1)
        if activations not in ("int8", "f32"):
            raise ValueError(f"activations must be 'int8' or 'f32' (got {activations!r})")
        self.path = path
        self._core = _core.Model(path, threads or 0, max_seq_len, bool(verify), device, max_batch,
                                 activations)
        self.config: dict = self._core.config()
        self._lock = threading.Lock()
        self._lock_owner: Optional[int] = None  # thread id holding _lock
        self._last_stop_reason: str | list[str] | None = None

    def forward(self, ids: Sequence[int], chunk_tokens: Optional[int] = None) -> np.ndarray:
        """Logits float32 [len(ids), vocab] for a fresh sequence (resets the cache).

        chunk_tokens: feed the ids in calls of this many tokens (default: one
        call, as a prompt's prefill). The int4 linears compute each token the
        same, bit for bit, in any calls of up to INT8_DECODE_MAX_TOKENS (the
        decode kernels), and in any calls of more (the prompt GEMM), but the
        two sum in different orders. chunk_tokens <= INT8_DECODE_MAX_TOKENS
        also gives the int8 lm_head int8 activations, so every position is
        computed exactly as generation's decode steps compute it (up to the
        attention's summation order).
        """
        ids = self._check_ids(ids)
        if chunk_tokens is None:
            chunk_tokens = max(1, len(ids))
        chunk_tokens = _integer(chunk_tokens, "chunk_tokens", low=1)
        with self._exclusive("forward"):
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
        sampling = self._generation_args(max_new_tokens, temperature, top_k, top_p,
                                         repetition_penalty, seed, stop)
        if on_token is not None and not callable(on_token):
            raise TypeError("on_token must be callable")
        with self._exclusive("generate"):
            self._last_stop_reason = None
            try:
                if batch:
                    return self._core.generate_batch(prompts, *sampling)
                return self._core.generate(ids, *sampling, on_token)
            finally:  # also when on_token raised (reason "callback")
                reasons = self._core.last_stop_reasons()  # empty after a rejected call
                self._last_stop_reason = reasons if batch else (reasons[0] if reasons else None)

    @property
    def last_stop_reason(self) -> str | list[str] | None:
        """Why the last generate() stopped: one of STOP_REASONS for a single
        prompt, a list of them (one per prompt, in order) for a batch; None
        before the first generate() or after one that was rejected.

        "stop_token": it produced a stop id (the model's end-of-sequence ids by
        default), which is the result's last token; "max_new_tokens": it
        produced that many; "context_full": prompt + result filled max_seq_len
        first, so the result is shorter than max_new_tokens (empty for a
        prompt of max_seq_len tokens); "callback": on_token returned False or
        raised (also when a stream was closed early).
        """
        return self._last_stop_reason

    def stream(self, ids: Sequence[int], **options) -> Iterator[int]:
        """Like generate(), but yields each token as it is produced.

        Generation runs in a worker thread (the GIL is released while it
        computes). The hand-over queue holds one token, so the worker runs at
        most two tokens ahead of the consumer: closing the iterator early
        stops generation there, with last_stop_reason "callback", however
        fast the model is.
        """
        if "on_token" in options:
            raise ValueError("stream() yields tokens itself; on_token is not accepted")
        tokens: queue.Queue = queue.Queue(maxsize=1)
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
        finished = False
        try:
            while (item := tokens.get()) is not done:
                yield item
            finished = True
        finally:
            cancelled.set()
            # Draining unblocks the worker's put(); its callback then sees
            # `cancelled` and generation ends.
            while not finished and tokens.get() is not done:
                pass
            worker.join()
        if failure:
            raise failure[0]

    def reset(self) -> None:
        """Empties the KV cache."""
        with self._exclusive("reset"):
            self._core.reset()

    def last_timing(self) -> dict:
        """Seconds the last generate() spent in forward passes: {"prefill_s":
        the prompts, "decode_s": the decode steps}; sampling and callbacks
        excluded."""
        with self._exclusive("last_timing"):
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

    @contextlib.contextmanager
    def _exclusive(self, method: str) -> Iterator[None]:
        """Holds the Model's lock for one call. The lock is not reentrant: a
        call from the thread that holds it (an on_token callback calling
        generate on its own Model) would wait for itself forever, so it raises."""
        if self._lock_owner == threading.get_ident():
            raise Error(f"Model.{method}() called while this Model is generating on the same "
                        "thread (from its on_token callback?): one Model runs one call at a "
                        "time; collect the tokens and call it after generate() returns, or use "
                        "a second Model")
        with self._lock:
            self._lock_owner = threading.get_ident()
            try:
                yield
            finally:
                self._lock_owner = None

    def __repr__(self) -> str:
        c = self.config
        return (f"awqcore.Model({self.path!r}: {c['architecture']}, {c['num_layers']} layers, "
                f"d={c['hidden_size']}, int4 g{c['group_size']}, {c['threads']} threads)")


def cmake_dir() -> str:
    """Folder of the installed CMake package: pass it as -Dawqcore_DIR=... to
    find_package(awqcore) in a C++ project (see examples/embed)."""
    return os.path.join(os.path.dirname(__file__), "lib", "cmake", "awqcore")


def c_library_path() -> str:
    """Path of the installed C API library (awqcore/awqcore_c.h), for FFIs:
    ctypes.CDLL(awqcore.c_library_path())."""
    names = {"win32": "awqcore_c.dll", "darwin": "libawqcore_c.dylib"}
    return os.path.join(os.path.dirname(__file__), "lib", names.get(sys.platform, "libawqcore_c.so"))


STOP_REASONS = ("stop_token", "max_new_tokens", "context_full", "callback")

_INT32_MAX = 2**31 - 1  # the runtime's int arguments


def _is_integer(value) -> bool:
    """Python ints and numpy integers, not bools (True is not token 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _integer(value, name: str, low: Optional[int] = None, high: int = _INT32_MAX) -> int:
    """`value` as an int within [low, high], else an error naming the argument."""
    if not _is_integer(value):
        raise TypeError(f"{name} must be an integer (got {type(value).__name__} {value!r})")
    value = int(value)
    if (low is not None and value < low) or value > high:
        rule = f"in [{low}, {high}]" if low is not None else f"at most {high}"
        raise ValueError(f"{name} must be {rule} (got {value})")
    return value


def _real(value, name: str) -> float:
    """A Python or numpy int or float as a float, else an error naming the argument.
    The range rules (temperature >= 0, ...) are the runtime's."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a number (got {type(value).__name__} {value!r})")
    return float(value)


def _check_model_path(path: str) -> None:
    """A regular file, checked before the runtime opens it: open() of a FIFO
    blocks until a writer appears, and a folder or device is no model."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a special file")
        raise FormatError(f"{path}: is {kind}, not a regular .awqbin file")


from .engine import Engine  # noqa: E402  (it builds on the helpers above)
