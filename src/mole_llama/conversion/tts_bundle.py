"""Save a speaking model as one folder: the LLM at the top, the speech parts in subfolders.

    folder/
      config.json, model.safetensors, tokenizer files, generation_config.json, *.py (remote code)
      acoustic_lm/   codec/   semantic_tokenizer/   duration_predictor/ (when the LLM speaks collapsed units)

It loads with `pipeline("text-to-speech", model=folder)` and `AutoModelForCausalLM.from_pretrained(folder)`.
"""

import copy
from pathlib import Path

from ..modeling.acoustic_codec import decodes_expected_vectors
from ..modeling.modeling_mole_llama import MoLELlamaForCausalLM
from ..modeling.modeling_tts_llama import MoLELlamaForTextToWaveform
from ..modeling.speech_units import SpeechTokenIds


def save_tts_model(
    out_dir,
    llm: MoLELlamaForCausalLM,
    tokenizer,
    acoustic_lm,
    codec,
    num_speech_units: int,
    semantic_tokenizer=None,
    max_new_tokens: int = 512,
    duration_predictor=None,
) -> Path:
    """Write `llm` (a MoLE-Llama; a TTS-Llama is one with routing "speech") with its speech parts to `out_dir`.
    With `duration_predictor`, the LLM speaks run-length-collapsed units and the predictor times them."""
    SpeechTokenIds.from_tokenizer(tokenizer, num_speech_units)  # the tokenizer has every speech token
    if llm.config.vocab_size < len(tokenizer):
        raise ValueError(
            f"the LLM has {llm.config.vocab_size} token rows but the tokenizer {len(tokenizer)}: "
            "resize its embeddings after add_speech_tokens"
        )
    if acoustic_lm.config.num_semantic_units != num_speech_units:
        raise ValueError(
            f"the acoustic LM reads {acoustic_lm.config.num_semantic_units} units, the LLM speaks {num_speech_units}"
        )
    config = llm.config
    config.num_speech_units, config.sampling_rate = num_speech_units, codec.sampling_rate
    model = MoLELlamaForTextToWaveform(config)
    model.load_state_dict(llm.state_dict())
    model.generation_config = copy.deepcopy(llm.generation_config)
    model.generation_config.max_new_tokens = max_new_tokens
    if getattr(model.generation_config, "acoustic_expected_decoding", None) is None:
        # on where the codec can decode code distributions (the mel codec): measured more intelligible there
        model.generation_config.acoustic_expected_decoding = decodes_expected_vectors(codec)
    if duration_predictor is not None and duration_predictor.config.num_units != num_speech_units:
        raise ValueError(
            f"the duration predictor times {duration_predictor.config.num_units} units, "
            f"the LLM speaks {num_speech_units}"
        )
    model.attach_speech_parts(tokenizer, acoustic_lm, codec, duration_predictor, semantic_tokenizer)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
