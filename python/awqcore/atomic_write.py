"""Atomic file output: every file awqcore writes goes through `atomic_write`.

A reader sees either the old file or the complete new one, never a partial
file: the bytes go to a temporary file in the destination's folder (same
filesystem, so the rename cannot turn into a copy), are fsynced, and the
temporary file is renamed over the destination; then the folder is fsynced so
the rename itself survives a crash. An exception (or Ctrl-C) deletes the
temporary file and leaves the destination untouched.

The file gets the permissions an ordinary open() gives: 0666 minus the umask
(0644 under the usual umask 022), so a server running as another user can read
an exported checkpoint. tempfile.mkstemp would create it 0600; here the
temporary file is created with os.open(..., 0o666), and the kernel applies the
process's umask as for any new file, without reading or changing the umask
(os.umask is process-wide and would race with other threads).
"""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yields a binary file whose contents replace `path` when the block exits
    without an exception."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    fd, tmp_path = _create_temporary(folder, name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            # The data must be on disk before the rename publishes it, or a
            # crash could leave a complete-looking name with missing contents.
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        _remove(tmp_path)
        raise
    _fsync_dir(folder)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes `data` (str as UTF-8) to `path` atomically."""
    with atomic_write(path) as out:
        out.write(data.encode() if isinstance(data, str) else data)


def _create_temporary(folder: str, name: str) -> tuple[int, str]:
    """A new hidden file next to the destination, 0666 minus the umask."""
    for _ in range(100):
        tmp_path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp_path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {os.path.join(folder, name)} "
                          "after 100 tries")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(path: str) -> None:
    """Makes a rename durable (POSIX); some platforms cannot open a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
