"""Phone units from pocketsphinx's pretrained, speaker-independent en-us acoustic model: the embedded stand-in for
HuBERT units.

Two ways to get them, both at pocketsphinx's 100 frames/s, then sampled at the unit rate:
- forced alignment to the transcript (`align`): the dictionary's phones of the words, with silences where the
  speaker paused, and each phone's start and length; clean and nearly voice-independent;
- phone recognition without a transcript (`recognize`, allphone search with the phone LM): noisier.

Self-contained (numpy only; pocketsphinx is imported when first used), so saved folders can carry it for
`trust_remote_code=True`.
"""

import re

import numpy as np

SILENCE = "SIL"
PHONES = (SILENCE,) + tuple(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()
)
"""Unit `i` is `PHONES[i]`: silence, then the 39 phones of CMUdict (without stress), as pocketsphinx's en-us model."""
RECOGNIZER_RATE = 16000
RECOGNIZER_FRAME_RATE = 100
WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


class TranscriptAlignmentError(ValueError):
    """The transcript could not be aligned to the audio (a word outside the dictionary, or no path through it)."""


def transcript_words(text: str) -> list:
    """The words pocketsphinx's dictionary is looked up with: lower case, letters and inner apostrophes."""
    return WORD.findall(text.lower().replace("\u2019", "'"))


class PocketsphinxPhones:
    """Phone segments `[(phone, start_frame, num_frames)]` at 100 frames/s of 16 kHz mono audio."""

    def __init__(self):
        try:
            import pocketsphinx
        except ImportError as error:
            raise ImportError("the 'phones' semantic units need pocketsphinx: pip install 'pocketsphinx>=5'") from error
        model = pocketsphinx.get_model_path()
        # bestpath=False: with it the second (phone-level) alignment pass can fail on a fake one-frame </s>.
        self._aligner = pocketsphinx.Decoder(samprate=RECOGNIZER_RATE, bestpath=False, loglevel="FATAL")
        self._recognizer = pocketsphinx.Decoder(
            samprate=RECOGNIZER_RATE,
            allphone=f"{model}/en-us/en-us-phone.lm.bin",
            lw=2.0,
            pip=0.3,
            beam=1e-20,
            pbeam=1e-20,
            loglevel="FATAL",
        )

    @staticmethod
    def _pcm(waveform: np.ndarray) -> bytes:
        return (np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16).tobytes()

    def _decode(self, decoder, pcm: bytes) -> None:
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()

    def align(self, waveform: np.ndarray, text: str) -> list:
        words = transcript_words(text)
        if not words:
            raise TranscriptAlignmentError(f"the transcript {text!r} has no words to align")
        missing = [word for word in words if self._aligner.lookup_word(word) is None]
        if missing:
            raise TranscriptAlignmentError(f"words not in pocketsphinx's dictionary: {missing}")
        pcm = self._pcm(waveform)
        try:
            self._aligner.set_align_text(" ".join(words))
            self._decode(self._aligner, pcm)
            self._aligner.set_alignment()
            self._decode(self._aligner, pcm)
            alignment = self._aligner.get_alignment()
        except RuntimeError as error:
            raise TranscriptAlignmentError(f"pocketsphinx could not align {text!r}: {error}") from error
        if alignment is None:
            raise TranscriptAlignmentError(f"pocketsphinx gave no alignment for {text!r}")
        return [(phone.name, phone.start, phone.duration) for word in alignment for phone in word]

    def recognize(self, waveform: np.ndarray) -> list:
        self._decode(self._recognizer, self._pcm(waveform))
        return [(segment.word, segment.start_frame, segment.end_frame - segment.start_frame + 1)
                for segment in self._recognizer.seg()]  # fmt: skip


def segments_to_units(segments: list, num_samples: int, unit_rate: int) -> np.ndarray:
    """Frame units at `unit_rate`: each frame takes the phone whose segment holds the frame's centre; frames no
    segment covers, and noise or filler segments (`+NSN+`, `<sil>`...), are silence."""
    index = {phone: unit for unit, phone in enumerate(PHONES)}
    per_frame = np.zeros(int(np.ceil(num_samples / RECOGNIZER_RATE * RECOGNIZER_FRAME_RATE)), dtype=np.int64)
    for phone, start, length in segments:
        per_frame[start : start + length] = index.get(phone, 0)
    num_units = int(np.ceil(num_samples / RECOGNIZER_RATE * unit_rate - 1e-9))
    centres = ((np.arange(num_units) + 0.5) * RECOGNIZER_FRAME_RATE / unit_rate).astype(np.int64)
    return per_frame[np.minimum(centres, len(per_frame) - 1)]


__all__ = ["PHONES", "PocketsphinxPhones", "TranscriptAlignmentError", "segments_to_units", "transcript_words"]
