"""Bad and odd text through the speaking path: a fuzz of random texts (unicode, control characters, markup,
special-token strings, very long words, empty) on the tiny speaking model with the real SmolLM2 tokenizer. Every
text ends in audio or a ValueError, never another exception; inside a speech segment only unit tokens (or the end
marker) come out, and never more than the text's cap."""

import random

import pytest
import torch
from test_tts_pipeline import tts_dir  # noqa: F401  (the fixture)
from transformers import pipeline

pytestmark = pytest.mark.slow

FRAGMENTS = [
    lambda rng: "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 12))),  # Latin to CJK
    lambda rng: "".join(
        chr(rng.choice([0x1F600, 0x1F680, 0x05D0, 0x0627, 0x0301, 0x200B, 0xFEFF])) for _ in range(rng.randint(1, 6))
    ),  # emoji, right-to-left, combining, zero-width  # fmt: skip
    lambda rng: "".join(chr(rng.randint(0, 31)) for _ in range(rng.randint(1, 4))) + "\x7f",  # control characters
    lambda rng: rng.choice(
        [
            "<b>bold</b>",
            "{{ template }}",
            "[INST] do [/INST]",
            "<script>x()</script>",
            "# title",
            "| a | b |",
            "&amp;",
            "\\n\\t",
        ]
    ),  # fmt: skip
    lambda rng: rng.choice(
        [
            "<|speech_5|>",
            "<|speech_end|>",
            "<|speech_start|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|speech_",
            "<|im",
        ]
    ),  # fmt: skip
    lambda rng: "x" * rng.randint(50, 400),  # a very long word
    lambda rng: rng.choice(["", " ", "\n\n", "\t"]),
    lambda rng: rng.choice(["Hello there.", "How are you today?", "Numbers: 1, 22, 333.", "Wait... what?!"]),
]
TEXTS = 1000


def random_texts(count: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [" ".join(rng.choice(FRAGMENTS)(rng) for _ in range(rng.randint(1, 5))) for _ in range(count)]


def test_a_thousand_random_texts_end_in_audio_or_a_clear_error(tts_dir):  # noqa: F811
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    texts = random_texts(TEXTS)
    speech, outcomes = model.speech_ids, {"refused": 0, "spoken": 0}
    pieces = []
    for text in texts:
        try:
            pieces += model.plan_pieces(text)
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["refused"] < TEXTS  # the fuzz reaches the LLM too
    torch.manual_seed(0)
    for start in range(0, len(pieces), 64):
        batch = pieces[start : start + 64]
        for piece, row in zip(batch, model.speech_token_rows(batch, do_sample=True, top_k=50)):
            row = row.tolist()
            segment = row[: row.index(speech.end)] if speech.end in row else row
            assert all(speech.is_unit(torch.tensor(segment))), f"a non-unit token inside the segment for {piece!r}"
            assert len(segment) <= model.units_cap(piece)
    for text in texts[:12]:  # the whole way to audio for some
        try:
            audio = model.speak(text, seed=0)
        except ValueError:  # NoSpeechUnitsError included
            continue
        outcomes["spoken"] += 1
        assert audio.ndim == 1 and len(audio) > 0 and torch.isfinite(audio).all()
    assert outcomes["spoken"] > 0


def test_control_tokens_of_the_tokenizer_in_the_text_are_refused(tts_dir):  # noqa: F811
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    for text in ("Hello <|im_end|> there", "<|im_start|>system", "end<|endoftext|>"):
        with pytest.raises(ValueError, match="special token"):
            model.speak(text)
