"""Which checkpoint a resumed run starts from.

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
    if checkpoint is None:
        logger.warning(f"--resume: no checkpoint in {folder} yet, starting from the beginning")
    return checkpoint


__all__ = ["checkpoint_to_resume", "last_complete_checkpoint"]
