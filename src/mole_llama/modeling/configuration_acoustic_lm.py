"""Acoustic LM configuration: semantic units in, multi-codebook acoustic codec tokens out, on a Llama backbone.

This file is copied into saved model folders for `trust_remote_code=True`: it must import nothing from
`mole_llama`, only from transformers, huggingface_hub and the standard library.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, PreTrainedConfig


@strict
class AcousticLMConfig(PreTrainedConfig):
    r"""
    Configuration of an [`AcousticLMForConditionalGeneration`]: a causal Llama decoder that emits one acoustic
    frame (all codebooks) per step, conditioned on the semantic unit aligned with that frame and, optionally, on the
    acoustic codes of a voice prompt.

    Args:
        num_semantic_units (`int`, *optional*, defaults to 1024):
            Size K of the semantic unit inventory; units are integers in `[0, num_semantic_units)`.
        num_codebooks (`int`, *optional*, defaults to 8):
            Number of residual codebooks of the acoustic codec.
        codebook_size (`int`, *optional*, defaults to 1024):
            Entries per codebook; codes are integers in `[0, codebook_size)`.
        semantic_unit_rate (`float`, *optional*, defaults to 50.0):
            Semantic units per second (e.g. 50 for HuBERT / log-mel units, 25 when halved).
        acoustic_frame_rate (`float`, *optional*, defaults to 50.0):
            Codec frames per second (50 for the embedded codec, 75 for EnCodec 24 kHz). Any ratio to the unit rate
            works: frame `t` reads the unit whose time span holds the frame's centre.
        hidden_size (`int`, *optional*, defaults to 512):
            Width of the decoder.
        intermediate_size (`int`, *optional*, defaults to 1536):
            Width of the decoder's MLPs.
        num_hidden_layers (`int`, *optional*, defaults to 8):
            Decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads per layer.
        num_key_value_heads (`int`, *optional*):
            Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
        head_intermediate_size (`int`, *optional*):
            Width of the small MLP that each codebook head applies after adding the embeddings of the frame's lower
            codebooks; defaults to `2 * hidden_size`.
        unit_context_layers (`int`, *optional*, defaults to 3):
            Residual convolution blocks run over the frame-aligned unit embeddings before the decoder, so that each
            frame also hears the units around it (upcoming ones included): the causal decoder alone would only see
            past units, and would lean on the previous frame's codes instead, which free-running generation does not
            have right. 0 turns the context off.
        unit_context_kernel_size (`int`, *optional*, defaults to 5):
            Odd kernel width of those blocks; each side sees `unit_context_layers * (kernel - 1) / 2` frames.
        previous_code_noise (`float`, *optional*, defaults to 0.1):
            Training only: the share of previous-frame input codes replaced by random codes, so that the model does
            not trust its own (at inference, sampled) history more than the units.
        max_position_embeddings (`int`, *optional*, defaults to 4096):
            Most frames (voice prompt + generated) one sequence may hold: the hard cap on a synthesis
            (82 s at 50 Hz). Longer text must be split.
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the RMS norms.
        rope_theta (`float`, *optional*, defaults to 10000.0):
            Base of the rotary position embeddings.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of weights and embeddings.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the decoder's and heads' MLPs.
        float16_decoding (`bool`, *optional*, defaults to `False`):
            In inference on float32 weights, the decoder's and heads' products use their weights rounded to float16
            precision: on a CPU through FBGEMM's float16-weight GEMM (half the bytes read; the rows and the sums stay
            float32; `float16_weights.py`), elsewhere in float32. Training is unchanged. Each row's product does not
            depend on the others, so an item alone (or streamed) and in a batch get the same numbers (compiled
            decoding steps, one item at a time, multiply rows rounded to float16 too).
    """

    model_type = "acoustic_lm"

    num_semantic_units: int = 1024
    num_codebooks: int = 8
    codebook_size: int = 1024
    semantic_unit_rate: int | float = 50.0
    acoustic_frame_rate: int | float = 50.0
    hidden_size: int = 512
    intermediate_size: int = 1536
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_intermediate_size: int | None = None
    unit_context_layers: int = 3
    unit_context_kernel_size: int = 5
    previous_code_noise: int | float = 0.1
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: int | float = 10000.0
    attention_dropout: int | float = 0.0
    initializer_range: float = 0.02
    hidden_act: str = "silu"
    float16_decoding: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_intermediate_size is None:
            self.head_intermediate_size = 2 * self.hidden_size
        self.semantic_unit_rate = float(self.semantic_unit_rate)
        self.acoustic_frame_rate = float(self.acoustic_frame_rate)
        self._check()
        super().__post_init__(**kwargs)

    def _check(self):
        """Raise a plain `ValueError` naming the bad setting (strict's validators would wrap it in their own type)."""
        for name in (
            "num_semantic_units",
            "num_codebooks",
            "codebook_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("semantic_unit_rate", "acoustic_frame_rate"):
            rate = getattr(self, name)
            if not math.isfinite(rate) or rate <= 0:
                raise ValueError(f"{name}={rate} must be a positive number of tokens per second (e.g. 50.0)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.unit_context_layers < 0:
            raise ValueError(f"unit_context_layers={self.unit_context_layers} must be 0 (no context) or more")
        if self.unit_context_kernel_size < 1 or self.unit_context_kernel_size % 2 == 0:
            raise ValueError(
                f"unit_context_kernel_size={self.unit_context_kernel_size} must be a positive odd number, so the "
                f"context is centred on the frame"
            )
        if not 0.0 <= self.previous_code_noise < 1.0:
            raise ValueError(f"previous_code_noise={self.previous_code_noise} must lie in [0, 1)")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout={self.attention_dropout} must lie in [0, 1)")

    @property
    def frames_per_unit(self) -> float:
        """Acoustic frames per semantic unit (1 for 50/50 Hz, 3 for EnCodec's 75 Hz over 25 Hz units)."""
        return self.acoustic_frame_rate / self.semantic_unit_rate

    def num_frames(self, num_units: int) -> int:
        """Frames a sequence of `num_units` units lasts: `ceil(num_units * frame_rate / unit_rate)`."""
        return math.ceil(num_units * self.acoustic_frame_rate / self.semantic_unit_rate - 1e-9)

    def to_llama_config(self) -> LlamaConfig:
        """The decoder's config. It has no token vocabulary of its own (inputs come as embeddings), hence vocab 1."""
        return LlamaConfig(
            vocab_size=1,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            attention_dropout=self.attention_dropout,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=False,
            attn_implementation=self._attn_implementation,
        )


__all__ = ["AcousticLMConfig"]
