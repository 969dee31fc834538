"""mole-llama: teach a pretrained Llama to speak with LoRA experts and a learned router (arXiv 2410.20336).

Importing the package registers MoLE-Llama with transformers' auto classes, so saved folders load with
`AutoConfig` / `AutoModel` / `AutoModelForCausalLM.from_pretrained(path)` and no `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .modeling import (
    NO_EXPERT,
    MoLECausalLMOutputWithPast,
    MoLELlamaConfig,
    MoLELlamaForCausalLM,
    MoLELlamaModel,
    MoLELlamaPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(MoLELlamaConfig.model_type, MoLELlamaConfig, exist_ok=True)
AutoModel.register(MoLELlamaConfig, MoLELlamaModel, exist_ok=True)
AutoModelForCausalLM.register(MoLELlamaConfig, MoLELlamaForCausalLM, exist_ok=True)

__all__ = [
    "NO_EXPERT",
    "MoLECausalLMOutputWithPast",
    "MoLELlamaConfig",
    "MoLELlamaForCausalLM",
    "MoLELlamaModel",
    "MoLELlamaPreTrainedModel",
]
