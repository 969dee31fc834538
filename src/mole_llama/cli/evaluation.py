"""Evaluation: intelligibility, text retention and router accuracy, written up as REPORT.md."""

from pathlib import Path

from .common import parse_named_folder


def cmd_evaluate(args) -> None:
    from datasets import load_from_disk

    from ..embedded.base import embedded_base_path
    from ..evaluation.evaluate import evaluate_models
    from ..evaluation.report import write_report

    metrics = evaluate_models(
        args.tts, args.mole, args.base or embedded_base_path(), load_from_disk(args.corpus), load_from_disk(args.qa),
        args.out, num_sentences=args.sentences, num_prompts=args.prompts, seed=args.seed,
    )  # fmt: skip
    print(write_report(metrics, args.out, dict(args.training_runs), header=args.header or ""))


def cmd_evaluate_speech(args) -> None:
    from datasets import load_from_disk

    from ..embedded import MODELS, embedded_model_path
    from ..evaluation.evaluate import evaluate_speech
    from ..evaluation.report import intelligibility_table, spoken_answers_table

    model = args.tts or "tts-llama"
    if model in MODELS and not Path(model).is_dir():
        model = embedded_model_path(model)
    qa = load_from_disk(args.qa) if args.qa else None
    metrics = evaluate_speech(model, load_from_disk(args.corpus), args.out, args.sentences, args.seed, qa, args.answers)
    voices = ", ".join(metrics["settings"]["voices"])
    report = Path(args.out) / "REPORT.md"
    answers = ""
    if qa is not None:
        answers = (
            "\nText in, speech out: it answers known-answer questions in text, then says the answers; Whisper hears"
            f" them:\n\n{spoken_answers_table(metrics['spoken_answers'], args.out)}\n"
        )
    report.write_text(
        f"# Intelligibility of {model}\n\n{args.sentences} held-out sentences in every voice ({voices}); "
        f"Whisper tiny.en, pocketsphinx as a second opinion; clips in audio/.\n\n"
        + intelligibility_table(metrics["intelligibility"])
        + "\n"
        + answers
    )
    print(report)


def add_commands(commands) -> None:
    command = commands.add_parser("evaluate", help="intelligibility, text retention, router accuracy -> REPORT.md")
    command.add_argument("--tts", required=True, help="speaking TTS-Llama folder")
    command.add_argument("--mole", required=True, help="speaking MoLE-Llama folder (learned routing)")
    command.add_argument("--base", help="base model folder (default: the embedded SmolLM2)")
    command.add_argument("--corpus", required=True, help="speech corpus folder (build-corpus): its test split")
    command.add_argument("--qa", required=True, help="QA folder (build-qa): its eval and known splits")
    command.add_argument("--out", required=True, help="where metrics.json, REPORT.md, plots and WAVs go")
    command.add_argument("--sentences", type=int, default=8, help="held-out sentences to speak (in every voice)")
    command.add_argument("--prompts", type=int, default=200, help="held-out text prompts for retention")
    command.add_argument("--run", dest="training_runs", action="append", default=[], type=parse_named_folder,
                         metavar="NAME=FOLDER",
                         help="a stage's output folder whose loss curve goes in the report, e.g. speech=OUT/tts "
                         "(repeatable)")  # fmt: skip
    command.add_argument("--header", help="text put at the top of REPORT.md")
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=cmd_evaluate)

    command = commands.add_parser("evaluate-speech", help="intelligibility of one speaking model -> REPORT.md")
    command.add_argument("--tts", help="speaking model folder, or tts-llama / mole-llama for a shipped one "
                         "(default: the shipped TTS-Llama)")  # fmt: skip
    command.add_argument("--corpus", required=True, help="speech corpus folder (build-corpus): its test split")
    command.add_argument("--out", required=True, help="where metrics.json, REPORT.md and WAVs go")
    command.add_argument("--sentences", type=int, default=8, help="held-out sentences to speak (in every voice)")
    command.add_argument("--qa", help="QA folder (build-qa): a MoLE-Llama also answers its known questions aloud")
    command.add_argument("--answers", type=int, default=3, help="with --qa: known-answer questions answered aloud")
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=cmd_evaluate_speech)
