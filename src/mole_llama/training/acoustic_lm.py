"""Training of the acoustic LM (semantic units -> acoustic codec tokens) with transformers' `Trainer`.

The data is a `datasets.Dataset` with columns `semantic_units` (`list[int]`) and `acoustic_codes`
(`list[list[int]]`, num_codebooks x frames) of the same utterances; an optional `prompt_codes` column
(num_codebooks x frames) is used as the voice prompt when present.
Otherwise `AcousticLMDataCollator` draws a voice prompt for a share of the utterances: with `SpeakerPrompts` (a
speaker column) the first seconds of *another* utterance of the same speaker, drawn afresh each epoch, as inference
prompts with a reference clip; without, the front of the utterance itself (the VALL-E "continuation" setup: the
prompt is the codes of the first units, the target the rest). Either way the model never sees the answer inside the
prompt. Prompts from another utterance teach it to take a voice rather than to continue a recording: on the voice
no stage trained on, the oracle's WER with a 3-s prompt fell from 0.239 to 0.134, level with no prompt (README).

Resuming (`resume_from_checkpoint`) reproduces an uninterrupted run: the prompt cuts are drawn from a seed, the
epoch and the utterance itself, not from a global random state that a resumed run could not replay.
"""

import math
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..modeling.configuration_acoustic_lm import AcousticLMConfig
from ..modeling.modeling_acoustic_lm import PAD_CODE, AcousticLMForConditionalGeneration
from .checkpoints import save_on_main_process

REQUIRED_COLUMNS = ("semantic_units", "acoustic_codes")


def check_acoustic_dataset(dataset, config: AcousticLMConfig) -> None:
    """Fail early, naming the column and the fix, instead of deep inside the first training step."""
    missing = [name for name in REQUIRED_COLUMNS if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the dataset lacks the column(s) {missing} (it has {dataset.column_names}): add `semantic_units` "
            f"(list[int]) and `acoustic_codes` (list[list[int]], num_codebooks x frames), e.g. with dataset.map"
        )
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: give at least one utterance")
    example = dataset[0]
    codes = example["acoustic_codes"]
    if len(codes) != config.num_codebooks or len({len(row) for row in codes}) != 1:
        raise ValueError(
            f"acoustic_codes of the first example has {len(codes)} rows of lengths {sorted({len(r) for r in codes})}: "
            f"store num_codebooks={config.num_codebooks} rows of equal length (codebooks x frames, not frames x "
            f"codebooks)"
        )
    if len(example["semantic_units"]) == 0:
        raise ValueError("semantic_units of the first example is empty: drop utterances without units")


def check_speaker_column(dataset, speaker_column: str) -> None:
    """Fail before training when a dataset lacks the speaker column the voice prompts need."""
    if speaker_column not in dataset.column_names:
        raise ValueError(
            f"the dataset has no speaker column {speaker_column!r} (it has {dataset.column_names}): run "
            f"`mole-llama prepare` with the recipe's data.speaker_column set, so it keeps that column, or set "
            f"data.speaker_column=null to cut voice prompts off the utterance itself"
        )


class SpeakerPrompts:
    """The utterances of each speaker in a training set, to prompt an utterance with another one of its speaker.

    Args:
        dataset: the prepared training set (`semantic_units`, `acoustic_codes` and the speaker column).
        speaker_column: the column naming each row's speaker (the corpus builder's `voice`).
    """

    def __init__(self, dataset, speaker_column: str):
        check_speaker_column(dataset, speaker_column)
        self.speaker_column = speaker_column
        self.rows = dataset.select_columns(["semantic_units", "acoustic_codes"])
        self.rows_by_speaker = defaultdict(list)
        for index, speaker in enumerate(dataset.with_format(None)[speaker_column]):  # plain values: they hash
            if speaker is not None:  # no speaker named: no prompt from another utterance
                self.rows_by_speaker[speaker].append(index)

    def draw(self, speaker, units: torch.Tensor, rng: random.Random) -> torch.Tensor | None:
        """The codes of another utterance of `speaker`, one whose units differ from `units` (None when it has no
        other one in the set). It may be shorter than the prompt asked for: then it is the prompt whole."""
        candidates = self.rows_by_speaker.get(speaker, [])
        start = rng.randrange(len(candidates)) if candidates else 0
        for step in range(len(candidates)):  # from a random row on, the first that is not this utterance
            row = self.rows[candidates[(start + step) % len(candidates)]]
            if not torch.equal(torch.as_tensor(row["semantic_units"], dtype=torch.long), units):
                return torch.as_tensor(row["acoustic_codes"], dtype=torch.long)
        return None


@dataclass
class AcousticLMDataCollator:
    """Pads a batch of utterances for `AcousticLMForConditionalGeneration.forward`, cutting voice prompts.

    Args:
        config: the model's config (rates, codebooks).
        prompt_probability: chance that an utterance without a `prompt_codes` column entry gets a voice prompt
            (0 disables voice prompts; 0.5 trains both with and without).
        min_prompt_seconds / max_prompt_seconds: the length range of such a prompt.
        min_target_seconds: the least audio left to predict after a prompt cut off the utterance itself (shorter
            utterances get no such prompt).
        speaker_prompts: when given, prompts are the front of another utterance of the same speaker; a speaker
            with no other utterance falls back to the utterance's own front.
        seed: seeds the prompts together with the epoch (set by `EpochToCollatorCallback`) and the utterance.
    """

    config: AcousticLMConfig
    prompt_probability: float = 0.5
    min_prompt_seconds: float = 1.0
    max_prompt_seconds: float = 3.0
    min_target_seconds: float = 1.0
    speaker_prompts: SpeakerPrompts | None = None
    seed: int = 0
    epoch: int = 0

    def __post_init__(self):
        if not 0.0 <= self.prompt_probability <= 1.0:
            raise ValueError(f"prompt_probability={self.prompt_probability} must lie in [0, 1]")
        if not 0 < self.min_prompt_seconds <= self.max_prompt_seconds:
            raise ValueError(
                f"need 0 < min_prompt_seconds ({self.min_prompt_seconds}) <= max_prompt_seconds "
                f"({self.max_prompt_seconds})"
            )

    def _rng(self, units: torch.Tensor) -> random.Random:
        key = zlib.crc32(units.numpy().astype("int64").tobytes())
        return random.Random(f"{self.seed}-{self.epoch}-{key}")

    def first_frame_of_unit(self, unit: int) -> int:
        """The first frame aligned with `unit` (frame `t` reads the unit holding its centre, `t + 0.5` frames)."""
        return max(0, math.ceil(unit * self.config.frames_per_unit - 0.5 - 1e-9))

    def split_prompt(self, units: torch.Tensor, codes: torch.Tensor, speaker=None):
        """Maybe give the utterance a voice prompt: (prompt codes, target units, target codes), the prompt None when
        it gets none. The prompt is the front of another utterance of `speaker` when `speaker_prompts` has one,
        else cut off the utterance's own front."""
        rng = self._rng(units)
        if self.prompt_probability == 0 or rng.random() >= self.prompt_probability:
            return None, units, codes
        other = None if self.speaker_prompts is None else self.speaker_prompts.draw(speaker, units, rng)
        if other is not None:
            seconds = rng.uniform(self.min_prompt_seconds, self.max_prompt_seconds)
            return other[:, : max(1, round(seconds * self.config.acoustic_frame_rate))], units, codes
        unit_rate = self.config.semantic_unit_rate
        min_prompt = max(1, round(self.min_prompt_seconds * unit_rate))
        max_prompt = max(min_prompt, round(self.max_prompt_seconds * unit_rate))
        max_prompt = min(max_prompt, units.numel() - max(1, round(self.min_target_seconds * unit_rate)))
        if max_prompt < min_prompt:
            return None, units, codes
        cut = rng.randint(min_prompt, max_prompt)
        frame = min(self.first_frame_of_unit(cut), codes.shape[1] - 1)
        if frame < 1:
            return None, units, codes
        return codes[:, :frame], units[cut:], codes[:, frame:]

    def _speaker(self, feature: dict):
        if self.speaker_prompts is None:
            return None
        column = self.speaker_prompts.speaker_column
        if column not in feature:
            raise ValueError(
                f"an example reached the collator without its speaker column {column!r}: keep it in the batch "
                f"(TrainingArguments(remove_unused_columns=False), as default_training_arguments sets)"
            )
        return feature[column]

    def __call__(self, features: list) -> dict:
        units, codes, prompts = [], [], []
        for feature in features:
            item_units = torch.as_tensor(feature["semantic_units"], dtype=torch.long)
            item_codes = torch.as_tensor(feature["acoustic_codes"], dtype=torch.long)
            if item_codes.dim() != 2 or item_codes.shape[0] != self.config.num_codebooks:
                raise ValueError(
                    f"acoustic_codes has shape {tuple(item_codes.shape)}: store num_codebooks="
                    f"{self.config.num_codebooks} rows of frames (codebooks x frames)"
                )
            given = feature.get("prompt_codes")
            if given is not None and len(given) > 0:
                prompt = torch.as_tensor(given, dtype=torch.long)
            else:
                prompt, item_units, item_codes = self.split_prompt(item_units, item_codes, self._speaker(feature))
            units.append(item_units)
            codes.append(item_codes)
            prompts.append(prompt)

        batch_size, num_codebooks = len(features), self.config.num_codebooks
        max_units = max(item.numel() for item in units)
        max_frames = max(item.shape[1] for item in codes)
        batch = {
            "semantic_units": torch.zeros(batch_size, max_units, dtype=torch.long),
            "semantic_units_mask": torch.zeros(batch_size, max_units, dtype=torch.long),
            "acoustic_codes": torch.zeros(batch_size, num_codebooks, max_frames, dtype=torch.long),
            "acoustic_codes_mask": torch.zeros(batch_size, max_frames, dtype=torch.long),
            "labels": torch.full((batch_size, num_codebooks, max_frames), PAD_CODE, dtype=torch.long),
        }
        for row, (item_units, item_codes) in enumerate(zip(units, codes)):
            batch["semantic_units"][row, : item_units.numel()] = item_units
            batch["semantic_units_mask"][row, : item_units.numel()] = 1
            batch["acoustic_codes"][row, :, : item_codes.shape[1]] = item_codes
            batch["acoustic_codes_mask"][row, : item_codes.shape[1]] = 1
            batch["labels"][row, :, : item_codes.shape[1]] = item_codes
        if any(prompt is not None for prompt in prompts):
            max_prompt = max(prompt.shape[1] for prompt in prompts if prompt is not None)
            batch["prompt_codes"] = torch.zeros(batch_size, num_codebooks, max_prompt, dtype=torch.long)
            batch["prompt_codes_mask"] = torch.zeros(batch_size, max_prompt, dtype=torch.long)
            for row, prompt in enumerate(prompts):
                if prompt is not None:
                    batch["prompt_codes"][row, :, : prompt.shape[1]] = prompt
                    batch["prompt_codes_mask"][row, : prompt.shape[1]] = 1
        return batch


class EpochToCollatorCallback(TrainerCallback):
    """Tell the collator the epoch, so each epoch draws new prompt cuts, and a resumed run draws the same ones."""

    def __init__(self, collator: AcousticLMDataCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch + 1e-6) if state.epoch else 0


def default_training_arguments(output_dir: str, **overrides) -> TrainingArguments:
    """Arguments that suit the acoustic LM on a small machine; any of them can be overridden."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        weight_decay=0.01,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        num_train_epochs=10,
        logging_steps=10,
        save_strategy="steps",
        save_steps=200,
        save_total_limit=2,
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the speaker column reaches `SpeakerPrompts` (the trainer keeps what it reads)
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def _collator_columns(dataset, speaker_column: str | None):
    """Only the columns the collator reads reach the data loader (no text, no audio to decode per row)."""
    if dataset.column_names is None:  # a stream of unknown columns: the collator reads what it needs
        return dataset
    wanted = [*REQUIRED_COLUMNS, "prompt_codes", *([speaker_column] if speaker_column else [])]
    return dataset.select_columns([name for name in wanted if name in dataset.column_names])


def build_acoustic_lm_trainer(
    model: AcousticLMForConditionalGeneration,
    train_dataset,
    args: TrainingArguments,
    eval_dataset=None,
    collator: AcousticLMDataCollator | None = None,
    callbacks: list | None = None,
    speaker_column: str | None = None,
) -> Trainer:
    """A `Trainer` wired with the collator and its epoch callback (call `.train()` yourself). With
    `speaker_column`, the default collator prompts each utterance with another one of its speaker in the training
    set (an evaluation utterance too; a speaker the training set lacks is prompted by its utterance's own front)."""
    check_acoustic_dataset(train_dataset, model.config)
    if eval_dataset is not None:
        check_acoustic_dataset(eval_dataset, model.config)
    if speaker_column is not None:
        if args.remove_unused_columns:
            raise ValueError(
                "voice prompts by speaker need the speaker column in each batch: set remove_unused_columns=False "
                "(default_training_arguments does)"
            )
        for dataset in (train_dataset, eval_dataset):
            if dataset is not None:
                check_speaker_column(dataset, speaker_column)
    if collator is None:
        speaker_prompts = None if speaker_column is None else SpeakerPrompts(train_dataset, speaker_column)
        collator = AcousticLMDataCollator(model.config, speaker_prompts=speaker_prompts, seed=args.seed)
    return Trainer(
        model=model,
        args=args,
        train_dataset=_collator_columns(train_dataset, speaker_column),
        eval_dataset=None if eval_dataset is None else _collator_columns(eval_dataset, speaker_column),
        data_collator=collator,
        callbacks=[EpochToCollatorCallback(collator), *(callbacks or [])],
    )


def train_acoustic_lm(
    model: AcousticLMForConditionalGeneration,
    train_dataset,
    args: TrainingArguments,
    eval_dataset=None,
    collator: AcousticLMDataCollator | None = None,
    resume_from_checkpoint: str | bool | None = None,
    save_dir=None,
    save_final: bool = True,
    speaker_column: str | None = None,
) -> Trainer:
    """Train (or resume: a checkpoint folder, or True for the latest in `args.output_dir`) and, unless
    `save_final=False`, save the final model in `save_dir` (default `args.output_dir`). Returns the trainer, whose
    `state.log_history` holds the losses. `speaker_column`: as in `build_acoustic_lm_trainer`."""
    trainer = build_acoustic_lm_trainer(
        model, train_dataset, args, eval_dataset=eval_dataset, collator=collator, speaker_column=speaker_column
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if save_final:
        trainer.save_model(save_dir or args.output_dir)  # on every process: FSDP and DeepSpeed gather the weights
        save_on_main_process(trainer)
    return trainer


@torch.no_grad()
def acoustic_lm_accuracy(
    model: AcousticLMForConditionalGeneration, dataset, batch_size: int = 8, greedy: bool = False
) -> dict:
    """Share of codes predicted right, per codebook and overall: teacher-forced (argmax of `forward`), and with
    `greedy=True` also free-running (greedy `generate` against the reference codes). No voice prompt."""
    model.eval()
    collator = AcousticLMDataCollator(model.config, prompt_probability=0.0)
    num_codebooks = model.config.num_codebooks
    counts = {"teacher_forced": torch.zeros(num_codebooks), "greedy": torch.zeros(num_codebooks)}
    total = torch.zeros(num_codebooks)
    device = model.device
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {name: value.to(device) for name, value in batch.items()}
        labels = batch["labels"]
        valid = labels != PAD_CODE
        predicted = model(**batch).logits.argmax(dim=-1).transpose(1, 2)
        counts["teacher_forced"] += ((predicted == labels) & valid).sum(dim=(0, 2)).cpu().float()
        total += valid.sum(dim=(0, 2)).cpu().float()
        if greedy:
            generated = model.generate(
                batch["semantic_units"], semantic_units_mask=batch["semantic_units_mask"], do_sample=False
            )
            frames = min(generated.shape[2], labels.shape[2])
            hits = (generated[:, :, :frames] == labels[:, :, :frames]) & valid[:, :, :frames]
            counts["greedy"] += hits.sum(dim=(0, 2)).cpu().float()
    result = {}
    for kind in ("teacher_forced", "greedy") if greedy else ("teacher_forced",):
        per_codebook = counts[kind] / total.clamp(min=1)
        result[f"{kind}_accuracy"] = float(counts[kind].sum() / total.sum().clamp(min=1))
        result[f"{kind}_accuracy_per_codebook"] = per_codebook.tolist()
    return result


__all__ = [
    "AcousticLMDataCollator",
    "EpochToCollatorCallback",
    "SpeakerPrompts",
    "acoustic_lm_accuracy",
    "build_acoustic_lm_trainer",
    "check_acoustic_dataset",
    "check_speaker_column",
    "default_training_arguments",
    "train_acoustic_lm",
]
