"""Speech unit tokens: tokenizer extension, the TTS prompt, and the constrained decoder."""

import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessorList

from conftest import tiny_llama
from mole_llama.modeling.speech_units import (
    SPEECH_END,
    SPEECH_START,
    SpeechTokenIds,
    SpeechUnitsLogitsProcessor,
    add_speech_tokens,
    tts_messages,
    tts_prompt_ids,
    unit_token,
)

SPEECH = SpeechTokenIds(start=90, end=91, first_unit=60, num_units=30)  # ids inside the tiny 96-token vocabulary


def allowed_in_speech(vocab_size):
    ids = torch.arange(vocab_size)
    return SPEECH.is_unit(ids) | (ids == SPEECH.end)


def test_constrained_decoder_never_allows_a_non_unit_inside_speech():
    for seed in range(200):
        check_constrained_scores(torch.Generator().manual_seed(seed))


def check_constrained_scores(generator):
    batch, length, vocab = 4, 12, 96
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    # Sprinkle markers so rows are inside, after and outside speech segments.
    markers = torch.rand(batch, length, generator=generator)
    input_ids[markers < 0.15] = SPEECH.start
    input_ids[(markers >= 0.15) & (markers < 0.25)] = SPEECH.end
    scores = torch.randn(batch, vocab, generator=generator) * 5
    processed = SpeechUnitsLogitsProcessor(SPEECH)(input_ids, scores.clone())
    for row in range(batch):
        starts = (input_ids[row] == SPEECH.start).nonzero()
        ends = (input_ids[row] == SPEECH.end).nonzero()
        inside = len(starts) > 0 and (len(ends) == 0 or starts.max() > ends.max())
        if inside:
            assert torch.isinf(processed[row][~allowed_in_speech(vocab)]).all()
            torch.testing.assert_close(processed[row][allowed_in_speech(vocab)], scores[row][allowed_in_speech(vocab)])
            sampled = torch.multinomial(processed[row].softmax(-1), 50, replacement=True, generator=generator)
            assert allowed_in_speech(vocab)[sampled].all()
        else:
            torch.testing.assert_close(processed[row], scores[row])


def test_generation_after_the_start_marker_yields_only_units_until_the_end():
    model = tiny_llama(seed=7)
    prompt = torch.tensor([[5, 6, 7, SPEECH.start]] * 3)
    output = model.generate(
        prompt, max_new_tokens=30, do_sample=True, top_k=0, temperature=1.5,
        logits_processor=LogitsProcessorList([SpeechUnitsLogitsProcessor(SPEECH)]), pad_token_id=0, eos_token_id=None,
    )  # fmt: skip
    for row in output[:, prompt.shape[1] :]:
        ends = (row == SPEECH.end).nonzero()
        segment = row[: ends[0, 0]] if len(ends) else row
        assert SPEECH.is_unit(segment).all(), row.tolist()


def test_units_round_trip_through_token_ids():
    units = [0, 29, 3, 3, 17]
    ids = SPEECH.units_to_token_ids(units)
    assert SPEECH.token_ids_to_units([SPEECH.start] + ids + [SPEECH.end, 61, 62]) == units
    with pytest.raises(ValueError, match="outside the 30 speech units"):
        SPEECH.units_to_token_ids([30])


@pytest.mark.slow
def test_speech_tokens_and_prompt_on_the_real_smollm2_tokenizer():
    from mole_llama.embedded.base import embedded_base_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_base_path())
    before = len(tokenizer)
    speech = add_speech_tokens(tokenizer, 64)
    assert len(tokenizer) == before + 66
    assert speech == add_speech_tokens(tokenizer, 64), "adding again must be a no-op"
    assert tokenizer.convert_ids_to_tokens(speech.first_unit + 63) == unit_token(63)
    # Markers and units are single tokens, and text decoding can drop them.
    text_ids = tokenizer(f"{SPEECH_START}{unit_token(5)}{unit_token(6)}{SPEECH_END}")["input_ids"]
    assert text_ids == [speech.start, speech.first_unit + 5, speech.first_unit + 6, speech.end]
    assert tokenizer.decode(text_ids, skip_special_tokens=True) == ""

    prompt = tts_prompt_ids(tokenizer, "  The sun is warm today.  ", speech)
    assert prompt[-1] == speech.start
    decoded = tokenizer.decode(prompt)
    assert "The sun is warm today." in decoded and "<|im_start|>assistant" in decoded

    with pytest.raises(ValueError, match="another number of units than 32"):
        add_speech_tokens(tokenizer, 32)
    with pytest.raises(ValueError, match="lacks"):
        SpeechTokenIds.from_tokenizer(AutoTokenizer.from_pretrained(embedded_base_path()), 8)


@pytest.mark.parametrize("bad, message", [("", "text is empty"), ("   \n", "text is empty"), (42, "must be a string")])
def test_bad_text_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        tts_messages(bad)


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("13 + 14 = 27.", "thirteen plus fourteen equals twenty seven."),
        ("It costs $1,250, or 12%.", "It costs one thousand two hundred fifty dollars, or twelve percent."),
        ("Pi is about 3.14; 6 / 2 is 3x1.", "Pi is about three point one four; six over two is three times one."),
        ("From 1990-2000, 12/25 was a date.", "From one thousand nine hundred ninety - two thousand, twelve / twenty "
         "five was a date."),  # a range and a date keep their dash and slash (not "minus", "over")
        ("No digits here, right?", "No digits here, right?"),
        ("$5.50, .5 and -5 (-3).", "five dollars fifty cents, point five and minus five (minus three)."),
        ("Version 1.2.3 at 5:30.", "Version one dot two dot three at five thirty."),  # one piece: no "." inside
        ("Call 5551234567.", "Call five five five one two three four five six seven."),  # digit by digit
    ],
)  # fmt: skip
def test_numbers_and_arithmetic_are_spoken_as_words(text, spoken):
    from mole_llama.modeling.spoken_form import spoken_form

    assert spoken_form(text) == spoken
    assert spoken_form(spoken) == spoken  # once is enough: a second pass changes nothing
    assert tts_messages(text)[-1]["content"].endswith(spoken)  # what the speech expert reads


def test_a_digit_run_of_any_length_is_spoken_without_error():
    from mole_llama.modeling.spoken_form import spoken_form

    assert spoken_form("7" * 5000) == " ".join(["seven"] * 5000)  # past int()'s 4,300-digit limit
