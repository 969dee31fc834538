"""Speech from Debian's festival and flite voices and sentences from Debian's fortunes: the embedded corpus's raw
material.

Needs the Debian packages festival, festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts, flite and fortunes
(`scripts/setup.sh` installs them). flite synthesizes ~10x faster than festival's `text2wave`.
"""

import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import soundfile

FESTIVAL_VOICES = {"kal": "kal_diphone", "ked": "ked_diphone", "slt": "cmu_us_slt_arctic_hts"}
FLITE_VOICES = {"flite_awb": "awb", "flite_rms": "rms", "flite_slt": "slt"}
VOICES = {**FESTIVAL_VOICES, **FLITE_VOICES}
FORTUNES_DIR = Path("/usr/share/games/fortunes")
SENTENCE = re.compile(r"[A-Z][A-Za-z ,']*[a-z][.!?]")


def synthesize(text: str, voice: str = "kal") -> tuple:
    """`(waveform float32 in [-1, 1], sampling_rate)` of `text` spoken by voice `voice` (a key of `VOICES`)."""
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}: choose one of {sorted(VOICES)}")
    if not text.strip():
        raise ValueError("text is empty: give at least one word")
    program = "flite" if voice in FLITE_VOICES else "text2wave"
    if shutil.which(program) is None:
        package = "flite" if voice in FLITE_VOICES else "festival festvox-kallpc16k"
        raise RuntimeError(f"{program} is not installed: apt-get install {package} (see scripts/setup.sh)")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speech.wav"
        if voice in FLITE_VOICES:
            command, stdin = ["flite", "-voice", FLITE_VOICES[voice], "-t", text, "-o", str(out)], None
        else:
            command, stdin = ["text2wave", "-eval", f"(voice_{FESTIVAL_VOICES[voice]})", "-o", str(out)], text
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{program} failed for voice {voice}: {result.stderr.strip()[-300:]}")
        waveform, rate = soundfile.read(out, dtype="float32")
    return waveform, rate


def fortune_sentences(min_words: int = 5, max_words: int = 12) -> list:
    """Plain English sentences from the fortunes files, deduplicated, in a fixed order."""
    files = sorted(p for p in FORTUNES_DIR.glob("*") if p.is_file() and p.suffix == "")
    if not files:
        raise RuntimeError(f"no fortunes in {FORTUNES_DIR}: apt-get install fortunes (see scripts/setup.sh)")
    seen, sentences = set(), []
    for path in files:
        text = path.read_text(encoding="latin-1")
        for fortune in text.split("\n%\n"):
            flat = " ".join(fortune.split())
            for sentence in re.split(r"(?<=[.!?])\s+", flat):
                words = sentence.split()
                fits = min_words <= len(words) <= max_words and SENTENCE.fullmatch(sentence)
                if fits and sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences


def is_held_out(sentence: str, percent: int = 5) -> bool:
    """A fixed, content-based split: the same sentence is held out in every run and on every machine."""
    return zlib.crc32(sentence.encode()) % 100 < percent
