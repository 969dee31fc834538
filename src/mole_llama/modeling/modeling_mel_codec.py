"""The embedded acoustic codec (acoustic tokenizer + vocoder), small enough to train on a CPU.

waveform -> log-mel (16 kHz, hop 320: 50 frames/s) -> 1-D conv encoder -> residual vector quantization -> codes
codes -> codebook sum -> 1-D conv decoder -> log-mel -> Griffin-Lim -> waveform

Codebooks are seeded by k-means on the first training batch and then follow an exponential moving average of
the vectors assigned to them (no codebook gradient; the encoder gets a straight-through gradient and a
commitment loss). Entries that fall out of use are re-seeded from the batch. Working on log-mel keeps the
network tiny; Griffin-Lim is the vocoder, so no adversarial training is needed.

The interface shared with the other codecs (see `acoustic_codec.py`): `sampling_rate`, `frame_rate`,
`num_codebooks`, `codebook_size`, `encode(waveform[batch, samples]) -> codes[batch, num_codebooks, frames]`,
`decode(codes) -> waveform[batch, samples]` in [-1, 1].

This file is copied into saved model folders for `trust_remote_code=True`: it imports nothing from
`mole_llama`, only its sibling files.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .audio_features import GriffinLimStream, LogMelSpectrogram, doubling_block_end
from .configuration_mel_codec import MelCodecConfig

REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_mel_codec.MelCodecConfig",
    "AutoModel": "modeling_mel_codec.MelCodecModel",
}
SILENCE_PEAK = 1e-4  # -80 dBFS: a waveform whose peak stays below this holds nothing to encode
MAX_PEAK = 2.0  # float audio lives in [-1, 1]; a peak far above it is integer PCM or a wrong scale
MEL_DECODE_FIRST_BLOCK_FRAMES, MEL_DECODE_BLOCK_FRAMES = 4, 32
"""Code frames `decode` turns into log-mel at a time, each block from a window reaching the decoder's lookahead
around it: the first block small, so streamed audio starts early, and each next one twice as long up to the last
size, so the windows' overlap costs little."""


@dataclass
class MelCodecOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*):
        `reconstruction_loss + commitment_weight * commitment_loss`: what the Trainer minimises.
    reconstruction_loss (`torch.FloatTensor`, *optional*):
        Mean absolute error between the input and the decoded log-mel, in per-bin standardised units.
    commitment_loss (`torch.FloatTensor`, *optional*):
        Mean squared distance between the encoder output and its quantized value.
    log_mel (`torch.FloatTensor` of shape `(batch, n_mels, mel_frames)`):
        The decoded (reconstructed) log-mel spectrogram.
    audio_codes (`torch.LongTensor` of shape `(batch, num_codebooks, frames)`):
        The codes of the input.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    log_mel: torch.FloatTensor | None = None
    audio_codes: torch.LongTensor | None = None


class MelCodecResidualBlock(nn.Module):
    """`x + conv1x1(gelu(dilated_conv(gelu(x))))`: widens the receptive field without changing the frame count."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(F.gelu(self.conv(F.gelu(hidden))))


def residual_stack(config: MelCodecConfig) -> list:
    dilations = [2 ** (i % 4) for i in range(config.num_residual_layers)]  # 1, 2, 4, 8, 1, ...
    return [MelCodecResidualBlock(config.hidden_size, config.kernel_size, d) for d in dilations]


class MelCodecEncoder(nn.Module):
    """Standardised log-mel `(batch, n_mels, mel_frames)` -> latent `(batch, codebook_dim, frames)`."""

    def __init__(self, config: MelCodecConfig):
        super().__init__()
        self.factor = config.downsampling_factor
        self.conv_in = nn.Conv1d(config.n_mels, config.hidden_size, 5, padding=2)
        self.blocks = nn.Sequential(*residual_stack(config))
        self.down = nn.Conv1d(config.hidden_size, config.hidden_size, self.factor, stride=self.factor)
        self.conv_out = nn.Conv1d(config.hidden_size, config.codebook_dim, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        remainder = mel.shape[-1] % self.factor
        if remainder:  # pad with the mean frame (0 after standardisation) to whole code frames
            mel = F.pad(mel, (0, self.factor - remainder))
        hidden = self.blocks(self.conv_in(mel))
        return self.conv_out(F.gelu(self.down(hidden)))


class MelCodecDecoder(nn.Module):
    """Quantized latent `(batch, codebook_dim, frames)` -> standardised log-mel `(batch, n_mels, frames * factor)`."""

    def __init__(self, config: MelCodecConfig):
        super().__init__()
        self.conv_in = nn.Conv1d(config.codebook_dim, config.hidden_size, 3, padding=1)
        factor = config.downsampling_factor
        self.up = nn.ConvTranspose1d(config.hidden_size, config.hidden_size, factor, stride=factor)
        self.blocks = nn.Sequential(*residual_stack(config))
        self.conv_out = nn.Conv1d(config.hidden_size, config.n_mels, 5, padding=2)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(self.up(F.gelu(self.conv_in(latent))))
        return self.conv_out(F.gelu(hidden))


def kmeans(vectors: torch.Tensor, num_clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means, seeded with random data points; an emptied cluster keeps its previous centre."""
    if len(vectors) >= num_clusters:
        picks = torch.randperm(len(vectors), generator=generator)[:num_clusters]
    else:
        picks = torch.randint(len(vectors), (num_clusters,), generator=generator)
    centres = vectors[picks.to(vectors.device)].clone()
    if len(vectors) < num_clusters:  # too few points: jitter the duplicates so they can drift apart
        centres += 1e-3 * vectors.std() * torch.randn(centres.shape, generator=generator).to(centres)
    for _ in range(iterations):
        assignment = torch.cdist(vectors, centres).argmin(dim=1)
        counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assignment, vectors)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class ResidualVectorQuantizer(nn.Module):
    """`num_codebooks` stages, each quantizing what the previous ones left over, with EMA-trained codebooks.

    Buffers (saved with the model): `codebooks (num_codebooks, codebook_size, dim)`, and the moving averages
    `ema_count (num_codebooks, codebook_size)` / `ema_sum (num_codebooks, codebook_size, dim)` that update them.
    """

    def __init__(self, config: MelCodecConfig):
        super().__init__()
        self.num_codebooks, self.codebook_size = config.num_codebooks, config.codebook_size
        self.dim = config.codebook_dim
        self.decay, self.dead_code_threshold = config.ema_decay, config.dead_code_threshold
        self.kmeans_iterations = config.kmeans_iterations
        shape = (self.num_codebooks, self.codebook_size)
        self.register_buffer("codebooks", torch.randn(*shape, self.dim))
        self.register_buffer("ema_count", torch.ones(shape))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def nearest(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        distances = (
            vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.T + codebook.pow(2).sum(1)[None]
        )  # fmt: skip
        return distances.argmin(dim=1)

    @torch.no_grad()
    def initialize(self, vectors: torch.Tensor, generator: torch.Generator) -> None:
        """Seed each stage's codebook by k-means on the residuals the previous stages leave on `vectors (n, dim)`."""
        residual = vectors.detach().float()
        for stage in range(self.num_codebooks):
            centres = kmeans(residual, self.codebook_size, self.kmeans_iterations, generator)
            self.codebooks[stage] = centres
            self.ema_sum[stage] = centres
            self.ema_count[stage] = 1.0
            residual = residual - centres[self.nearest(residual, centres)]
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, stage: int, residual: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.codebook_size).to(residual.dtype)
        sums = torch.zeros_like(self.ema_sum[stage]).index_add_(0, codes, residual)
        self.ema_count[stage].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum[stage].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count[stage].sum()
        smoothed = (self.ema_count[stage] + 1e-5) / (total + self.codebook_size * 1e-5) * total  # Laplace smoothing
        self.codebooks[stage] = self.ema_sum[stage] / smoothed[:, None]
        dead = self.ema_count[stage] < self.dead_code_threshold
        if dead.any():  # re-seed unused entries with vectors of this batch, where the data is now
            picks = torch.randint(len(residual), (int(dead.sum()),), device=residual.device)
            self.codebooks[stage][dead] = residual[picks]
            self.ema_sum[stage][dead] = residual[picks]
            self.ema_count[stage][dead] = 1.0

    def forward(self, latent: torch.Tensor, update: bool = False, num_stages: int | None = None) -> tuple:
        """`latent (batch, dim, frames)` -> `(quantized with a straight-through gradient, codes (batch, stages,
        frames), commitment loss)`. With `update`, the codebooks move towards this batch (training);
        `num_stages` uses only the first stages (quantizer dropout)."""
        batch, dim, frames = latent.shape
        vectors = latent.transpose(1, 2).reshape(-1, dim)
        residual = vectors.detach().float()
        quantized = torch.zeros_like(residual)
        codes = []
        num_stages = self.num_codebooks if num_stages is None else num_stages
        for stage in range(num_stages):
            stage_codes = self.nearest(residual, self.codebooks[stage].float())
            chosen = self.codebooks[stage][stage_codes].float()
            if update:
                self._ema_update(stage, residual, stage_codes)
            codes.append(stage_codes)
            quantized = quantized + chosen
            residual = residual - chosen
        commitment = F.mse_loss(vectors, quantized.to(vectors.dtype))
        straight_through = vectors + (quantized.to(vectors.dtype) - vectors).detach()
        codes = torch.stack(codes, dim=1).reshape(batch, frames, num_stages).transpose(1, 2)
        return straight_through.reshape(batch, frames, dim).transpose(1, 2), codes, commitment

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes (batch, stages, frames)` -> summed codebook vectors `(batch, dim, frames)`."""
        stages = torch.arange(self.num_codebooks, device=codes.device)[None, :, None]
        return self.codebooks[stages, codes].sum(dim=1).transpose(1, 2)

    def expected(self, code_probabilities: torch.Tensor) -> torch.Tensor:
        """`code_probabilities (batch, stages, frames, codebook_size)` -> the summed expected codebook vectors
        `(batch, dim, frames)`: `lookup` of one-hot distributions, a mean of the entries otherwise."""
        return torch.einsum("bkfs,ksd->bdf", code_probabilities.to(self.codebooks.dtype), self.codebooks)


class MelCodecPreTrainedModel(PreTrainedModel):
    config_class = MelCodecConfig
    config: MelCodecConfig
    base_model_prefix = "mel_codec"
    main_input_name = "input_values"

    @torch.no_grad()
    def _init_weights(self, module):
        """PyTorch's default conv init, random codebooks and neutral log-mel statistics; training then seeds
        the statistics and codebooks from data (`initialize_from_data`)."""
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                if isinstance(module, nn.ConvTranspose1d):
                    fan_in = module.weight.shape[0] * module.weight[0, 0].numel()
                init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(module, ResidualVectorQuantizer):
            init.normal_(module.codebooks)
            init.copy_(module.ema_sum, module.codebooks)
            init.ones_(module.ema_count)
            init.zeros_(module.initialized)
        elif isinstance(module, MelCodecModel):
            init.zeros_(module.mel_mean)
            init.ones_(module.mel_std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, with an `auto_map` so the folder loads through `AutoConfig` / `AutoModel` with
        `trust_remote_code=True` where mole_llama is not installed."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)


class MelCodecModel(MelCodecPreTrainedModel):
    """The embedded codec. `encode`/`decode` are the codec interface; `forward` is the training step (loss)."""

    def __init__(self, config: MelCodecConfig):
        super().__init__(config)
        self.features = LogMelSpectrogram(config.sampling_rate, config.n_fft, config.hop_length, config.n_mels)
        # Per-bin log-mel mean and spread, measured on the first training batch; the networks see standardised mels.
        self.register_buffer("mel_mean", torch.zeros(config.n_mels))
        self.register_buffer("mel_std", torch.ones(config.n_mels))
        self.encoder = MelCodecEncoder(config)
        self.quantizer = ResidualVectorQuantizer(config)
        self.decoder = MelCodecDecoder(config)
        self.post_init()

    # The codec interface.
    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def num_frames(self, num_samples: int) -> int:
        """Code frames that `encode` gives for a waveform of `num_samples`."""
        return math.ceil(self.features.num_frames(num_samples) / self.config.downsampling_factor)

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor) -> torch.LongTensor:
        """`waveform (batch, samples)` at `sampling_rate`, float in [-1, 1] -> `codes (batch, codebooks, frames)`."""
        waveform = self._check_waveform(waveform)
        _, codes, _ = self.quantizer(self.encoder(self.normalize(self.features(waveform))), update=False)
        return codes

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """`codes (batch, num_codebooks, frames)` -> `waveform (batch, samples)` in [-1, 1], by Griffin-Lim."""
        stream = MelCodecDecodeStream(self)
        return torch.cat([stream.push(codes), stream.finish()], dim=-1)

    @torch.no_grad()
    def decode_expected(self, code_probabilities: torch.FloatTensor) -> torch.FloatTensor:
        """`decode` of each frame's expected codebook vectors under `code_probabilities (batch, num_codebooks,
        frames, codebook_size)` (an acoustic LM's distributions) instead of one drawn code per codebook: the mean
        leaves out the draw's noise, which made sampled speech harder to understand
        (`benchmarks/expected_decoding_intelligibility.py` measures it)."""
        stream = MelCodecDecodeStream(self)
        return torch.cat([stream.push_expected(code_probabilities), stream.finish()], dim=-1)

    def decode_stream(self) -> "MelCodecDecodeStream":
        """A decoder fed codes a few frames at a time (`push`, then `finish`), giving audio as it becomes final:
        together the same samples as `decode` of all the codes."""
        return MelCodecDecodeStream(self)

    @property
    def decoder_lookahead(self) -> int:
        """Code frames past a frame that its log-mel depends on: the decoder's convolutions reach that far."""
        decoder = self.decoder
        after_upsampling = [block.conv for block in decoder.blocks] + [decoder.conv_out]  # at the log-mel rate
        reach = sum(conv.dilation[0] * (conv.kernel_size[0] // 2) for conv in after_upsampling)
        return decoder.conv_in.kernel_size[0] // 2 + math.ceil(reach / self.config.downsampling_factor)

    @property
    def decode_lookahead(self) -> int:
        """Code frames past a block that `decode` and its stream read the block's log-mel from (the config's
        `decode_lookahead_frames`, else the decoder's whole reach): what a stream waits for."""
        chosen = self.config.decode_lookahead_frames
        return self.decoder_lookahead if chosen is None else chosen

    @torch.no_grad()
    def decode_log_mel(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """`codes (batch, num_codebooks, frames)` -> log-mel `(batch, n_mels, frames * downsampling_factor)`."""
        codes = self._check_codes(codes)
        return self.denormalize(self.decoder(self.quantizer.lookup(codes)))

    @torch.no_grad()
    def log_mel_to_waveform(self, log_mel: torch.Tensor) -> torch.FloatTensor:
        """The vocoder alone: Griffin-Lim with `config.griffin_lim_iterations` (deterministic: fixed seed), in the
        config's blocks."""
        return self.features.invert(log_mel.float(), **self._griffin_lim_settings())

    def _griffin_lim_settings(self) -> dict:
        config = self.config
        return {"iterations": config.griffin_lim_iterations, "block_frames": config.griffin_lim_block_frames,
                "first_block_frames": config.griffin_lim_first_block_frames}  # fmt: skip

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel - self.mel_mean[:, None]) / self.mel_std[:, None]

    def denormalize(self, standardized: torch.Tensor) -> torch.Tensor:
        return standardized.float() * self.mel_std[:, None] + self.mel_mean[:, None]

    @property
    def is_initialized(self) -> bool:
        return bool(self.quantizer.initialized)

    @torch.no_grad()
    def initialize_from_data(self, waveform: torch.Tensor = None, log_mel: torch.Tensor = None, seed: int = 0) -> None:
        """Set the log-mel statistics and seed the codebooks by k-means, from a batch of real audio.

        Training calls this on its first batch when nothing was initialised; call it yourself with a larger sample
        (a few hundred frames per codebook entry is plenty) for a better start."""
        if log_mel is None:
            log_mel = self.features(self._check_waveform(waveform, check_silence=False))
        frames = log_mel.float().transpose(1, 2).reshape(-1, log_mel.shape[1])
        self.mel_mean.copy_(frames.mean(dim=0))
        self.mel_std.copy_(frames.std(dim=0).clamp(min=1e-3))
        latent = self.encoder(self.normalize(log_mel.float()))
        vectors = latent.transpose(1, 2).reshape(-1, latent.shape[1])
        self.quantizer.initialize(vectors, torch.Generator().manual_seed(seed))

    def forward(self, input_values: torch.Tensor | None = None, log_mel: torch.Tensor | None = None) -> MelCodecOutput:
        """Encode, quantize and decode a batch; return the losses. `input_values (batch, samples)` are waveforms;
        or pass `log_mel (batch, n_mels, mel_frames)` directly. In training mode the codebooks follow the batch."""
        if log_mel is None:
            if input_values is None:
                raise ValueError("give input_values (batch, samples) waveforms, or log_mel (batch, n_mels, frames)")
            log_mel = self.features(self._check_waveform(input_values, check_silence=False))
        if self.training and not self.is_initialized:
            self.initialize_from_data(log_mel=log_mel)
        target = self.normalize(log_mel.float())
        num_stages = None
        if self.training and self.config.quantizer_dropout > 0 and torch.rand(()) < self.config.quantizer_dropout:
            num_stages = int(torch.randint(1, self.config.num_codebooks + 1, ()))
        quantized, codes, commitment = self.quantizer(self.encoder(target), update=self.training, num_stages=num_stages)
        reconstruction = self.decoder(quantized)[..., : target.shape[-1]]
        reconstruction_loss = F.l1_loss(reconstruction, target)
        loss = reconstruction_loss + self.config.commitment_weight * commitment
        return MelCodecOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss.detach(),
            commitment_loss=commitment.detach(),
            log_mel=self.denormalize(reconstruction),
            audio_codes=codes,
        )

    def truncated(self, num_codebooks: int) -> "MelCodecModel":
        """A copy that keeps only the first `num_codebooks` codebooks: a lower-bitrate codec from the same weights
        (works well when trained with `quantizer_dropout`)."""
        if not 1 <= num_codebooks <= self.config.num_codebooks:
            raise ValueError(f"num_codebooks={num_codebooks} must lie in 1..{self.config.num_codebooks}")
        config = MelCodecConfig.from_dict({**self.config.to_dict(), "num_codebooks": num_codebooks})
        model = MelCodecModel(config)
        state = self.state_dict()
        for name in ("codebooks", "ema_count", "ema_sum"):
            state[f"quantizer.{name}"] = state[f"quantizer.{name}"][:num_codebooks].clone()
        model.load_state_dict(state)
        return model.to(self.device).train(self.training)

    def _check_waveform(self, waveform, check_silence: bool = True) -> torch.Tensor:
        waveform = check_waveform(waveform, self.config.n_fft // 2 + 1, self.config.sampling_rate, check_silence)
        return waveform.to(device=self.mel_mean.device, dtype=torch.float32)

    def _check_codes(self, codes) -> torch.LongTensor:
        codes = check_codes(codes, self.config.num_codebooks, self.config.codebook_size)
        if codes.shape[2] * self.config.downsampling_factor < 2:
            raise ValueError(f"codes of shape {tuple(codes.shape)} are too short: Griffin-Lim needs 2 log-mel frames")
        return codes.to(device=self.mel_mean.device)


class MelCodecDecodeStream:
    """`MelCodecModel.decode` for codes that arrive a few frames at a time, giving audio as it becomes final.

    The log-mel is decoded in fixed blocks of code frames (`MEL_DECODE_FIRST_BLOCK_FRAMES`, doubling up to
    `MEL_DECODE_BLOCK_FRAMES`), each from a window reaching `decoder_lookahead` frames before it and
    `decode_lookahead` frames past it, once those codes are known; the block Griffin-Lim (`GriffinLimStream`) takes
    it from there. The blocks and windows depend on the frame positions only, not on how the codes arrive, so the
    samples are exactly `decode`'s (float results can change with a window's length, so the windows are fixed).
    """

    def __init__(self, codec: MelCodecModel):
        self.codec = codec
        self.vocoder = GriffinLimStream(codec.features, **codec._griffin_lim_settings())
        self.latent = None  # the decoder's input so far, (batch, codebook_dim, frames)
        self.done = 0  # code frames whose log-mel went to the vocoder
        self.blocks_done = 0

    @torch.no_grad()
    def push(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """Add code frames `(batch, num_codebooks, frames)`; returns the samples `(batch, samples)` now final."""
        config = self.codec.config
        codes = check_codes(codes, config.num_codebooks, config.codebook_size).to(self.codec.mel_mean.device)
        return self._push_latent(self.codec.quantizer.lookup(codes))

    @torch.no_grad()
    def push_expected(self, code_probabilities: torch.FloatTensor) -> torch.FloatTensor:
        """`push` for frames given as code distributions `(batch, num_codebooks, frames, codebook_size)`: their
        expected codebook vectors are decoded (`MelCodecModel.decode_expected`)."""
        config = self.codec.config
        code_probabilities = check_code_probabilities(code_probabilities, config.num_codebooks, config.codebook_size)
        return self._push_latent(self.codec.quantizer.expected(code_probabilities.to(self.codec.mel_mean.device)))

    def _push_latent(self, latent: torch.Tensor) -> torch.FloatTensor:
        if self.latent is not None and latent.shape[0] != self.latent.shape[0]:
            raise ValueError(f"pushed {latent.shape[0]} clip(s) after {self.latent.shape[0]}: push the same batch")
        self.latent = latent if self.latent is None else torch.cat([self.latent, latent], dim=-1)
        pieces = []
        while self._block_end() + self.codec.decode_lookahead <= self.latent.shape[-1]:
            pieces.append(self._decode_block(self._block_end()))
        return torch.cat(pieces, dim=-1) if pieces else torch.zeros(self.latent.shape[0], 0)

    @torch.no_grad()
    def finish(self) -> torch.FloatTensor:
        """The remaining samples, once every code frame has been pushed."""
        if self.latent is None:
            raise ValueError("no code frames were pushed: give at least one frame")
        frames = self.latent.shape[-1]
        if frames * self.codec.config.downsampling_factor < 2:
            raise ValueError(f"{frames} code frame(s) are too short: Griffin-Lim needs 2 log-mel frames")
        pieces = []
        while self.done < frames:
            pieces.append(self._decode_block(min(self._block_end(), frames)))
        return torch.cat(pieces + [self.vocoder.finish()], dim=-1)

    def _block_end(self) -> int:
        return doubling_block_end(self.done, self.blocks_done, MEL_DECODE_FIRST_BLOCK_FRAMES, MEL_DECODE_BLOCK_FRAMES)

    def _decode_block(self, end: int) -> torch.Tensor:
        """Decode code frames `[done, end)` from the window around them and pass their log-mel to the vocoder."""
        factor = self.codec.config.downsampling_factor
        start = max(0, self.done - self.codec.decoder_lookahead)
        window = self.latent[..., start : end + self.codec.decode_lookahead]
        log_mel = self.codec.denormalize(self.codec.decoder(window))
        samples = self.vocoder.push(log_mel[..., (self.done - start) * factor : (end - start) * factor])
        self.done = end
        self.blocks_done += 1
        return samples


# Input checks shared by the codecs (acoustic_codec.py imports them): the errors name the problem and the fix.
def check_waveform(waveform, minimum_samples: int, sampling_rate: int, check_silence: bool = True) -> torch.Tensor:
    """A float `(batch, samples)` tensor of finite audio in about [-1, 1], long enough, and (optionally) not silent."""
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(waveform)
    if not isinstance(waveform, torch.Tensor):
        raise ValueError(f"waveform must be a torch.Tensor (batch, samples), got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise ValueError(
            f"waveform has dtype {waveform.dtype}: give float audio in [-1, 1] (int16 PCM: divide by 32768)"
        )
    if waveform.dim() != 2:
        raise ValueError(
            f"waveform must be (batch, samples), got shape {tuple(waveform.shape)}: use waveform[None] for one "
            "mono clip, and mix or pick one channel of multi-channel audio"
        )
    if waveform.shape[0] == 0 or waveform.shape[1] < minimum_samples:
        raise ValueError(
            f"waveform of shape {tuple(waveform.shape)} is empty or too short: the codec needs at least one clip of "
            f"{minimum_samples} samples ({1000 * minimum_samples / sampling_rate:.0f} ms at {sampling_rate} Hz); "
            "pad it with silence"
        )
    if not torch.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or infinite values: check the audio loading")
    peaks = waveform.detach().abs().amax(dim=1)
    if peaks.max() > MAX_PEAK:
        raise ValueError(
            f"waveform peaks at {float(peaks.max()):.1f}: give float audio in [-1, 1] (int16 PCM: divide by 32768)"
        )
    if check_silence and (peaks < SILENCE_PEAK).any():
        index = int((peaks < SILENCE_PEAK).nonzero()[0])
        raise ValueError(
            f"waveform {index} of the batch is silent (peak {float(peaks[index]):.1e}): there is nothing to encode; "
            "check the audio loading, or leave silent clips out"
        )
    return waveform


def check_codes(codes, num_codebooks: int, codebook_size: int) -> torch.LongTensor:
    """An integer `(batch, num_codebooks, frames)` tensor with every code in `[0, codebook_size)`."""
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(codes)
    integer = isinstance(codes, torch.Tensor) and not (codes.is_floating_point() or codes.is_complex())
    if not integer or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor (batch, num_codebooks, frames), got {type(codes).__name__}")
    if codes.dim() != 3 or codes.shape[1] != num_codebooks:
        raise ValueError(
            f"codes must be (batch, {num_codebooks}, frames) for this codec's {num_codebooks} codebooks, got shape "
            f"{tuple(codes.shape)}: use codes[None] for one clip"
        )
    if codes.numel() == 0:
        raise ValueError(f"codes of shape {tuple(codes.shape)} are empty: give at least one clip and one frame")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        raise ValueError(
            f"codes range over [{low}, {high}] but this codec's codebooks have {codebook_size} entries "
            f"(0..{codebook_size - 1}): were they made by another codec?"
        )
    return codes.long()


def check_code_probabilities(code_probabilities, num_codebooks: int, codebook_size: int) -> torch.FloatTensor:
    """A float `(batch, num_codebooks, frames, codebook_size)` tensor of distributions: finite, non-negative, each
    summing to 1."""
    if not isinstance(code_probabilities, torch.Tensor) or not code_probabilities.is_floating_point():
        raise ValueError(
            f"code_probabilities must be a float tensor (batch, num_codebooks, frames, codebook_size), got "
            f"{type(code_probabilities).__name__}"
        )
    shape = tuple(code_probabilities.shape)
    if len(shape) != 4 or shape[1] != num_codebooks or shape[3] != codebook_size or 0 in shape:
        raise ValueError(
            f"code_probabilities must be (batch, {num_codebooks}, frames, {codebook_size}) for this codec's "
            f"{num_codebooks} codebooks of {codebook_size} entries, with at least one frame; got shape {shape}"
        )
    if not torch.isfinite(code_probabilities).all() or (code_probabilities < 0).any():
        raise ValueError("code_probabilities holds negative, NaN or infinite values: give softmax outputs")
    if ((code_probabilities.sum(dim=-1) - 1).abs() > 1e-3).any():
        raise ValueError("code_probabilities do not sum to 1 over each codebook's entries: give softmax outputs")
    return code_probabilities


# Saving copies this file, its configuration and audio_features.py beside the weights (see `save_pretrained`).
MelCodecConfig.register_for_auto_class()
MelCodecModel.register_for_auto_class("AutoModel")

__all__ = [
    "MelCodecModel",
    "MelCodecOutput",
    "MelCodecPreTrainedModel",
    "ResidualVectorQuantizer",
    "check_codes",
    "check_waveform",
]
