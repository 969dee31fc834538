"""The embedded speech corpus: fortune sentences (and, when asked, everyday sentences with numbers) read by festival's
and flite's English voices, as a `datasets` DatasetDict (`train`, `test`) with an `Audio` column, ready for
`mole-llama prepare`.

Held-out sentences (`festival.is_held_out`, decided by content) go to `test` only, where every voice reads the same
sentences so voices can be compared; `train` gives each voice different sentences, for more text variety. Held-out
voices read the test sentences only, so zero-shot voice can be measured on a speaker no training stage heard.
Synthesis runs in threads (each one drives a `text2wave` process) and every clip is cached as a WAV file named by
voice and sentence, so a larger corpus reuses the clips of a smaller one.
"""

import hashlib
import json
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
from tqdm.auto import tqdm

from .festival import VOICES, fortune_sentences, is_held_out, synthesize
from .number_sentences import number_sentences

CORPUS_SETTINGS_FILE = "corpus_settings.json"


def split_sentences(
    num_train: int, num_test: int, voices, seed: int = 0, held_out_voices=(), num_number_sentences: int = 0
) -> dict:
    """`{"train": [(voice, text)], "test": [(voice, text)]}`: `num_train` distinct training sentences per voice
    (no sentence read twice), then `num_number_sentences` distinct sentences with numbers per voice
    (`number_sentences`), and the same `num_test` held-out sentences in every voice, `held_out_voices` included
    (those read nothing in `train`). The fortunes come first, so adding number sentences keeps them as they were."""
    voices, held_out_voices = list(voices), list(held_out_voices)
    unknown = [voice for voice in voices + held_out_voices if voice not in VOICES]
    if unknown or not voices:
        raise ValueError(f"unknown voice(s) {unknown or voices}: choose from {sorted(VOICES)}")
    if set(voices) & set(held_out_voices):
        raise ValueError(f"voice(s) {sorted(set(voices) & set(held_out_voices))} are both trained and held out")
    if min(num_train, num_test, num_number_sentences) < 0:
        raise ValueError(
            f"num_train={num_train}, num_test={num_test}, num_number_sentences={num_number_sentences}: give counts >= 0"
        )
    sentences = fortune_sentences()
    training = [s for s in sentences if not is_held_out(s)]
    held_out = [s for s in sentences if is_held_out(s)]
    random.Random(seed).shuffle(training)
    random.Random(seed + 1).shuffle(held_out)
    if num_train * len(voices) > len(training) or num_test > len(held_out):
        raise ValueError(
            f"asked for {num_train} x {len(voices)} training and {num_test} test sentences; there are "
            f"{len(training)} training and {len(held_out)} held-out sentences: ask for fewer"
        )
    numbers = number_sentences(num_number_sentences * len(voices), seed, exclude=is_held_out)

    def each_voice_its_own(sentences, count):
        return [(voice, sentences[i * len(voices) + v]) for i in range(count) for v, voice in enumerate(voices)]

    train = each_voice_its_own(training, num_train) + each_voice_its_own(numbers, num_number_sentences)
    test = [(voice, text) for text in held_out[:num_test] for voice in voices + held_out_voices]
    return {"train": train, "test": test}


def _clip_path(cache_dir: Path, voice: str, text: str) -> Path:
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return cache_dir / voice / f"{digest}.wav"


def _synthesize_cached(cache_dir: Path, voice: str, text: str) -> Path:
    path = _clip_path(cache_dir, voice, text)
    if not path.is_file():
        waveform, rate = synthesize(text, voice)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A part file of its own (two builds may share a cache and write one clip at once), then an atomic rename:
        # a clip is either whole or absent, even if the run is interrupted.
        partial = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.part.wav")
        soundfile.write(partial, waveform, rate)
        partial.replace(path)
    return path


def build_speech_corpus(
    out_dir,
    num_train: int = 200,
    num_test: int = 10,
    voices=("kal", "ked", "slt"),
    num_workers: int = 2,
    cache_dir=None,
    seed: int = 0,
    held_out_voices=(),
    num_number_sentences: int = 0,
):
    """Synthesize (or load) the corpus and save it with `save_to_disk` in `out_dir`; returns the DatasetDict.

    Columns: `audio` (Audio, the voice's own rate: 16 kHz for kal/ked/flite, 32 kHz for slt), `text`, `voice`.
    A folder already holding a corpus with the same settings is loaded instead of rebuilt.
    """
    from datasets import Audio, Dataset, DatasetDict, load_from_disk

    out_dir = Path(out_dir)
    settings = {"num_train": num_train, "num_test": num_test, "voices": list(voices), "seed": seed}
    if held_out_voices:
        settings["held_out_voices"] = list(held_out_voices)
    if num_number_sentences:
        settings["num_number_sentences"] = num_number_sentences
    settings_file = out_dir / CORPUS_SETTINGS_FILE
    if settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
        return load_from_disk(str(out_dir))
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers}: give at least 1")
    cache_dir = Path(cache_dir) if cache_dir else out_dir.parent / f"{out_dir.name}_clips"
    splits = split_sentences(num_train, num_test, voices, seed, held_out_voices, num_number_sentences)
    jobs = [(voice, text) for rows in splits.values() for voice, text in rows]
    with ThreadPoolExecutor(num_workers) as pool:
        clips = list(
            tqdm(
                pool.map(lambda job: _synthesize_cached(cache_dir, *job), jobs),
                total=len(jobs),
                desc=f"festival ({num_workers} workers)",
                unit="clip",
            )
        )
    paths = dict(zip(jobs, clips))

    def split_dataset(rows) -> Dataset:
        # WAV bytes as they are, then typed as Audio: encoding through the Audio feature would need torchcodec.
        table = Dataset.from_dict(
            {
                "audio": [{"bytes": paths[row].read_bytes(), "path": paths[row].name} for row in rows],
                "text": [text for _, text in rows],
                "voice": [voice for voice, _ in rows],
            }
        )
        return table.cast_column("audio", Audio())

    # A split with no rows (`num_test=0`: a training-only corpus) is left out: datasets saves it as zero shards,
    # which `load_from_disk` then cannot read.
    corpus = DatasetDict({name: split_dataset(rows) for name, rows in splits.items() if rows})
    corpus.save_to_disk(str(out_dir))
    settings_file.write_text(json.dumps(settings))
    return corpus


__all__ = ["build_speech_corpus", "split_sentences"]
