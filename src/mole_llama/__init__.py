"""mole-llama: teach a pretrained Llama to speak with LoRA experts and a learned router (arXiv 2410.20336).

Importing the package registers its models with transformers' auto classes, so saved folders load with
`AutoConfig` / `AutoModel` / `AutoModelForCausalLM` / `pipeline("text-to-speech")` (a `TTSLlamaPipeline`) and no
`trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForTextToWaveform

from .modeling import (
    NO_EXPERT,
    MoLECausalLMOutputWithPast,
    MoLELlamaConfig,
    MoLELlamaForCausalLM,
    MoLELlamaModel,
    MoLELlamaPreTrainedModel,
)
from .modeling.configuration_acoustic_lm import AcousticLMConfig
from .modeling.configuration_duration_predictor import DurationPredictorConfig
from .modeling.configuration_mel_codec import MelCodecConfig
from .modeling.configuration_semantic_units import SemanticUnitsConfig
from .modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
from .modeling.modeling_duration_predictor import DurationPredictorModel
from .modeling.modeling_mel_codec import MelCodecModel
from .modeling.modeling_semantic_units import SemanticUnitsModel
from .modeling.modeling_tts_llama import MoLELlamaForTextToWaveform
from .pipelines import TTSLlamaPipeline, register_pipeline

__version__ = "0.1.0"

for config_class, model_class in (
    (MoLELlamaConfig, MoLELlamaModel),
    (AcousticLMConfig, AcousticLMForConditionalGeneration),
    (DurationPredictorConfig, DurationPredictorModel),
    (MelCodecConfig, MelCodecModel),
    (SemanticUnitsConfig, SemanticUnitsModel),
):
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
AutoModelForCausalLM.register(MoLELlamaConfig, MoLELlamaForCausalLM, exist_ok=True)
# What pipeline("text-to-speech") loads for a MoLE-Llama folder: the same LLM, plus its speech parts.
AutoModelForTextToWaveform.register(MoLELlamaConfig, MoLELlamaForTextToWaveform, exist_ok=True)
register_pipeline()  # pipeline("text-to-speech") gives a TTSLlamaPipeline for our models, the stock one for others

__all__ = [
    "NO_EXPERT",
    "AcousticLMConfig",
    "AcousticLMForConditionalGeneration",
    "DurationPredictorConfig",
    "DurationPredictorModel",
    "MelCodecConfig",
    "MelCodecModel",
    "MoLECausalLMOutputWithPast",
    "MoLELlamaConfig",
    "MoLELlamaForCausalLM",
    "MoLELlamaForTextToWaveform",
    "MoLELlamaModel",
    "MoLELlamaPreTrainedModel",
    "SemanticUnitsConfig",
    "SemanticUnitsModel",
    "TTSLlamaPipeline",
]
