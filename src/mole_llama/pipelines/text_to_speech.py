"""`TTSLlamaPipeline`: transformers' text-to-speech pipeline for mole-llama's speaking models, with their extras.

With `import mole_llama`, `pipeline("text-to-speech", model=...)` builds this class. For a mole-llama speaking model
it returns a `TTSLlamaPipeline`; for any other model `__new__` hands back the stock `TextToAudioPipeline`, built
with the same arguments, so nothing changes for them. Where the package is absent (a folder loaded with
`trust_remote_code=True`), the stock pipeline serves the folder through the model's own `generate`.

The extras, as keyword arguments of the call (alone or inside `generate_kwargs` / `forward_params`, as the stock
pipeline takes them): `voice=` (a waveform at the codec's rate, `(waveform, rate)` or a file path; stereo is mixed
down), `seed=`, `batch_size=`, and every speaking setting the model knows (`speed`, `temperature`,
`acoustic_temperature`, ...; unknown or out-of-range ones are refused, with the valid ones named, before any model
runs). A list of texts, and the sentences of a long text, are spoken in batches. `stream(text)` yields the audio
piece by piece.
"""

import numpy as np
from transformers.pipelines import PIPELINE_REGISTRY, TextToAudioPipeline
from transformers.utils import logging

from ..modeling.modeling_tts_llama import MoLELlamaForTextToWaveform

TASK = "text-to-audio"  # "text-to-speech" is its alias
CALL_KEYS = ("voice", "seed", "batch_size")


class TTSLlamaPipeline(TextToAudioPipeline):
    """Text(s) -> `{"audio": float32 array, "sampling_rate": int}` (a list for a list), as the stock pipeline
    returns, with a voice reference, per-call settings checked up front, batching and streaming."""

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if cls is TTSLlamaPipeline and not isinstance(model, MoLELlamaForTextToWaveform):
            return TextToAudioPipeline(*args, **kwargs)  # another model: the stock pipeline, untouched
        return super().__new__(cls)

    def __call__(self, text_inputs, generate_kwargs=None, forward_params=None, **settings):
        single = isinstance(text_inputs, str)
        texts = [text_inputs] if single else list(text_inputs)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise ValueError("give a text or a non-empty list of texts (strings) to speak")
        call, speaking = self._split_settings(generate_kwargs, forward_params, settings)
        waves = self.model.speak_texts(texts, **call, **speaking)
        outputs = [self._output(wave) for wave in waves]
        return outputs[0] if single else outputs

    def stream(self, text: str, generate_kwargs=None, forward_params=None, **settings):
        """Yield `{"audio", "sampling_rate"}` chunks, one per piece of `text` (its pause included), as each is made;
        joined, their audio equals the call's for the same seed."""
        call, speaking = self._split_settings(generate_kwargs, forward_params, settings)
        if call.pop("batch_size", None) is not None:
            raise ValueError("stream() speaks one piece at a time: it takes no batch_size")
        for chunk in self.model.stream(text, **call, **speaking):
            yield self._output(chunk)

    def _split_settings(self, generate_kwargs, forward_params, settings) -> tuple:
        """`(call arguments, speaking settings)` from the three places a setting may be given (later ones win, as
        in the stock pipeline, where `generate_kwargs` take precedence over `forward_params`)."""
        merged = {**(forward_params or {}), **(generate_kwargs or {}), **settings}
        call = {key: merged.pop(key) for key in CALL_KEYS if key in merged}
        merged.pop("return_dict_in_generate", None)  # the output is always a dict here
        return call, merged

    def _output(self, wave) -> dict:
        return {"audio": np.asarray(wave.float().numpy(), dtype=np.float32), "sampling_rate": self.sampling_rate}


def register_pipeline() -> None:
    """Make `TTSLlamaPipeline` the text-to-audio pipeline class, keeping the stock entry's models and defaults (the
    registry's overwrite warning is expected here, so it is kept out of the user's log)."""
    stock = PIPELINE_REGISTRY.supported_tasks[TASK]
    if stock["impl"] is TTSLlamaPipeline:
        return
    registry_logger = logging.get_logger("transformers.pipelines.base")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=TTSLlamaPipeline, pt_model=stock["pt"], default=stock.get("default"),
            type=stock.get("type"),
        )  # fmt: skip
    finally:
        registry_logger.setLevel(level)


__all__ = ["TTSLlamaPipeline", "register_pipeline"]
