"""Writing and reading `.awqbin` v1 files (docs/format.md), in pure Python.

`AwqbinWriter` streams tensors to a spool file as they are added, so a model
never has to be held in memory whole, and publishes the finished file with an
atomic rename: a reader sees either the previous file or the complete new one.

`read_awqbin` is an independent implementation of the spec's validation (the
C++ runtime has its own), used by `awqcore inspect` and by the tests that pit
both readers against the same corrupt files. Tensor data is memory-mapped, not
read, so inspecting a large model is cheap.
"""
from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
import zlib
from typing import Any, NamedTuple

import numpy as np

from .atomic_write import atomic_write
# One class for both readers: the bindings raise this same FormatError for a
# file the C++ runtime rejects.
from .errors import FormatError

from .source import ModelConfig

__all__ = ["AwqbinFile", "AwqbinWriter", "FormatError", "TensorEntry", "config_from_metadata",
           "model_metadata", "read_awqbin"]

MAGIC = b"AWQCORE\0"
VERSION = 1
PREAMBLE_SIZE = 128
ALIGNMENT = 64  # every tensor and the data section start on a 64-byte boundary

# Preamble fields in file order, after the magic: name -> struct code.
_PREAMBLE_FIELDS = (
    ("version", "I"), ("preamble_size", "I"), ("meta_offset", "Q"), ("meta_size", "Q"),
    ("dir_offset", "Q"), ("dir_size", "Q"), ("data_offset", "Q"), ("data_size", "Q"),
    ("file_size", "Q"), ("meta_crc32", "I"), ("dir_crc32", "I"), ("preamble_crc32", "I"),
)
_PREAMBLE_STRUCT = struct.Struct("<8s" + "".join(code for _, code in _PREAMBLE_FIELDS))
_PREAMBLE_CRC_END = 80  # preamble_crc32 covers bytes [0, 80)
assert _PREAMBLE_STRUCT.size == 84

# dtype code in the directory <-> numpy dtype (explicitly little-endian).
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("u1"), 3: np.dtype("<i4"),
    4: np.dtype("i1")}
DTYPE_NAMES = {0: "f32", 1: "f16", 2: "u8", 3: "i32", 4: "i8"}
_DTYPE_CODES = {dt: code for code, dt in DTYPES.items()}
_CODE_BY_NAME = {name: code for code, name in DTYPE_NAMES.items()}

# Metadata value type codes.
_META_INT, _META_FLOAT, _META_STRING, _META_INT_ARRAY = 1, 2, 3, 4
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _encode_name(name: str, what: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"{what} {name!r} is {len(raw)} bytes in UTF-8; must be 1..255")
    return raw


def _encode_meta_value(key: str, value: Any) -> bytes:
    """Type byte + value bytes. bool counts as an int (the spec has no bool type)."""
    if isinstance(value, (bool, int, np.integer)):
        value = int(value)
        if not _I64_MIN <= value <= _I64_MAX:
            raise ValueError(f"metadata {key!r}: {value} does not fit in an i64")
        return struct.pack("<Bq", _META_INT, value)
    if isinstance(value, (float, np.floating)):
        return struct.pack("<Bd", _META_FLOAT, float(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return struct.pack("<BQ", _META_STRING, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise TypeError(f"metadata {key!r}: only lists of ints are supported")
        if any(not _I64_MIN <= int(v) <= _I64_MAX for v in value):
            raise ValueError(f"metadata {key!r}: an element does not fit in an i64")
        return (struct.pack("<BQ", _META_INT_ARRAY, len(value))
                + np.asarray(value, dtype="<i8").tobytes())
    raise TypeError(f"metadata {key!r}: unsupported value type {type(value).__name__} "
                    "(use int, bool, float, str or list[int])")


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    parts = [struct.pack("<I", len(metadata))]
    for key, value in metadata.items():
        raw_key = _encode_name(key, "metadata key")
        parts.append(struct.pack("<H", len(raw_key)) + raw_key + _encode_meta_value(key, value))
    return b"".join(parts)


# The decoder-layer description (docs/format.md): ModelConfig field -> file key, for
# the fields stored as they are; each is written only when it differs from its
# default, so a Llama or Qwen2 file carries none of them.
_DESCRIPTION_KEYS = {
    "norm_placement": "model.norm_placement", "activation": "model.activation",
    "qk_norm": "model.qk_norm", "attention_scale": "model.attention_scale",
    "embedding_scale": "model.embedding_scale",
    "final_logit_softcap": "model.final_logit_softcap",
    "sliding_window": "model.sliding_window", "rope_local_theta": "model.rope_local_theta",
}
_FLOAT_FIELDS = {"attention_scale", "embedding_scale", "final_logit_softcap", "rope_local_theta"}
_LAYER_TYPE_CODES = {"full_attention": 0, "sliding_attention": 1}
# model.rope_scaling.<key> -> its type in the file, for every key any type uses.
_ROPE_SCALING_KEYS = {"factor": float, "original_max_position_embeddings": int,
                      "low_freq_factor": float, "high_freq_factor": float,
                      "beta_fast": float, "beta_slow": float, "truncate": int,
                      "attention_factor": float}
# Mixture of experts: ModelConfig field -> file key, all written when num_experts > 0.
_EXPERT_KEYS = {"num_experts": "model.num_experts",
                "num_experts_per_tok": "model.num_experts_per_tok",
                "moe_intermediate_size": "model.moe_intermediate_size",
                "norm_topk_prob": "model.norm_topk_prob"}


def model_metadata(c: ModelConfig) -> dict[str, Any]:
    """The general.* and model.* metadata of a model (docs/format.md)."""
    meta: dict[str, Any] = {
        "general.architecture": c.architecture,
        "general.name": c.name,
        "model.vocab_size": c.vocab_size,
        "model.hidden_size": c.hidden_size,
        "model.intermediate_size": c.intermediate_size,
        "model.num_layers": c.num_layers,
        "model.num_heads": c.num_heads,
        "model.num_kv_heads": c.num_kv_heads,
        "model.head_dim": c.head_dim,
        "model.max_position_embeddings": c.max_position_embeddings,
        "model.rope_theta": float(c.rope_theta),
        "model.rms_norm_eps": float(c.rms_norm_eps),
        "model.tie_word_embeddings": int(c.tie_word_embeddings),
        "model.attention_bias": int(c.attention_bias),
    }
    defaults = ModelConfig.__dataclass_fields__
    for field, key in _DESCRIPTION_KEYS.items():
        value = getattr(c, field)
        if value != defaults[field].default:
            meta[key] = float(value) if field in _FLOAT_FIELDS else \
                int(value) if isinstance(value, (bool, int)) else value
    if c.layer_types is not None:
        meta["model.layer_types"] = [_LAYER_TYPE_CODES[t] for t in c.layer_types]
    if c.rope_scaling is not None:
        meta["model.rope_scaling.type"] = c.rope_scaling["rope_type"]
        for key, kind in _ROPE_SCALING_KEYS.items():
            if key in c.rope_scaling:
                meta["model.rope_scaling." + key] = kind(c.rope_scaling[key])
    if c.num_experts:
        for field, key in _EXPERT_KEYS.items():
            meta[key] = int(getattr(c, field))
        if c.moe_layers is not None:
            meta["model.moe_layers"] = [int(v) for v in c.moe_layers]
    return meta


def config_from_metadata(meta: dict[str, Any], path: str) -> ModelConfig:
    """The ModelConfig a file's metadata describes; FormatError naming a missing or
    invalid key. Description keys that are absent take their defaults (Llama's)."""
    def need(key: str):
        if key not in meta:
            raise FormatError(f"{path}: metadata key {key!r} is missing")
        return meta[key]

    fields: dict[str, Any] = {}
    for field, key in _DESCRIPTION_KEYS.items():
        if key in meta:
            value = meta[key]
            fields[field] = float(value) if field in _FLOAT_FIELDS else \
                bool(value) if field == "qk_norm" else value
    if "model.layer_types" in meta:
        names = {code: name for name, code in _LAYER_TYPE_CODES.items()}
        codes = meta["model.layer_types"]
        if not isinstance(codes, list) or any(c not in names for c in codes):
            raise FormatError(f"{path}: model.layer_types {codes!r} must be a list of 0 and 1")
        fields["layer_types"] = [names[c] for c in codes]
    kind = meta.get("model.rope_scaling.type", "none")
    if kind != "none":
        scaling: dict[str, Any] = {"rope_type": kind}
        for key, cast in _ROPE_SCALING_KEYS.items():
            if "model.rope_scaling." + key in meta:
                value = meta["model.rope_scaling." + key]
                scaling[key] = bool(value) if key == "truncate" else cast(value)
        fields["rope_scaling"] = scaling
    for field, key in _EXPERT_KEYS.items():
        if key in meta:
            value = meta[key]
            if not isinstance(value, int):
                raise FormatError(f"{path}: metadata {key} {value!r} must be an integer")
            fields[field] = bool(value) if field == "norm_topk_prob" else value
    if "model.moe_layers" in meta:
        layers = meta["model.moe_layers"]
        if not isinstance(layers, list) or any(v not in (0, 1) for v in layers):
            raise FormatError(f"{path}: model.moe_layers {layers!r} must be a list of 0 and 1")
        fields["moe_layers"] = layers
    try:
        return ModelConfig(
            architecture=need("general.architecture"),
            name=meta.get("general.name", ""),
            vocab_size=need("model.vocab_size"),
            hidden_size=need("model.hidden_size"),
            intermediate_size=need("model.intermediate_size"),
            num_layers=need("model.num_layers"),
            num_heads=need("model.num_heads"),
            num_kv_heads=need("model.num_kv_heads"),
            head_dim=need("model.head_dim"),
            max_position_embeddings=need("model.max_position_embeddings"),
            rope_theta=float(need("model.rope_theta")),
            rms_norm_eps=float(need("model.rms_norm_eps")),
            tie_word_embeddings=bool(need("model.tie_word_embeddings")),
            attention_bias=bool(need("model.attention_bias")),
            **fields)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{path}: the model metadata is invalid: {e}") from None


class TensorEntry(NamedTuple):
    dtype: str                # "f32" | "f16" | "u8" | "i32" | "i8"
    shape: tuple[int, ...]
    offset: int               # relative to data_offset
    nbytes: int
    crc: int                  # zlib CRC-32 of the data


class AwqbinWriter:
    """Builds a .awqbin file: `add_tensor` as tensors come, then `finish(metadata)`.

    Use as a context manager: leaving the block with an exception (or without
    calling finish) deletes the temporary files and leaves `path` untouched.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self._dir = os.path.dirname(self.path)
        base = os.path.basename(self.path)
        # The spool lives next to the destination so that it is on the same
        # filesystem (no cross-device copy later) and is cleaned up with it.
        fd, self._spool_path = tempfile.mkstemp(prefix=f".{base}.", suffix=".spool", dir=self._dir)
        self._spool = os.fdopen(fd, "w+b")
        self._entries: list[tuple[bytes, int, tuple[int, ...], int, int, int]] = []
        self._names: set[str] = set()
        self._end = 0  # bytes of tensor data spooled so far (end of the last tensor)
        self._finished = False
        self._aborted = False

    def __enter__(self) -> "AwqbinWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            explicitly_aborted = self._aborted
            self.abort()
            if exc_type is None and not explicitly_aborted:
                raise RuntimeError(f"AwqbinWriter for {self.path} closed without finish(); "
                                   "nothing was written")

    def add_tensor(self, name: str, array: np.ndarray) -> None:
        """Appends one tensor; its bytes go to the spool file immediately."""
        if self._finished or self._aborted:
            raise RuntimeError("add_tensor() after finish() or abort()")
        raw_name = _encode_name(name, "tensor name")
        if name in self._names:
            raise ValueError(f"tensor {name!r} was already added")
        array = np.asarray(array)
        code = _DTYPE_CODES.get(array.dtype.newbyteorder("<"))
        if code is None:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} is not storable "
                            "(use float32, float16, uint8, int32 or int8)")
        if not 1 <= array.ndim <= 4:
            raise ValueError(f"tensor {name!r}: {array.ndim} dimensions; must be 1..4")
        # Little-endian, row-major bytes, copying only if the array is not already.
        data = np.ascontiguousarray(array, dtype=DTYPES[code])
        offset = _align(self._end)
        self._spool.write(b"\0" * (offset - self._end))
        raw = data.reshape(-1).view(np.uint8)  # [nbytes]
        self._spool.write(raw)
        self._end = offset + raw.nbytes
        self._entries.append((raw_name, code, tuple(int(d) for d in data.shape), offset,
                              raw.nbytes, zlib.crc32(raw)))
        self._names.add(name)

    def _directory(self) -> bytes:
        parts = [struct.pack("<I", len(self._entries))]
        for raw_name, code, shape, offset, nbytes, crc in self._entries:
            parts.append(struct.pack("<H", len(raw_name)) + raw_name)
            parts.append(struct.pack(f"<BB{len(shape)}QQQI", code, len(shape), *shape,
                                     offset, nbytes, crc))
        return b"".join(parts)

    def finish(self, metadata: dict[str, Any]) -> None:
        """Writes preamble, metadata, directory and data, then renames into place."""
        if self._finished or self._aborted:
            raise RuntimeError("finish() after finish() or abort()")
        try:
            meta = encode_metadata(metadata)
            directory = self._directory()
            meta_offset = PREAMBLE_SIZE
            dir_offset = meta_offset + len(meta)
            data_offset = _align(dir_offset + len(directory))
            file_size = data_offset + self._end
            fields = dict(version=VERSION, preamble_size=PREAMBLE_SIZE,
                          meta_offset=meta_offset, meta_size=len(meta),
                          dir_offset=dir_offset, dir_size=len(directory),
                          data_offset=data_offset, data_size=self._end, file_size=file_size,
                          meta_crc32=zlib.crc32(meta), dir_crc32=zlib.crc32(directory),
                          preamble_crc32=0)
            head = bytearray(_PREAMBLE_STRUCT.pack(MAGIC, *(fields[n] for n, _ in _PREAMBLE_FIELDS)))
            struct.pack_into("<I", head, _PREAMBLE_CRC_END, zlib.crc32(head[:_PREAMBLE_CRC_END]))
            head += b"\0" * (PREAMBLE_SIZE - len(head))  # reserved

            with atomic_write(self.path) as out:
                out.write(head)
                out.write(meta)
                out.write(directory)
                out.write(b"\0" * (data_offset - dir_offset - len(directory)))
                self._spool.flush()
                self._spool.seek(0)
                shutil.copyfileobj(self._spool, out, 16 << 20)
                if out.tell() != file_size:
                    raise RuntimeError(f"wrote {out.tell()} bytes, expected {file_size}")
            self._finished = True
        finally:
            self._close_spool()

    def abort(self) -> None:
        """Discards everything written so far (idempotent)."""
        self._aborted = True
        self._close_spool()

    def _close_spool(self) -> None:
        if not self._spool.closed:
            self._spool.close()
        _remove(self._spool_path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Cursor:
    """Bounds-checked little-endian reads from one section (metadata or directory)."""

    def __init__(self, buf: bytes, section: str, size_field: str, fail):
        self.buf, self.pos, self._fail = buf, 0, fail
        self.section, self.size_field = section, size_field  # for messages

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.buf) - self.pos:
            self._fail(f"{self.section}: {what} needs {n} bytes at offset {self.pos} but only "
                       f"{len(self.buf) - self.pos} remain of {self.size_field}={len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        s = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(s, what))

    def name(self, what: str) -> str:
        (n,) = self.unpack("H", f"{what} length")
        if not 1 <= n <= 255:
            self._fail(f"{self.section}: {what} length {n} at offset {self.pos - 2} is not in 1..255")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"{self.section}: {what} {raw!r} is not valid UTF-8")


class AwqbinFile:
    """A validated .awqbin file. Tensor data stays on disk (memory-mapped)."""

    def __init__(self, path: str, header: dict[str, int], metadata: dict[str, Any],
                 tensors: dict[str, TensorEntry]):
        self.path = path
        self.header = header      # the preamble fields by their spec names
        self.metadata = metadata  # key -> int | float | str | list[int]
        self.tensors = tensors    # name -> TensorEntry, in file order
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if header["data_size"] else None

    @property
    def file_size(self) -> int:
        return self.header["file_size"]

    def _bytes(self, name: str) -> np.ndarray:
        """The tensor's raw bytes [nbytes] u8 (a view of the mapping)."""
        entry = self.tensors.get(name)
        if entry is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        start = self.header["data_offset"] + entry.offset
        if self._map is None:  # empty data section: every tensor is empty
            return np.empty(0, np.uint8)
        return self._map[start:start + entry.nbytes]

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor as a read-only array backed by the file mapping."""
        raw = self._bytes(name)
        entry = self.tensors[name]
        return raw.view(DTYPES[_CODE_BY_NAME[entry.dtype]]).reshape(entry.shape)

    def verify(self) -> list[str]:
        """Names of the tensors whose data does not match its CRC-32."""
        bad = []
        for name, entry in self.tensors.items():
            raw = self._bytes(name)
            crc = 0
            # In chunks so that verifying a large tensor does not page it all in at once.
            for start in range(0, raw.size, 64 << 20):
                crc = zlib.crc32(raw[start:start + (64 << 20)], crc)
            if crc != entry.crc:
                bad.append(name)
        return bad


def read_awqbin(path: str | os.PathLike) -> AwqbinFile:
    """Opens and validates `path` completely (except tensor CRCs: see verify())."""
    path = os.fspath(path)

    def fail(msg: str):
        raise FormatError(f"{path}: {msg}")

    with open(path, "rb") as f:
        actual_size = os.fstat(f.fileno()).st_size
        if actual_size < PREAMBLE_SIZE:
            fail(f"truncated: the file is {actual_size} bytes, shorter than the "
                 f"{PREAMBLE_SIZE}-byte preamble")
        preamble = f.read(PREAMBLE_SIZE)
        magic, *values = _PREAMBLE_STRUCT.unpack_from(preamble)
        h = {name: v for (name, _), v in zip(_PREAMBLE_FIELDS, values)}
        if magic != MAGIC:
            fail(f"bad magic {magic!r} (expected {MAGIC!r}): not an .awqbin file")
        if h["version"] != VERSION:
            fail(f"unsupported version {h['version']} (this reader supports {VERSION})")
        crc = zlib.crc32(preamble[:_PREAMBLE_CRC_END])
        if crc != h["preamble_crc32"]:
            fail(f"preamble_crc32 mismatch (stored {h['preamble_crc32']:#010x}, "
                 f"computed {crc:#010x}): the preamble is corrupt")
        # file_size first: a truncated file must be reported as such, not as
        # whatever section happens to be cut.
        if h["file_size"] != actual_size:
            what = "truncated" if actual_size < h["file_size"] else "trailing bytes"
            fail(f"{what}: file_size in the preamble is {h['file_size']} "
                 f"but the file has {actual_size} bytes")
        if h["preamble_size"] != PREAMBLE_SIZE:
            fail(f"preamble_size is {h['preamble_size']}, expected {PREAMBLE_SIZE}")
        if h["meta_offset"] != PREAMBLE_SIZE:
            fail(f"meta_offset is {h['meta_offset']}, expected {PREAMBLE_SIZE}")
        if h["meta_offset"] + h["meta_size"] != h["dir_offset"]:
            fail(f"dir_offset {h['dir_offset']} != meta_offset + meta_size "
                 f"({h['meta_offset']} + {h['meta_size']})")
        if h["data_offset"] % ALIGNMENT:
            fail(f"data_offset {h['data_offset']} is not a multiple of {ALIGNMENT}")
        if h["dir_offset"] + h["dir_size"] > h["data_offset"]:
            fail(f"dir_offset + dir_size ({h['dir_offset']} + {h['dir_size']}) "
                 f"exceeds data_offset {h['data_offset']}")
        if h["data_offset"] + h["data_size"] != h["file_size"]:
            fail(f"data_offset + data_size ({h['data_offset']} + {h['data_size']}) "
                 f"!= file_size {h['file_size']}")
        if any(preamble[_PREAMBLE_STRUCT.size:]):
            fail("reserved preamble bytes [84, 128) are not zero")

        # Every size below has been checked against the real file size, so these
        # reads are bounded by it.
        meta = f.read(h["meta_size"])
        if zlib.crc32(meta) != h["meta_crc32"]:
            fail(f"meta_crc32 mismatch (stored {h['meta_crc32']:#010x}, "
                 f"computed {zlib.crc32(meta):#010x}): the metadata is corrupt")
        directory = f.read(h["dir_size"])
        if zlib.crc32(directory) != h["dir_crc32"]:
            fail(f"dir_crc32 mismatch (stored {h['dir_crc32']:#010x}, "
                 f"computed {zlib.crc32(directory):#010x}): the tensor directory is corrupt")
        padding = f.read(h["data_offset"] - h["dir_offset"] - h["dir_size"])
        if any(padding):
            fail("padding between the directory and data_offset is not zero")

    metadata = _parse_metadata(meta, fail)
    tensors = _parse_directory(directory, h["data_size"], fail)
    return AwqbinFile(path, h, metadata, tensors)


def _parse_metadata(buf: bytes, fail) -> dict[str, Any]:
    cur = _Cursor(buf, "metadata", "meta_size", fail)
    (count,) = cur.unpack("I", "count")
    out: dict[str, Any] = {}
    for i in range(count):
        key = cur.name(f"entry {i} key")
        if key in out:
            fail(f"metadata: duplicate key {key!r}")
        (kind,) = cur.unpack("B", f"type of {key!r}")
        if kind == _META_INT:
            (out[key],) = cur.unpack("q", f"value of {key!r}")
        elif kind == _META_FLOAT:
            (out[key],) = cur.unpack("d", f"value of {key!r}")
        elif kind == _META_STRING:
            (n,) = cur.unpack("Q", f"length of {key!r}")
            raw = cur.take(n, f"value of {key!r}")
            try:
                out[key] = raw.decode("utf-8")
            except UnicodeDecodeError:
                fail(f"metadata: value of {key!r} is not valid UTF-8")
        elif kind == _META_INT_ARRAY:
            (n,) = cur.unpack("Q", f"length of {key!r}")
            # n is untrusted: take() bounds n*8 by the section before allocating.
            out[key] = np.frombuffer(cur.take(n * 8, f"value of {key!r}"), "<i8").tolist()
        else:
            fail(f"metadata: {key!r} has unknown type {kind} (expected 1..4)")
    if cur.pos != len(buf):
        fail(f"metadata: {count} entries end at byte {cur.pos} but meta_size is {len(buf)}")
    return out


def _parse_directory(buf: bytes, data_size: int, fail) -> dict[str, TensorEntry]:
    cur = _Cursor(buf, "tensor directory", "dir_size", fail)
    (count,) = cur.unpack("I", "count")
    out: dict[str, TensorEntry] = {}
    prev_name, prev_end = None, 0
    for i in range(count):
        name = cur.name(f"tensor {i} name")
        if name in out:
            fail(f"tensor directory: duplicate tensor name {name!r}")
        code, ndim = cur.unpack("BB", f"dtype/ndim of {name!r}")
        if code not in DTYPES:
            fail(f"tensor {name!r}: unknown dtype {code} (expected 0..4)")
        if not 1 <= ndim <= 4:
            fail(f"tensor {name!r}: ndim {ndim} is not in 1..4")
        dims = cur.unpack(f"{ndim}Q", f"dims of {name!r}")
        offset, nbytes, crc = cur.unpack("QQI", f"offset/nbytes/crc32 of {name!r}")
        # Python ints do not overflow, so a huge dims product is simply unequal.
        expected = math.prod(dims) * DTYPES[code].itemsize
        if nbytes != expected:
            fail(f"tensor {name!r}: nbytes={nbytes} but dims {list(dims)} of "
                 f"{DTYPE_NAMES[code]} need {expected}")
        if offset % ALIGNMENT:
            fail(f"tensor {name!r}: offset {offset} is not a multiple of {ALIGNMENT}")
        if offset < prev_end:
            fail(f"tensor {name!r}: offset {offset} overlaps the previous tensor "
                 f"{prev_name!r} (which ends at {prev_end})")
        if offset + nbytes > data_size:
            fail(f"tensor {name!r}: offset + nbytes ({offset} + {nbytes}) is past the end "
                 f"of the data section (data_size={data_size})")
        out[name] = TensorEntry(DTYPE_NAMES[code], tuple(dims), offset, nbytes, crc)
        prev_name, prev_end = name, offset + nbytes
    if cur.pos != len(buf):
        fail(f"tensor directory: {count} entries end at byte {cur.pos} but dir_size is {len(buf)}")
    return out
