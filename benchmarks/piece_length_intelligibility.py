"""Does a long sentence come out clearer in short pieces? The shipped TTS-Llama (or `--model DIR`) reads long
sentences (two held-out fortune sentences joined with ", and "), each spoken as pieces of at most `--max-words`
words (the speaking model's `split_text`), side by side in one run; Whisper tiny.en WER per setting.

The speech expert read sentences of 5-12 words in training; a piece of 20 words asks it for more than it has heard.

    python benchmarks/piece_length_intelligibility.py [--texts 16] [--max-words 30 12] [--threads 2]
"""

import argparse
import functools
import time

import torch
from transformers import pipeline

from mole_llama.embedded import embedded_model_path
from mole_llama.embedded.festival import fortune_sentences, is_held_out
from mole_llama.evaluation.intelligibility import error_rates, transcribe
from mole_llama.modeling import modeling_tts_llama


def long_sentences(count: int) -> list:
    """Pairs of held-out sentences joined into one sentence of 10-24 words."""
    held_out = [s for s in fortune_sentences() if is_held_out(s)]
    pairs = zip(held_out[0::2], held_out[1::2])
    return [f"{first.rstrip('.!?')}, and {second[0].lower()}{second[1:]}" for first, second in pairs][:count]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a speaking model folder (default: the shipped TTS-Llama)")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--max-words", type=int, nargs="+", default=[30, 12])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = pipeline("text-to-speech", model=str(args.model or embedded_model_path("tts-llama"))).model
    texts = long_sentences(args.texts)
    words = sum(len(text.split()) for text in texts) / len(texts)
    print(f"{len(texts)} long held-out sentences, {words:.1f} words on average; greedy units, seed 0\n")
    print(
        "| pieces of at most | pieces per sentence | Whisper WER | Whisper CER | seconds |\n|---:|---:|---:|---:|---:|"
    )
    for max_words in args.max_words:
        split = functools.partial(modeling_tts_llama.split_text, max_words=max_words)
        pieces = sum(len(split(modeling_tts_llama.spoken_form(text))) for text in texts) / len(texts)
        started = time.perf_counter()
        original, modeling_tts_llama.split_text = modeling_tts_llama.split_text, split
        try:
            audio = model.speak_texts(texts, seed=0, do_sample=False)
        finally:
            modeling_tts_llama.split_text = original
        seconds = time.perf_counter() - started
        heard = [transcribe(waveform.numpy(), model.sampling_rate) for waveform in audio]
        rates = error_rates(texts, heard)
        print(f"| {max_words} | {pieces:.2f} | {rates['wer']:.3f} | {rates['cer']:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
