"""Log-mel features and their inversion (Griffin-Lim), in torch, shared by the semantic tokenizer and the codec.

Self-contained (torch and transformers only), so saved model folders can carry it for `trust_remote_code=True`.
"""

import math

import torch
from torch import nn
from transformers.audio_utils import mel_filter_bank


class LogMelSpectrogram(nn.Module):
    """`waveform (batch, samples)` -> `log-mel (batch, n_mels, frames)`, one frame per `hop_length` samples.

    Natural log of the mel power spectrum, floored at 1e-5 so silence stays finite.
    """

    def __init__(self, sampling_rate: int = 16000, n_fft: int = 1024, hop_length: int = 320, n_mels: int = 80):
        super().__init__()
        self.sampling_rate, self.n_fft, self.hop_length, self.n_mels = sampling_rate, n_fft, hop_length, n_mels
        self._constants = {}

    def constants(self, device) -> tuple:
        """`(mel_filters, mel_inverse, window)` on `device`, made on first use. Not buffers: transformers builds
        models on the meta device and would leave non-persistent buffers uninitialised after `from_pretrained`."""
        device = torch.device(device)
        if device not in self._constants:
            filters = mel_filter_bank(
                num_frequency_bins=self.n_fft // 2 + 1,
                num_mel_filters=self.n_mels,
                min_frequency=0.0,
                max_frequency=self.sampling_rate / 2,
                sampling_rate=self.sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            )
            mel_filters = torch.tensor(filters.T, dtype=torch.float32, device="cpu")
            window = torch.hann_window(self.n_fft, device="cpu")
            self._constants[device] = tuple(t.to(device) for t in (mel_filters, torch.linalg.pinv(mel_filters), window))
        return self._constants[device]

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 1:
            waveform = waveform[None]
        mel_filters, _, window = self.constants(waveform.device)
        spectrum = torch.stft(waveform.float(), self.n_fft, self.hop_length, window=window, return_complex=True)
        mel = mel_filters @ spectrum.abs().pow(2)
        return mel.clamp(min=1e-5).log()

    @torch.no_grad()
    def invert(self, log_mel: torch.Tensor, iterations: int = 32, seed: int = 0) -> torch.Tensor:
        """`log-mel (batch, n_mels, frames)` -> `waveform (batch, samples)`: mel to linear magnitude by the
        filter bank's pseudo-inverse, then Griffin-Lim phase recovery (with momentum).
        About 0.2 s of CPU per second of audio."""
        if log_mel.dim() == 2:
            log_mel = log_mel[None]
        frames = log_mel.shape[-1]
        shortest = self.n_fft // self.hop_length + 2  # fewer frames cannot be re-analysed by the STFT
        if frames < shortest:  # pad with silence, trim after
            log_mel = torch.nn.functional.pad(log_mel, (0, shortest - frames), value=math.log(1e-5))
        _, mel_inverse, window = self.constants(log_mel.device)
        power = log_mel.float().exp()
        magnitude = (mel_inverse @ power).clamp(min=0).sqrt()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        angles = torch.rand(magnitude.shape, generator=generator).to(magnitude.device) * 2 * math.pi
        spectrum = magnitude * torch.exp(1j * angles)
        previous = torch.zeros_like(spectrum)
        length = (log_mel.shape[-1] - 1) * self.hop_length
        for _ in range(iterations):
            waveform = torch.istft(spectrum, self.n_fft, self.hop_length, window=window, length=length)
            rebuilt = torch.stft(waveform, self.n_fft, self.hop_length, window=window, return_complex=True)
            accelerated = rebuilt + 0.99 * (rebuilt - previous)
            previous = rebuilt
            spectrum = magnitude * torch.exp(1j * accelerated.angle())
        waveform = torch.istft(spectrum, self.n_fft, self.hop_length, window=window, length=length)
        waveform = waveform[..., : max(frames - 1, 1) * self.hop_length]
        peak = waveform.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
        return waveform * torch.where(peak > 0.99, 0.99 / peak, torch.ones_like(peak))
