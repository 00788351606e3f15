"""The .awqbin v1 format (docs/format.md): writer, pure-Python reader, C++ reader.

Corrupt files are made by patching a valid tiny model with this file's own
byte-level helpers (written from the spec, not from awqcore.awqbin), and each
case is fed to both readers. The C++ cases need the compiled extension and skip
cleanly without it.
"""
from __future__ import annotations

import math
import os
import re
import struct
import zlib

import numpy as np
import pytest

from awqcore import awqbin
from awqcore.awqbin import AwqbinWriter, FormatError, read_awqbin
from awqcore.quantize import quantize_model
from tiny_models import TinySource, tiny_metadata, write_tiny_model

try:
    import awqcore._core  # noqa: F401  (the compiled runtime)
    import awqcore
    HAS_CORE = True
except ImportError:
    HAS_CORE = False
needs_core = pytest.mark.skipif(not HAS_CORE, reason="awqcore._core (C++ runtime) is not built")

# Preamble fields: name -> (byte offset, struct code), from the spec's table.
PREAMBLE = {
    "version": (8, "I"), "preamble_size": (12, "I"), "meta_offset": (16, "Q"),
    "meta_size": (24, "Q"), "dir_offset": (32, "Q"), "dir_size": (40, "Q"),
    "data_offset": (48, "Q"), "data_size": (56, "Q"), "file_size": (64, "Q"),
    "meta_crc32": (72, "I"), "dir_crc32": (76, "I"), "preamble_crc32": (80, "I"),
}


# ------------------------------------------------------------------ byte helpers

def field(buf, name: str) -> int:
    pos, code = PREAMBLE[name]
    return struct.unpack_from("<" + code, buf, pos)[0]


def set_field(buf: bytearray, name: str, value: int) -> None:
    pos, code = PREAMBLE[name]
    struct.pack_into("<" + code, buf, pos, value)


def reseal(buf: bytearray) -> bytearray:
    """Recomputes the three header CRCs, so that a patch reaches the check it targets."""
    mo, ms = field(buf, "meta_offset"), field(buf, "meta_size")
    do, ds = field(buf, "dir_offset"), field(buf, "dir_size")
    set_field(buf, "meta_crc32", zlib.crc32(bytes(buf[mo:mo + ms])))
    set_field(buf, "dir_crc32", zlib.crc32(bytes(buf[do:do + ds])))
    set_field(buf, "preamble_crc32", zlib.crc32(bytes(buf[:80])))
    return buf


def meta_entries(buf) -> dict[str, dict]:
    """key -> {"type_pos", "value_pos", "key_pos"} by walking the metadata."""
    pos = field(buf, "meta_offset")
    (count,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    out = {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", buf, pos)
        key = bytes(buf[pos + 2:pos + 2 + n]).decode()
        entry = {"key_pos": pos + 2, "type_pos": pos + 2 + n, "value_pos": pos + 3 + n}
        pos = entry["value_pos"]
        kind = buf[entry["type_pos"]]
        if kind in (1, 2):
            pos += 8
        else:
            (length,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + length * (1 if kind == 3 else 8)
        out[key] = entry
    return out


def dir_entries(buf) -> list[dict]:
    """Each tensor's name and the byte positions of its fields, in file order."""
    pos = field(buf, "dir_offset")
    (count,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    out = []
    for _ in range(count):
        (n,) = struct.unpack_from("<H", buf, pos)
        e = {"name": bytes(buf[pos + 2:pos + 2 + n]).decode(), "name_pos": pos + 2}
        pos += 2 + n
        e["dtype_pos"], e["ndim_pos"] = pos, pos + 1
        ndim = buf[pos + 1]
        e["dims"] = list(struct.unpack_from(f"<{ndim}Q", buf, pos + 2))
        e["dims_pos"] = pos + 2
        pos += 2 + 8 * ndim
        e["offset_pos"], e["nbytes_pos"], e["crc_pos"] = pos, pos + 8, pos + 16
        e["offset"], e["nbytes"] = struct.unpack_from("<QQ", buf, pos)
        pos += 20
        out.append(e)
    return out


def put_u64(buf: bytearray, pos: int, value: int) -> bytearray:
    struct.pack_into("<Q", buf, pos, value)
    return buf


def flip(buf: bytearray, pos: int) -> bytearray:
    buf[pos] ^= 0xFF
    return buf


def rename(buf: bytearray, pos: int, old: str, new: str) -> bytearray:
    """Overwrites a name in place (same length, so no other offset moves)."""
    assert len(old) == len(new) and bytes(buf[pos:pos + len(old)]) == old.encode()
    buf[pos:pos + len(new)] = new.encode()
    return buf


# ------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tiny") / "tiny.awqbin"
    write_tiny_model(path)
    return path.read_bytes()


def write_bytes(tmp_path, data: bytes, name: str = "case.awqbin") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# --------------------------------------------------------- writer/reader round trip

def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "f32.1d": rng.standard_normal(7).astype(np.float32),
        "f16.2d": rng.standard_normal((3, 5)).astype(np.float16),
        "u8.3d": rng.integers(0, 256, (2, 3, 4), dtype=np.uint8),
        "i32.4d": rng.integers(-2**31, 2**31, (2, 1, 3, 2), dtype=np.int32),
        "i8.2d": rng.integers(-128, 128, (3, 5), dtype=np.int8),
        "f32.transposed": rng.standard_normal((4, 6)).astype(np.float32).T,  # not C-contiguous
        "i32.big_endian": np.arange(-3, 9, dtype=">i4").reshape(3, 4),
        "f16.empty": np.zeros((0, 8), np.float16),
        "ü.unicode name": np.ones(65, np.uint8),  # 65 bytes: the next tensor needs padding
    }


SAMPLE_METADATA = {
    "int": -(2**63), "int.max": 2**63 - 1, "bool": True, "float": -1.5e-300,
    "str": "naïve ✓", "str.empty": "", "ints": [1, -2, 2**40], "ints.empty": [],
    "np.int": np.int64(7), "np.float": np.float32(0.25),
}


def test_round_trip_all_dtypes_shapes_and_metadata(tmp_path):
    path = tmp_path / "m.awqbin"
    tensors = sample_tensors()
    with AwqbinWriter(path) as w:
        for name, array in tensors.items():
            w.add_tensor(name, array)
        w.finish(SAMPLE_METADATA)
    raw = path.read_bytes()
    f = read_awqbin(path)

    expected_meta = {k: (int(v) if isinstance(v, (bool, np.integer)) else
                         float(v) if isinstance(v, np.floating) else v)
                     for k, v in SAMPLE_METADATA.items()}
    assert f.metadata == expected_meta
    assert type(f.metadata["bool"]) is int and type(f.metadata["np.float"]) is float
    assert list(f.tensors) == list(tensors)

    data_offset = field(raw, "data_offset")
    assert data_offset % 64 == 0 and field(raw, "file_size") == len(raw) == os.path.getsize(path)
    expected_code = {np.float32: 0, np.float16: 1, np.uint8: 2, np.int32: 3, np.int8: 4}
    for entry, (name, array) in zip(dir_entries(raw), tensors.items()):
        le = array.astype(array.dtype.newbyteorder("<"))
        start = data_offset + entry["offset"]
        assert entry["name"] == name
        assert start % 64 == 0, f"{name} starts at {start}"
        assert raw[entry["dtype_pos"]] == expected_code[array.dtype.type]
        assert entry["dims"] == list(array.shape)
        # The bytes on disk are the little-endian row-major bytes of the array.
        assert raw[start:start + entry["nbytes"]] == le.tobytes(order="C")
        assert struct.unpack_from("<I", raw, entry["crc_pos"])[0] == zlib.crc32(le.tobytes())
        np.testing.assert_array_equal(f.tensor(name), array)
        assert f.tensor(name).dtype.itemsize == array.dtype.itemsize
    assert f.verify() == []


def test_writer_rejects_bad_input(tmp_path):
    with AwqbinWriter(tmp_path / "x.awqbin") as w:
        w.add_tensor("a", np.zeros(2, np.float32))
        with pytest.raises(ValueError, match="'a' was already added"):
            w.add_tensor("a", np.zeros(2, np.float32))
        with pytest.raises(TypeError, match="float64"):
            w.add_tensor("b", np.zeros(2))
        with pytest.raises(ValueError, match="5 dimensions"):
            w.add_tensor("c", np.zeros((1,) * 5, np.uint8))
        with pytest.raises(ValueError, match="1..255"):
            w.add_tensor("", np.zeros(1, np.uint8))
        w.abort()
    for bad, message in [({"k": [1.5]}, "lists of ints"), ({"k": None}, "NoneType"),
                         ({"k": 2**63}, "i64")]:
        with pytest.raises((TypeError, ValueError), match=message):
            with AwqbinWriter(tmp_path / "y.awqbin") as w:
                w.finish(bad)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------- atomicity

def leftover_files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_exception_while_adding_leaves_destination_unchanged(tmp_path):
    dest = tmp_path / "model.awqbin"
    dest.write_bytes(b"previous model")
    with pytest.raises(KeyError):
        with AwqbinWriter(dest) as w:
            w.add_tensor("a", np.ones(1000, np.float32))
            assert len(leftover_files(tmp_path)) == 2  # the destination and the spool
            raise KeyError("source tensor missing")
    assert dest.read_bytes() == b"previous model"
    assert leftover_files(tmp_path) == ["model.awqbin"]


def test_failure_mid_copy_leaves_no_partial_file(tmp_path, monkeypatch):
    dest = tmp_path / "model.awqbin"

    def copy_half_then_fail(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(awqbin.shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        with AwqbinWriter(dest) as w:
            w.add_tensor("a", np.ones(1000, np.float32))
            w.finish({"k": 1})
    assert leftover_files(tmp_path) == []


def test_closing_without_finish_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="without finish"):
        with AwqbinWriter(tmp_path / "m.awqbin") as w:
            w.add_tensor("a", np.ones(3, np.float32))
    assert leftover_files(tmp_path) == []


def test_finish_replaces_an_existing_file_with_usual_permissions(tmp_path):
    dest = tmp_path / "m.awqbin"
    dest.write_bytes(b"old")
    with AwqbinWriter(dest) as w:
        w.add_tensor("a", np.arange(3, dtype=np.float32))
        w.finish({"k": 1})
    assert read_awqbin(dest).metadata == {"k": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(dest).st_mode & 0o777 == 0o666 & ~umask
    assert leftover_files(tmp_path) == ["m.awqbin"]


# ------------------------------------------------------------ corrupt files

def _truncate(at):
    return lambda b: b[:at(b)]


TRUNCATION_POINTS = {
    "empty": lambda b: 0, "in_magic": lambda b: 5, "after_magic": lambda b: 8,
    "mid_preamble": lambda b: 80, "preamble_minus_1": lambda b: 127,
    "preamble_only": lambda b: 128, "mid_metadata": lambda b: 128 + field(b, "meta_size") // 2,
    "mid_directory": lambda b: field(b, "dir_offset") + 3,
    "at_data": lambda b: field(b, "data_offset"),
    "mid_data": lambda b: field(b, "data_offset") + field(b, "data_size") // 2,
    "last_byte": lambda b: len(b) - 1,
}


def _first_two(b):
    entries = dir_entries(b)
    return entries[0], entries[1]


# (id, patch(bytearray) -> bytes-like, regex the message must match). Every
# patch that changes a header field reseals the CRCs, so that the targeted
# check (and not a CRC check) is what fires.
STRUCTURAL_CASES = [
    *[(f"truncated_{k}", _truncate(at), r"truncated|file_size") for k, at in TRUNCATION_POINTS.items()],
    ("trailing_bytes", lambda b: b + bytes(64), r"file_size"),
    ("bad_magic", lambda b: b"GGUF\0\0\0\0" + b[8:], r"magic"),
    ("bad_version", lambda b: (set_field(b, "version", 2), reseal(b))[1], r"version"),
    ("preamble_crc", lambda b: flip(b, PREAMBLE["meta_size"][0]), r"preamble_crc32"),
    ("reserved_nonzero", lambda b: flip(b, 100), r"reserved"),
    ("data_offset_misaligned", lambda b: (set_field(b, "data_offset", field(b, "data_offset") + 1),
                                          set_field(b, "data_size", field(b, "data_size") - 1),
                                          reseal(b))[2], r"data_offset"),
    ("dir_offset_gap", lambda b: (set_field(b, "dir_offset", field(b, "dir_offset") + 1),
                                  reseal(b))[1], r"dir_offset"),
    ("meta_crc", lambda b: flip(b, 128 + field(b, "meta_size") // 2), r"meta_crc32"),
    ("dir_crc", lambda b: flip(b, field(b, "dir_offset") + 10), r"dir_crc32"),
    ("meta_count_too_big", lambda b: reseal(flip(b, 128 + 3)), r"meta"),
    ("meta_duplicate_key", lambda b: reseal(rename(b, meta_entries(b)["quant.method"]["key_pos"],
                                                   "quant.method", "general.name")),
     r"general\.name"),
    ("meta_unknown_type", lambda b: (b.__setitem__(meta_entries(b)["quant.bits"]["type_pos"], 9),
                                     reseal(b))[1], r"type|quant\.bits"),
    ("dir_count_too_small", lambda b: (struct.pack_into("<I", b, field(b, "dir_offset"),
                                                        len(dir_entries(b)) - 1), reseal(b))[1],
     r"tensor directory: .*dir_size"),
    ("unknown_dtype", lambda b: (b.__setitem__(dir_entries(b)[0]["dtype_pos"], 7), reseal(b))[1],
     r"dtype"),
    ("ndim_5", lambda b: (b.__setitem__(dir_entries(b)[0]["ndim_pos"], 5), reseal(b))[1], r"ndim"),
    ("nbytes_mismatch", lambda b: reseal(put_u64(b, dir_entries(b)[0]["nbytes_pos"],
                                                 dir_entries(b)[0]["nbytes"] + 2)), r"nbytes"),
    ("shape_mismatch", lambda b: reseal(put_u64(b, dir_entries(b)[0]["dims_pos"],
                                                dir_entries(b)[0]["dims"][0] - 1)),
     r"nbytes|dims|shape"),
    ("offset_past_end", lambda b: reseal(put_u64(b, dir_entries(b)[-1]["offset_pos"],
                                                 math.ceil(field(b, "data_size") / 64) * 64)),
     r"offset|data_size"),
    ("overlap", lambda b: reseal(put_u64(b, _first_two(b)[1]["offset_pos"],
                                         _first_two(b)[0]["offset"])), r"overlap|order"),
    ("misaligned_tensor", lambda b: reseal(put_u64(b, _first_two(b)[1]["offset_pos"],
                                                   _first_two(b)[1]["offset"] + 8)),
     r"(offset|align).*64|align"),
    ("duplicate_tensor", lambda b: reseal(rename(
        b, next(e for e in dir_entries(b) if e["name"] == "model.layers.1.mlp.up_proj.zeros")["name_pos"],
        "model.layers.1.mlp.up_proj.zeros", "model.layers.0.mlp.up_proj.zeros")), r"duplicate"),
]


def corrupt(tiny_bytes: bytes, patch) -> bytes:
    return bytes(patch(bytearray(tiny_bytes)))


@pytest.mark.parametrize("case_id, patch, pattern", STRUCTURAL_CASES,
                         ids=[c[0] for c in STRUCTURAL_CASES])
def test_python_reader_rejects(tmp_path, tiny_bytes, case_id, patch, pattern):
    path = write_bytes(tmp_path, corrupt(tiny_bytes, patch))
    with pytest.raises(FormatError) as info:
        read_awqbin(path)
    message = str(info.value)
    assert path in message  # says which file
    # Matched without the path: pytest names tmp_path after the test and its case id.
    message = message.replace(path, "<path>")
    assert re.search(pattern, message), f"{case_id}: {message!r} does not match {pattern!r}"


def test_valid_tiny_model_reads_and_verifies(tiny_bytes, tmp_path):
    f = read_awqbin(write_bytes(tmp_path, tiny_bytes))
    assert f.verify() == []
    assert f.metadata["general.architecture"] == "llama"


def test_verify_finds_a_flipped_data_byte(tmp_path, tiny_bytes):
    entries = dir_entries(tiny_bytes)
    victim = entries[len(entries) // 2]
    buf = flip(bytearray(tiny_bytes), field(tiny_bytes, "data_offset") + victim["offset"] + 1)
    f = read_awqbin(write_bytes(tmp_path, bytes(buf)))  # structure is intact
    assert f.verify() == [victim["name"]]


def test_inspect_verify_reports_bad_tensor(tmp_path, tiny_bytes, capsys):
    from awqcore.cli import main
    victim = dir_entries(tiny_bytes)[3]
    buf = flip(bytearray(tiny_bytes), field(tiny_bytes, "data_offset") + victim["offset"])
    path = write_bytes(tmp_path, bytes(buf))
    assert main(["inspect", path]) == 0
    assert main(["inspect", path, "--verify"]) == 1
    assert victim["name"] in capsys.readouterr().err
    assert main(["inspect", write_bytes(tmp_path, tiny_bytes[:-1], "cut.awqbin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("awqcore: error: ") and err.count("\n") == 1 and "truncated" in err


# ------------------------------------------------------- the quantize pipeline

@pytest.mark.parametrize("architecture, tied, embeddings",
                         [("llama", True, "f16"), ("qwen2", False, "f16"),
                          ("llama", False, "int8"), ("qwen2", True, "int8")])
def test_pipeline_output_matches_direct_write(tmp_path, architecture, tied, embeddings):
    """quantize_model writes the same tensors and metadata as the hand-written builder."""
    source = TinySource(seed=3, architecture=architecture, tie_word_embeddings=tied)
    write_tiny_model(tmp_path / "direct.awqbin", source, embeddings=embeddings)
    direct = read_awqbin(tmp_path / "direct.awqbin")
    summary = quantize_model(source, tmp_path / "piped.awqbin", group_size=32, progress=False,
                             embeddings=embeddings)
    piped = read_awqbin(tmp_path / "piped.awqbin")

    assert piped.metadata == direct.metadata == {
        k: (int(v) if isinstance(v, bool) else v) for k, v in tiny_metadata(source).items()}
    assert sorted(piped.tensors) == sorted(direct.tensors)
    for name in direct.tensors:
        assert piped.tensors[name].dtype == direct.tensors[name].dtype, name
        np.testing.assert_array_equal(piped.tensor(name), direct.tensor(name), err_msg=name)
    lm_head = "lm_head.weight" + ("_q8" if embeddings == "int8" else "")
    assert (lm_head in piped.tensors) is not tied
    assert ("model.layers.0.self_attn.q_proj.bias" in piped.tensors) is (architecture == "qwen2")
    n_params = sum(source.get(n).size for n in source.tensor_names())
    assert summary["fp16_bytes"] == 2 * n_params
    assert summary["file_bytes"] == os.path.getsize(tmp_path / "piped.awqbin")
    assert summary["quantized_linears"] == 2 * 7
    assert sorted(os.listdir(tmp_path)) == ["direct.awqbin", "piped.awqbin"]


def test_pipeline_rejects_unknown_method_and_bad_group_size(tmp_path):
    with pytest.raises(ValueError, match=r"unknown quantization method 'squeezellm' "
                       r"\(available: rtn, awq, gptq, awq-gptq\)"):
        quantize_model(TinySource(), tmp_path / "a.awqbin", method="squeezellm", progress=False)
    with pytest.raises(ValueError, match=r"in_features=64 is not divisible by group_size=128; "
                                         r"use --group-size 64 or 32"):
        quantize_model(TinySource(), tmp_path / "a.awqbin", group_size=128, progress=False)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ the C++ reader

# Files the container format accepts but the model loader must reject.
MODEL_CASES = [
    ("unknown_architecture", lambda b: reseal(rename(
        b, meta_entries(b)["general.architecture"]["value_pos"] + 8, "llama", "llamb")),
     r"architecture|llamb"),
    ("heads_not_multiple_of_kv", lambda b: reseal(put_u64(
        b, meta_entries(b)["model.num_heads"]["value_pos"], 3)), r"num_heads|num_kv_heads"),
    ("missing_tensor", lambda b: reseal(rename(
        b, next(e for e in dir_entries(b) if e["name"] == "model.norm.weight")["name_pos"],
        "model.norm.weight", "model.norX.weight")), r"model\.norm\.weight"),
    ("wrong_shape_same_bytes", lambda b: _transpose_qweight(b),
     r"model\.layers\.0\.self_attn\.q_proj\.qweight"),
]


def _transpose_qweight(b: bytearray) -> bytearray:
    """q_proj.qweight [64, 32] -> [32, 64]: nbytes still match, the model shape does not."""
    e = next(e for e in dir_entries(b) if e["name"] == "model.layers.0.self_attn.q_proj.qweight")
    rows, cols = e["dims"]
    assert rows != cols
    struct.pack_into("<QQ", b, e["dims_pos"], cols, rows)
    return reseal(b)


@pytest.mark.parametrize("case_id, patch, pattern", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_python_reader_accepts_model_level_errors(tmp_path, tiny_bytes, case_id, patch, pattern):
    """These files are structurally valid: only a model loader can reject them,
    which makes them a fair test of the C++ loader's own checks below."""
    def contents(f):
        return f.metadata, {name: (e.dtype, e.shape) for name, e in f.tensors.items()}

    original = read_awqbin(write_bytes(tmp_path, tiny_bytes, name="valid.awqbin"))
    patched = read_awqbin(write_bytes(tmp_path, corrupt(tiny_bytes, patch)))
    assert patched.verify() == []  # every tensor's CRC holds
    assert contents(patched) != contents(original)  # and the patch is there for a loader to see


@needs_core
def test_cpp_loads_the_valid_tiny_model(tmp_path, tiny_bytes):
    model = awqcore.Model(write_bytes(tmp_path, tiny_bytes), threads=1, max_seq_len=16)
    assert model.config["num_layers"] == 2 and model.config["vocab_size"] == 64
    logits = model.forward([1, 5, 6])
    assert logits.shape == (3, 64) and np.isfinite(logits).all()


@needs_core
@pytest.mark.parametrize("case_id, patch, pattern", STRUCTURAL_CASES + MODEL_CASES,
                         ids=[c[0] for c in STRUCTURAL_CASES + MODEL_CASES])
def test_cpp_reader_rejects(tmp_path, tiny_bytes, case_id, patch, pattern):
    path = write_bytes(tmp_path, corrupt(tiny_bytes, patch))
    with pytest.raises(awqcore.FormatError) as info:
        awqcore.Model(path, threads=1, max_seq_len=16)
    message = str(info.value).replace(path, "<path>")  # see test_python_reader_rejects
    assert re.search(pattern, message), f"{case_id}: {message!r} does not match {pattern!r}"


@needs_core
def test_cpp_reader_rejects_a_flipped_data_byte(tmp_path, tiny_bytes):
    victim = dir_entries(tiny_bytes)[5]
    buf = flip(bytearray(tiny_bytes), field(tiny_bytes, "data_offset") + victim["offset"])
    with pytest.raises(awqcore.FormatError, match=re.escape(victim["name"])):
        awqcore.Model(write_bytes(tmp_path, bytes(buf)), threads=1, max_seq_len=16)


# ------------------------------------------------------------ int8 tables

def rewrite(src, dst, drop=(), replace=None, add=None) -> str:
    """dst = the tensors of src, less `drop`, with `replace` (name -> array) swapped in
    and `add` appended; same metadata. Files the writer accepts but a model reader
    must reject."""
    f = read_awqbin(src)
    with AwqbinWriter(dst) as w:
        for name in f.tensors:
            if name not in drop:
                w.add_tensor(name, (replace or {}).get(name, f.tensor(name)))
        for name, array in (add or {}).items():
            w.add_tensor(name, array)
        w.finish(f.metadata)
    return str(dst)


@pytest.fixture(scope="module")
def tiny_int8_path(tmp_path_factory) -> str:
    """The tiny llama, untied, both tables int8."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-int8.awqbin"
    write_tiny_model(path, TinySource(tie_word_embeddings=False), embeddings="int8")
    return str(path)


def _table(path, name):
    return np.array(read_awqbin(path).tensor(name))


E_Q8, E_SCALES = "model.embed_tokens.weight_q8", "model.embed_tokens.weight_q8_scales"
H_Q8, H_SCALES = "lm_head.weight_q8", "lm_head.weight_q8_scales"
# (id, rewrite arguments from the valid file's path, table read, message regex for both readers)
INT8_CASES = [
    ("codes_as_u8", lambda p: dict(replace={E_Q8: _table(p, E_Q8).view(np.uint8)}),
     "model.embed_tokens.weight",
     r"tensor 'model\.embed_tokens\.weight_q8': expected i8 \[64, 64\], found u8 \[64, 64\]"),
    ("scales_transposed", lambda p: dict(replace={H_SCALES: _table(p, H_SCALES).T.copy()}),
     "lm_head.weight",
     r"tensor 'lm_head\.weight_q8_scales': expected f16 \[64, 2\], found f16 \[2, 64\]"),
    ("scales_as_f32", lambda p: dict(replace={E_SCALES: _table(p, E_SCALES).astype(np.float32)}),
     "model.embed_tokens.weight",
     r"tensor 'model\.embed_tokens\.weight_q8_scales': expected f16 \[64, 2\], found f32"),
    ("scales_missing", lambda p: dict(drop={H_SCALES}), "lm_head.weight",
     r"missing tensor 'lm_head\.weight_q8_scales'"),
    ("codes_missing", lambda p: dict(drop={E_Q8}), "model.embed_tokens.weight",
     r"missing tensor 'model\.embed_tokens\.weight_q8'"),
    ("both_forms", lambda p: dict(add={"model.embed_tokens.weight": np.zeros((64, 64), np.float16)}),
     "model.embed_tokens.weight",
     r"tensors 'model\.embed_tokens\.weight' and 'model\.embed_tokens\.weight_q8': the file "
     r"holds both forms of one table"),
]


def test_int8_tables_read_back_dequantized(tiny_int8_path):
    """AwqbinSource shows each int8 table as its ".weight", dequantized exactly."""
    from awqcore.awqbin_source import AwqbinSource
    from awqcore.quantize.int8_table import dequantize_int8_table

    source = AwqbinSource(tiny_int8_path)
    names = source.tensor_names()
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    assert not any("_q8" in n for n in names)
    for prefix in ("model.embed_tokens", "lm_head"):
        expected = dequantize_int8_table(_table(tiny_int8_path, prefix + ".weight_q8"),
                                         _table(tiny_int8_path, prefix + ".weight_q8_scales"))
        np.testing.assert_array_equal(source.get(prefix + ".weight"), expected)
        original = TinySource(tie_word_embeddings=False).get(prefix + ".weight")
        assert 0 < np.abs(expected - original).max() < 0.01 * np.abs(original).max()


@pytest.mark.parametrize("case_id, edit, table, pattern", INT8_CASES,
                         ids=[c[0] for c in INT8_CASES])
def test_python_source_rejects_bad_int8_tables(tmp_path, tiny_int8_path, case_id, edit, table,
                                               pattern):
    from awqcore.awqbin_source import AwqbinSource

    path = rewrite(tiny_int8_path, tmp_path / "bad.awqbin", **edit(tiny_int8_path))
    source = AwqbinSource(path)  # the container is valid
    with pytest.raises(FormatError, match=pattern) as info:
        source.get(table)
    assert path in str(info.value)


@needs_core
def test_cpp_loads_the_valid_int8_model(tiny_int8_path):
    model = awqcore.Model(tiny_int8_path, threads=1, max_seq_len=16)
    logits = model.forward([1, 5, 6])
    assert logits.shape == (3, 64) and np.isfinite(logits).all()


@needs_core
@pytest.mark.parametrize("case_id, edit, table, pattern", INT8_CASES,
                         ids=[c[0] for c in INT8_CASES])
def test_cpp_rejects_bad_int8_tables(tmp_path, tiny_int8_path, case_id, edit, table, pattern):
    path = rewrite(tiny_int8_path, tmp_path / "bad.awqbin", **edit(tiny_int8_path))
    with pytest.raises(awqcore.FormatError, match=pattern):
        awqcore.Model(path, threads=1, max_seq_len=16)
