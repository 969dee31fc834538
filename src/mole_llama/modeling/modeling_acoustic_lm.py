"""Acoustic LM: semantic speech units (and an optional voice prompt) -> multi-codebook acoustic codec tokens.

Frame-aligned design, cheap to learn from little data: the decoder (transformers' `LlamaModel`, fed
`inputs_embeds`; attention, rotary embeddings, masks and the KV cache are Llama's own) takes one position per
acoustic frame. The input at frame `t` is

    context(unit_embed[unit aligned with t] + phase_embed[frame index inside that unit]) + segment_embed[target]
    + sum_k code_embed_k[code of codebook k at frame t - 1]        (a learned start vector at the first frame)

where `context` is a few residual convolutions over the whole aligned unit sequence: the units are known before
generation starts, so each frame may hear upcoming units too (a causal decoder alone would not).

and a voice prompt is a prefix of frames with `segment_embed[prompt]` and no unit. One head per codebook predicts
the frame's codes; head `k` also sees embeddings of the same frame's codes of codebooks `< k` (teacher-forced in
training, sampled one after the other at inference), which captures the residual codebooks' dependency without a
second transformer pass. The number of frames is fixed by the units (`ceil(len(units) * frame_rate / unit_rate)`),
so generation cannot run on.

This file is copied into saved model folders for `trust_remote_code=True`: it imports nothing from
`mole_llama` but its sibling configuration file.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, TemperatureLogitsWarper, TopKLogitsWarper
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import TopPLogitsWarper
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaModel, LlamaRMSNorm
from transformers.utils import ModelOutput

from .configuration_acoustic_lm import AcousticLMConfig
from .float16_weights import Float16WeightLinear, allow_compiled_steps, check_finite_step, use_float16_weights

PAD_CODE = -100
"""Fills frames past an item's end in padded code tensors; also the ignore index of the loss (as in `labels`)."""

CONDITIONING_BLOCK_FRAMES = 4
"""Generation conditions frames in blocks of this many (`_conditioning_in_blocks`): a stream waits for whole blocks,
so it starts up to this many frames later; a block's window is this plus twice the lookahead."""

REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_acoustic_lm.AcousticLMConfig",
    "AutoModel": "modeling_acoustic_lm.AcousticLMForConditionalGeneration",
}

PROMPT_SEGMENT, TARGET_SEGMENT = 0, 1


@dataclass
class AcousticLMOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy of the acoustic codes, averaged over all (frame, codebook) targets that are not padding.
    logits (`torch.FloatTensor` of shape `(batch, frames, num_codebooks, codebook_size)`):
        Next-code scores of every frame and codebook (teacher-forced: head `k` saw the true codes of codebooks `< k`).
    codebook_losses (`torch.FloatTensor` of shape `(num_codebooks,)`, *optional*):
        The cross-entropy of each codebook alone (the residual codebooks are usually harder), for logging.
    frames_mask (`torch.LongTensor` of shape `(batch, frames)`):
        1 on the real frames of each item, 0 on padding.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    codebook_losses: torch.FloatTensor | None = None
    frames_mask: torch.LongTensor | None = None


@dataclass
class AcousticLMGenerateOutput(ModelOutput):
    r"""
    codes (`torch.LongTensor` of shape `(batch, num_codebooks, frames)`):
        Generated acoustic codes; frames past an item's end hold `PAD_CODE` (-100).
    lengths (`torch.LongTensor` of shape `(batch,)`):
        Number of real frames of each item.
    code_probabilities (`torch.FloatTensor` of shape `(batch, num_codebooks, frames, codebook_size)`, *optional*):
        With `output_code_probabilities=True`: each frame's distribution over each codebook's codes (softmax of its
        logits at temperature 1, given the codes chosen for the frame's lower codebooks); zero past an item's end.
    """

    codes: torch.LongTensor | None = None
    lengths: torch.LongTensor | None = None
    code_probabilities: torch.FloatTensor | None = None


def _split_batch(values, mask, item_dim: int, name: str, mask_name: str, pad_is_negative: bool = False) -> list:
    """Turn a padded tensor (+ mask) or a list of per-item sequences into a list of per-item LongTensors, so that
    left- or right-padded input, ragged lists and single items all take one path."""
    if isinstance(values, torch.Tensor):
        values = values.long()
        if values.dim() == item_dim:
            values = values.unsqueeze(0)
            mask = None if mask is None else torch.as_tensor(mask).reshape(1, -1)
        if values.dim() != item_dim + 1:
            shape = "[batch, units]" if item_dim == 1 else "[batch, num_codebooks, frames]"
            raise ValueError(f"{name} must have shape {shape}, got {tuple(values.shape)}")
        if mask is None and pad_is_negative and item_dim == 2:
            mask = (values >= 0).any(dim=1)  # frames that are PAD_CODE in every codebook are padding
        if mask is None:
            return list(values)
        mask = torch.as_tensor(mask, device=values.device).bool()
        if mask.shape != (values.shape[0], values.shape[-1]):
            raise ValueError(
                f"{mask_name} must have shape {(values.shape[0], values.shape[-1])} (batch, length of {name}), "
                f"got {tuple(mask.shape)}"
            )
        return [item[..., keep] for item, keep in zip(values, mask)]
    if isinstance(values, (list, tuple)):
        if mask is not None:
            raise ValueError(f"{mask_name} is only for a padded tensor: give {name} as a list without a mask")
        if len(values) == 0:
            raise ValueError(f"{name} is an empty batch: give at least one item")
        first = values[0]
        if item_dim == 1 and not isinstance(first, (list, tuple, torch.Tensor)):
            values = [values]  # one plain list of units
        elif item_dim == 2 and isinstance(first, (list, tuple)) and first and not isinstance(first[0], (list, tuple)):
            values = [values]  # one nested list of codes, [num_codebooks][frames]
        items = []
        for item in values:
            items.append(torch.as_tensor(item if item is not None else [], dtype=torch.long))
        return items
    raise ValueError(f"{name} must be a LongTensor or a list of sequences, got {type(values).__name__}")


class UnitContextBlock(nn.Module):
    """`x + W silu(conv(norm(x)))` over frames; padded frames are zeroed before the convolution, so an item in a
    padded batch sees the same zero edge as when alone."""

    def __init__(self, config: AcousticLMConfig):
        super().__init__()
        hidden, kernel = config.hidden_size, config.unit_context_kernel_size
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, states: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        mixed = self.conv((self.norm(states) * frame_mask).transpose(1, 2)).transpose(1, 2)
        return states + self.proj(F.silu(mixed))


class AcousticLMPreTrainedModel(PreTrainedModel):
    config_class = AcousticLMConfig
    config: AcousticLMConfig
    base_model_prefix = "model"
    main_input_name = "semantic_units"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The loss is a per-batch mean: the Trainer then scales it for gradient accumulation itself.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AcousticLMForConditionalGeneration):
            init.normal_(module.start_embed, mean=0.0, std=self.config.initializer_range)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, with an `auto_map` naming `AutoConfig` and `AutoModel`, so the folder loads with
        `trust_remote_code=True` where mole_llama is not installed."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)


class AcousticLMForConditionalGeneration(AcousticLMPreTrainedModel):
    """Semantic units (+ optional voice prompt codes) -> acoustic codes `[batch, num_codebooks, frames]`.

    `forward` is teacher-forced (training, scoring); `generate` samples one frame per step with the KV cache.
    """

    def __init__(self, config: AcousticLMConfig):
        super().__init__(config)
        hidden, num_codebooks, codebook_size = config.hidden_size, config.num_codebooks, config.codebook_size
        llama_config = config.to_llama_config()
        self.model = LlamaModel(llama_config)
        self.model.embed_tokens = None  # inputs come as embeddings; an unused table would only confuse DDP
        self.unit_embed = nn.Embedding(config.num_semantic_units, hidden)
        self.num_phases = max(1, math.ceil(config.frames_per_unit - 1e-9))
        self.phase_embed = nn.Embedding(self.num_phases, hidden)
        self.segment_embed = nn.Embedding(2, hidden)
        self.unit_context = nn.ModuleList(UnitContextBlock(config) for _ in range(config.unit_context_layers))
        # Previous frame's codes, all codebooks in one table: code c of codebook k is row k * codebook_size + c.
        self.code_embed = nn.Embedding(num_codebooks * codebook_size, hidden)
        self.start_embed = nn.Parameter(torch.zeros(hidden))
        # The per-codebook heads: lower codebooks of the same frame, a codebook index, a small residual MLP.
        self.depth_embed = nn.Embedding(max(num_codebooks - 1, 1) * codebook_size, hidden)
        self.level_embed = nn.Embedding(num_codebooks, hidden)
        self.head_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        llama_config.intermediate_size = config.head_intermediate_size
        self.head_mlp = LlamaMLP(llama_config)
        self.out_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, num_codebooks * codebook_size, bias=False)
        if config.float16_decoding:  # the parts that run once per generated frame
            use_float16_weights(self.model)
            use_float16_weights(self.head_mlp)
            self.lm_head = Float16WeightLinear.from_linear(self.lm_head)
        self._compiled_frame_step = None  # `compile_decoding`
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.unit_embed

    def set_input_embeddings(self, value: nn.Module):
        self.unit_embed = value

    # ----------------------------------------------------------------------------------------------- helpers

    def num_frames(self, num_units: int) -> int:
        """Frames that `num_units` semantic units last (what `generate` produces for them)."""
        return self.config.num_frames(num_units)

    def align_units(self, num_frames: int, device=None) -> tuple[torch.LongTensor, torch.LongTensor]:
        """For frames `0..num_frames-1`: the index of the unit whose time span holds the frame's centre, and the
        frame's rank among the frames of that unit (`t // r` and `t % r` for an integer ratio `r`)."""
        frames = torch.arange(num_frames, dtype=torch.float64, device=device)
        ratio = self.config.semantic_unit_rate / self.config.acoustic_frame_rate
        unit_index = torch.floor((frames + 0.5) * ratio + 1e-9).long()
        first_frame = torch.searchsorted(unit_index, unit_index)
        phase = (torch.arange(num_frames, device=device) - first_frame).clamp(max=self.num_phases - 1)
        return unit_index, phase

    def _check_units(self, units: list) -> None:
        for index, item in enumerate(units):
            if item.dim() != 1:
                raise ValueError(f"semantic_units item {index} has shape {tuple(item.shape)}: give a 1-D sequence")
            if item.numel() == 0:
                raise ValueError(f"semantic_units item {index} is empty: give at least one unit per item")
            low, high = int(item.min()), int(item.max())
            if low < 0 or high >= self.config.num_semantic_units:
                raise ValueError(
                    f"semantic_units item {index} holds units in [{low}, {high}], outside [0, "
                    f"{self.config.num_semantic_units}): use the semantic tokenizer this model was trained with "
                    f"(num_semantic_units={self.config.num_semantic_units}), or pass a mask for padding"
                )

    def _check_codes(self, codes: list, name: str, allow_empty: bool = False) -> None:
        for index, item in enumerate(codes):
            if item.dim() != 2 or item.shape[0] != self.config.num_codebooks:
                raise ValueError(
                    f"{name} item {index} has shape {tuple(item.shape)}: give [num_codebooks, frames] codes per item "
                    f"([batch, num_codebooks, frames] batched) with num_codebooks={self.config.num_codebooks}"
                )
            if item.shape[1] == 0:
                if allow_empty:
                    continue
                raise ValueError(f"{name} item {index} has no frames: give at least one frame")
            low, high = int(item.min()), int(item.max())
            if low < 0 or high >= self.config.codebook_size:
                raise ValueError(
                    f"{name} item {index} holds codes in [{low}, {high}], outside [0, {self.config.codebook_size}): "
                    f"use the codec this model was trained with, and mark padding frames with a mask or {PAD_CODE}"
                )

    def _prepare_prompts(self, prompt_codes, prompt_codes_mask, batch_size: int) -> list:
        if prompt_codes is None:
            return [torch.zeros(self.config.num_codebooks, 0, dtype=torch.long) for _ in range(batch_size)]
        if isinstance(prompt_codes, (list, tuple)):  # None or an empty list: that item has no prompt
            empty = torch.zeros(self.config.num_codebooks, 0, dtype=torch.long)
            prompt_codes = [empty if p is None or len(p) == 0 else p for p in prompt_codes]
        prompts = _split_batch(prompt_codes, prompt_codes_mask, 2, "prompt_codes", "prompt_codes_mask", True)
        if len(prompts) == 1 and batch_size > 1:
            prompts = prompts * batch_size  # one voice for the whole batch
        if len(prompts) != batch_size:
            raise ValueError(f"prompt_codes has {len(prompts)} items for {batch_size} unit sequences: give one each")
        self._check_codes(prompts, "prompt_codes", allow_empty=True)
        return prompts

    def _generators(self, seed, batch_size: int) -> list:
        """One generator for the batch (`seed` None: torch's global one; an int: a private one), or one per item."""
        if seed is None or isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return [None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))]
        seeds = list(seed)
        if len(seeds) != batch_size or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
            raise ValueError(f"seed={seed!r}: give one whole number, or a list of {batch_size} (one per item)")
        return [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def _check_length(self, prompt_frames: int, frames: int, index: int) -> None:
        if prompt_frames + frames > self.config.max_position_embeddings:
            seconds = self.config.max_position_embeddings / self.config.acoustic_frame_rate
            raise ValueError(
                f"item {index} needs {prompt_frames} prompt + {frames} frames, more than max_position_embeddings="
                f"{self.config.max_position_embeddings} (~{seconds:.0f} s): split the text or the units into shorter "
                f"pieces, shorten the voice prompt, or pass max_frames to generate"
            )

    def _layout(
        self, units: list, prompts: list, lengths: list, target_codes: list | None = None, in_blocks: bool = False
    ) -> dict:
        """One padded batch: each row is `[left padding][prompt frames][target frames][right padding]`, so every
        target starts at the same column (one column per generation step) and padding is masked out. With
        `in_blocks`, each item's conditioning is computed as a stream computes it (`_conditioning_in_blocks`)."""
        device = self.device
        batch_size, num_codebooks = len(units), self.config.num_codebooks
        prompt_lengths = [prompt.shape[1] for prompt in prompts]
        prompt_width, frames = max(prompt_lengths), max(lengths)
        codes = torch.zeros(batch_size, num_codebooks, prompt_width + frames, dtype=torch.long, device=device)
        mask = torch.zeros(batch_size, prompt_width + frames, dtype=torch.long, device=device)
        unit_index, phase = self.align_units(frames, device=device)
        aligned_units = torch.zeros(batch_size, frames, dtype=torch.long, device=device)
        target_mask = torch.zeros(batch_size, frames, 1, device=device)
        for row, (item_units, prompt, length) in enumerate(zip(units, prompts, lengths)):
            start = prompt_width - prompt.shape[1]
            codes[row, :, start:prompt_width] = prompt.to(device)
            mask[row, start : prompt_width + length] = 1
            aligned_units[row] = item_units.to(device)[unit_index.clamp(max=item_units.numel() - 1)]
            target_mask[row, :length] = 1
            if target_codes is not None:
                codes[row, :, prompt_width : prompt_width + length] = target_codes[row].to(device)
        first_column = torch.tensor([prompt_width - n for n in prompt_lengths], device=device)
        return {
            "codes": codes,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "first_column": first_column,
            "prompt_width": prompt_width,
            "frames": frames,
            "lengths": torch.tensor(lengths, device=device),
            "conditioning": self._item_conditionings(aligned_units, phase, lengths)
            if in_blocks
            else self._conditioning(aligned_units, phase, target_mask),
        }

    def _item_conditionings(self, aligned_units: torch.LongTensor, phase: torch.LongTensor, lengths: list):
        """`[batch, frames, hidden]`: each item's frames conditioned in blocks on its own units, zero past its end."""
        conditioning = aligned_units.new_zeros(*aligned_units.shape, self.config.hidden_size, dtype=self.dtype)
        for row, length in enumerate(lengths):
            conditioning[row, :length] = self._conditioning_in_blocks(aligned_units[row], phase, 0, length, length)[0]
        return conditioning

    def _conditioning_in_blocks(self, aligned_units, phase, start: int, stop: int, known: int) -> torch.Tensor:
        """The conditioning `[1, stop - start, hidden]` of one item's frames `[start, stop)` (`start` a multiple of
        `CONDITIONING_BLOCK_FRAMES`), block by block, each block from the frames within `unit_context_lookahead` of
        it among the `known` ones (`aligned_units`, `phase`: per frame, at least `known` of them).

        Each block's window then has the same frames, and so the same shape, whether the units came all at once
        (`generate`) or a few at a time (`stream`): PyTorch's convolutions and matrix products round differently for
        different lengths, and a sampled step can turn such a last-bit difference into another draw."""
        radius, size = self.unit_context_lookahead, CONDITIONING_BLOCK_FRAMES
        blocks = []
        for block in range(start, stop, size):
            low, high = max(0, block - radius), min(known, block + size + radius)
            mask = torch.ones(1, high - low, 1, device=aligned_units.device)
            window = self._conditioning(aligned_units[None, low:high], phase[None, low:high], mask)
            blocks.append(window[:, block - low : min(block + size, stop) - low])
        return torch.cat(blocks, dim=1)

    def _conditioning(self, aligned_units: torch.LongTensor, phase: torch.LongTensor, target_mask) -> torch.Tensor:
        """Per-frame conditioning `[batch, frames, hidden]`: the aligned units and their phases, mixed over
        neighbouring frames (`unit_context_lookahead` each way); frames outside `target_mask` are zero to the mix."""
        conditioning = self.unit_embed(aligned_units) + self.phase_embed(phase)
        for block in self.unit_context:
            conditioning = block(conditioning, target_mask.to(conditioning.dtype))
        return conditioning + self.segment_embed.weight[TARGET_SEGMENT]

    @property
    def unit_context_lookahead(self) -> int:
        """Frames past a frame that its conditioning depends on (as many before it)."""
        return self.config.unit_context_layers * (self.config.unit_context_kernel_size // 2)

    def _code_offsets(self, num_codebooks: int, device) -> torch.LongTensor:
        """Row offset of each codebook in the flattened code tables, shaped to broadcast over `[b, k, n]`."""
        return (torch.arange(num_codebooks, device=device) * self.config.codebook_size)[None, :, None]

    def embed_frame_codes(self, codes: torch.LongTensor) -> torch.Tensor:
        """`[batch, num_codebooks, n]` codes -> `[batch, n, hidden]`: the sum of their codebooks' embeddings."""
        rows = codes.clamp(min=0) + self._code_offsets(codes.shape[1], codes.device)
        return self.code_embed(rows).sum(dim=1)

    def _input_embeddings(self, layout: dict) -> torch.Tensor:
        codes, prompt_width = layout["codes"], layout["prompt_width"]
        batch_size, _, width = codes.shape
        if self.training and self.config.previous_code_noise > 0:
            noisy = torch.rand(codes.shape, device=codes.device) < self.config.previous_code_noise
            codes = torch.where(noisy, torch.randint_like(codes, self.config.codebook_size), codes)
        previous = self.embed_frame_codes(codes[:, :, :-1])
        start = self.start_embed.expand(batch_size, 1, -1)
        previous = torch.cat([start, previous], dim=1)
        columns = torch.arange(width, device=codes.device)
        is_first = (columns[None, :] == layout["first_column"][:, None])[..., None]
        previous = torch.where(is_first, start.to(previous.dtype), previous)
        prompt_part = self.segment_embed.weight[PROMPT_SEGMENT].expand(batch_size, prompt_width, -1)
        return previous + torch.cat([prompt_part, layout["conditioning"]], dim=1)

    def _head_logits(self, hidden: torch.Tensor, codebook: int, lower: torch.Tensor) -> torch.Tensor:
        """Scores of one codebook from the decoder state plus the summed embeddings of the frame's lower codes."""
        state = hidden + self.level_embed.weight[codebook] + lower
        state = state + self.head_mlp(self.head_norm(state))
        rows = slice(codebook * self.config.codebook_size, (codebook + 1) * self.config.codebook_size)
        if isinstance(self.lm_head, Float16WeightLinear):
            return self.lm_head(self.out_norm(state), rows=rows)
        return F.linear(self.out_norm(state), self.lm_head.weight[rows])

    def _all_head_logits(self, hidden: torch.Tensor, codes: torch.LongTensor) -> torch.Tensor:
        """Teacher-forced heads for all codebooks at once: `hidden [b, f, h]`, `codes [b, k, f]` -> `[b, f, k, v]`."""
        num_codebooks, size = self.config.num_codebooks, self.config.codebook_size
        batch_size, frames, width = hidden.shape
        lower = torch.zeros(batch_size, frames, num_codebooks, width, dtype=hidden.dtype, device=hidden.device)
        if num_codebooks > 1:
            rows = codes[:, :-1].clamp(min=0) + self._code_offsets(num_codebooks - 1, codes.device)
            lower[:, :, 1:] = self.depth_embed(rows).transpose(1, 2).cumsum(dim=2)
        state = hidden[:, :, None] + self.level_embed.weight + lower
        state = state + self.head_mlp(self.head_norm(state))
        weight = self.lm_head.weight.view(num_codebooks, size, width)
        return torch.einsum("bfkh,kvh->bfkv", self.out_norm(state), weight)

    # ----------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        semantic_units=None,
        acoustic_codes=None,
        semantic_units_mask=None,
        acoustic_codes_mask=None,
        prompt_codes=None,
        prompt_codes_mask=None,
        labels=None,
    ) -> AcousticLMOutput:
        r"""
        Teacher-forced scores of `acoustic_codes` given `semantic_units` (and a voice prompt), with the loss.

        Args:
            semantic_units (`torch.LongTensor` of shape `(batch, units)`, or a list of sequences):
                Semantic units; padding is marked by `semantic_units_mask` (1 = real), left or right.
            acoustic_codes (`torch.LongTensor` of shape `(batch, num_codebooks, frames)`, or a list of `[K, frames]`):
                The target codes. Padding frames are marked by `acoustic_codes_mask` (1 = real) or hold `-100`
                in every codebook. Optional when `labels` is given (then the codes are the labels).
            prompt_codes (`torch.LongTensor` of shape `(batch, num_codebooks, prompt_frames)`, *optional*):
                Codes of a voice prompt placed before each item (padding as for `acoustic_codes`, with
                `prompt_codes_mask`); one prompt is repeated over the batch.
            labels (`torch.LongTensor` of shape `(batch, num_codebooks, frames)`, *optional*):
                Targets with `-100` where no loss is wanted; default: `acoustic_codes` without its padding.
        """
        if semantic_units is None:
            raise ValueError("semantic_units is required: the acoustic LM is conditioned on the semantic units")
        if acoustic_codes is None and labels is None:
            raise ValueError("forward scores given acoustic_codes (or labels): pass them, or call generate() instead")
        units = _split_batch(semantic_units, semantic_units_mask, 1, "semantic_units", "semantic_units_mask")
        self._check_units(units)
        source = acoustic_codes if acoustic_codes is not None else labels
        frame_mask = acoustic_codes_mask
        if frame_mask is None and isinstance(source, torch.Tensor) and source.dim() == 3:
            frame_mask = (source >= 0).any(dim=1)
        codes = _split_batch(source, frame_mask, 2, "acoustic_codes", "acoustic_codes_mask")
        if len(codes) != len(units):
            raise ValueError(f"acoustic_codes has {len(codes)} items but semantic_units has {len(units)}")
        self._check_codes(codes, "acoustic_codes")
        targets = codes
        if labels is not None and acoustic_codes is not None:
            targets = _split_batch(labels, frame_mask, 2, "labels", "acoustic_codes_mask")
            if [t.shape for t in targets] != [c.shape for c in codes]:
                raise ValueError("labels must have the shape of acoustic_codes (-100 where no loss is wanted)")
        prompts = self._prepare_prompts(prompt_codes, prompt_codes_mask, len(units))
        lengths = [item.shape[1] for item in codes]
        tolerance = math.ceil(self.config.frames_per_unit) + 1
        for index, (item_units, length, prompt) in enumerate(zip(units, lengths, prompts)):
            expected = self.num_frames(item_units.numel())
            if abs(length - expected) > tolerance:
                raise ValueError(
                    f"item {index}: {item_units.numel()} units at {self.config.semantic_unit_rate:g} Hz last "
                    f"{expected} frames at {self.config.acoustic_frame_rate:g} Hz, but acoustic_codes has {length} "
                    f"frames: give "
                    f"units and codes of the same audio, and check semantic_unit_rate / acoustic_frame_rate"
                )
            self._check_length(prompt.shape[1], length, index)

        layout = self._layout(units, prompts, lengths, codes)
        outputs = self.model(
            inputs_embeds=self._input_embeddings(layout),
            attention_mask=layout["attention_mask"],
            position_ids=layout["position_ids"],
            use_cache=False,
        )
        prompt_width = layout["prompt_width"]
        hidden = outputs.last_hidden_state[:, prompt_width:]
        target_codes = layout["codes"][:, :, prompt_width:]
        logits = self._all_head_logits(hidden, target_codes)

        padded_targets = torch.full_like(target_codes, PAD_CODE)
        for row, item in enumerate(targets):
            padded_targets[row, :, : item.shape[1]] = item.to(padded_targets.device)
        flat_logits = logits.float().permute(0, 3, 1, 2)  # [b, v, f, k]: cross_entropy wants classes on dim 1
        entry_loss = F.cross_entropy(
            flat_logits, padded_targets.transpose(1, 2), ignore_index=PAD_CODE, reduction="none"
        )  # [b, f, k]
        valid = (padded_targets.transpose(1, 2) != PAD_CODE).to(entry_loss.dtype)
        loss = (entry_loss * valid).sum() / valid.sum().clamp(min=1)
        codebook_losses = (entry_loss * valid).sum(dim=(0, 1)) / valid.sum(dim=(0, 1)).clamp(min=1)
        frames_mask = layout["attention_mask"][:, prompt_width:]
        return AcousticLMOutput(loss=loss, logits=logits, codebook_losses=codebook_losses, frames_mask=frames_mask)

    # ----------------------------------------------------------------------------------------------- generate

    def _sampler(self, temperature, top_k, top_p, do_sample: bool, generators: list) -> "FrameSampler":
        """How a generation picks each codebook's codes from its logits (checked here, before any step runs)."""
        if do_sample:
            if temperature is None or temperature <= 0:
                raise ValueError(f"temperature={temperature} must be positive; for greedy decoding use do_sample=False")
            if top_k is not None and top_k < 1:
                raise ValueError(f"top_k={top_k} must be at least 1 (or None to keep every code)")
            if top_p is not None and not 0 < top_p <= 1:
                raise ValueError(f"top_p={top_p} must lie in (0, 1] (or None to keep every code)")
        settings = SamplingSettings(do_sample, float(temperature or 1.0), top_k, top_p)
        return FrameSampler(settings, generators, self.config.num_codebooks, self.device)

    def _first_step(self, layout: dict) -> tuple:
        """The first decoder input (the voice prompt and the first frame in one pass), its mask and positions."""
        width = layout["prompt_width"]
        attention_mask = layout["attention_mask"][:, : width + 1].clone()
        attention_mask[:, -1] = 1
        return self._input_embeddings(layout)[:, : width + 1], attention_mask, layout["position_ids"][:, : width + 1]

    def _next_step(self, conditioning, previous_codes, attention_mask, position_ids) -> tuple:
        """The next frame's decoder input from its conditioning `[b, hidden]` and the codes `[b, K]` just made."""
        inputs = (conditioning + self.embed_frame_codes(previous_codes[..., None])[:, 0])[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
        return inputs, attention_mask, position_ids[:, -1:] + 1

    def compile_decoding(self, **compile_kwargs) -> None:
        """Compile a frame's step (the decoder's one-frame pass, the heads and the draws) with `torch.compile`
        (inductor; `compile_kwargs` go to it, default `dynamic=True`: the KV cache grows every frame). On a CPU the
        step is mostly the overhead of small ops, which the compiled graph fuses; the first generation pays the
        compile (inductor keeps it on disk for the next process). The first step of each generation (the voice
        prompt and the first frame) and the steps of a batch of several items stay eager (a batch's float16 products
        are FBGEMM's, which a graph cannot hold: `float16_weights.py`), and training's `forward` is untouched. The
        compiled function is the class's (called with the model), so a copy of the model steps with its own
        weights."""
        allow_compiled_steps(self)
        step = type(self)._frame_step
        self._compiled_frame_step = torch.compile(step, **{"dynamic": True, **compile_kwargs})

    def _frame_step(self, inputs, attention_mask, position_ids, cache, uniforms, sampling, with_probabilities: bool):
        """One decoder step (the KV cache grows by `inputs`), then the frame's codes codebook by codebook (`[b, K]`,
        drawn with `uniforms [b, K]` under `sampling`), each codebook's distribution `[b, K, codebook_size]` with
        `with_probabilities` (else None), and a sum of the step's states and scores, finite when they all are."""
        hidden = self.model(
            inputs_embeds=inputs, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
        ).last_hidden_state[:, -1]
        lower = torch.zeros_like(hidden)
        codes, probabilities, total = [], [], hidden.sum()
        for codebook in range(self.config.num_codebooks):
            logits = self._head_logits(hidden, codebook, lower).float()
            total = total + logits.sum()
            codes.append(choose_codes(logits, None if uniforms is None else uniforms[:, codebook], sampling))
            if with_probabilities:
                probabilities.append(logits.softmax(dim=-1))
            if codebook < self.config.num_codebooks - 1:
                lower = lower + self.depth_embed(codes[-1] + codebook * self.config.codebook_size)
        return torch.stack(codes, dim=1), torch.stack(probabilities, dim=1) if with_probabilities else None, total

    def _generate_frame(self, inputs, attention_mask, position_ids, cache, sampler, with_probabilities: bool = False):
        """`_frame_step` with the sampler's next draws: compiled (and its output checked: its float16 products are
        not) from the second frame of a single item on, once `compile_decoding` ran; eager otherwise, which also
        keeps the float16 weights fresh for the compiled steps (`Float16WeightLinear`)."""
        draws = sampler.draws(inputs.shape[0])
        step = (inputs, attention_mask, position_ids, cache, draws, sampler.settings, with_probabilities)
        if self._compiled_frame_step is not None and cache.get_seq_length() > 0 and inputs.shape[0] == 1:
            codes, probabilities, total = self._compiled_frame_step(self, *step)
            check_finite_step(total)
            return codes, probabilities
        codes, probabilities, _ = self._frame_step(*step)
        return codes, probabilities

    def stream(self, prompt_codes=None, max_frames=None, temperature: float = 1.0, top_k=None, top_p=None,
               do_sample: bool = True, seed=None, output_code_probabilities: bool = False):  # fmt: skip
        """`generate` for one item whose units arrive a few at a time (`push`, then `finish`): codes come out as
        soon as the units their frames hear are known, the same codes `generate` gives for the same seed (with
        `output_code_probabilities`, each as `(codes, code_probabilities)`): an `AcousticCodeStream`."""
        return AcousticCodeStream(
            self, prompt_codes, max_frames, temperature, top_k, top_p, do_sample, seed, output_code_probabilities
        )

    @torch.no_grad()
    def generate(
        self,
        semantic_units,
        prompt_codes=None,
        semantic_units_mask=None,
        prompt_codes_mask=None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool = True,
        seed: int | list | None = None,
        max_frames: int | None = None,
        return_dict_in_generate: bool = False,
        output_code_probabilities: bool = False,
    ):
        r"""
        Acoustic codes for `semantic_units`, one frame per step with the KV cache.

        Each item gets exactly `ceil(len(units) * frame_rate / unit_rate)` frames (at most `max_frames`), so the
        length follows the units and never runs on. Items of a padded batch (or a list of different lengths)
        come out as they would alone; their frames past the end hold `PAD_CODE` (-100).

        Args:
            semantic_units: `[batch, units]` LongTensor (with `semantic_units_mask` for padding), a list of
                sequences, or one sequence.
            prompt_codes: voice prompt codes, `[batch, num_codebooks, frames]` (with `prompt_codes_mask`), a list
                of `[num_codebooks, frames]` (None or 0 frames for no prompt), or one prompt for the whole batch.
            temperature, top_k, top_p: sampling filters (transformers' logits warpers).
            do_sample: False for greedy decoding (deterministic).
            seed: seeds a private generator, so the same seed gives the same codes without touching global RNG;
                a list (one seed per item) gives each item its own generator, so an item samples the same codes
                alone or in any batch.
            max_frames: a hard cap on the frames per item.
            return_dict_in_generate: return an `AcousticLMGenerateOutput` with the per-item `lengths`.
            output_code_probabilities: also return each frame's code distributions (`code_probabilities`), what a
                codec's `decode_expected` turns into the expected codebook vectors; needs `return_dict_in_generate`.

        Returns:
            `torch.LongTensor` of shape `(batch, num_codebooks, frames)`.
        """
        units = _split_batch(semantic_units, semantic_units_mask, 1, "semantic_units", "semantic_units_mask")
        self._check_units(units)
        prompts = self._prepare_prompts(prompt_codes, prompt_codes_mask, len(units))
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames={max_frames} must be at least 1 (or None for the length of the units)")
        if output_code_probabilities and not return_dict_in_generate:
            raise ValueError(
                "output_code_probabilities=True needs return_dict_in_generate=True (they come in its output)"
            )
        lengths = [self.num_frames(item.numel()) for item in units]
        if max_frames is not None:
            lengths = [min(length, max_frames) for length in lengths]
        for index, (prompt, length) in enumerate(zip(prompts, lengths)):
            self._check_length(prompt.shape[1], length, index)
        sampler = self._sampler(temperature, top_k, top_p, do_sample, self._generators(seed, len(units)))
        layout = self._layout(units, prompts, lengths, in_blocks=True)
        frames = layout["frames"]
        inputs, attention_mask, position_ids = self._first_step(layout)
        cache = DynamicCache(config=self.model.config)
        batch_size, num_codebooks = len(units), self.config.num_codebooks
        codes = torch.full((batch_size, num_codebooks, frames), PAD_CODE, dtype=torch.long, device=self.device)
        probabilities = None
        if output_code_probabilities:
            size = (batch_size, num_codebooks, frames, self.config.codebook_size)
            probabilities = torch.zeros(size, device=self.device)
        for frame in range(frames):
            codes[:, :, frame], frame_probabilities = self._generate_frame(
                inputs, attention_mask, position_ids, cache, sampler, output_code_probabilities
            )
            if output_code_probabilities:
                probabilities[:, :, frame] = frame_probabilities
            if frame + 1 < frames:
                inputs, attention_mask, position_ids = self._next_step(
                    layout["conditioning"][:, frame + 1], codes[:, :, frame], attention_mask, position_ids
                )
        past_end = torch.arange(frames, device=self.device)[None, :] >= layout["lengths"][:, None]
        codes = codes.masked_fill(past_end[:, None, :], PAD_CODE)
        if output_code_probabilities:
            probabilities = probabilities.masked_fill(past_end[:, None, :, None], 0.0)
        if return_dict_in_generate:
            return AcousticLMGenerateOutput(codes=codes, lengths=layout["lengths"], code_probabilities=probabilities)
        return codes


@dataclass(frozen=True)
class SamplingSettings:
    """How codes are picked from a codebook's logits: greedy, or drawn after temperature, top-k and top-p (plain
    values, which a compiled step specializes on)."""

    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None


def choose_codes(logits: torch.Tensor, uniform: torch.Tensor | None, sampling: SamplingSettings) -> torch.LongTensor:
    """Codes `[b]` from logits `[b, codebook_size]`: the argmax, or a draw from the filtered softmax by inverse
    transform of `uniform [b]` in [0, 1) (drawn beforehand from each item's generator, so a compiled step needs no
    generator of its own)."""
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    if sampling.temperature != 1.0:
        logits = TemperatureLogitsWarper(sampling.temperature)(None, logits)
    if sampling.top_k is not None:
        logits = TopKLogitsWarper(top_k=sampling.top_k)(None, logits)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        logits = TopPLogitsWarper(top_p=sampling.top_p)(None, logits)
    cumulative = logits.softmax(dim=-1).cumsum(dim=-1)
    target = (1 - uniform)[:, None] * cumulative[:, -1:]  # in (0, total]: a code of probability 0 is never drawn
    return (cumulative < target).sum(dim=-1).clamp(max=logits.shape[-1] - 1)


class FrameSampler:
    """A generation's sampling settings and, when it samples, its generators (one for the batch, or one per item):
    each frame takes one uniform number per item and codebook from them, before the step (`draws`)."""

    def __init__(self, settings: SamplingSettings, generators: list, num_codebooks: int, device):
        self.settings, self.generators = settings, generators
        self.num_codebooks, self.device = num_codebooks, device

    def draws(self, batch_size: int) -> torch.Tensor | None:
        if not self.settings.do_sample:
            return None
        if len(self.generators) == 1:
            shape, generator = (batch_size, self.num_codebooks), self.generators[0]
            return torch.rand(shape, generator=generator, device=self.device)
        return torch.stack([torch.rand(self.num_codebooks, generator=g, device=self.device) for g in self.generators])


class AcousticCodeStream:
    """One item's acoustic codes, made while its frame-level semantic units are still arriving.

    A frame is generated once every unit its conditioning hears is known (`unit_context_lookahead` frames past the
    end of its block of `CONDITIONING_BLOCK_FRAMES`), or the units are finished; the conditioning blocks, the
    decoder, the KV cache, the sampler and the seed are `generate`'s, so the codes are those `generate` gives the
    whole sequence with the same seed. Make one with `model.stream(...)`; with
    `output_code_probabilities`, `push` and `finish` return `(codes, code_probabilities)`, the latter
    `[num_codebooks, frames, codebook_size]` as `generate` gives them.
    """

    def __init__(self, model, prompt_codes, max_frames, temperature, top_k, top_p, do_sample, seed,
                 output_code_probabilities: bool = False):  # fmt: skip
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames={max_frames} must be at least 1 (or None for the length of the units)")
        self.model, self.max_frames = model, max_frames
        self.output_code_probabilities = output_code_probabilities
        self.prompt = model._prepare_prompts(None if prompt_codes is None else [prompt_codes], None, 1)[0]
        self.sampler = model._sampler(temperature, top_k, top_p, do_sample, model._generators(seed, 1))
        self.units = []
        self.conditioning = None  # [1, frames conditioned so far, hidden]
        self.generated = 0
        self.step = None  # the next decoder input, mask and positions, and the cache
        self.finished = False

    @torch.no_grad()
    def push(self, units):
        """Add frame-level units (a sequence of ints); returns the new codes `[num_codebooks, frames]`."""
        if self.finished:
            raise RuntimeError("this acoustic code stream is finished: start a new one for new units")
        units = [int(unit) for unit in units]
        if units:
            self.model._check_units([torch.tensor(units)])
        self.units += units
        return self._advance()

    @torch.no_grad()
    def finish(self):
        """The remaining codes `[num_codebooks, frames]`, once every unit has been pushed."""
        if not self.units:
            raise ValueError("no semantic units were pushed: give at least one unit")
        self.finished = True
        return self._advance()

    def _frames_heard(self) -> int:
        """Frames whose aligned unit is known."""
        count = len(self.units)
        unit_index, _ = self.model.align_units(self.model.num_frames(count) + 2)
        return int((unit_index < count).sum())

    def _advance(self):
        model = self.model
        heard = self._frames_heard()
        total = None  # the item's frame count, once known
        if self.finished:
            total = model.num_frames(len(self.units))
            total = total if self.max_frames is None else min(total, self.max_frames)
        elif self.max_frames is not None and heard >= self.max_frames:
            total = self.max_frames
        if total is not None:
            ready = total
        else:  # whole blocks whose conditioning hears only known units (`_conditioning_in_blocks`)
            ready = (
                max(0, heard - model.unit_context_lookahead) // CONDITIONING_BLOCK_FRAMES * CONDITIONING_BLOCK_FRAMES
            )
        model._check_length(self.prompt.shape[1], ready, 0)
        self._condition(ready, total if total is not None else heard)
        frames = []
        while self.generated < ready:
            frames.append(self._generate_frame())
        config = model.config
        if frames:
            codes = torch.stack([codes for codes, _ in frames], dim=-1)[0]
        else:
            codes = torch.zeros(config.num_codebooks, 0, dtype=torch.long, device=model.device)
        if not self.output_code_probabilities:
            return codes
        if frames:
            return codes, torch.stack([probabilities for _, probabilities in frames], dim=2)[0]
        return codes, torch.zeros(config.num_codebooks, 0, config.codebook_size, device=model.device)

    def _condition(self, ready: int, known: int) -> None:
        """Extend the conditioning to frames `[.., ready)`, as `generate` computes it, from the `known` frames."""
        done = 0 if self.conditioning is None else self.conditioning.shape[1]
        if ready <= done:
            return
        model, device = self.model, self.model.device
        unit_index, phase = model.align_units(known, device=device)
        aligned = torch.tensor(self.units, device=device)[unit_index.clamp(max=len(self.units) - 1)]
        new = model._conditioning_in_blocks(aligned, phase, done, ready, known)
        self.conditioning = new if self.conditioning is None else torch.cat([self.conditioning, new], dim=1)

    def _generate_frame(self) -> tuple:
        """The next frame's codes `[1, num_codebooks]` (and distributions, or None), as `generate`'s loop makes
        them."""
        model, frame = self.model, self.generated
        if frame == 0:  # the voice prompt and the first frame in one pass, as `generate` starts
            layout = model._layout([torch.tensor(self.units)], [self.prompt], [1])
            layout["conditioning"] = self.conditioning[:, :1]
            inputs, attention_mask, position_ids = model._first_step(layout)
            cache = DynamicCache(config=model.model.config)
        else:
            previous, attention_mask, position_ids, cache = self.step
            inputs, attention_mask, position_ids = model._next_step(
                self.conditioning[:, frame], previous, attention_mask, position_ids
            )
        codes, probabilities = model._generate_frame(
            inputs, attention_mask, position_ids, cache, self.sampler, self.output_code_probabilities
        )
        self.step = (codes, attention_mask, position_ids, cache)
        self.generated += 1
        return codes, probabilities


# Saving copies this file and its configuration beside the weights (see `save_pretrained` for the auto_map).
AcousticLMConfig.register_for_auto_class()
AcousticLMForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "PAD_CODE",
    "AcousticLMOutput",
    "AcousticLMGenerateOutput",
    "AcousticCodeStream",
    "AcousticLMPreTrainedModel",
    "AcousticLMForConditionalGeneration",
]
