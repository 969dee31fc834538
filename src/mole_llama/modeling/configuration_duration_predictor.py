"""Duration predictor configuration: how many frames each deduplicated semantic unit lasts.

Copied into saved model folders for `trust_remote_code=True`: imports only transformers and huggingface_hub.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class DurationPredictorConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DurationPredictorModel`]: a small convolutional network over run-length-collapsed units
    that predicts a log-normal distribution of each unit's duration in frames (FastSpeech's duration predictor,
    fairseq's unit-to-speech `--dur-prediction`). The LLM speaks the collapsed units; the predictor expands them to
    frames for the frame-aligned acoustic LM.

    Args:
        num_units (`int`, *optional*, defaults to 40):
            Size of the unit inventory (the semantic tokenizer's `num_units`).
        unit_rate (`float`, *optional*, defaults to 50.0):
            Frames per second of the frame-level units the durations count.
        hidden_size (`int`, *optional*, defaults to 192):
            Channels of the embeddings and convolutions.
        num_layers (`int`, *optional*, defaults to 3):
            Convolution blocks; each unit hears `num_layers * right_context` later units and `num_layers *
            (kernel_size - 1 - right_context)` earlier ones.
        kernel_size (`int`, *optional*, defaults to 5):
            Odd kernel width of the convolutions.
        right_context (`int`, *optional*):
            Later units each convolution reads, from 0 to `kernel_size - 1`; None centres the kernel
            (`kernel_size // 2`). Fewer later units let a stream time a unit sooner after the LLM says it.
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout after each block (training only).
        max_duration (`int`, *optional*, defaults to 100):
            Cap on one unit's predicted frames (2 s at 50 Hz), against a runaway sample.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the embedding initialisation.
    """

    model_type = "unit_duration_predictor"

    num_units: int = 40
    unit_rate: int | float = 50.0
    hidden_size: int = 192
    num_layers: int = 3
    kernel_size: int = 5
    right_context: int | None = None
    dropout: int | float = 0.1
    max_duration: int = 100
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.unit_rate = float(self.unit_rate)
        for name in ("num_units", "hidden_size", "num_layers", "max_duration"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.unit_rate <= 0:
            raise ValueError(f"unit_rate={self.unit_rate} must be a positive number of frames per second")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be a positive odd number, centred on the unit")
        if self.right_context is not None and not 0 <= self.right_context < self.kernel_size:
            raise ValueError(
                f"right_context={self.right_context} must lie in [0, kernel_size - 1 = {self.kernel_size - 1}] "
                "(or None for a centred kernel)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1)")
        super().__post_init__(**kwargs)

    @property
    def convolution_context(self) -> tuple:
        """(earlier, later) units one convolution reads: `right_context` later ones (half the kernel when it is
        None), the rest of the kernel earlier ones."""
        right = self.kernel_size // 2 if self.right_context is None else self.right_context
        return self.kernel_size - 1 - right, right


__all__ = ["DurationPredictorConfig"]
