"""Training of the duration predictor with transformers' `Trainer`, on the frame-level units of a prepared dataset.

Each row's `semantic_units` are run-length collapsed (`deduplicate_units`): the collapsed units are the input, their
run lengths the target. So the predictor learns from the same data as the acoustic LM, and needs no column of its own.
"""

from dataclasses import dataclass

import torch
from transformers import Trainer, TrainingArguments

from ..modeling.modeling_duration_predictor import DurationPredictorModel
from ..modeling.speech_units import deduplicate_units
from .checkpoints import save_on_main_process


@dataclass
class DurationDataCollator:
    """Pads collapsed units and their durations; `units_mask` marks the real units."""

    def __call__(self, features: list) -> dict:
        rows = [deduplicate_units(feature["semantic_units"]) for feature in features]
        if any(not units for units, _ in rows):
            raise ValueError("an example has no semantic_units: drop empty rows (prepare_speech_dataset does)")
        length = max(len(units) for units, _ in rows)
        units = torch.zeros(len(rows), length, dtype=torch.long)
        durations = torch.ones(len(rows), length)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for row, (row_units, row_durations) in enumerate(rows):
            units[row, : len(row_units)] = torch.tensor(row_units)
            durations[row, : len(row_units)] = torch.tensor(row_durations, dtype=torch.float)
            mask[row, : len(row_units)] = 1
        return {"units": units, "units_mask": mask, "durations": durations}


def default_duration_arguments(output_dir: str, **overrides) -> TrainingArguments:
    """Settings that train the small predictor in about a minute on 2 CPU cores; any can be overridden."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        num_train_epochs=4,
        logging_steps=20,
        save_strategy="epoch",
        save_total_limit=1,
        report_to=[],
        remove_unused_columns=False,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def train_duration_predictor(
    model: DurationPredictorModel, train_dataset, args: TrainingArguments, resume_from_checkpoint=None, save_dir=None
) -> Trainer:
    """Train on a dataset with a `semantic_units` column (frame-level units) and save the model in `save_dir`
    (default `args.output_dir`, where the trainer's checkpoints go). Returns the trainer (`state.log_history`
    holds the losses)."""
    if "semantic_units" not in (train_dataset.column_names or []):
        raise ValueError(
            f"the dataset has no semantic_units column (it has {train_dataset.column_names}): "
            "run prepare_speech_dataset (mole-llama prepare) first"
        )
    if len(train_dataset) == 0:
        raise ValueError("the dataset is empty: give at least one utterance")
    largest = max(max(units) for units in train_dataset["semantic_units"] if units)
    if largest >= model.config.num_units:
        raise ValueError(f"the data has unit {largest}, the predictor knows {model.config.num_units} units")
    train_dataset = train_dataset.select_columns(["semantic_units"])
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=DurationDataCollator())
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model(save_dir or args.output_dir)  # on every process: FSDP and DeepSpeed gather the weights
    save_on_main_process(trainer)
    return trainer


__all__ = ["DurationDataCollator", "default_duration_arguments", "train_duration_predictor"]
