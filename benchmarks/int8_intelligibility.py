"""Does the int8 LLM still say the same? The shipped TTS-Llama (or `--tts DIR`) reading a corpus's held-out
sentences in every voice, with its LLM in float32, in int8 with one scale per matrix, and in int8 with one scale per
output row (`conversion.int8.quantize_llm_int8`): Whisper tiny.en WER per voice next to the ground truth, and each
int8 LLM's unit error rate against the float32 units (0: the same units). One process, the same sentences, seeds and
voice prompts for every variant.

    python benchmarks/int8_intelligibility.py --corpus CORPUS [--sentences 7]
"""

import argparse

import torch
from datasets import load_from_disk
from transformers import pipeline

from mole_llama.chat import unit_error_rate
from mole_llama.conversion.int8 import quantize_llm_int8
from mole_llama.embedded import embedded_model_path
from mole_llama.evaluation.speech import held_out_sentences, intelligibility_side_by_side


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a build-corpus folder (its test split is read)")
    parser.add_argument("--sentences", type=int, default=7)
    parser.add_argument("--tts", help="a TTS-Llama folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_from_disk(args.corpus)
    sentences = list(dict.fromkeys(held_out_sentences(corpus, args.sentences)[0]["text"]))
    folder = str(args.tts or embedded_model_path("tts-llama"))
    variants = {
        "float32": pipeline("text-to-speech", model=folder).model,
        "int8, per matrix": quantize_llm_int8(pipeline("text-to-speech", model=folder).model, per_channel=False),
        "int8, per row": quantize_llm_int8(pipeline("text-to-speech", model=folder).model, per_channel=True),
    }
    rates = intelligibility_side_by_side(variants, corpus, args.sentences)
    units = {name: model.speech_units_batch(sentences) for name, model in variants.items()}
    voices = [voice for voice in rates["ground truth"] if voice != "all"] + ["all"]
    print(f"\n{len(sentences)} held-out sentences per voice; Whisper tiny.en WER\n")
    print("| voice | " + " | ".join(rates) + " |")
    print("|---|" + "---:|" * len(rates))
    for voice in voices:
        print(f"| {voice} | " + " | ".join(f"{rates[name][voice]['wer']:.3f}" for name in rates) + " |")
    for name in list(variants)[1:]:
        changed = unit_error_rate(units["float32"], units[name])
        print(f"\n{name}: unit error rate against the float32 units {changed:.3f}")


if __name__ == "__main__":
    main()
