"""Semantic tokenizer configuration: phones from a pretrained acoustic model, or speech features (log-mel, a
self-supervised model's layer) + k-means units.

Copied into saved model folders for `trust_remote_code=True`: imports only transformers and huggingface_hub.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

BACKENDS = ("phones", "logmel", "ssl")
PHONE_SOURCES = ("alignment", "recognition")
NUM_PHONE_UNITS = 40  # silence + the 39 CMUdict phones of pocketsphinx's en-us model (phone_units.PHONES)


@strict
class SemanticUnitsConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SemanticUnitsModel`], the semantic tokenizer, which maps speech to discrete units, one
    per frame. (The class names avoid the word "Tokenizer": transformers' remote-code saving treats classes so named
    as text tokenizers.)

    Args:
        backend (`str`, *optional*, defaults to `"logmel"`):
            `"phones"`: phones of pocketsphinx's pretrained, speaker-independent en-us acoustic model (the embedded
            backend: nothing to fit; `num_units` is 40).
            `"logmel"`: log-mel frames, normalised per utterance, + k-means (measured voice-specific).
            `"ssl"`: hidden states of a self-supervised speech model (HuBERT, WavLM; the paper-scale backend).
        phone_source (`str`, *optional*, defaults to `"alignment"`):
            `"phones"` backend only. `"alignment"`: forced alignment to the transcript (`encode(waveform, text)`),
            the dictionary's phones with the speaker's pauses and durations. `"recognition"`: phone recognition
            from the audio alone (allphone search), no transcript needed, noisier.
        num_units (`int`, *optional*):
            Number of distinct units: k-means centroids for `"logmel"`/`"ssl"` (default 1024; the paper uses 4096),
            always 40 for `"phones"`.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Rate the waveform must have.
        unit_rate (`int`, *optional*, defaults to 50):
            Units per second. For `"logmel"` it sets the hop (`sampling_rate / unit_rate`); for `"ssl"` it must be
            the model's own frame rate (50 for HuBERT and WavLM at 16 kHz).
        n_mels (`int`, *optional*, defaults to 80):
            Mel bins of the `"logmel"` backend.
        n_fft (`int`, *optional*, defaults to 1024):
            FFT size of the `"logmel"` backend.
        ssl_config (`dict`, *optional*):
            The self-supervised model's config as a dict (with its `model_type`), for the `"ssl"` backend.
        ssl_layer (`int`, *optional*, defaults to 6):
            Which hidden state of the self-supervised model to cluster (0 = its input embeddings).
        feature_size (`int`, *optional*):
            Dimension of the clustered features; derived from the backend when unset.
    """

    model_type = "semantic_units"

    backend: str = "logmel"
    phone_source: str = "alignment"
    num_units: int | None = None
    sampling_rate: int = 16000
    unit_rate: int = 50
    n_mels: int = 80
    n_fft: int = 1024
    ssl_config: dict | None = None
    ssl_layer: int = 6
    feature_size: int | None = None

    def __post_init__(self, **kwargs):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {BACKENDS}")
        if self.backend == "phones":
            if self.phone_source not in PHONE_SOURCES:
                raise ValueError(f"phone_source={self.phone_source!r}: choose one of {PHONE_SOURCES}")
            if self.sampling_rate != 16000:
                raise ValueError(f"sampling_rate={self.sampling_rate}: the 'phones' backend hears 16000 Hz audio")
            if self.num_units not in (None, NUM_PHONE_UNITS):
                raise ValueError(f"num_units={self.num_units}: the 'phones' backend has {NUM_PHONE_UNITS} units")
            self.num_units = NUM_PHONE_UNITS
        elif self.num_units is None:
            self.num_units = 1024
        if self.num_units < 2:
            raise ValueError(f"num_units={self.num_units}: use at least 2 units (the paper uses 4096)")
        if self.unit_rate <= 0 or self.sampling_rate % self.unit_rate:
            raise ValueError(
                f"unit_rate={self.unit_rate} must divide sampling_rate={self.sampling_rate} (e.g. 50 or 25 at 16 kHz)"
            )
        if self.backend == "ssl":
            if not self.ssl_config or "model_type" not in self.ssl_config:
                raise ValueError("the 'ssl' backend needs ssl_config: a HuBERT/WavLM config dict with its model_type")
            if not 0 <= self.ssl_layer <= self.ssl_config.get("num_hidden_layers", self.ssl_layer):
                raise ValueError(
                    f"ssl_layer={self.ssl_layer} is not a hidden state of the {self.ssl_config['model_type']}"
                )
            self.feature_size = self.ssl_config["hidden_size"]
        elif self.backend == "phones":
            self.feature_size = None
        else:
            self.feature_size = self.n_mels
        super().__post_init__(**kwargs)

    @property
    def needs_transcript(self) -> bool:
        """Whether `encode` needs the text of the audio (phones by forced alignment)."""
        return self.backend == "phones" and self.phone_source == "alignment"

    @property
    def hop_length(self) -> int:
        return self.sampling_rate // self.unit_rate


__all__ = ["NUM_PHONE_UNITS", "SemanticUnitsConfig"]
