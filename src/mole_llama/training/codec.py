"""Train the embedded acoustic codec (`MelCodecModel`) with transformers' `Trainer` on random fixed-length crops."""

import numpy as np
import torch
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from ..data.audio import decode_audio, without_audio_decoding
from ..modeling.configuration_mel_codec import MelCodecConfig
from ..modeling.modeling_mel_codec import MelCodecModel
from .checkpoints import checkpoint_to_resume, checkpoints_dir, save_on_main_process

logger = logging.get_logger(__name__)


def load_waveforms(data, sampling_rate: int, audio_column: str = "audio") -> list:
    """Mono float32 waveforms at `sampling_rate` from a list of `(array, rate)` pairs, or from a `datasets` dataset
    (or any iterable of rows) whose `audio_column` holds audio values. Audio columns are read with
    `decode=False` and decoded by soundfile, so torchcodec is not needed."""
    data = without_audio_decoding(data, audio_column)
    waveforms, skipped = [], 0
    for row in data:
        if isinstance(row, (tuple, list)) and len(row) == 2:
            value = {"array": row[0], "sampling_rate": row[1]}
        elif isinstance(row, dict) and audio_column in row:
            value = row[audio_column]
        else:
            raise ValueError(
                f"cannot read audio from a {type(row).__name__} row: give (array, rate) pairs or a dataset whose "
                f"{audio_column!r} column holds audio (set audio_column=...)"
            )
        try:
            waveform, _ = decode_audio(value, sampling_rate)
        except ValueError as error:
            logger.warning(f"skipped a clip: {error}")
            skipped += 1
            continue
        if np.isfinite(waveform).all() and np.abs(waveform).max(initial=0.0) > 0:
            waveforms.append(np.ascontiguousarray(waveform, dtype=np.float32))
        else:
            skipped += 1
    if skipped:
        logger.warning(f"{skipped} clips skipped (unreadable, empty, silent or not finite)")
    if not waveforms:
        raise ValueError("no usable audio: every clip was unreadable, empty, silent or not finite")
    return waveforms


class RandomSegments(torch.utils.data.Dataset):
    """`length` crops of `segment_samples` each, at random places of the waveforms (picked in proportion to their
    length, so every second of audio is equally likely); short clips are zero-padded at the end. Item `i` is the
    same on every call for a given seed, so a resumed run sees the data it would have seen."""

    def __init__(self, waveforms: list, segment_samples: int, length: int, seed: int = 0):
        self.waveforms, self.segment_samples, self.length, self.seed = waveforms, segment_samples, length, seed
        lengths = np.array([len(w) for w in waveforms], dtype=np.float64)
        self.probabilities = lengths / lengths.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, index))
        waveform = self.waveforms[rng.choice(len(self.waveforms), p=self.probabilities)]
        segment = np.zeros(self.segment_samples, dtype=np.float32)
        start = rng.integers(0, max(1, len(waveform) - self.segment_samples + 1))
        piece = waveform[start : start + self.segment_samples]
        segment[: len(piece)] = piece
        return {"input_values": torch.from_numpy(segment)}


def train_mel_codec(
    data,
    output_dir: str,
    config: MelCodecConfig | None = None,
    steps: int = 2000,
    batch_size: int = 16,
    segment_seconds: float = 1.0,
    learning_rate: float = 2e-3,
    audio_column: str = "audio",
    init_frames: int = 20_000,
    resume: bool = False,
    save_steps: int = 500,
    logging_steps: int = 50,
    seed: int = 0,
    **training_arguments,
) -> MelCodecModel:
    """Train a `MelCodecModel` on `data` (see `load_waveforms`) for `steps` optimiser steps and save it in `output_dir`.

    Before the first step the log-mel statistics and the codebooks (k-means) are set from `init_frames` frames of
    random crops. Checkpoints go to `output_dir/checkpoints/checkpoint-*` every `save_steps`; only with `resume` does
    a run pick up from the last one (a new run into an old folder starts afresh, with its own settings). Extra keyword
    arguments go to `TrainingArguments` (e.g. `lr_scheduler_type`, `report_to`).
    """
    config = config or MelCodecConfig()
    if steps <= 0 or batch_size <= 0 or segment_seconds <= 0:
        raise ValueError(f"steps, batch_size and segment_seconds must be positive, got {steps}, {batch_size}, "
                         f"{segment_seconds}")  # fmt: skip
    segment_samples = int(segment_seconds * config.sampling_rate)
    if segment_samples < config.n_fft:
        raise ValueError(f"segment_seconds={segment_seconds} is shorter than one STFT window: use at least 0.1 s")
    waveforms = load_waveforms(data, config.sampling_rate, audio_column)
    seconds = sum(len(w) for w in waveforms) / config.sampling_rate
    logger.info(f"codec training on {len(waveforms)} clips, {seconds / 60:.1f} min of audio")

    torch.manual_seed(seed)
    model = MelCodecModel(config)
    checkpoint = checkpoint_to_resume(checkpoints_dir(output_dir), resume)
    if checkpoint is None:  # a resumed run gets statistics and codebooks back from the checkpoint's weights
        frames_per_segment = model.features.num_frames(segment_samples)
        count = max(1, -(-init_frames // frames_per_segment))
        sample = RandomSegments(waveforms, segment_samples, count, seed=seed + 1)
        model.initialize_from_data(torch.stack([sample[i]["input_values"] for i in range(count)]), seed=seed)

    arguments = dict(
        output_dir=str(checkpoints_dir(output_dir)),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,
        logging_steps=logging_steps,
        save_steps=save_steps,
        save_total_limit=2,
        report_to="none",
        dataloader_num_workers=0,
        seed=seed,
        dataloader_pin_memory=False,
    )
    arguments.update(training_arguments)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**arguments),
        train_dataset=RandomSegments(waveforms, segment_samples, steps * batch_size, seed=seed),
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    model.eval()
    save_on_main_process(trainer, lambda: model.save_pretrained(output_dir))
    return model


__all__ = ["RandomSegments", "load_waveforms", "train_mel_codec"]
