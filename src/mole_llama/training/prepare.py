"""Speech dataset -> training rows: text, semantic units and acoustic codes, for the acoustic LM and the TTS expert.

`prepare_speech_dataset` works on any `datasets` dataset with an audio and a text column, batched and cached like
any `map`, and skips unusable rows with a count per reason instead of failing (or dropping them silently).
"""

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, Features, IterableDataset, List, Value
from transformers.utils import logging

from ..data.audio import decode_audio, resample, without_audio_decoding
from ..modeling.modeling_semantic_units import MIN_SECONDS
from ..modeling.phone_units import TranscriptAlignmentError

logger = logging.get_logger(__name__)

PREPARE_VERSION = 1  # part of the cache fingerprint: bump when the output of a row changes
SILENCE_PEAK = 1e-4  # as the codecs: a clip whose samples all stay below this holds nothing to encode
OUTPUT_FEATURES = Features(
    {
        "text": Value("string"),
        "semantic_units": List(Value("int32")),
        "acoustic_codes": List(List(Value("int32"))),
        "seconds": Value("float64"),
    }
)
SKIP_COLUMN = "skip_reason"
_MODELS = {}  # key -> (semantic tokenizer, codec), inherited by forked map workers instead of pickled to them


@dataclass
class PreparationReport:
    """How many rows `prepare_speech_dataset` kept and skipped, per reason ("unreadable audio", "empty audio",
    "silent audio", "too short", "too long", "unencodable audio", "unaligned text", "empty text"). For a streaming
    dataset it fills in while the result is iterated."""

    kept: int = 0
    skipped: dict = field(default_factory=dict)
    max_seconds: float = 20.0

    @property
    def total(self) -> int:
        return self.kept + sum(self.skipped.values())

    def summary(self) -> str:
        details = {"too long": f" (> {self.max_seconds:g} s)", "too short": f" (< {MIN_SECONDS:g} s)"}
        reasons = ", ".join(f"{count} {reason}{details.get(reason, '')}" for reason, count in self.skipped.items())
        return f"prepared {self.kept} of {self.total} rows" + (f"; skipped: {reasons}" if reasons else "")


class _Preparer:
    """The batched map function. Pickles as a key only (see `_MODELS`), so `num_proc` workers fork with the models
    instead of receiving copies, and datasets never hashes it (we give the fingerprint)."""

    def __init__(self, key, semantic_tokenizer, codec, max_seconds, report=None):
        self.key, self.max_seconds, self.report = key, max_seconds, report
        self.models = (semantic_tokenizer, codec)
        self.pid = os.getpid()

    def __getstate__(self):
        if self.key is None:  # streaming: no registry, so a DataLoader worker gets its own copy
            return self.__dict__
        return {**self.__dict__, "models": None, "report": None}

    def __call__(self, texts, audios):
        if os.getpid() != self.pid:  # a map worker: one thread each, else the workers fight over the cores
            torch.set_num_threads(1)
        if self.models is None:
            if self.key not in _MODELS:
                raise RuntimeError("num_proc > 1 needs the 'fork' start method (Linux); use num_proc=None")
            self.models = _MODELS[self.key]
        rows = [self.prepare_row(text, audio) for text, audio in zip(texts, audios)]
        output = {name: [row[name] for row in rows] for name in [*OUTPUT_FEATURES, SKIP_COLUMN]}
        if self.report is not None:
            for reason in output[SKIP_COLUMN]:
                self.count(reason)
        return output

    def prepare_row(self, text, audio) -> dict:
        text = str(text).strip() if text is not None else ""
        row = {"text": text, "semantic_units": [], "acoustic_codes": [], "seconds": 0.0, SKIP_COLUMN: None}
        if not text:
            return {**row, SKIP_COLUMN: "empty text"}
        try:
            waveform, rate = decode_audio(audio)
        except (ValueError, TypeError, KeyError):
            return {**row, SKIP_COLUMN: "unreadable audio"}
        row["seconds"] = len(waveform) / rate
        reason = None
        if len(waveform) == 0:
            reason = "empty audio"
        elif not np.isfinite(waveform).all():
            reason = "unreadable audio"
        elif np.abs(waveform).max() < SILENCE_PEAK:
            reason = "silent audio"
        elif row["seconds"] < MIN_SECONDS:
            reason = "too short"
        elif row["seconds"] > self.max_seconds:
            reason = "too long"
        if reason:
            return {**row, SKIP_COLUMN: reason}
        semantic_tokenizer, codec = self.models
        transcript = text if semantic_tokenizer.config.needs_transcript else None
        units_rate = semantic_tokenizer.config.sampling_rate
        try:
            with torch.no_grad():
                units = encode(semantic_tokenizer, waveform, rate, units_rate, transcript)[0]
                codes = encode(codec, waveform, rate, codec.sampling_rate)[0]
        except TranscriptAlignmentError as error:
            logger.debug(f"a row could not be aligned to its text: {error}")
            return {**row, SKIP_COLUMN: "unaligned text"}
        except ValueError as error:
            logger.debug(f"a row could not be encoded: {error}")
            return {**row, SKIP_COLUMN: "unencodable audio"}
        return {**row, "semantic_units": units.tolist(), "acoustic_codes": codes.tolist()}

    def count(self, reason):
        """Streaming: count each row, and warn about skipped ones (the first 10, then a summary every 100)."""
        if reason is None:
            self.report.kept += 1
            return
        self.report.skipped[reason] = self.report.skipped.get(reason, 0) + 1
        skipped = sum(self.report.skipped.values())
        if skipped <= 10:
            logger.warning(f"skipped row {self.report.total - 1}: {reason}")
        elif skipped % 100 == 0:
            logger.warning(f"so far {self.report.summary()}")


def encode(model, waveform, rate, target_rate, text=None) -> torch.Tensor:
    """One utterance at a time (no padding effects), resampled to the model's rate and moved to its device; `text`
    goes to a tokenizer that aligns to the transcript."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = parameter.device if parameter is not None else "cpu"
    waveform = torch.from_numpy(resample(waveform, rate, target_rate))[None].to(device)
    return (model.encode(waveform) if text is None else model.encode(waveform, text)).cpu()


def dataset_fingerprint(dataset, text_column: str, audio_column: str) -> str:
    """A hash of the rows' text and audio (bytes, path or samples, never decoded), read through public APIs: the
    same rows give the same key whatever selection or file they came from, and reading them costs far less than
    the encoding a cache hit saves."""
    digest = hashlib.blake2b(digest_size=16)
    for batch in without_audio_decoding(dataset, audio_column).iter(batch_size=256):
        for text, audio in zip(batch[text_column], batch[audio_column]):
            digest.update(repr(text).encode())
            if isinstance(audio, dict) and audio.get("array") is not None:
                digest.update(np.asarray(audio["array"], dtype=np.float32).tobytes())
                digest.update(str(audio.get("sampling_rate")).encode())
            elif isinstance(audio, dict):
                digest.update(audio.get("bytes") or str(audio.get("path")).encode())
            else:
                digest.update(repr(audio).encode())
    return digest.hexdigest()


def model_fingerprint(model) -> str:
    """Config and weights: a model with other weights (or settings) must not be served another one's cache."""
    digest = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    interface = [type(model).__qualname__] + [
        str(getattr(model, name, None)) for name in ("sampling_rate", "frame_rate", "num_codebooks", "codebook_size")
    ]
    digest.update(repr(interface).encode())
    if hasattr(model, "state_dict"):
        for name, tensor in model.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy())
    else:
        digest.update(repr(model).encode())
    return digest.hexdigest()


def _check_columns(column_names, text_column, audio_column, keep_columns):
    if column_names is None:
        return  # a streaming dataset of unknown columns: the first row will tell
    missing = [name for name in (text_column, audio_column) if name not in column_names]
    if missing:
        raise ValueError(
            f"the dataset has no column(s) {missing} (it has {column_names}): name the transcript and audio columns "
            "with text_column=... and audio_column=..."
        )
    unknown = [name for name in keep_columns if name not in column_names]
    if unknown:
        raise ValueError(f"keep_columns {unknown} are not in the dataset (it has {column_names}): drop them")
    clashing = [name for name in keep_columns if name in OUTPUT_FEATURES or name == SKIP_COLUMN]
    if clashing:
        raise ValueError(f"keep_columns {clashing} would clash with the output columns: rename them first")


def prepare_speech_dataset(
    dataset,
    semantic_tokenizer,
    codec,
    *,
    text_column="text",
    audio_column="audio",
    max_seconds=20.0,
    batch_size=16,
    num_proc=None,
    keep_columns=None,
    load_from_cache_file=True,
    cache_dir=None,
    return_report=False,
):
    """Rows of `text` (stripped), `semantic_units` (list[int]), `acoustic_codes` (num_codebooks lists of frames),
    `seconds` and the `keep_columns` (e.g. "speaker"), from `text_column` and `audio_column` (an `Audio` column
    or `{"array", "sampling_rate"}` dicts, at any rate: resampled for each model). The audio column is dropped.

    Rows with unreadable, empty, silent, too short, unencodable or longer than `max_seconds` audio, a transcript
    that cannot be aligned, or empty text, are skipped and counted in the log; `return_report=True` also returns a
    `PreparationReport` -> `(dataset, report)`.

    A `Dataset` is mapped in batches (`num_proc` forked workers) and cached by a fingerprint of the input, both
    models' configs and weights and these settings, so a rerun loads the result: in the input's cache folder (as
    after `load_dataset`), or in `cache_dir` for an in-memory dataset. An `IterableDataset` is mapped lazily, with
    no cache; its report counts the rows as they are iterated.
    """
    keep_columns = list(keep_columns or [])
    streaming = isinstance(dataset, IterableDataset)
    if not streaming and not isinstance(dataset, Dataset):
        raise ValueError(f"expected a datasets Dataset or IterableDataset, got {type(dataset).__name__}")
    if streaming and num_proc not in (None, 0, 1):
        raise ValueError("num_proc works on a Dataset only: for a streaming one use DataLoader(num_workers=...)")
    _check_columns(dataset.column_names, text_column, audio_column, keep_columns)
    dataset = without_audio_decoding(dataset, audio_column)  # torchcodec-free: decode_audio reads it
    features = None
    if dataset.features is not None:
        features = Features({**{name: dataset.features[name] for name in keep_columns}, **OUTPUT_FEATURES})
        features[SKIP_COLUMN] = Value("string")
    remove = [name for name in (dataset.column_names or []) if name not in keep_columns]
    report = PreparationReport(max_seconds=max_seconds)
    options = dict(input_columns=[text_column, audio_column], batched=True, batch_size=batch_size)

    if streaming:
        function = _Preparer(None, semantic_tokenizer, codec, max_seconds, report)
        remove = remove or [text_column, audio_column]  # columns unknown: keep_columns are selected below
        prepared = dataset.map(function, remove_columns=remove, features=features, **options)
        prepared = prepared.filter(_keep, input_columns=[SKIP_COLUMN], batched=True, batch_size=batch_size)
        prepared = prepared.select_columns([*keep_columns, *OUTPUT_FEATURES])
        return (prepared, report) if return_report else prepared

    settings = [PREPARE_VERSION, text_column, audio_column, float(max_seconds), keep_columns]
    rows = dataset_fingerprint(dataset, text_column, audio_column)
    parts = [rows, model_fingerprint(semantic_tokenizer), model_fingerprint(codec), settings]
    key = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).hexdigest()
    cache_file_name = None
    if cache_dir is not None and not dataset.cache_files:
        os.makedirs(cache_dir, exist_ok=True)
        cache_file_name = os.path.join(cache_dir, f"prepared-{key}.arrow")
    _MODELS[key] = (semantic_tokenizer, codec)
    try:
        mapped = dataset.map(
            _Preparer(key, semantic_tokenizer, codec, max_seconds),
            remove_columns=remove,
            features=features,
            num_proc=num_proc,
            load_from_cache_file=load_from_cache_file,
            cache_file_name=cache_file_name,
            new_fingerprint=key,
            desc="Preparing speech (units + codes)",
            **options,
        )
    finally:
        _MODELS.pop(key, None)
    reasons = Counter(mapped.data.column(SKIP_COLUMN).to_pylist())
    report.kept = reasons.pop(None, 0)
    report.skipped = dict(reasons.most_common())
    prepared = mapped.filter(
        _keep,
        input_columns=[SKIP_COLUMN],
        batched=True,
        batch_size=1000,
        load_from_cache_file=load_from_cache_file,
        new_fingerprint=f"{key}f",
        desc="Dropping skipped rows",
    ).remove_columns(SKIP_COLUMN)
    (logger.warning if report.skipped else logger.info)(report.summary())
    return (prepared, report) if return_report else prepared


def _keep(reasons) -> list:
    return [reason is None for reason in reasons]


__all__ = ["PreparationReport", "prepare_speech_dataset"]
