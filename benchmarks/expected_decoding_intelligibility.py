"""Drawn codes or their expected vectors? The shipped TTS-Llama (or `--tts DIR`) reading a corpus's held-out
sentences in every voice twice: the codec decoding the acoustic codes drawn at each frame, and decoding the expected
codebook vectors of the acoustic LM's distributions at those frames (`acoustic_expected_decoding`, the default for
the mel codec). The units, durations, voice prompts and seeds are the same, so both read the same drawn codes and
only the decoding differs. Whisper tiny.en WER per voice next to the ground truth.

    python benchmarks/expected_decoding_intelligibility.py --corpus CORPUS [--sentences 49]
"""

import argparse
import tempfile

import torch
from datasets import load_from_disk
from transformers import pipeline

from mole_llama.embedded import embedded_model_path
from mole_llama.evaluation.speech import ground_truth_intelligibility, held_out_sentences, synthesized_intelligibility


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a build-corpus folder (its test split is read)")
    parser.add_argument("--sentences", type=int, default=7)
    parser.add_argument("--tts", help="a TTS-Llama folder whose codec decodes expected vectors (default: the shipped)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test, references = held_out_sentences(load_from_disk(args.corpus), args.sentences)
    model = pipeline("text-to-speech", model=str(args.tts or embedded_model_path("tts-llama"))).model
    with tempfile.TemporaryDirectory() as scratch:
        rates = {"ground truth": ground_truth_intelligibility(test, f"{scratch}/gt")[0]}
        for name, expected in (("drawn codes", False), ("expected vectors", True)):
            model.generation_config.acoustic_expected_decoding = expected
            rates[name] = synthesized_intelligibility(model, test, references, f"{scratch}/{len(rates)}")[0]
    voices = [voice for voice in rates["ground truth"] if voice != "all"] + ["all"]
    print(f"\n{args.sentences} held-out sentences per voice; Whisper tiny.en WER\n")
    print("| voice | " + " | ".join(rates) + " |")
    print("|---|" + "---:|" * len(rates))
    for voice in voices:
        print(f"| {voice} | " + " | ".join(f"{rates[name][voice]['wer']:.3f}" for name in rates) + " |")


if __name__ == "__main__":
    main()
