"""Merge one expert into the base weights: a single-expert TTS-Llama that runs as a plain Llama (no LoRA matmuls,
no router, no PEFT), with the same outputs as the model with that expert forced on.

Each projection's weight becomes `W + scaling * B @ A` (the layer's `delta_weight`, as PEFT's `merge_and_unload`); the
result is a MoLE-Llama config with no experts and routing "base", so it keeps the saved-folder layout, its
remote code and the speaking entry point.
"""

import torch

from ..modeling.configuration_mole_llama import NO_EXPERT, MoLELlamaConfig
from ..modeling.modeling_mole_llama import MoLELinear, MoLELlamaForCausalLM


def merge_expert(model: MoLELlamaForCausalLM, name: str) -> MoLELlamaForCausalLM:
    """A new model whose weights hold `model`'s expert `name` folded in (float32 maths, the model's dtype kept)."""
    if name not in model.config.expert_names:
        raise ValueError(f"no expert {name!r} in this model: it has {model.config.expert_names}")
    router_free = {"router_context": "token", "router_context_prior": None, "router_context_prior_tokens": 0.0,
                   "router_top_k": None, "hard_routing": False}  # fmt: skip  # no experts left to route between
    settings = {**model.config.to_dict(), "experts": [], "routing": NO_EXPERT, **router_free}
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        settings.pop(key, None)
    merged = MoLELlamaForCausalLM(MoLELlamaConfig(**settings)).to(model.dtype).eval()
    weights = model.llm_state_dict() if hasattr(model, "llm_state_dict") else model.state_dict()  # a speaking model
    state = {key: value for key, value in weights.items() if ".lora_" not in key and ".router." not in key}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, MoLELinear) and name in module.lora_A:
                key = f"{module_name}.weight"
                state[key] = (state[key].float() + module.delta_weight(name)).to(state[key].dtype)
    missing, unexpected = merged.load_state_dict(state, strict=False)
    real_missing = [key for key in missing if key != "lm_head.weight" or not merged.config.tie_word_embeddings]
    if real_missing or unexpected:
        raise RuntimeError(f"merging left weights unmatched: missing {real_missing[:3]}, unexpected {unexpected[:3]}")
    if merged.config.tie_word_embeddings:
        merged.tie_weights()
    merged.generation_config = model.generation_config
    return merged


def merge_speaking_model(model_dir, out_dir, name: str = "speech"):
    """A speaking folder (TTS-Llama) with expert `name` merged, written with the same speech parts to `out_dir`."""
    from ..modeling.modeling_tts_llama import MoLELlamaForTextToWaveform
    from .tts_bundle import save_tts_model

    speaker = MoLELlamaForTextToWaveform.from_pretrained(str(model_dir)).eval()
    merged = merge_expert(speaker, name)
    return save_tts_model(
        out_dir, merged, speaker.tokenizer, speaker.acoustic_lm, speaker.codec, speaker.config.num_speech_units,
        speaker.semantic_tokenizer, max_new_tokens=speaker.generation_config.max_new_tokens,
        duration_predictor=speaker.duration_predictor,
    )  # fmt: skip


__all__ = ["merge_expert", "merge_speaking_model"]
