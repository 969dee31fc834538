"""Where a training stage keeps its checkpoints, which one a resumed run starts from, and how a stage ends.

Every stage writes its final model to its output folder OUT and its trainer's checkpoints to `OUT/checkpoints`, so a
finished model never sits among `checkpoint-N` folders, optimizer states and pickles (`export` and `push` take the
model alone).

transformers' `Trainer` writes a checkpoint in place, file by file (weights, optimizer, scheduler, RNG states, and
`trainer_state.json` last), so a run killed while it saves leaves a `checkpoint-N` folder that looks like the newest
but cannot be resumed. A checkpoint counts as complete once its trainer state is written.
"""

import re
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
CHECKPOINTS_FOLDER = "checkpoints"


def checkpoints_dir(out) -> Path:
    """The folder a stage's trainer writes its checkpoints to (its `output_dir`): `out/checkpoints`."""
    return Path(out) / CHECKPOINTS_FOLDER


def save_on_main_process(trainer, save=None) -> None:
    """The end of every training stage: all processes wait for the last step, then the main process alone calls
    `save()`, so a multi-GPU run writes its final model once, and writes the final trainer state (the whole log
    history, the last steps' losses and learning-curve readings too) beside the checkpoints, for reports.
    (`Trainer.save_model` gathers sharded weights from every process under FSDP or DeepSpeed: call it on all of
    them before, and this with no `save`.)"""
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        if save is not None:
            save()
        trainer.save_state()


def last_complete_checkpoint(folder) -> str | None:
    """The newest `checkpoint-N` of `folder` holding its trainer state, or None; newer incomplete ones are named in a
    warning (they are left on disk, and the resumed run writes over them when it gets there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := CHECKPOINT_NAME.match(path.name))
    )
    incomplete = []
    for _, path in reversed(found):
        if (path / TRAINER_STATE_NAME).is_file():
            if incomplete:
                logger.warning(f"skipping incomplete checkpoint(s) {incomplete} (a run stopped while saving); "
                               f"resuming from {path.name}")  # fmt: skip
            return str(path)
        incomplete.append(path.name)
    if incomplete:
        logger.warning(f"no complete checkpoint in {folder} (only {incomplete}, cut short while saving)")
    return None


def checkpoint_to_resume(folder, resume: bool) -> str | None:
    """With `resume`, the newest complete checkpoint of `folder` (a warning when there is none yet, and the run
    starts from the beginning); without it, None: a run resumes only when asked."""
    if not resume:
        return None
    checkpoint = last_complete_checkpoint(folder)
    if checkpoint is not None:
        return checkpoint
    older = [path for place in (Path(folder).parent, Path(folder).parent / "adapter") if place.is_dir()
             for path in place.glob(f"{PREFIX_CHECKPOINT_DIR}-*")]  # fmt: skip
    if older:
        raise ValueError(
            f"--resume: no checkpoint in {folder}, but {older[0]} lies where stages kept them before; move the "
            f"checkpoint-N folders into {folder} and resume again"
        )
    logger.warning(f"--resume: no checkpoint in {folder} yet, starting from the beginning")
    return None


__all__ = [
    "CHECKPOINTS_FOLDER",
    "checkpoint_to_resume",
    "checkpoints_dir",
    "last_complete_checkpoint",
    "save_on_main_process",
]
