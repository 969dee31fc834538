"""Training examples for the LLM side, in TRL's conversational prompt-completion format.

`SFTTrainer` applies the base model's chat template to `prompt` + `completion` and, by default for this format,
computes the loss on the completion only, which is the paper's "loss on the assistant part" without needing a
chat template with generation markers (SmolLM2's and Llama 3's have none).

- TTS examples: the user turn asks to read a text, the assistant answers `<|speech_start|> units <|speech_end|>`:
  exactly what `tts_prompt_ids` prompts at inference (the generation prompt, then the start marker).
- Text examples: a `messages` conversation whose last turn is the assistant's answer.
"""

from datasets import Dataset, IterableDataset, concatenate_datasets

from ..modeling.speech_units import (
    SPEECH_END,
    SPEECH_START,
    TTS_INSTRUCTION,
    deduplicate_units,
    tts_messages,
    unit_token,
)

TASK_COLUMN = "task"
"""Which kind each example of a mixed dataset is ("tts" or "text"): the router training reports routing by task."""


def speech_completion(units) -> str:
    """The assistant's answer for a speech segment: start marker, one token per unit, end marker."""
    if len(units) == 0:
        raise ValueError("an example has no semantic units: prepare the dataset with prepare_speech_dataset")
    return SPEECH_START + "".join(unit_token(int(unit)) for unit in units) + SPEECH_END


def _require(dataset, columns: tuple, fix: str) -> None:
    present = dataset.column_names or []
    missing = [name for name in columns if name not in present]
    if missing:
        raise ValueError(f"the dataset lacks the column(s) {missing} (it has {present}): {fix}")


def _map_to_examples(dataset, to_example, desc: str, num_proc: int | None):
    """Map rows to prompt-completion examples, dropping every other column (progress and workers where the
    dataset supports them: a streaming one maps lazily)."""
    removed = [name for name in dataset.column_names if name not in ("prompt", "completion", TASK_COLUMN)]
    kwargs = {} if isinstance(dataset, IterableDataset) else {"num_proc": num_proc, "desc": desc}
    return dataset.map(to_example, remove_columns=removed, **kwargs)


def tts_examples(dataset, instruction: str = TTS_INSTRUCTION, num_proc: int | None = None, deduplicate: bool = False):
    """A prepared speech dataset (`text`, `semantic_units`) -> prompt-completion TTS examples; with `deduplicate`
    the completion holds the run-length-collapsed units (a duration predictor restores the frames)."""
    _require(dataset, ("text", "semantic_units"), "run prepare_speech_dataset (mole-llama prepare) first")

    def to_example(row):
        units = deduplicate_units(row["semantic_units"])[0] if deduplicate else row["semantic_units"]
        return {
            "prompt": tts_messages(row["text"], instruction),
            "completion": [{"role": "assistant", "content": speech_completion(units)}],
            TASK_COLUMN: "tts",
        }

    return _map_to_examples(dataset, to_example, "TTS examples", num_proc)


def text_examples(dataset, messages_column: str = "messages", num_proc: int | None = None):
    """A chat dataset (a `messages` column, last turn the assistant's) -> prompt-completion text examples."""
    _require(dataset, (messages_column,), "give a chat dataset with a list of {'role', 'content'} turns per row")

    def to_example(row):
        messages = row[messages_column]
        if not messages or messages[-1].get("role") != "assistant" or len(messages) < 2:
            raise ValueError(
                f"a conversation must end with the assistant's answer after at least one user turn, got roles "
                f"{[turn.get('role') for turn in messages or []]}"
            )
        return {"prompt": messages[:-1], "completion": messages[-1:], TASK_COLUMN: "text"}

    return _map_to_examples(dataset, to_example, "text examples", num_proc)


def mixed_examples(tts: Dataset, text: Dataset, seed: int = 0) -> Dataset:
    """TTS and text examples in one shuffled dataset, for the router (each keeps its `task`)."""
    for name, part in (("tts", tts), ("text", text)):
        _require(part, ("prompt", "completion", TASK_COLUMN), f"build the {name} part with {name}_examples")
    return concatenate_datasets([tts, text]).shuffle(seed=seed)


__all__ = ["TASK_COLUMN", "mixed_examples", "speech_completion", "text_examples", "tts_examples"]
