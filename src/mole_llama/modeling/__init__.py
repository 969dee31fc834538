"""Model code: configuration_*.py / modeling_*.py pairs, each pair self-contained for `trust_remote_code`."""

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
