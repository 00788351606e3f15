"""What the C++ loader rejects beyond the format's structure, seen from Python:
every error is an awqcore.FormatError naming the file and the field (never a
UnicodeDecodeError from a message quoting file bytes).

The C++ side of each check is tested case by case in
cpp/tests/test_file_validation.cpp; here the point is what reaches Python.
"""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import awqcore
from awqcore.awqbin import AwqbinWriter, read_awqbin
from tiny_models import write_tiny_model


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "tiny.awqbin"
    write_tiny_model(path)
    return str(path)


def patched_metadata(src: str, dst, old: bytes, new: bytes) -> str:
    """dst = src with the metadata bytes `old` replaced by `new` (same length)
    and the metadata and preamble CRCs recomputed (docs/format.md offsets)."""
    data = bytearray(open(src, "rb").read())
    meta_offset, meta_size = struct.unpack_from("<QQ", data, 16)
    meta = bytes(data[meta_offset:meta_offset + meta_size])
    assert len(old) == len(new) and meta.count(old) == 1, (old, meta.count(old))
    at = meta_offset + meta.index(old)
    data[at:at + len(old)] = new
    struct.pack_into("<I", data, 72, zlib.crc32(bytes(data[meta_offset:meta_offset + meta_size])))
    struct.pack_into("<I", data, 80, zlib.crc32(bytes(data[:80])))
    dst.write_bytes(bytes(data))
    return str(dst)


def load_error(path: str) -> str:
    with pytest.raises(awqcore.FormatError) as info:
        awqcore.Model(path, threads=1, max_seq_len=16)
    message = str(info.value)
    assert path in message, message
    return message


@pytest.mark.parametrize("old, new, pattern", [
    (b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00\xff\xfella",
     r"'general\.architecture'\): string value '\\xff\\xfella' is not valid UTF-8"),
    (b"tiny-llama", b"tiny-llam\xc0", r"'general\.name'\): string value 'tiny-llam\\xc0' is not valid"),
    # A key length of 255 reads the key's bytes and what follows them as the key.
    (b"\x0c\x00general.name", b"\xff\x00general.name", r"metadata: entry \d+: key '.*' is not valid UTF-8"),
], ids=["architecture", "general_name", "key_length_255"])
def test_text_that_is_not_utf8_is_a_format_error(tmp_path, tiny_path, old, new, pattern):
    message = load_error(patched_metadata(tiny_path, tmp_path / "bad.awqbin", old, new))
    assert re.search(pattern, message), message


def rewritten(src: str, dst, metadata=None, replace=None, add=None) -> str:
    """dst = src with metadata entries and tensors replaced or added; the writer
    computes every CRC, so only the content is wrong."""
    f = read_awqbin(src)
    with AwqbinWriter(dst) as w:
        for name in f.tensors:
            w.add_tensor(name, (replace or {}).get(name, f.tensor(name)))
        for name, array in (add or {}).items():
            w.add_tensor(name, array)
        w.finish({**f.metadata, **(metadata or {})})
    return str(dst)


def with_element(src: str, name: str, index: int, value: float) -> dict:
    array = np.array(read_awqbin(src).tensor(name))
    array.reshape(-1)[index] = value
    return {name: array}


@pytest.mark.parametrize("name, value", [
    ("model.layers.0.self_attn.q_proj.scales", np.nan),
    ("model.layers.1.input_layernorm.weight", np.inf),
    ("model.norm.weight", -np.inf),
])
def test_nan_and_infinity_in_weights_are_rejected(tmp_path, tiny_path, name, value):
    path = rewritten(tiny_path, tmp_path / "nan.awqbin", replace=with_element(tiny_path, name, 3, value))
    assert f"tensor '{name}': element 3 of " in load_error(path)


@pytest.mark.parametrize("metadata, add, pattern", [
    ({"tokenizer.json": '{"model": {"type": "BPE",'}, None,
     r"metadata key 'tokenizer\.json': invalid JSON at byte 25: expected a member name"),
    ({"model.num_layers": 1}, None, r"tensor 'model\.layers\.1\..*' is in the file but the model "
                                    r"does not read it \(.*model\.num_layers=1"),
    (None, {"model.extra": np.ones(4, np.float32)}, r"tensor 'model\.extra' is in the file"),
    ({"model.rope_theta": 3.4e38}, None, r"model\.rope_theta=3\.4e\+38 is outside"),
    ({"model.rms_norm_eps": 1e-45}, None, r"model\.rms_norm_eps=1e-45 is outside"),
], ids=["tokenizer_json", "fewer_layers", "extra_tensor", "rope_theta", "rms_norm_eps"])
def test_contradicting_metadata_is_rejected(tmp_path, tiny_path, metadata, add, pattern):
    message = load_error(rewritten(tiny_path, tmp_path / "bad.awqbin", metadata=metadata, add=add))
    assert re.search(pattern, message), message


SEEDS = sorted((Path(__file__).resolve().parents[1] / "cpp" / "fuzz" / "corpus").glob("*.awqbin"))


@pytest.mark.parametrize("seed", SEEDS, ids=[seed.name for seed in SEEDS])
def test_fuzz_seeds_are_valid_models(seed):
    """The fuzzer starts from these: each must load and run (else its
    mutations start from a rejected file)."""
    model = awqcore.Model(seed, threads=1, max_seq_len=8)
    assert np.isfinite(model.forward([1, 2, 3])).all()


def test_there_are_fuzz_seeds():
    assert len(SEEDS) >= 3
