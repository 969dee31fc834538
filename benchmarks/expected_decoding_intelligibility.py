"""Drawn codes or their expected vectors? The shipped TTS-Llama (or `--tts DIR`) reading a corpus's held-out
sentences in every voice twice: the codec decoding the acoustic codes drawn at each frame, and decoding the expected
codebook vectors of the acoustic LM's distributions at those frames (`acoustic_expected_decoding`, the default for
the mel codec). The units, durations, voice prompts and seeds are the same, so both read the same drawn codes and
only the decoding differs. Whisper tiny.en WER per voice next to the ground truth (evaluate-speech's table).

    python benchmarks/expected_decoding_intelligibility.py --corpus CORPUS [--sentences 49]
"""

import argparse

import torch
from datasets import load_from_disk
from transformers import pipeline

from mole_llama.embedded import embedded_model_path
from mole_llama.evaluation.report import intelligibility_table
from mole_llama.evaluation.speech import intelligibility_side_by_side


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a build-corpus folder (its test split is read)")
    parser.add_argument("--sentences", type=int, default=7)
    parser.add_argument("--tts", help="a TTS-Llama folder whose codec decodes expected vectors (default: the shipped)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = str(args.tts or embedded_model_path("tts-llama"))
    models = {}
    for name, expected in (("drawn codes", False), ("expected vectors", True)):
        models[name] = pipeline("text-to-speech", model=folder).model
        models[name].generation_config.acoustic_expected_decoding = expected
    rates = intelligibility_side_by_side(models, load_from_disk(args.corpus), args.sentences)
    print(f"\n{args.sentences} held-out sentences per voice; Whisper tiny.en\n\n{intelligibility_table(rates)}")


if __name__ == "__main__":
    main()
