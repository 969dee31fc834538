"""Configuration of the embedded acoustic codec: log-mel -> conv encoder -> residual VQ -> conv decoder -> log-mel.

This file is copied into saved model folders for `trust_remote_code=True`: it must import nothing from
`mole_llama`, only from transformers, huggingface_hub and the standard library.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class MelCodecConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MelCodecModel`]: the small acoustic codec (acoustic tokenizer + vocoder) trainable on a CPU.
    Waveform -> 80-bin log-mel (hop 320 at 16 kHz: 50 frames/s) -> 1-D convolutional encoder -> residual vector
    quantization (`num_codebooks` x `codebook_size`) -> 1-D convolutional decoder -> log-mel -> Griffin-Lim.

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000): Rate of the waveforms going in and out.
        n_fft (`int`, *optional*, defaults to 1024): STFT size of the log-mel front end (and of Griffin-Lim).
        hop_length (`int`, *optional*, defaults to 320): Samples between log-mel frames (320 at 16 kHz: 50 Hz).
        n_mels (`int`, *optional*, defaults to 80): Mel bins.
        downsampling_factor (`int`, *optional*, defaults to 1):
            Log-mel frames per code frame. 2 halves the acoustic LM's sequence (25 Hz at hop 320) at some cost.
        hidden_size (`int`, *optional*, defaults to 256): Channels of the convolutional encoder and decoder.
        num_residual_layers (`int`, *optional*, defaults to 4):
            Residual blocks (dilated conv + 1x1 conv) in the encoder and, as many, in the decoder.
        kernel_size (`int`, *optional*, defaults to 3): Kernel size of the residual blocks' dilated convolutions.
        codebook_dim (`int`, *optional*, defaults to 64): Width of the latent vectors that the codebooks quantize.
        num_codebooks (`int`, *optional*, defaults to 4): Residual quantization stages: codes per frame.
        codebook_size (`int`, *optional*, defaults to 256): Entries per codebook.
        commitment_weight (`float`, *optional*, defaults to 0.25):
            Weight of the commitment loss that pulls the encoder output towards its quantized value.
        ema_decay (`float`, *optional*, defaults to 0.99):
            Codebooks are not trained by gradient but by an exponential moving average of the vectors assigned to
            each entry (stable, and right from the first step after their k-means initialisation on data).
        dead_code_threshold (`float`, *optional*, defaults to 0.5):
            An entry whose moving-average usage (vectors per batch) falls below this is re-seeded with a vector of
            the current batch, so no codebook entry stays wasted. 0 turns the reset off.
        quantizer_dropout (`float`, *optional*, defaults to 0.0):
            Probability that a training batch is quantized with only its first `n` codebooks (`n` uniform in
            1..num_codebooks), as in SoundStream: the leading codebooks then carry the coarse content on their own,
            so `truncated(n)` gives a working lower-bitrate codec (and the acoustic LM may drop the fine ones).
        kmeans_iterations (`int`, *optional*, defaults to 10):
            Lloyd iterations of the k-means that seeds each codebook from the first training batch.
        griffin_lim_iterations (`int`, *optional*, defaults to 32): Phase-recovery iterations of `decode`.
        griffin_lim_block_frames (`int`, *optional*, defaults to 40):
            Griffin-Lim recovers the phase block by block (cross-faded), so decoding can stream: the same audio
            whether the codes come at once or a few frames at a time. `None` recovers a whole signal at once.
        griffin_lim_first_block_frames (`int`, *optional*, defaults to 8):
            The first block's frames: short, so streamed audio starts early.
        decode_lookahead_frames (`int`, *optional*):
            Later code frames each block of `decode` reads its log-mel from. None: the decoder's whole reach, so a
            block's log-mel is the one a single pass over the clip gives; fewer let streamed audio start sooner, at
            a small change of the log-mel near each block's end (the blocks are the same in `decode` and in a
            stream, so both still give the same samples).
    """

    model_type = "mel_codec"
    main_input_name = "input_values"

    sampling_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 80
    downsampling_factor: int = 1
    hidden_size: int = 256
    num_residual_layers: int = 4
    kernel_size: int = 3
    codebook_dim: int = 64
    num_codebooks: int = 4
    codebook_size: int = 256
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.5
    quantizer_dropout: float = 0.0
    kmeans_iterations: int = 10
    griffin_lim_iterations: int = 32
    griffin_lim_block_frames: int | None = 40
    griffin_lim_first_block_frames: int | None = 8
    decode_lookahead_frames: int | None = None

    def __post_init__(self, **kwargs):
        self._check()
        super().__post_init__(**kwargs)

    def _check(self):
        """Raise a plain `ValueError` naming the bad setting (strict's validators would wrap it in their own type)."""
        positive = [
            "sampling_rate", "n_fft", "hop_length", "n_mels", "downsampling_factor", "hidden_size", "kernel_size",
            "codebook_dim", "num_codebooks", "griffin_lim_iterations",
        ]  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.griffin_lim_block_frames is not None and self.griffin_lim_block_frames < 2:
            raise ValueError(f"griffin_lim_block_frames={self.griffin_lim_block_frames} must be at least 2 (or None)")
        if self.griffin_lim_first_block_frames is not None and self.griffin_lim_first_block_frames < 1:
            raise ValueError(
                f"griffin_lim_first_block_frames={self.griffin_lim_first_block_frames} must be at least 1 (or None)"
            )
        if self.decode_lookahead_frames is not None and self.decode_lookahead_frames < 0:
            raise ValueError(
                f"decode_lookahead_frames={self.decode_lookahead_frames} cannot be negative (None: the decoder's reach)"
            )
        if self.num_residual_layers < 0 or self.kmeans_iterations < 0:
            raise ValueError("num_residual_layers and kmeans_iterations cannot be negative")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size={self.codebook_size} must be at least 2 for codes to carry anything")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd so convolutions keep the frame count")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length={self.hop_length} exceeds n_fft={self.n_fft}: frames would skip samples")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must lie in [0, 1)")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout={self.quantizer_dropout} is a probability: use a value in [0, 1]")
        if self.commitment_weight < 0 or self.dead_code_threshold < 0:
            raise ValueError("commitment_weight and dead_code_threshold cannot be negative")

    @property
    def frame_rate(self) -> float:
        """Code frames per second of audio."""
        return self.sampling_rate / (self.hop_length * self.downsampling_factor)


__all__ = ["MelCodecConfig"]
