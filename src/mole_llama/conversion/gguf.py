"""GGUF Llama checkpoints -> plain safetensors folders.

transformers reads GGUF files (dequantized to float), but a model loaded that way keeps a `quantization_config`
and refuses `save_pretrained`. We rebuild a plain `LlamaForCausalLM` from its config, move the weights over, and
save once as safetensors; every later load is an ordinary `from_pretrained` that takes under a second.
"""

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

logger = logging.get_logger(__name__)

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


__all__ = ["convert_gguf"]
