"""Speech unit tokens of TTS-Llama: their names, adding them to a tokenizer, the TTS prompt, constrained decoding.

The LLM speaks by emitting `<|speech_start|> <|speech_17|> <|speech_3|> ... <|speech_end|>`, one token per
semantic unit. Decoding is constrained so that inside such a segment only unit tokens or the end marker can come.

Self-contained (transformers and torch only), so saved model folders can carry it for `trust_remote_code=True`.
"""

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from .spoken_form import spoken_form

SPEECH_TOKEN_PREFIX = "<|speech_"
"""Every speech token (markers and units) starts with this."""
SPEECH_START = SPEECH_TOKEN_PREFIX + "start|>"
SPEECH_END = SPEECH_TOKEN_PREFIX + "end|>"
TTS_INSTRUCTION = "Read the following text aloud."
TTS_SYSTEM = "You speak."
"""A system turn of its own: without one, SmolLM2's chat template adds its ~20-token default to every TTS example."""


def pad_token_ids(sequences: list, pad_id: int, side: str) -> tuple:
    """Pad token id lists to one `(batch, longest)` tensor, on the left (generation) or right (teacher forcing);
    done here so the caller's tokenizer is never changed."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def unit_token(index: int) -> str:
    return f"{SPEECH_TOKEN_PREFIX}{index}|>"


@dataclass(frozen=True)
class SpeechTokenIds:
    """Where the speech tokens sit in a vocabulary: the markers, and units as one contiguous id range."""

    start: int
    end: int
    first_unit: int
    num_units: int

    @classmethod
    def from_tokenizer(cls, tokenizer, num_units: int) -> "SpeechTokenIds":
        """Find the speech tokens in `tokenizer`, checking that the units are contiguous and in order."""
        vocab = tokenizer.get_vocab()
        names = [SPEECH_START, SPEECH_END] + [unit_token(i) for i in range(num_units)]
        missing = [name for name in names if name not in vocab]
        if missing:
            raise ValueError(
                f"the tokenizer lacks {len(missing)} speech tokens (e.g. {missing[0]}): "
                f"add them with add_speech_tokens(tokenizer, {num_units})"
            )
        first = vocab[unit_token(0)]
        if any(vocab[unit_token(i)] != first + i for i in range(num_units)):
            raise ValueError("the speech unit tokens are not contiguous in the vocabulary: add them in one call")
        return cls(start=vocab[SPEECH_START], end=vocab[SPEECH_END], first_unit=first, num_units=num_units)

    def is_unit(self, token_ids: torch.Tensor) -> torch.Tensor:
        return (token_ids >= self.first_unit) & (token_ids < self.first_unit + self.num_units)

    def speakable(self, device=None) -> torch.LongTensor:
        """The tokens a speech segment may continue with: the units and the end marker."""
        units = torch.arange(self.first_unit, self.first_unit + self.num_units, device=device)
        return torch.cat([units, torch.tensor([self.end], device=device)])

    def units_to_token_ids(self, units) -> list:
        units = [int(unit) for unit in units]
        bad = [unit for unit in units if not 0 <= unit < self.num_units]
        if bad:
            raise ValueError(f"unit {bad[0]} is outside the {self.num_units} speech units")
        return [self.first_unit + unit for unit in units]

    def token_ids_to_units(self, token_ids) -> list:
        """The units of a generated speech segment: unit tokens up to the end marker (markers and text dropped)."""
        units = []
        for token_id in (int(t) for t in token_ids):
            if token_id == self.end:
                break
            if self.first_unit <= token_id < self.first_unit + self.num_units:
                units.append(token_id - self.first_unit)
        return units


UNITS_PER_CHARACTER_CAP, UNITS_CAP_MARGIN = 1.5, 16
"""Collapsed units the LLM may speak for a text: measured 0.72 per character (median), 1.0 at most, on 4,601
training sentences; without this cap a model that misses its end marker runs to max_new_tokens."""


def collapsed_units_cap(text: str) -> int:
    """The most collapsed units a text may be spoken with, from the length of the words it will say."""
    return int(UNITS_PER_CHARACTER_CAP * len(spoken_form(text))) + UNITS_CAP_MARGIN


def deduplicate_units(units) -> tuple:
    """Run-length collapse: `[5, 5, 5, 2, 2, 5]` -> `([5, 2, 5], [3, 2, 1])`. The LLM speaks the collapsed units
    (GSLM's and SpeechGPT's choice: ~3x shorter for phones); the durations train the duration predictor."""
    collapsed, durations = [], []
    for unit in (int(unit) for unit in units):
        if collapsed and collapsed[-1] == unit:
            durations[-1] += 1
        else:
            collapsed.append(unit)
            durations.append(1)
    return collapsed, durations


def expand_units(units, durations) -> list:
    """The inverse of `deduplicate_units`: each unit repeated for its duration (in frames, at least 1)."""
    units, durations = list(units), [int(duration) for duration in durations]
    if len(units) != len(durations):
        raise ValueError(f"{len(units)} units but {len(durations)} durations: give one duration per unit")
    if any(duration < 1 for duration in durations):
        raise ValueError(f"durations must be >= 1 frame, got {min(durations)}")
    return [int(unit) for unit, duration in zip(units, durations) for _ in range(duration)]


def add_speech_tokens(tokenizer, num_units: int) -> SpeechTokenIds:
    """Add the start/end markers and `num_units` unit tokens to `tokenizer` (as special tokens, so text decoding
    with `skip_special_tokens=True` drops them). Adding again is a no-op. Resize the model's embeddings after."""
    if num_units <= 0:
        raise ValueError(f"num_units={num_units}: give the number of semantic units (e.g. 1024)")
    names = [SPEECH_START, SPEECH_END] + [unit_token(i) for i in range(num_units)]
    vocab = tokenizer.get_vocab()
    present = [name for name in names if name in vocab]
    if present and (len(present) != len(names) or unit_token(num_units) in vocab):
        raise ValueError(
            f"the tokenizer already has speech tokens for another number of units than {num_units}: "
            "start again from the base tokenizer"
        )
    if not present:
        tokenizer.add_tokens(names, special_tokens=True)
    return SpeechTokenIds.from_tokenizer(tokenizer, num_units)


def check_tts_text(text) -> str:
    """`text`, if it can be spoken: a string with a word, and no speech-token names (markers, not words)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty: give at least one word")
    if SPEECH_TOKEN_PREFIX in text:
        raise ValueError(
            f"the text contains {SPEECH_TOKEN_PREFIX!r}, the start of the speech tokens' names (e.g. {SPEECH_END}): "
            "they are markers, not words; remove them from the text"
        )
    return text


def tts_messages(text: str, instruction: str = TTS_INSTRUCTION) -> list:
    """The chat turns that ask for speech: a short system turn and the user's request, the text in its spoken form
    (numbers as words); the assistant answers with a speech segment."""
    text = spoken_form(check_tts_text(text))
    return [{"role": "system", "content": TTS_SYSTEM}, {"role": "user", "content": f"{instruction}\n{text}"}]


def tts_prompt_ids(tokenizer, text: str, speech: SpeechTokenIds, instruction: str = TTS_INSTRUCTION) -> list:
    """Token ids of the TTS prompt: the base model's chat template with the generation prompt, then the start
    marker, so generation continues straight into units."""
    ids = tokenizer.apply_chat_template(tts_messages(text, instruction), add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids) + [speech.start]


class SpeechUnitsLogitsProcessor(LogitsProcessor):
    """Inside a speech segment (a start marker with no end marker after it) only unit tokens or the end marker
    may be chosen; elsewhere the scores pass unchanged. Works per row of a batch."""

    def __init__(self, speech: SpeechTokenIds):
        self.speech = speech

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
        last_start = ((input_ids == self.speech.start) * positions).amax(dim=1)
        last_end = ((input_ids == self.speech.end) * positions).amax(dim=1)
        inside = last_start > last_end
        if not inside.any():
            return scores
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        allowed[self.speech.speakable(scores.device)] = True
        blocked = inside[:, None] & ~allowed[None, :]
        return scores.masked_fill(blocked, float("-inf"))
