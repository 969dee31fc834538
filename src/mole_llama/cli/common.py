"""What the commands share: recipe and folder lookup, checks of output and voice files, and speaking."""

import argparse
from pathlib import Path


def parse_named_folder(text: str) -> tuple:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: write it as NAME=FOLDER, e.g. speech=out/tts/adapter")
    return name, path


def recipe_of(args) -> dict:
    from ..training.recipes import load_recipe

    return load_recipe(args.config, args.set)


def stage_folder(recipe: dict, given, stage: str) -> Path:
    """A stage's folder: the one given, or where that stage writes by default under the recipe's output_dir."""
    from ..training.recipes import stage_output

    return stage_output(recipe, stage, given)


PART_MAKERS = {"semantic_tokenizer": "fit-semantic-tokenizer", "codec": "train-codec"}


def part_folder(recipe: dict, given, stage: str) -> Path:
    """A speech part a stage reads (given, or under output_dir), refused with the step that makes it when absent."""
    folder = stage_folder(recipe, given, stage)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"no {stage.replace('_', ' ')} at {folder}: run `mole-llama {PART_MAKERS[stage]}` first, or pass "
            f"--{stage.replace('_', '-')} DIR"
        )
    return folder


def dataset_of(args, recipe: dict, stage: str | None = None):
    from ..training.stages import load_any_dataset

    source = getattr(args, "dataset", None) or (stage and stage_folder(recipe, None, stage))
    if not source:
        raise ValueError("give --dataset: a save_to_disk folder, a JSON/JSONL file, a data folder or a Hub id")
    return load_any_dataset(source, split=args.split, streaming=getattr(args, "streaming", False))


def optional_folder(recipe: dict, given, stage: str):
    """A speech part's folder when given or present under output_dir; None when it does not exist (yet)."""
    folder = stage_folder(recipe, given, stage)
    if given and not folder.is_dir():
        raise ValueError(f"{folder} does not exist: give the folder the {stage} stage wrote")
    return folder if folder.is_dir() else None


def check_audio_path(path) -> Path:
    """The output audio file, checked before any model loads: not a folder, and a format soundfile writes."""
    import soundfile

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"-o {path} is a folder: give a file name, e.g. {path / 'speech.wav'}")
    formats = soundfile.available_formats()
    if path.suffix.lstrip(".").upper() not in formats:
        known = ", ".join(f".{name.lower()}" for name in ("WAV", "FLAC", "OGG") if name in formats)
        raise ValueError(
            f"-o {path}: {path.suffix or 'no extension'} is not an audio format soundfile writes; use {known}"
        )
    return path


def write_wav(path, audio, rate) -> Path:
    import numpy as np
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(audio, dtype="float32").reshape(-1), int(rate))
    return path


def check_voice_file(voice) -> None:
    if voice and not Path(voice).is_file():
        raise ValueError(f"--voice {voice}: no such file; give a recording of a few seconds (WAV, FLAC or OGG)")


def speaker_of(model_path, device=None):
    from transformers import pipeline

    from ..modeling.modeling_mole_llama import check_model_folder

    check_model_folder(model_path)  # before transformers takes a missing path for a Hub id or applies stray adapters
    return pipeline("text-to-speech", model=str(model_path), device=device)


def speak(speaker, text: str, args) -> dict:
    generate_kwargs = {"seed": args.seed}
    if args.temperature is not None:
        generate_kwargs.update(do_sample=True, temperature=args.temperature)
    if getattr(args, "voice", None):
        generate_kwargs["voice"] = args.voice
    if getattr(args, "max_new_tokens_speech", None):
        generate_kwargs["max_new_tokens"] = args.max_new_tokens_speech
    if getattr(args, "speed", None) is not None:
        generate_kwargs["speed"] = args.speed
    return speaker(text, generate_kwargs=generate_kwargs)


def add_stage(commands, name: str, help: str, run, dataset: bool = True, resumable: bool = True):
    """A training stage's subcommand with the options every stage takes (recipe, overrides, output, dataset, and
    `--resume` for those that checkpoint)."""
    command = commands.add_parser(name, help=help)
    command.add_argument("--config", default="embedded", help="recipe: a YAML path, or 'embedded' / 'paper'")
    command.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a recipe value, e.g. --set tts_expert.training.max_steps=50 (repeatable)",
    )  # fmt: skip
    command.add_argument(
        "--out", help="output folder (default: <recipe output_dir>/<stage folder>, e.g. tts, mole, prepared)"
    )
    command.add_argument("--split", default="train", help="dataset split to read")
    if dataset:
        command.add_argument("--dataset", help="save_to_disk folder, JSON/JSONL file, data folder or Hub id")
    if resumable:
        command.add_argument(
            "--resume", action="store_true", help="continue from the newest complete checkpoint in <--out>/checkpoints"
        )
    command.set_defaults(run=run)
    return command
