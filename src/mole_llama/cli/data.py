"""The embedded data builders: the synthesized speech corpus and the offline text QA data."""

import sys
from pathlib import Path


def cmd_build_corpus(args) -> None:
    from ..embedded.corpus import build_speech_corpus

    corpus = build_speech_corpus(
        args.out, args.train, args.test, args.voices, args.workers, args.cache_dir, args.seed, args.held_out_voices,
        args.number_sentences,
    )  # fmt: skip
    print(", ".join(f"{name}: {len(split)} clips" for name, split in corpus.items()), file=sys.stderr)
    print(Path(args.out))


def cmd_build_qa(args) -> None:
    from ..embedded.base import embedded_base_path
    from ..embedded.qa import build_qa_dataset

    base = args.base or embedded_base_path()
    qa = build_qa_dataset(
        base, args.out, num_train=args.train, num_eval=args.eval, max_new_tokens=args.max_new_tokens,
        train_max_new_tokens=args.train_max_new_tokens, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    print(", ".join(f"{name}: {len(split)} rows" for name, split in qa.items()), file=sys.stderr)
    print(Path(args.out))


def add_commands(commands) -> None:
    command = commands.add_parser("build-corpus", help="synthesize the embedded speech corpus (festival, flite)")
    command.add_argument("--out", required=True, help="output folder (a datasets DatasetDict: train, test)")
    command.add_argument("--train", type=int, default=200, help="training sentences per voice")
    command.add_argument("--test", type=int, default=10, help="held-out sentences (read in every voice)")
    command.add_argument(
        "--number-sentences", type=int, default=0,
        help="training sentences with numbers per voice, beside the fortunes (counts, sums, prices, times, years)",
    )  # fmt: skip
    command.add_argument("--voices", nargs="+", default=["kal", "ked", "slt"], help="voices of both splits")
    command.add_argument(
        "--held-out-voices", nargs="*", default=[], help="voices that read the test sentences only (zero-shot voice)"
    )
    command.add_argument("--workers", type=int, default=2, help="parallel synthesis processes")
    command.add_argument("--cache-dir", help="where synthesized clips are kept (default: beside --out)")
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=cmd_build_corpus)

    command = commands.add_parser("build-qa", help="offline text QA data: base-model answers + known answers")
    command.add_argument("--out", required=True, help="output folder (a datasets DatasetDict: train, eval, known)")
    command.add_argument("--base", help="base model folder (default: the embedded SmolLM2)")
    command.add_argument("--train", type=int, default=200, help="training questions")
    command.add_argument("--eval", type=int, default=200, help="held-out evaluation questions")
    command.add_argument("--max-new-tokens", type=int, default=24, help="evaluation answer budget (evaluate reuses it)")
    command.add_argument("--train-max-new-tokens", type=int, default=128,
                         help="training answers: budget; answers not finished within it are left out")  # fmt: skip
    command.add_argument("--batch-size", type=int, default=16)
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=cmd_build_qa)
