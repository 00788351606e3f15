"""Every file awqcore writes is atomic and readable by other users: the helper
itself, and the files `awqcore quantize --export-hf` produces."""
from __future__ import annotations

import os
import stat

import pytest

from awqcore import cli
from awqcore.atomic_write import atomic_write, write_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_mode_is_what_open_gives(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "out.bin", b"abc")
        with open(tmp_path / "plain.bin", "wb") as f:  # what the helper must match
            f.write(b"abc")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "plain.bin") == expected
    assert _mode(tmp_path / "out.bin") == expected
    assert (tmp_path / "out.bin").read_bytes() == b"abc"


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as out:
            out.write(b"partial new contents")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_quantize_and_export_write_files_readable_by_others(tmp_path, umask_022, capsys):
    out = tmp_path / "model.awqbin"
    export = tmp_path / "hf"
    code = cli.main(["quantize", "synthetic:arch=llama,layers=1", "--out", str(out),
                     "--method", "rtn", "--group-size", "32", "--quiet", "--export-hf",
                     str(export)])
    assert code == 0, capsys.readouterr().err
    written = [out, *sorted(export.iterdir())]
    assert len(written) >= 6  # the .awqbin, config, weights, tokenizer, its config, generation
    assert {p.name for p in tmp_path.iterdir()} == {"model.awqbin", "hf"}  # no temporaries left
    modes = {p.name: oct(_mode(p)) for p in written}
    assert set(modes.values()) == {oct(0o644)}, modes
