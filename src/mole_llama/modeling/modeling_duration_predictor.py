"""Duration predictor: deduplicated semantic units -> frames per unit, so the LLM can speak ~3x fewer tokens.

`forward(units, durations=...)` gives the Gaussian negative log-likelihood of the log-durations (the training
loss); `predict(units)` gives integer durations: the median (temperature 0) or sampled, scaled by `speed`.

Self-contained (torch, transformers and sibling files) for `trust_remote_code=True`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_duration_predictor import DurationPredictorConfig

MIN_LOG_STD = -4.0


@dataclass
class DurationPredictorOutput(ModelOutput):
    """`loss` (with `durations`), and per unit the `log_duration_mean` and `log_duration_log_std` (batch, units)."""

    loss: torch.FloatTensor | None = None
    log_duration_mean: torch.FloatTensor | None = None
    log_duration_log_std: torch.FloatTensor | None = None


class DurationConvBlock(nn.Module):
    """Convolution over neighbouring units (`right_context` later ones, the rest of the kernel earlier ones), ReLU,
    layer norm, dropout, with a residual path; padding stays zero."""

    def __init__(self, config: DurationPredictorConfig):
        super().__init__()
        size = config.hidden_size
        self.conv = nn.Conv1d(size, size, config.kernel_size)
        self.padding = config.convolution_context  # zeros before and after, as many as the kernel reads there
        self.norm = nn.LayerNorm(size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        update = torch.relu(self.conv(nn.functional.pad(states.transpose(1, 2), self.padding))).transpose(1, 2)
        return (states + self.dropout(self.norm(update))) * mask[..., None]


class DurationPredictorModel(PreTrainedModel):
    config_class = DurationPredictorConfig
    config: DurationPredictorConfig
    main_input_name = "units"

    def __init__(self, config: DurationPredictorConfig):
        super().__init__(config)
        self.embed_units = nn.Embedding(config.num_units, config.hidden_size)
        self.blocks = nn.ModuleList(DurationConvBlock(config) for _ in range(config.num_layers))
        self.head = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.kaiming_uniform_(module.weight, a=5**0.5)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save with an `auto_map`, so the folder loads with `trust_remote_code=True` without mole_llama."""
        self.config.auto_map = {
            "AutoConfig": "configuration_duration_predictor.DurationPredictorConfig",
            "AutoModel": "modeling_duration_predictor.DurationPredictorModel",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def lookahead(self) -> int:
        """Units past a unit that its duration depends on: the convolutions reach that far, so a unit's duration is
        final once that many later units are known (streaming)."""
        return self.config.num_layers * self.config.convolution_context[1]

    @property
    def lookbehind(self) -> int:
        """Units before a unit that its duration depends on."""
        return self.config.num_layers * self.config.convolution_context[0]

    def _check_units(self, units: torch.Tensor, mask: torch.Tensor) -> None:
        if units.dim() != 2:
            raise ValueError(f"units must be (batch, units), got shape {tuple(units.shape)}")
        valid = units[mask.bool()]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.config.num_units):
            raise ValueError(f"units must lie in [0, {self.config.num_units}), got {valid.min()}..{valid.max()}")

    def forward(self, units, units_mask=None, durations=None) -> DurationPredictorOutput:
        """`units` (batch, units) of deduplicated units, `units_mask` 1 for real units, `durations` (frames) for the
        loss: the mean over real units of the Gaussian negative log-likelihood of `log(durations)`."""
        units = torch.as_tensor(units, device=self.device)
        mask = torch.ones_like(units) if units_mask is None else torch.as_tensor(units_mask, device=self.device)
        self._check_units(units, mask)
        mask = mask.to(self.head.weight.dtype)
        states = self.embed_units(units.clamp(min=0)) * mask[..., None]
        for block in self.blocks:
            states = block(states, mask)
        mean, log_std = self.head(states).unbind(-1)
        log_std = log_std.clamp(min=MIN_LOG_STD)
        loss = None
        if durations is not None:
            durations = torch.as_tensor(durations, device=self.device, dtype=mean.dtype).clamp(min=1)
            z = (durations.log() - mean) / log_std.exp()
            nll = 0.5 * z.pow(2) + log_std
            loss = (nll * mask).sum() / mask.sum().clamp(min=1)
        return DurationPredictorOutput(loss=loss, log_duration_mean=mean, log_duration_log_std=log_std)

    @torch.no_grad()
    def predict(self, units, temperature: float = 0.0, speed: float = 1.0, generator=None, start: int = 0,
                end: int | None = None) -> list:  # fmt: skip
        """Frames for each unit of one sequence (a list of ints): the median duration at `temperature` 0, else a
        draw with the predicted spread times `temperature`; `speed` > 1 speaks faster (durations divided by it).

        Only `units[start:end]` are timed, the rest being context they hear (streaming times a window at a time).
        The draws are made one unit at a time, so timing a sequence window by window draws the same noise."""
        if not speed > 0 or speed != speed:
            raise ValueError(f"speed={speed}: give a positive factor (1.0 = as trained, 1.2 = 20% faster)")
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: give 0 (median durations) or more (sampled)")
        units = torch.as_tensor([list(units)], device=self.device)
        if units.shape[1] == 0:
            raise ValueError("no units to time: give at least one unit")
        output = self(units)
        log_duration = output.log_duration_mean[0, start:end]
        if temperature > 0 and len(log_duration):
            noise = torch.cat([torch.randn(1, generator=generator) for _ in range(len(log_duration))])
            spread = output.log_duration_log_std[0, start:end].exp()
            log_duration = log_duration + temperature * spread * noise.to(log_duration.device)
        frames = (log_duration.exp() / speed).round().clamp(1, self.config.max_duration)
        return [int(frame) for frame in frames]


DurationPredictorConfig.register_for_auto_class()
DurationPredictorModel.register_for_auto_class("AutoModel")

__all__ = ["DurationPredictorModel", "DurationPredictorOutput"]
