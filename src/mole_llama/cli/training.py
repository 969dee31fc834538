"""The training stages: each reads a recipe (`--config`, `--set`) and its inputs, and prints its output folder."""

import sys
from functools import partial

from .common import add_stage, dataset_of, optional_folder, part_folder, recipe_of, stage_folder


def cmd_fit_semantic_tokenizer(args) -> None:
    from ..training.stages import fit_semantic_tokenizer_stage

    recipe = recipe_of(args)
    print(
        fit_semantic_tokenizer_stage(
            recipe, dataset_of(args, recipe), stage_folder(recipe, args.out, "semantic_tokenizer")
        )
    )


def cmd_train_codec(args) -> None:
    from ..training.stages import train_codec_stage

    recipe = recipe_of(args)
    print(
        train_codec_stage(recipe, dataset_of(args, recipe), stage_folder(recipe, args.out, "codec"), resume=args.resume)
    )


def cmd_prepare(args) -> None:
    from ..training.stages import prepare_stage

    recipe = recipe_of(args)
    units, codec = (
        part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
        part_folder(recipe, args.codec, "codec"),
    )
    out, report = prepare_stage(
        recipe, dataset_of(args, recipe), units, codec, stage_folder(recipe, args.out, "prepared")
    )
    print(report.summary(), file=sys.stderr)
    print(out)


def cmd_train_acoustic_lm(args) -> None:
    from ..training.stages import train_acoustic_lm_stage

    recipe = recipe_of(args)
    units, codec = (
        part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
        part_folder(recipe, args.codec, "codec"),
    )
    out = stage_folder(recipe, args.out, "acoustic_lm")
    print(
        train_acoustic_lm_stage(
            recipe, dataset_of(args, recipe, "prepared"), units, codec, out, resume=args.resume,
            init_weights=args.init_weights,
        )
    )  # fmt: skip


def cmd_train_duration(args) -> None:
    from ..training.stages import train_duration_stage

    recipe = recipe_of(args)
    units, out = (
        part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
        stage_folder(recipe, args.out, "duration_predictor"),
    )
    print(train_duration_stage(recipe, dataset_of(args, recipe, "prepared"), units, out, resume=args.resume))


def cmd_train_tts(args) -> None:
    from ..training.stages import load_any_dataset, train_tts_stage

    recipe = recipe_of(args)
    units = part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer")  # checked before the data loads
    written = train_tts_stage(
        recipe, dataset_of(args, recipe, "prepared"), units, stage_folder(recipe, args.out, "tts"),
        acoustic_lm_dir=optional_folder(recipe, args.acoustic_lm, "acoustic_lm"),
        codec_dir=optional_folder(recipe, args.codec, "codec"), resume=args.resume,
        duration_predictor_dir=optional_folder(recipe, args.duration_predictor, "duration_predictor"),
        eval_prepared=load_any_dataset(args.eval_dataset) if args.eval_dataset else None,
        init_adapter=args.init_adapter,
    )  # fmt: skip
    if "model" not in written:
        print("note: no acoustic LM / codec found, so only the adapter was written", file=sys.stderr)
    for folder in written.values():
        print(folder)


def cmd_train_text(args) -> None:
    from ..training.stages import train_text_stage

    recipe = recipe_of(args)
    out = stage_folder(recipe, args.out, "text_expert")
    print(train_text_stage(recipe, dataset_of(args, recipe), out, args.messages_column, resume=args.resume))


def cmd_train_router(args) -> None:
    from ..training.stages import load_any_dataset, train_router_stage

    recipe = recipe_of(args)
    tts_dir = stage_folder(recipe, None, "tts")
    print(
        train_router_stage(
            recipe,
            args.speech_expert or tts_dir / "adapter",
            args.text_expert or stage_folder(recipe, None, "text_expert"),
            load_any_dataset(args.tts_dataset or stage_folder(recipe, None, "prepared"), split=args.split),
            load_any_dataset(args.text_dataset, split=args.split),
            stage_folder(recipe, args.out, "mole"),
            semantic_tokenizer_dir=optional_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
            acoustic_lm_dir=optional_folder(recipe, args.acoustic_lm, "acoustic_lm"),
            codec_dir=optional_folder(recipe, args.codec, "codec"),
            duration_predictor_dir=optional_folder(recipe, args.duration_predictor, "duration_predictor"),
            messages_column=args.messages_column,
            resume=args.resume,
        )
    )


def add_commands(commands) -> None:
    stage = partial(add_stage, commands)
    stage("fit-semantic-tokenizer", "fit the semantic units (k-means) on a speech dataset", cmd_fit_semantic_tokenizer,
          resumable=False)  # fmt: skip
    stage("train-codec", "train the embedded codec (or save the recipe's EnCodec)", cmd_train_codec)
    command = stage("prepare", "speech dataset -> text, semantic units, acoustic codes", cmd_prepare, resumable=False)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command.add_argument("--codec", help="folder of train-codec")
    command.add_argument("--streaming", action="store_true", help="stream the input instead of loading it")
    command = stage("train-acoustic-lm", "train the acoustic LM on a prepared dataset", cmd_train_acoustic_lm)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command.add_argument("--codec", help="folder of train-codec")
    command.add_argument(
        "--init-weights",
        help="start from this acoustic LM's weights (e.g. src/mole_llama/embedded/weights/tts-llama/acoustic_lm) "
        "to continue an earlier session's training",
    )
    command = stage("train-duration", "train the duration predictor on a prepared dataset", cmd_train_duration)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command = stage("train-tts", "train the speech expert (TTS-Llama) on a prepared dataset", cmd_train_tts)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command.add_argument("--acoustic-lm", help="folder of train-acoustic-lm (to bundle a speaking model)")
    command.add_argument("--codec", help="folder of train-codec (to bundle a speaking model)")
    command.add_argument("--duration-predictor", help="folder of train-duration (to bundle a speaking model)")
    command.add_argument("--eval-dataset", help="held-out prepared rows: log the greedy unit error rate as it trains")
    command.add_argument(
        "--init-adapter",
        help="start from this adapter's weights (e.g. src/mole_llama/embedded/weights/tts-llama/"
        "speech_expert) to continue an earlier session's training",
    )
    command = stage("train-text", "train the text expert on a chat (messages) dataset", cmd_train_text)
    command.add_argument("--messages-column", default="messages")
    command = stage("train-router", "build the MoLE-Llama and train only its routers", cmd_train_router, dataset=False)
    command.add_argument("--speech-expert", help="speech adapter folder (default: <output_dir>/tts/adapter)")
    command.add_argument("--text-expert", help="text adapter folder (default: <output_dir>/text_expert)")
    command.add_argument("--tts-dataset", help="prepared speech dataset (default: <output_dir>/prepared)")
    command.add_argument("--text-dataset", required=True, help="chat (messages) dataset")
    command.add_argument("--messages-column", default="messages")
    for part in ("--semantic-tokenizer", "--acoustic-lm", "--codec", "--duration-predictor"):
        command.add_argument(part, help="to bundle a speaking model")
