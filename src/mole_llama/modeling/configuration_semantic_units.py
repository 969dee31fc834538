"""Semantic tokenizer configuration: speech features (log-mel or a self-supervised model's layer) + k-means units.

Copied into saved model folders for `trust_remote_code=True`: imports only transformers and huggingface_hub.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

BACKENDS = ("logmel", "ssl")


@strict
class SemanticUnitsConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SemanticUnitsModel`], the semantic tokenizer, which maps speech to discrete units, one
    per frame. (The class names avoid the word "Tokenizer": transformers' remote-code saving treats classes so named
    as text tokenizers.)

    Args:
        backend (`str`, *optional*, defaults to `"logmel"`):
            `"logmel"`: log-mel frames, normalised per utterance (the embedded backend, no pretrained model needed).
            `"ssl"`: hidden states of a self-supervised speech model (HuBERT, WavLM; the paper-scale backend).
        num_units (`int`, *optional*, defaults to 1024):
            Number of k-means centroids, i.e. distinct units (the paper uses 4096).
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
    num_units: int = 1024
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
        else:
            self.feature_size = self.n_mels
        super().__post_init__(**kwargs)

    @property
    def hop_length(self) -> int:
        return self.sampling_rate // self.unit_rate


__all__ = ["SemanticUnitsConfig"]
