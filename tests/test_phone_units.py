"""The "phones" semantic units on real festival and flite speech: pocketsphinx's pretrained en-us model, by forced
alignment to the transcript and by phone recognition; saved, loaded and loaded as remote code."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from datasets import Dataset
from rapidfuzz.distance import Levenshtein
from test_remote_code import BLOCK_MOLE_LLAMA

from conftest import wav_bytes
from mole_llama.data.audio import resample
from mole_llama.embedded.festival import synthesize
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.modeling_semantic_units import SemanticUnitsModel
from mole_llama.modeling.phone_units import PHONES, TranscriptAlignmentError, segments_to_units
from mole_llama.modeling.speech_units import deduplicate_units
from mole_llama.training.prepare import prepare_speech_dataset

RATE = 16000
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A friend in need is a friend indeed.",
    "Never put off until tomorrow what you can do today.",
    "Every cloud has a silver lining, they say.",
]
VOICES = ("kal", "slt", "flite_rms")
# Measured 2026-12-01 on these sentences (collapsed units, normalised edit distance): same sentence in two voices
# 0.00-0.04 by forced alignment, two sentences in one voice 0.78-0.79. Bounds with margin.
MAX_CROSS_VOICE_DISTANCE = 0.25
MIN_ACROSS_SENTENCE_DISTANCE = 0.6


@pytest.fixture(scope="module")
def speech():
    return {(voice, text): resample(*synthesize(text, voice), RATE) for voice in VOICES for text in SENTENCES}


@pytest.fixture(scope="module")
def aligned():
    return SemanticUnitsModel(SemanticUnitsConfig(backend="phones")).eval()


def collapsed(tokenizer, waveform, text=None):
    return deduplicate_units(tokenizer.encode(waveform, text)[0].tolist())[0]


def test_aligned_phones_carry_the_words_not_the_voice(speech, aligned):
    units = {key: collapsed(aligned, waveform, key[1]) for key, waveform in speech.items()}
    cross_voice = [
        Levenshtein.normalized_distance(units[(a, text)], units[(b, text)])
        for text in SENTENCES
        for i, a in enumerate(VOICES)
        for b in VOICES[i + 1 :]
    ]
    across_sentences = [
        Levenshtein.normalized_distance(units[(voice, a)], units[(voice, b)])
        for voice in VOICES
        for a, b in zip(SENTENCES, SENTENCES[1:])
    ]
    assert max(cross_voice) < MAX_CROSS_VOICE_DISTANCE
    assert min(across_sentences) > MIN_ACROSS_SENTENCE_DISTANCE
    # The dictionary's phones in order, with silences: "the quick" starts DH AH K W IH K after the leading silence.
    names = [PHONES[unit] for unit in units[("kal", SENTENCES[0])]]
    assert names[:7] == ["SIL", "DH", "AH", "K", "W", "IH", "K"] and names[-1] == "SIL"


def test_units_come_at_the_unit_rate(speech, aligned):
    waveform = speech[("slt", SENTENCES[1])]
    units = aligned.encode(waveform, SENTENCES[1])
    assert units.shape == (1, int(np.ceil(len(waveform) / RATE * 50)))
    assert units.dtype == torch.long and 0 <= units.min() and units.max() < len(PHONES)
    # Phone recognition needs no transcript; it hears fewer of the right phones than alignment gives.
    recognizer = SemanticUnitsModel(SemanticUnitsConfig(backend="phones", phone_source="recognition"))
    heard = collapsed(recognizer, waveform)
    distance = Levenshtein.normalized_distance(heard, collapsed(aligned, waveform, SENTENCES[1]))
    assert 0 < distance < 0.7  # measured 0.15-0.54 per clip against the aligned phones


def test_frames_outside_every_segment_are_silence():
    units = segments_to_units([("AH", 10, 10), ("+NSN+", 20, 10), ("K", 30, 5)], num_samples=8000, unit_rate=50)
    assert units.tolist()[:5] == [0] * 5 and units[5:10].tolist() == [PHONES.index("AH")] * 5
    assert units[10:15].tolist() == [0] * 5 and units[15:17].tolist() == [PHONES.index("K")] * 2
    assert units[17:].tolist() == [0] * 8


def test_saved_tokenizer_gives_the_same_units_and_loads_as_remote_code(speech, aligned, tmp_path):
    waveform = speech[("kal", SENTENCES[2])]
    expected = aligned.encode(waveform, SENTENCES[2])
    aligned.save_pretrained(tmp_path / "tokenizer")
    assert torch.equal(
        SemanticUnitsModel.from_pretrained(tmp_path / "tokenizer").encode(waveform, SENTENCES[2]), expected
    )
    np.save(tmp_path / "wave.npy", waveform)
    script = BLOCK_MOLE_LLAMA + textwrap.dedent(
        f"""
        import numpy as np
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "tokenizer")!r}, trust_remote_code=True)
        units = model.encode(np.load({str(tmp_path / "wave.npy")!r}), {SENTENCES[2]!r})
        print(",".join(map(str, units[0].tolist())))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == ",".join(map(str, expected[0].tolist()))


def test_bad_input_is_a_clear_error(speech, aligned):
    waveform = speech[("kal", SENTENCES[0])]
    with pytest.raises(ValueError, match="need the transcript"):
        aligned.encode(waveform)
    with pytest.raises(TranscriptAlignmentError, match="not in pocketsphinx's dictionary"):
        aligned.encode(waveform, "The quick brown zorblax jumps.")
    with pytest.raises(ValueError, match="40 units"):
        SemanticUnitsConfig(backend="phones", num_units=64)
    with pytest.raises(ValueError, match="16000 Hz"):
        SemanticUnitsConfig(backend="phones", sampling_rate=24000)
    with pytest.raises(ValueError, match="phone_source"):
        SemanticUnitsConfig(backend="phones", phone_source="guess")
    with pytest.raises(ValueError, match="no features"):
        aligned.features(waveform)


def test_prepare_aligns_to_the_text_column_and_counts_what_cannot_be_aligned(speech, aligned):
    from conftest import tiny_encodec

    rows = [
        {"text": SENTENCES[0], "audio": {"bytes": wav_bytes(speech[("kal", SENTENCES[0])], RATE), "path": None}},
        {"text": "Zorblax flumphs.", "audio": {"bytes": wav_bytes(speech[("kal", SENTENCES[1])], RATE), "path": None}},
    ]
    prepared, report = prepare_speech_dataset(
        Dataset.from_list(rows), aligned, tiny_encodec(RATE), return_report=True, load_from_cache_file=False
    )
    assert report.kept == 1 and report.skipped == {"unaligned text": 1}
    assert prepared[0]["semantic_units"] == aligned.encode(speech[("kal", SENTENCES[0])], SENTENCES[0])[0].tolist()
