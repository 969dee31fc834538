"""Long text takes time proportional to its length: the shipped TTS-Llama (or `--model DIR`) speaks texts of
`--words` words each (held-out fortune sentences joined), and the seconds per word of speech are compared; each
piece is capped (units and frames from its length), so no piece runs away and the ratio stays near 1.

Prints, per text length: pieces, audio seconds, compute seconds, seconds per word and real-time factor, and the
ratio of the longest text's seconds per word to the shortest's.

    python benchmarks/bench_long_text.py [--words 100 400] [--model DIR]
"""

import argparse
import time

import torch
from transformers import pipeline

from mole_llama.embedded import embedded_model_path
from mole_llama.embedded.festival import fortune_sentences, is_held_out
from mole_llama.modeling.modeling_tts_llama import split_text


def text_of(words: int) -> str:
    chosen, count = [], 0
    for sentence in (s for s in fortune_sentences() if is_held_out(s)):
        chosen.append(sentence)
        count += len(sentence.split())
        if count >= words:
            return " ".join(chosen)
    raise ValueError(f"not enough held-out sentences for {words} words")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--model", help="a speaking model folder (default: the shipped TTS-Llama)")
    args = parser.parse_args()
    model = pipeline("text-to-speech", model=str(args.model or embedded_model_path("tts-llama"))).model
    rows = []
    for words in sorted(args.words):
        text = text_of(words)
        torch.manual_seed(0)
        started = time.perf_counter()
        audio = model.speak(text)
        seconds = time.perf_counter() - started
        audio_seconds = len(audio) / model.sampling_rate
        rows.append((len(text.split()), len(split_text(text)), audio_seconds, seconds))
    print("| words | pieces | audio s | compute s | s per word | real-time factor |")
    print("|---:|---:|---:|---:|---:|---:|")
    for words, pieces, audio_seconds, seconds in rows:
        print(f"| {words} | {pieces} | {audio_seconds:.1f} | {seconds:.1f} | {seconds / words:.3f} | "
              f"{seconds / audio_seconds:.2f} |")  # fmt: skip
    print(f"\nseconds per word, longest / shortest text: {(rows[-1][3] / rows[-1][0]) / (rows[0][3] / rows[0][0]):.2f}")


if __name__ == "__main__":
    main()
