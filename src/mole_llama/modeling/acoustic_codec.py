"""One small interface for every acoustic codec (acoustic tokenizer + vocoder), and a loader that picks the codec.

The interface, met by `MelCodecModel` (embedded) and `EncodecAcousticCodec` (paper scale):
    attributes `sampling_rate: int`, `frame_rate: float`, `num_codebooks: int`, `codebook_size: int`;
    `encode(waveform: FloatTensor[batch, samples]) -> LongTensor[batch, num_codebooks, frames]`;
    `decode(codes: LongTensor[batch, num_codebooks, frames]) -> FloatTensor[batch, samples]` in [-1, 1];
    optionally `decode_stream()`, a decoder fed codes a few frames at a time (`push(codes)`, `finish()`) whose
    samples join into `decode`'s: the mel codec has one, so speech streams within a sentence; with EnCodec a
    streamed sentence comes whole.
The acoustic LM and the pipeline only see this, so the codec is chosen by the saved `codec/` folder alone.

Self-contained (torch, transformers and sibling files only), so saved model folders can carry it for
`trust_remote_code=True`.
"""

import json
import os

import torch
from torch import nn
from transformers import EncodecModel, PreTrainedConfig

from .modeling_mel_codec import MelCodecModel, check_codes, check_waveform

ADAPTER_FILE = "acoustic_codec.json"  # the adapter's own settings (EnCodec's bandwidth), beside config.json
DEFAULT_ENCODEC_BANDWIDTH = 6.0  # kbps: 8 codebooks of EnCodec 24 kHz, as VALL-E and the paper use


class EncodecAcousticCodec(nn.Module):
    """transformers' `EncodecModel` behind the codec interface, at one fixed bandwidth (so a fixed codebook count).

    Only unchunked mono EnCodec (e.g. `facebook/encodec_24khz`) fits: the 48 kHz model normalises chunks and
    needs per-chunk scales that codes alone cannot carry.
    """

    def __init__(self, model: EncodecModel, bandwidth: float | None = None):
        super().__init__()
        config = model.config
        if config.audio_channels != 1 or config.chunk_length_s is not None or config.normalize:
            raise ValueError(
                "this EnCodec is stereo, chunked or normalised (like encodec_48khz), and its codes alone cannot "
                "rebuild audio: use a mono, unchunked EnCodec such as facebook/encodec_24khz"
            )
        bandwidths = [float(b) for b in config.target_bandwidths]
        if bandwidth is None:
            bandwidth = DEFAULT_ENCODEC_BANDWIDTH if DEFAULT_ENCODEC_BANDWIDTH in bandwidths else max(bandwidths)
        if float(bandwidth) not in bandwidths:
            raise ValueError(
                f"bandwidth {bandwidth} kbps is not one this EnCodec was trained for: use one of {bandwidths}"
            )
        self.model = model.eval()
        self.bandwidth = float(bandwidth)

    @property
    def config(self):
        return self.model.config

    @property
    def sampling_rate(self) -> int:
        return self.model.config.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self.model.config.sampling_rate / self.model.config.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor) -> torch.LongTensor:
        """`waveform (batch, samples)` at `sampling_rate`, float in [-1, 1] -> `codes (batch, codebooks, frames)`."""
        waveform = check_waveform(waveform, self.model.config.hop_length, self.sampling_rate)
        waveform = waveform.to(device=self.device, dtype=self.model.dtype)
        output = self.model.encode(waveform[:, None], bandwidth=self.bandwidth, return_dict=True)
        return output.audio_codes[0]  # (chunks=1, batch, codebooks, frames) -> (batch, codebooks, frames)

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """`codes (batch, num_codebooks, frames)` -> `waveform (batch, samples)` in [-1, 1]."""
        codes = check_codes(codes, self.num_codebooks, self.codebook_size).to(self.device)
        audio = self.model.decode(codes[None], [None], return_dict=True).audio_values
        return audio[:, 0].float().clamp(-1.0, 1.0)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """The EnCodec checkpoint as transformers saves it, plus the bandwidth in `acoustic_codec.json`."""
        self.model.save_pretrained(save_directory, **kwargs)
        with open(os.path.join(save_directory, ADAPTER_FILE), "w") as file:
            json.dump({"bandwidth": self.bandwidth}, file, indent=2)

    @classmethod
    def from_pretrained(cls, path, bandwidth: float | None = None, **kwargs) -> "EncodecAcousticCodec":
        """Load an EnCodec checkpoint (a folder or a Hub id such as `facebook/encodec_24khz`)."""
        settings_file = os.path.join(str(path), kwargs.get("subfolder", ""), ADAPTER_FILE)
        if bandwidth is None and os.path.isfile(settings_file):
            with open(settings_file) as file:
                bandwidth = json.load(file).get("bandwidth")
        return cls(EncodecModel.from_pretrained(path, **kwargs), bandwidth=bandwidth)


CODECS = {"mel_codec": MelCodecModel.from_pretrained, "encodec": EncodecAcousticCodec.from_pretrained}


def decodes_expected_vectors(codec) -> bool:
    """Whether `codec` can decode an acoustic LM's code distributions as their expected codebook vectors
    (`decode_expected`: the mel codec can, EnCodec's adapter cannot)."""
    return callable(getattr(codec, "decode_expected", None))


def load_acoustic_codec(path, **kwargs):
    """The codec saved at `path` (a folder or a Hub id), in eval mode, chosen by `model_type` in its config.json:
    `mel_codec` gives a `MelCodecModel`, `encodec` an `EncodecAcousticCodec`."""
    config_dict, _ = PreTrainedConfig.get_config_dict(path, subfolder=kwargs.get("subfolder", ""))
    model_type = config_dict.get("model_type")
    if model_type not in CODECS:
        raise ValueError(
            f"{path} holds a {model_type!r} model, which is not an acoustic codec this package can load: "
            f"use one of {sorted(CODECS)}"
        )
    return CODECS[model_type](path, **kwargs).eval()


__all__ = ["EncodecAcousticCodec", "decodes_expected_vectors", "load_acoustic_codec"]
