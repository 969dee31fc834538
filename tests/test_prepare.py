"""Data preparation: real festival speech in an Audio column -> text, semantic units and acoustic codes; bad rows
skipped and counted; caching; resampling for each model; streaming; num_proc; input errors."""

import copy
import logging

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset, load_from_disk

from conftest import tiny_encodec, wav_bytes
from mole_llama.data.audio import decode_audio
from mole_llama.embedded.festival import synthesize
from mole_llama.modeling.configuration_mel_codec import MelCodecConfig
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.modeling_mel_codec import MelCodecModel
from mole_llama.training.prepare import PreparationReport, prepare_speech_dataset
from mole_llama.training.semantic_tokenizer import fit_semantic_tokenizer

MAX_SECONDS = 5.0
SKIPPED = {"unreadable audio": 1, "silent audio": 1, "too long": 1, "empty text": 1, "too short": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine: a second thread only spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech():
    """Real speech: two kal sentences at 16 kHz, one slt sentence at 32 kHz (so every model resamples something)."""
    return [
        ("Good morning, how are you today?", *synthesize("Good morning, how are you today?", voice="kal")),
        ("The cat sat on the mat.", *synthesize("The cat sat on the mat.", voice="slt")),
        ("Please call me tomorrow.", *synthesize("Please call me tomorrow.", voice="kal")),
    ]


@pytest.fixture(scope="module")
def tokenizer(speech):
    rows = [{"audio": {"array": waveform, "sampling_rate": rate}} for _, waveform, rate in speech]
    return fit_semantic_tokenizer(rows, SemanticUnitsConfig(num_units=8, unit_rate=50), iterations=5).eval()


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    config = MelCodecConfig(
        hidden_size=16, num_residual_layers=1, codebook_dim=8, num_codebooks=2, codebook_size=16,
        griffin_lim_iterations=4,
    )  # fmt: skip
    return MelCodecModel(config).eval()


@pytest.fixture(scope="module")
def mixed(speech):
    """Three good rows among one of each bad kind, as an Audio column of WAV bytes (no torchcodec needed)."""
    (text_a, kal_a, rate_a), (text_b, slt_b, rate_b), (text_c, kal_c, rate_c) = speech
    rows = [
        (text_a, wav_bytes(kal_a, rate_a), "kal"),
        ("Corrupt file.", b"RIFF but not really a wave file", "kal"),
        (text_b, wav_bytes(slt_b, rate_b), "slt"),
        ("Nothing to hear.", wav_bytes(np.zeros(16000, np.float32), 16000), "kal"),
        ("Far too long.", wav_bytes(np.tile(kal_a, 3), rate_a), "kal"),
        ("   ", wav_bytes(kal_c, rate_c), "kal"),
        (f"  {text_c}\n", wav_bytes(kal_c, rate_c), "kal"),
        ("Too short.", wav_bytes(kal_c[8000:8800], rate_c), "kal"),
    ]
    columns = {"text": [r[0] for r in rows], "audio": [r[1] for r in rows], "speaker": [r[2] for r in rows]}
    return Dataset.from_dict(columns).cast_column("audio", Audio())


@pytest.fixture(scope="module")
def prepared(mixed, tokenizer, codec):
    return prepare_speech_dataset(
        mixed, tokenizer, codec, max_seconds=MAX_SECONDS, keep_columns=["speaker"], return_report=True
    )


def direct(model, audio_bytes, rate):
    waveform, _ = decode_audio({"bytes": audio_bytes, "path": None}, rate)
    return model.encode(torch.from_numpy(waveform)[None])[0].tolist(), len(waveform) / rate


def test_units_and_codes_match_direct_encoding_at_the_rates(prepared, mixed, tokenizer, codec):
    dataset, _ = prepared
    assert dataset.column_names == ["speaker", "text", "semantic_units", "acoustic_codes", "seconds"]
    good = [0, 2, 6]
    for row, index in zip(dataset, good, strict=True):
        audio = mixed.cast_column("audio", Audio(decode=False))[index]["audio"]["bytes"]
        units, seconds = direct(tokenizer, audio, 16000)
        codes, _ = direct(codec, audio, codec.sampling_rate)
        assert row["seconds"] == pytest.approx(seconds, abs=1e-3) and 1.0 < row["seconds"] < MAX_SECONDS
        assert abs(len(row["semantic_units"]) - seconds * 50) <= 2
        assert len(row["acoustic_codes"]) == 2 and abs(len(row["acoustic_codes"][0]) - seconds * codec.frame_rate) <= 2
        assert row["semantic_units"] == units and row["acoustic_codes"] == codes
        assert len(set(row["semantic_units"])) > 2, "real speech should use several units"


def test_bad_rows_are_skipped_and_counted_good_rows_kept_in_order(prepared, speech, caplog, mixed, tokenizer, codec):
    dataset, report = prepared
    assert list(dataset["text"]) == [text for text, _, _ in speech]  # stripped, in order
    assert list(dataset["speaker"]) == ["kal", "slt", "kal"]
    assert isinstance(report, PreparationReport) and report.kept == 3 and report.skipped == SKIPPED
    with caplog.at_level(logging.INFO, logger="mole_llama.training.prepare"):
        prepare_speech_dataset(mixed, tokenizer, codec, max_seconds=MAX_SECONDS)
    (record,) = [r for r in caplog.records if r.name == "mole_llama.training.prepare"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("prepared 3 of 8 rows; skipped: ")
    assert "1 too long (> 5 s)" in record.getMessage() and "1 unreadable audio" in record.getMessage()


def count_calls(monkeypatch, model) -> list:
    calls = []
    encode = model.encode

    def counted(waveform):
        calls.append(1)
        return encode(waveform)

    monkeypatch.setattr(model, "encode", counted)
    return calls


def test_rerun_is_served_from_the_cache_other_weights_are_not(mixed, tokenizer, codec, tmp_path, monkeypatch):
    mixed.save_to_disk(tmp_path / "raw")
    on_disk = load_from_disk(tmp_path / "raw")
    first, first_report = prepare_speech_dataset(on_disk, tokenizer, codec, max_seconds=MAX_SECONDS, return_report=True)
    calls = count_calls(monkeypatch, tokenizer)
    again, again_report = prepare_speech_dataset(on_disk, tokenizer, codec, max_seconds=MAX_SECONDS, return_report=True)
    assert calls == [] and again.to_list() == first.to_list() and again_report == first_report
    assert again.cache_files[0]["filename"].startswith(str(tmp_path / "raw"))
    prepare_speech_dataset(on_disk, tokenizer, codec, max_seconds=4 * MAX_SECONDS)  # other settings: recomputed
    assert len(calls) == 4  # one more row is short enough now
    monkeypatch.undo()

    other = copy.deepcopy(tokenizer)
    with torch.no_grad():
        other.centroids.copy_(other.centroids.roll(1, dims=0))  # same config, other weights
    calls = count_calls(monkeypatch, other)
    relabelled = prepare_speech_dataset(on_disk, other, codec, max_seconds=MAX_SECONDS)
    assert len(calls) == 3 and list(relabelled["semantic_units"]) != list(first["semantic_units"])

    # an in-memory dataset caches in cache_dir
    cached = prepare_speech_dataset(mixed, other, codec, max_seconds=MAX_SECONDS, cache_dir=str(tmp_path / "c"))
    again = prepare_speech_dataset(mixed, other, codec, max_seconds=MAX_SECONDS, cache_dir=str(tmp_path / "c"))
    assert len(calls) == 6 and again.to_list() == cached.to_list() == relabelled.to_list()


def test_codec_at_another_rate_gets_resampled_audio(speech, tokenizer):
    encodec = tiny_encodec(24000, (8, 8))
    assert (encodec.sampling_rate, encodec.frame_rate) == (24000, 375.0)
    texts, audio = [text for text, _, _ in speech[:2]], [wav_bytes(w, r) for _, w, r in speech[:2]]
    dataset = Dataset.from_dict({"text": texts, "audio": audio}).cast_column("audio", Audio())
    prepared = prepare_speech_dataset(dataset, tokenizer, encodec)
    for row, audio_bytes in zip(prepared, audio, strict=True):
        codes, seconds = direct(encodec, audio_bytes, 24000)
        assert len(row["acoustic_codes"]) == encodec.num_codebooks
        assert abs(len(row["acoustic_codes"][0]) - seconds * 375) <= 2  # 16 or 32 kHz input would give other counts
        assert row["acoustic_codes"] == codes
        assert row["semantic_units"] == direct(tokenizer, audio_bytes, 16000)[0]


def test_plain_array_dicts_are_read_too(speech, tokenizer, codec):
    text, waveform, rate = speech[1]
    dataset = Dataset.from_dict({"sentence": [text], "speech": [{"array": waveform, "sampling_rate": rate}]})
    (row,) = prepare_speech_dataset(dataset, tokenizer, codec, text_column="sentence", audio_column="speech")
    assert row["text"] == text and row["seconds"] == pytest.approx(len(waveform) / rate)
    resampled, _ = decode_audio({"array": waveform, "sampling_rate": rate}, 16000)
    assert row["semantic_units"] == tokenizer.encode(resampled)[0].tolist()
    assert list(row) == ["text", "semantic_units", "acoustic_codes", "seconds"]


def test_a_row_with_sampling_rate_0_is_counted_as_unreadable_not_a_crash(speech, tokenizer, codec):
    text, waveform, rate = speech[1]
    rows = [{"array": waveform, "sampling_rate": 0}, {"array": waveform, "sampling_rate": rate}]
    dataset = Dataset.from_dict({"text": [text, text], "audio": rows})
    prepared, report = prepare_speech_dataset(dataset, tokenizer, codec, return_report=True)
    assert len(prepared) == 1 and report.skipped == {"unreadable audio": 1}
    with pytest.raises(ValueError, match="sampling rate is 0"):
        decode_audio(rows[0])


def test_streaming_gives_the_same_rows(prepared, mixed, tokenizer, codec, caplog):
    dataset, report = prepared
    streamed, live = prepare_speech_dataset(
        mixed.to_iterable_dataset(), tokenizer, codec, max_seconds=MAX_SECONDS, keep_columns=["speaker"],
        batch_size=3, return_report=True,
    )  # fmt: skip
    assert live.total == 0  # nothing is computed before iterating
    with caplog.at_level(logging.WARNING, logger="mole_llama.training.prepare"):
        rows = list(streamed)
    assert rows == dataset.to_list() and live == report
    warnings = [r.getMessage() for r in caplog.records if r.name == "mole_llama.training.prepare"]
    assert warnings == ["skipped row 1: unreadable audio", "skipped row 3: silent audio", "skipped row 4: too long",
                        "skipped row 5: empty text", "skipped row 7: too short"]  # fmt: skip


def test_num_proc_2_gives_the_same_result(prepared, mixed, tokenizer, codec):
    dataset, report = prepared
    parallel, parallel_report = prepare_speech_dataset(
        mixed, tokenizer, codec, max_seconds=MAX_SECONDS, keep_columns=["speaker"], num_proc=2, batch_size=2,
        load_from_cache_file=False, return_report=True,
    )  # fmt: skip
    assert parallel.to_list() == dataset.to_list() and parallel_report == report


def test_missing_columns_and_unknown_keep_columns_raise(mixed, tokenizer, codec):
    with pytest.raises(ValueError, match=r"no column\(s\) \['transcript'\] \(it has \['text', 'audio', 'speaker'\]"):
        prepare_speech_dataset(mixed, tokenizer, codec, text_column="transcript")
    with pytest.raises(ValueError, match=r"no column\(s\) \['transcript', 'wav'\]"):
        prepare_speech_dataset(mixed, tokenizer, codec, text_column="transcript", audio_column="wav")
    with pytest.raises(ValueError, match=r"keep_columns \['gender'\] are not in the dataset"):
        prepare_speech_dataset(mixed, tokenizer, codec, keep_columns=["speaker", "gender"])
    with pytest.raises(ValueError, match="streaming"):
        prepare_speech_dataset(mixed.to_iterable_dataset(), tokenizer, codec, num_proc=2)
