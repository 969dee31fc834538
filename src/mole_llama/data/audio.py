"""Audio values of a `datasets` Audio column, decoded without torchcodec, and resampling.

datasets 5 decodes audio through torchcodec, which needs FFmpeg's shared libraries; we keep Audio columns with
`decode=False` (path or bytes of a WAV/FLAC file) and decode them with soundfile instead.
"""

import csv
import io
import json
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly


def resample(waveform: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Band-limited (polyphase) resampling, e.g. the 32 kHz slt voice to 16 kHz."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if rate == target_rate:
        return waveform
    divisor = gcd(int(rate), int(target_rate))
    return resample_poly(waveform, target_rate // divisor, rate // divisor).astype(np.float32)


def decode_audio(value, target_rate: int | None = None) -> tuple:
    """`(mono float32 waveform, rate)` of an Audio value: `{"array", "sampling_rate"}`, `{"bytes", "path"}`, or a
    file path; resampled to `target_rate` when given. Multichannel audio is averaged to mono."""
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    if not isinstance(value, dict):
        raise ValueError(f"cannot read audio from a {type(value).__name__}: give a path or a datasets Audio value")
    if value.get("array") is not None:
        waveform, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    elif value.get("bytes") is not None or value.get("path"):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        try:
            waveform, rate = soundfile.read(source, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            raise ValueError(f"unreadable audio {value.get('path') or '(bytes)'}: {error}") from error
        waveform = waveform.mean(axis=1)
    else:
        raise ValueError("the audio value has neither an array, bytes nor a path")
    if waveform.ndim != 1:
        waveform = waveform.mean(axis=-1)
    if rate <= 0:
        raise ValueError(f"the audio's sampling rate is {rate}: it must be a positive number of Hz")
    if target_rate is not None:
        waveform, rate = resample(waveform, rate, target_rate), target_rate
    return waveform, rate


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def is_audio_folder(folder) -> bool:
    """A folder in datasets' audiofolder layout (a metadata file) or holding audio files directly."""
    folder = Path(folder)
    return folder.is_dir() and (
        any((folder / name).is_file() for name in METADATA_FILES)
        or any(path.suffix.lower() in AUDIO_SUFFIXES for path in folder.iterdir())
    )


def audio_folder_dataset(folder, audio_column: str = "audio"):
    """A folder of audio files in datasets' audiofolder layout (`metadata.csv` or `metadata.jsonl` with a
    `file_name` column and the others, e.g. `text`) as a Dataset whose `audio_column` holds `{"path", "bytes"}`.

    datasets' own audiofolder loader encodes every clip with torchcodec while it builds the dataset, so it fails
    without FFmpeg; this reads the same layout and leaves the decoding to `decode_audio` (soundfile)."""
    from datasets import Dataset

    folder = Path(folder)
    present = [name for name in METADATA_FILES if (folder / name).is_file()]
    if not present:
        raise ValueError(
            f"{folder} holds audio files but no metadata.csv or metadata.jsonl: add one with a file_name column "
            "and a text column (datasets' audiofolder layout)"
        )
    path = folder / present[0]
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or "file_name" not in rows[0]:
        raise ValueError(f"{path} needs a file_name column naming each clip (datasets' audiofolder layout)")
    if audio_column in rows[0]:
        raise ValueError(f"{path} has a column named {audio_column!r}: that name is the audio's; rename it")
    records = []
    for row in rows:
        row = dict(row)
        clip = folder / row.pop("file_name")
        records.append({audio_column: {"path": str(clip), "bytes": None}, **row})
    return Dataset.from_list(records)


def without_audio_decoding(dataset, audio_column: str = "audio"):
    """`dataset` with its `Audio` column read as `{"bytes", "path"}` (for `decode_audio`), so iterating it never
    calls torchcodec; anything else is returned as it is."""
    from datasets import Audio

    features = getattr(dataset, "features", None)
    if features is not None and isinstance(features.get(audio_column), Audio) and features[audio_column].decode:
        return dataset.cast_column(audio_column, Audio(decode=False))
    return dataset
