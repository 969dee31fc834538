"""How well does a speaking model read text unlike its fortunes? Whisper tiny.en WER on two sets the held-out
fortune table does not cover, for one or more speaking models side by side in one run:

- held-out number sentences (`number_sentences` frames: sums, counts, prices, times, years, in words): the
  MoLE-Llama's arithmetic answers are made of these words;
- the base's own held-out answers (`build-qa`'s eval split, digits and all): the everyday English a MoLE-Llama says.

Every model reads the same texts with the same seeds, in its default voice (no prompt clip), greedy units.

    python benchmarks/out_of_domain_intelligibility.py --qa QA [--model NAME=DIR ...] [--numbers 20] [--answers 20]

Compare with an older shipped model by assembling it from that commit's tree:
`git worktree add /tmp/old COMMIT && PYTHONPATH=/tmp/old/src python -c "from mole_llama.embedded import
embedded_model_path as p; print(p('tts-llama', cache_dir='/tmp/old-cache'))"`, then `--model old=THAT_FOLDER`.
"""

import argparse

import torch
from datasets import load_from_disk
from transformers import pipeline

from mole_llama.embedded import embedded_model_path
from mole_llama.embedded.festival import is_held_out
from mole_llama.embedded.number_sentences import number_sentences
from mole_llama.evaluation.intelligibility import error_rates, transcribe


def named_folder(text: str) -> tuple:
    name, separator, folder = text.partition("=")
    if not separator or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=FOLDER, e.g. old=/tmp/old-cache/tts-llama")
    return name, folder


def text_sets(qa_folder, num_numbers: int, num_answers: int, seed: int) -> dict:
    """`{set name: texts}`; number sentences only from the held-out side of the corpus's split."""
    sets = {"held-out number sentences": number_sentences(num_numbers, seed, exclude=lambda s: not is_held_out(s))}
    if qa_folder:
        answers = [answer for answer in load_from_disk(qa_folder)["eval"]["base_answer"] if answer.strip()]
        if len(answers) < num_answers:
            raise ValueError(f"{qa_folder} holds {len(answers)} eval answers, fewer than --answers {num_answers}")
        sets["base answers (everyday English)"] = answers[:num_answers]
    return sets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=named_folder, action="append",
        help="NAME=FOLDER of a speaking model, repeatable (default: the shipped TTS-Llama)",
    )  # fmt: skip
    parser.add_argument("--qa", help="a build-qa folder: its eval split's base answers are read too")
    parser.add_argument("--numbers", type=int, default=20, help="held-out number sentences")
    parser.add_argument("--answers", type=int, default=20, help="base answers (needs --qa)")
    parser.add_argument("--seed", type=int, default=1, help="the number sentences' seed; speech seeds follow it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or [("shipped", str(embedded_model_path("tts-llama")))]
    sets = text_sets(args.qa, args.numbers, args.answers, args.seed)
    print(f"Whisper tiny.en WER; greedy units; speech seed {args.seed}\n")
    print("| model | " + " | ".join(sets) + " |\n|---|" + "---:|" * len(sets))
    for name, folder in models:
        model = pipeline("text-to-speech", model=folder).model
        rates = []
        for texts in sets.values():
            audio = model.speak_texts(texts, seed=args.seed, do_sample=False)
            heard = [transcribe(waveform.numpy(), model.sampling_rate) for waveform in audio]
            rates.append(error_rates(texts, heard)["wer"])
        print(f"| {name} | " + " | ".join(f"{rate:.3f}" for rate in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
