"""Model code: configuration_*.py / modeling_*.py pairs and their shared helpers (speech units, codecs, audio
features, phone units), importing only each other, so saved folders carry them for `trust_remote_code`."""

from .configuration_mole_llama import NO_EXPERT, MoLELlamaConfig
from .modeling_mole_llama import (
    MoLECausalLMOutputWithPast,
    MoLELlamaForCausalLM,
    MoLELlamaModel,
    MoLELlamaPreTrainedModel,
)

__all__ = [
    "NO_EXPERT",
    "MoLELlamaConfig",
    "MoLECausalLMOutputWithPast",
    "MoLELlamaForCausalLM",
    "MoLELlamaModel",
    "MoLELlamaPreTrainedModel",
]
