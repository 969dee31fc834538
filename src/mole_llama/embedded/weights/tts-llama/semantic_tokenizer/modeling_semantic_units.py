"""Semantic tokenizer: speech -> discrete units, one per frame.

The units are what TTS-Llama learns to emit. Embedded: the phones of pocketsphinx's pretrained en-us acoustic
model (`phone_units`), by forced alignment to the transcript or by phone recognition. With k-means: the nearest
centroid of log-mel frames normalised per utterance, or of a hidden layer of a self-supervised model such as
HuBERT (paper scale); the centroids are fitted by `mole_llama.training.semantic_tokenizer.fit_semantic_tokenizer`.

Self-contained (torch, transformers and sibling files), so saved folders carry it for `trust_remote_code=True`.
"""

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .audio_features import LogMelSpectrogram
from .configuration_semantic_units import SemanticUnitsConfig
from .phone_units import PHONES, PocketsphinxPhones, segments_to_units

MIN_SECONDS = 0.1


class SemanticUnitsModel(PreTrainedModel):
    """`encode(waveform[, text]) -> units (batch, frames)`; `features(waveform)` gives the clustered features
    (k-means backends)."""

    config_class = SemanticUnitsConfig
    config: SemanticUnitsConfig
    main_input_name = "input_values"

    def __init__(self, config: SemanticUnitsConfig):
        super().__init__(config)
        self._phones = None  # the pocketsphinx decoders, made on first use
        if config.backend == "logmel":
            self.log_mel = LogMelSpectrogram(config.sampling_rate, config.n_fft, config.hop_length, config.n_mels)
        elif config.backend == "ssl":
            self.ssl_model = AutoModel.from_config(AutoConfig.for_model(**config.ssl_config))
        feature_size = config.feature_size or 1  # phones: a placeholder, so the folder has weights like any model
        self.centroids = nn.Parameter(torch.zeros(config.num_units, feature_size), requires_grad=False)
        self.post_init()

    def _init_weights(self, module):
        """Centroids start at zero until fitted; the SSL model initialises itself (or is loaded)."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save with an `auto_map`, so the folder loads with `trust_remote_code=True` without mole_llama."""
        self.config.auto_map = {
            "AutoConfig": "configuration_semantic_units.SemanticUnitsConfig",
            "AutoModel": "modeling_semantic_units.SemanticUnitsModel",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_ssl_model(cls, ssl_model: PreTrainedModel, layer: int, num_units: int) -> "SemanticUnitsModel":
        """A tokenizer on a loaded HuBERT/WavLM model (e.g. `HubertModel.from_pretrained(...)`), centroids unfitted."""
        config = SemanticUnitsConfig(
            backend="ssl", ssl_config=ssl_model.config.to_dict(), ssl_layer=layer, num_units=num_units
        )
        tokenizer = cls(config)
        tokenizer.ssl_model.load_state_dict(ssl_model.state_dict())
        return tokenizer

    @property
    def unit_names(self) -> tuple | None:
        """What each unit is, where that is known: the phone names of the `"phones"` backend (k-means units have
        no names)."""
        return PHONES if self.config.backend == "phones" else None

    def _check_waveform(self, waveform) -> torch.Tensor:
        waveform = torch.as_tensor(waveform, dtype=torch.float32, device=self.centroids.device)
        if waveform.dim() == 1:
            waveform = waveform[None]
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be (samples,) or (batch, samples), got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] < MIN_SECONDS * self.config.sampling_rate:
            raise ValueError(
                f"waveform has {waveform.shape[-1]} samples: give at least {MIN_SECONDS} s at "
                f"{self.config.sampling_rate} Hz (resample other rates first)"
            )
        if not torch.isfinite(waveform).all():
            raise ValueError("waveform has NaN or infinite samples")
        return waveform

    @torch.no_grad()
    def features(self, waveform) -> torch.Tensor:
        """`(batch, samples)` at `config.sampling_rate` -> `(batch, frames, feature_size)`."""
        waveform = self._check_waveform(waveform)
        if self.config.backend == "phones":
            raise ValueError("the 'phones' backend has no features to cluster: encode(waveform, text) gives its units")
        if self.config.backend == "logmel":
            frames = self.log_mel(waveform).transpose(1, 2)
            mean, std = frames.mean(dim=1, keepdim=True), frames.std(dim=1, keepdim=True)
            return (frames - mean) / std.clamp(min=1e-3)
        hidden = self.ssl_model(waveform, output_hidden_states=True).hidden_states
        return hidden[self.config.ssl_layer]

    @torch.no_grad()
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (squared Euclidean distance) of each feature vector."""
        distances = (
            features.pow(2).sum(-1, keepdim=True) - 2 * features @ self.centroids.T + self.centroids.pow(2).sum(-1)
        )
        return distances.argmin(dim=-1)

    @torch.no_grad()
    def encode(self, waveform, text=None) -> torch.LongTensor:
        """Units of a waveform: `(batch, frames)`, `config.unit_rate` per second. Encode utterances of different
        lengths one by one: the log-mel backend normalises over the whole row. `text` (a string, or one per row)
        is the transcript the `"phones"` backend aligns to (`config.needs_transcript`)."""
        if self.config.backend == "phones":
            return self._encode_phones(self._check_waveform(waveform), text)
        if not self.centroids.any():
            raise ValueError(
                "the centroids are not fitted: run fit_semantic_tokenizer (mole-llama fit-semantic-tokenizer)"
            )
        return self.assign(self.features(waveform))

    def _encode_phones(self, waveform: torch.Tensor, text) -> torch.LongTensor:
        texts = [text] * len(waveform) if text is None or isinstance(text, str) else list(text)
        if self.config.needs_transcript and any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("phones by forced alignment need the transcript: encode(waveform, text)")
        if len(texts) != len(waveform):
            raise ValueError(f"{len(texts)} transcripts for {len(waveform)} waveforms: give one per row")
        if self._phones is None:
            self._phones = PocketsphinxPhones()
        rows = []
        for row, transcript in zip(waveform.cpu().numpy(), texts):
            if self.config.needs_transcript:
                segments = self._phones.align(row, transcript)
            else:
                segments = self._phones.recognize(row)
            rows.append(segments_to_units(segments, len(row), self.config.unit_rate))
        return torch.as_tensor(np.stack(rows), device=self.centroids.device)

    def forward(self, input_values: torch.Tensor, text=None) -> torch.LongTensor:
        return self.encode(input_values, text)


SemanticUnitsConfig.register_for_auto_class()
SemanticUnitsModel.register_for_auto_class("AutoModel")

__all__ = ["SemanticUnitsModel"]
