"""Intelligibility: transcribe speech offline with pocketsphinx and score it against the text (WER, CER)."""

import re

import jiwer
import numpy as np

from ..data.audio import resample

RECOGNIZER_RATE = 16000
_decoder = None


def normalize_text(text: str) -> str:
    """Lower case, letters, digits and apostrophes only, single spaces: what a recognizer can be held to."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def transcribe(waveform: np.ndarray, sampling_rate: int) -> str:
    """pocketsphinx's English transcript of a mono waveform (float in [-1, 1], any rate)."""
    global _decoder
    from pocketsphinx import Decoder

    if _decoder is None:  # ~0.4 s to load the model: once per process
        _decoder = Decoder(samprate=RECOGNIZER_RATE, logfn="/dev/null")
    audio = resample(np.asarray(waveform, dtype=np.float32), sampling_rate, RECOGNIZER_RATE)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    _decoder.start_utt()
    _decoder.process_raw(pcm.tobytes(), full_utt=True)
    _decoder.end_utt()
    hypothesis = _decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def error_rates(references: list, hypotheses: list) -> dict:
    """Corpus-level word and character error rates of `hypotheses` against `references` (normalised texts)."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"need as many hypotheses as references, and at least one: {len(references)} vs {len(hypotheses)}"
        )
    references = [normalize_text(text) for text in references]
    hypotheses = [normalize_text(text) for text in hypotheses]
    return {"wer": jiwer.wer(references, hypotheses), "cer": jiwer.cer(references, hypotheses)}
