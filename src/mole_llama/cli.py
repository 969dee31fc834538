"""The `mole-llama` command: one subcommand per step, each printing where its result is."""

import argparse
import sys
from pathlib import Path

from safetensors import SafetensorError


def parse_named_folder(text: str) -> tuple:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: write it as NAME=FOLDER, e.g. speech=out/tts/adapter")
    return name, path


def cmd_embedded_base(args) -> None:
    from .conversion.gguf import embedded_base_path

    print(embedded_base_path(args.cache_dir))


def cmd_embedded_model(args) -> None:
    from .embedded import embedded_model_path

    print(embedded_model_path(args.name, args.cache_dir))


def cmd_convert_gguf(args) -> None:
    from .conversion.gguf import convert_gguf

    print(convert_gguf(args.gguf, args.out))


def cmd_build_mole(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from .conversion.peft_experts import build_mole_from_adapters

    experts = dict(args.expert)
    if len(experts) != len(args.expert):
        raise SystemExit("error: each --expert name may appear once")
    router = {"router_hidden_size": args.router_hidden_size, "router_top_k": args.router_top_k}
    model = build_mole_from_adapters(args.base, experts, dtype=getattr(torch, args.dtype), **router)
    model.save_pretrained(args.out)
    # The tokenizer that knows the most tokens (an adapter's, when its expert added tokens) goes with the model.
    tokenizers = []
    for source in [args.base, *experts.values()]:
        try:
            tokenizers.append(AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError):
            continue  # an adapter folder without a tokenizer
    fitting = [t for t in tokenizers if len(t) <= model.config.vocab_size]
    if fitting:
        max(fitting, key=len).save_pretrained(args.out)
    else:
        print("warning: no tokenizer found with the base or the adapters; none saved with the model", file=sys.stderr)
    print(Path(args.out))


def cmd_export_expert(args) -> None:
    from .conversion.peft_experts import export_expert_adapter
    from .modeling import MoLELlamaForCausalLM

    model = MoLELlamaForCausalLM.from_pretrained(args.model)  # checks the folder first
    print(export_expert_adapter(model, args.expert, args.out))


def cmd_ask(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chat import greedy_chat_reply
    from .conversion.gguf import embedded_base_path
    from .modeling.modeling_mole_llama import check_model_folder

    if not args.question.strip():
        raise ValueError('the question is empty: ask something, e.g. mole-llama ask "What is 2 plus 3?"')
    if args.speak:
        _check_audio_path(args.output)
        _check_voice_file(getattr(args, "voice", None))
    if args.model:
        model_path = args.model
    elif args.speak:
        from .embedded import embedded_model_path

        model_path = embedded_model_path("mole-llama")
    else:
        model_path = embedded_base_path()
    if args.speak:  # one load: the speaking model answers in text too
        speaker = _speaker(model_path)
        model, tokenizer = speaker.model, speaker.tokenizer
    else:
        check_model_folder(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    if args.routing is not None:
        if not hasattr(model, "set_routing"):
            raise ValueError(f"--routing applies to MoLE-Llama models; {model_path} is a {model.config.model_type}")
        model.set_routing(None if args.routing == "learned" else args.routing)
    reply = greedy_chat_reply(model, tokenizer, args.question, args.max_new_tokens)
    answer = tokenizer.decode(reply, skip_special_tokens=True).strip()
    print(answer)
    if args.speak:
        if not answer:
            raise ValueError("the model gave an empty answer: nothing to speak")
        speech = _speak(speaker, answer, args)
        print(_write_wav(args.output, speech["audio"], speech["sampling_rate"]), file=sys.stderr)


def cmd_build_corpus(args) -> None:
    from .data.corpus import build_speech_corpus

    corpus = build_speech_corpus(
        args.out, args.train, args.test, args.voices, args.workers, args.cache_dir, args.seed, args.held_out_voices
    )
    print(", ".join(f"{name}: {len(split)} clips" for name, split in corpus.items()), file=sys.stderr)
    print(Path(args.out))


def cmd_build_qa(args) -> None:
    from .conversion.gguf import embedded_base_path
    from .data.qa import build_qa_dataset

    base = args.base or embedded_base_path()
    qa = build_qa_dataset(
        base, args.out, num_train=args.train, num_eval=args.eval, max_new_tokens=args.max_new_tokens,
        train_max_new_tokens=args.train_max_new_tokens, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    print(", ".join(f"{name}: {len(split)} rows" for name, split in qa.items()), file=sys.stderr)
    print(Path(args.out))


def cmd_evaluate(args) -> None:
    from datasets import load_from_disk

    from .conversion.gguf import embedded_base_path
    from .evaluation.evaluate import evaluate_models
    from .evaluation.report import write_report

    metrics = evaluate_models(
        args.tts, args.mole, args.base or embedded_base_path(), load_from_disk(args.corpus), load_from_disk(args.qa),
        args.out, num_sentences=args.sentences, num_prompts=args.prompts, seed=args.seed,
    )  # fmt: skip
    print(write_report(metrics, args.out, dict(args.training_runs), header=args.header or ""))


def cmd_evaluate_speech(args) -> None:
    from datasets import load_from_disk

    from .evaluation.evaluate import evaluate_speech
    from .evaluation.report import intelligibility_table

    model = args.tts
    if not model:
        from .embedded import embedded_model_path

        model = embedded_model_path("tts-llama")
    metrics = evaluate_speech(model, load_from_disk(args.corpus), args.out, args.sentences, args.seed)
    voices = ", ".join(metrics["settings"]["voices"])
    report = Path(args.out) / "REPORT.md"
    report.write_text(
        f"# Intelligibility of {model}\n\n{args.sentences} held-out sentences in every voice ({voices}); "
        f"Whisper tiny.en, pocketsphinx as a second opinion; clips in audio/.\n\n"
        + intelligibility_table(metrics["intelligibility"])
        + "\n"
    )
    print(report)


def cmd_export(args) -> None:
    from .conversion.hub import export_for_hub

    print(export_for_hub(args.model, args.out, args.repo_id, metrics=args.metrics, training=args.training or ""))


def cmd_push(args) -> None:
    from .conversion.hub import push_to_hub

    print(push_to_hub(args.repo_dir, args.repo_id, private=not args.public))


def cmd_merge_expert(args) -> None:
    from .conversion.merge import merge_speaking_model

    print(merge_speaking_model(args.model, args.out, args.expert))


# ------------------------------------------------------------------------------------------------ training stages


def _recipe(args) -> dict:
    from .training.recipes import load_recipe

    return load_recipe(args.config, args.set)


def _folder(recipe: dict, given, stage: str) -> Path:
    """A stage's folder: the one given, or where that stage writes by default under the recipe's output_dir."""
    from .training.recipes import stage_output

    return stage_output(recipe, stage, given)


PART_MAKERS = {"semantic_tokenizer": "fit-semantic-tokenizer", "codec": "train-codec"}


def _part_folder(recipe: dict, given, stage: str) -> Path:
    """A speech part a stage reads (given, or under output_dir), refused with the step that makes it when absent."""
    folder = _folder(recipe, given, stage)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"no {stage.replace('_', ' ')} at {folder}: run `mole-llama {PART_MAKERS[stage]}` first, or pass "
            f"--{stage.replace('_', '-')} DIR"
        )
    return folder


def _dataset(args, recipe: dict, stage: str | None = None):
    from .training.stages import load_any_dataset

    source = getattr(args, "dataset", None) or (stage and _folder(recipe, None, stage))
    if not source:
        raise ValueError("give --dataset: a save_to_disk folder, a JSON/JSONL file, a data folder or a Hub id")
    return load_any_dataset(source, split=args.split, streaming=getattr(args, "streaming", False))


def cmd_fit_semantic_tokenizer(args) -> None:
    from .training.stages import fit_semantic_tokenizer_stage

    recipe = _recipe(args)
    print(fit_semantic_tokenizer_stage(recipe, _dataset(args, recipe), _folder(recipe, args.out, "semantic_tokenizer")))


def cmd_train_codec(args) -> None:
    from .training.stages import train_codec_stage

    recipe = _recipe(args)
    print(train_codec_stage(recipe, _dataset(args, recipe), _folder(recipe, args.out, "codec"), resume=args.resume))


def cmd_prepare(args) -> None:
    from .training.stages import prepare_stage

    recipe = _recipe(args)
    units, codec = (
        _part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
        _part_folder(recipe, args.codec, "codec"),
    )
    out, report = prepare_stage(recipe, _dataset(args, recipe), units, codec, _folder(recipe, args.out, "prepared"))
    print(report.summary(), file=sys.stderr)
    print(out)


def cmd_train_acoustic_lm(args) -> None:
    from .training.stages import train_acoustic_lm_stage

    recipe = _recipe(args)
    units, codec = (
        _part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
        _part_folder(recipe, args.codec, "codec"),
    )
    out = _folder(recipe, args.out, "acoustic_lm")
    print(train_acoustic_lm_stage(recipe, _dataset(args, recipe, "prepared"), units, codec, out, resume=args.resume))


def _optional_folder(recipe: dict, given, stage: str):
    """A speech part's folder when given or present under output_dir; None when it does not exist (yet)."""
    folder = _folder(recipe, given, stage)
    if given and not folder.is_dir():
        raise ValueError(f"{folder} does not exist: give the folder the {stage} stage wrote")
    return folder if folder.is_dir() else None


def cmd_train_duration(args) -> None:
    from .training.stages import train_duration_stage

    recipe = _recipe(args)
    units, out = (
        _part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
        _folder(recipe, args.out, "duration_predictor"),
    )
    print(train_duration_stage(recipe, _dataset(args, recipe, "prepared"), units, out, resume=args.resume))


def cmd_train_tts(args) -> None:
    from .training.stages import load_any_dataset, train_tts_stage

    recipe = _recipe(args)
    units = _part_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer")  # checked before the data loads
    written = train_tts_stage(
        recipe, _dataset(args, recipe, "prepared"), units, _folder(recipe, args.out, "tts"),
        acoustic_lm_dir=_optional_folder(recipe, args.acoustic_lm, "acoustic_lm"),
        codec_dir=_optional_folder(recipe, args.codec, "codec"), resume=args.resume,
        duration_predictor_dir=_optional_folder(recipe, args.duration_predictor, "duration_predictor"),
        eval_prepared=load_any_dataset(args.eval_dataset) if args.eval_dataset else None,
        init_adapter=args.init_adapter,
    )  # fmt: skip
    if "model" not in written:
        print("note: no acoustic LM / codec found, so only the adapter was written", file=sys.stderr)
    for folder in written.values():
        print(folder)


def cmd_train_text(args) -> None:
    from .training.stages import train_text_stage

    recipe = _recipe(args)
    out = _folder(recipe, args.out, "text_expert")
    print(train_text_stage(recipe, _dataset(args, recipe), out, args.messages_column, resume=args.resume))


def cmd_train_router(args) -> None:
    from .training.stages import load_any_dataset, train_router_stage

    recipe = _recipe(args)
    tts_dir = _folder(recipe, None, "tts")
    print(
        train_router_stage(
            recipe,
            args.speech_expert or tts_dir / "adapter",
            args.text_expert or _folder(recipe, None, "text_expert"),
            load_any_dataset(args.tts_dataset or _folder(recipe, None, "prepared"), split=args.split),
            load_any_dataset(args.text_dataset, split=args.split),
            _folder(recipe, args.out, "mole"),
            semantic_tokenizer_dir=_optional_folder(recipe, args.semantic_tokenizer, "semantic_tokenizer"),
            acoustic_lm_dir=_optional_folder(recipe, args.acoustic_lm, "acoustic_lm"),
            codec_dir=_optional_folder(recipe, args.codec, "codec"),
            duration_predictor_dir=_optional_folder(recipe, args.duration_predictor, "duration_predictor"),
            messages_column=args.messages_column,
            resume=args.resume,
        )
    )


def _check_audio_path(path) -> Path:
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


def _write_wav(path, audio, rate) -> Path:
    import numpy as np
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(audio, dtype="float32").reshape(-1), int(rate))
    return path


def _check_voice_file(voice) -> None:
    if voice and not Path(voice).is_file():
        raise ValueError(f"--voice {voice}: no such file; give a recording of a few seconds (WAV, FLAC or OGG)")


def _speaker(model_path):
    from transformers import pipeline

    from .modeling.modeling_mole_llama import check_model_folder

    check_model_folder(model_path)  # before transformers takes a missing path for a Hub id or applies stray adapters
    return pipeline("text-to-speech", model=str(model_path))


def _speak(speaker, text: str, args) -> dict:
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


def cmd_synthesize(args) -> None:
    _check_audio_path(args.output)
    _check_voice_file(args.voice)
    if args.model:
        model_path = args.model
    else:
        from .embedded import embedded_model_path

        model_path = embedded_model_path("tts-llama")
    speech = _speak(_speaker(model_path), args.text, args)
    print(_write_wav(args.output, speech["audio"], speech["sampling_rate"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mole-llama", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, help: str, run, dataset: bool = True):
        command = commands.add_parser(name, help=help)
        command.add_argument("--config", default="embedded", help="recipe: a YAML path, or 'embedded' / 'paper'")
        command.add_argument(
            "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override a recipe value, e.g. --set tts_expert.training.max_steps=50 (repeatable)",
        )  # fmt: skip
        command.add_argument("--out", help="output folder (default: <recipe output_dir>/<stage>)")
        command.add_argument("--split", default="train", help="dataset split to read")
        if dataset:
            command.add_argument("--dataset", help="save_to_disk folder, JSON/JSONL file, data folder or Hub id")
        command.set_defaults(run=run)
        return command

    command = stage("fit-semantic-tokenizer", "fit the semantic units (k-means) on a speech dataset",
                    cmd_fit_semantic_tokenizer)  # fmt: skip
    command = stage("train-codec", "train the embedded codec (or save the recipe's EnCodec)", cmd_train_codec)
    command.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    command = stage("prepare", "speech dataset -> text, semantic units, acoustic codes", cmd_prepare)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command.add_argument("--codec", help="folder of train-codec")
    command.add_argument("--streaming", action="store_true", help="stream the input instead of loading it")
    command = stage("train-acoustic-lm", "train the acoustic LM on a prepared dataset", cmd_train_acoustic_lm)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command.add_argument("--codec", help="folder of train-codec")
    command.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    command = stage("train-duration", "train the duration predictor on a prepared dataset", cmd_train_duration)
    command.add_argument("--semantic-tokenizer", help="folder of fit-semantic-tokenizer")
    command.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
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
    command.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    command = stage("train-text", "train the text expert on a chat (messages) dataset", cmd_train_text)
    command.add_argument("--messages-column", default="messages")
    command.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    command = stage("train-router", "build the MoLE-Llama and train only its routers", cmd_train_router, False)
    command.add_argument("--speech-expert", help="speech adapter folder (default: <output_dir>/tts/adapter)")
    command.add_argument("--text-expert", help="text adapter folder (default: <output_dir>/text_expert)")
    command.add_argument("--tts-dataset", help="prepared speech dataset (default: <output_dir>/prepared)")
    command.add_argument("--text-dataset", required=True, help="chat (messages) dataset")
    command.add_argument("--messages-column", default="messages")
    command.add_argument("--semantic-tokenizer", help="to bundle a speaking model")
    command.add_argument("--acoustic-lm", help="to bundle a speaking model")
    command.add_argument("--codec", help="to bundle a speaking model")
    command.add_argument("--duration-predictor", help="to bundle a speaking model")
    command.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    command = commands.add_parser("build-corpus", help="synthesize the embedded speech corpus (festival, flite)")
    command.add_argument("--out", required=True, help="output folder (a datasets DatasetDict: train, test)")
    command.add_argument("--train", type=int, default=200, help="training sentences per voice")
    command.add_argument("--test", type=int, default=10, help="held-out sentences (read in every voice)")
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
                         help="a training run whose loss curve goes in the report (repeatable)")  # fmt: skip
    command.add_argument("--header", help="text put at the top of REPORT.md")
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=cmd_evaluate)

    command = commands.add_parser("evaluate-speech", help="intelligibility of one speaking model -> REPORT.md")
    command.add_argument("--tts", help="speaking model folder (default: the shipped TTS-Llama)")
    command.add_argument("--corpus", required=True, help="speech corpus folder (build-corpus): its test split")
    command.add_argument("--out", required=True, help="where metrics.json, REPORT.md and WAVs go")
    command.add_argument("--sentences", type=int, default=8, help="held-out sentences to speak (in every voice)")
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=cmd_evaluate_speech)

    command = commands.add_parser("merge-expert", help="fold one expert into the weights of a speaking model")
    command.add_argument("--model", required=True, help="speaking model folder (e.g. tts/model)")
    command.add_argument("--expert", default="speech", help="the expert to merge (default: speech)")
    command.add_argument("--out", required=True, help="output folder: a plain-Llama TTS-Llama, no LoRA at run time")
    command.set_defaults(run=cmd_merge_expert)

    command = commands.add_parser("export", help="a speaking model folder -> a Hub repository folder with its card")
    command.add_argument("--model", required=True, help="speaking model folder (tts/model or the MoLE-Llama)")
    command.add_argument("--out", required=True, help="new folder for the Hub repository")
    command.add_argument("--repo-id", required=True, help="ORG/NAME the card's snippets load")
    command.add_argument("--metrics", help="metrics.json of mole-llama evaluate (goes in the card's model-index)")
    command.add_argument("--training", help="how the model was trained (Markdown for the card)")
    command.set_defaults(run=cmd_export)

    command = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    command.add_argument("repo_dir", help="folder written by mole-llama export")
    command.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    command.add_argument("--public", action="store_true", help="make the repository public (default: private)")
    command.set_defaults(run=cmd_push)

    command = commands.add_parser("synthesize", help="text -> WAV with a TTS-Llama or MoLE-Llama folder")
    command.add_argument("text")
    command.add_argument("-m", "--model", help="a speaking model folder or Hub id (default: the shipped TTS-Llama)")
    command.add_argument("-o", "--output", default="speech.wav", help="WAV file to write")
    command.add_argument("--voice", help="reference audio file for the voice (a few seconds)")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--temperature", type=float, help="sample at this temperature (default: the model's)")
    command.add_argument("--speed", type=float, help="speaking rate (1.2 = 20%% faster; a model with durations)")
    command.add_argument("--max-new-tokens", dest="max_new_tokens_speech", type=int,
                         help="cap on the unit tokens per sentence (default: the model's)")  # fmt: skip
    command.set_defaults(run=cmd_synthesize)

    command = commands.add_parser("embedded-base", help="print (creating it once) the SmolLM2 base model folder")
    command.add_argument("--cache-dir", help="where to keep it (default: $MOLE_LLAMA_CACHE or ~/.cache/mole_llama)")
    command.set_defaults(run=cmd_embedded_base)

    for name in ("tts", "mole"):
        full = f"{name}-llama"
        command = commands.add_parser(f"embedded-{name}", help=f"print (assembling it once) the shipped {full} folder")
        command.add_argument("--cache-dir", help="where to keep it (default: $MOLE_LLAMA_CACHE or ~/.cache/mole_llama)")
        command.set_defaults(run=cmd_embedded_model, name=full)

    command = commands.add_parser("convert-gguf", help="convert a GGUF Llama checkpoint to a safetensors folder")
    command.add_argument("gguf", help="path of the .gguf file")
    command.add_argument("--out", required=True, help="output folder")
    command.set_defaults(run=cmd_convert_gguf)

    command = commands.add_parser("build-mole", help="build a MoLE-Llama from a base and one PEFT LoRA per expert")
    command.add_argument("--base", required=True, help="base Llama folder the adapters were trained on")
    command.add_argument(
        "--expert", required=True, action="append", type=parse_named_folder, metavar="NAME=ADAPTER_DIR",
        help="an expert and its PEFT adapter folder; repeat, in gate order (e.g. text=... speech=...)",
    )  # fmt: skip
    command.add_argument("--out", required=True, help="output folder")
    command.add_argument("--router-hidden-size", type=int, default=64)
    command.add_argument("--router-top-k", type=int, default=None)
    command.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    command.set_defaults(run=cmd_build_mole)

    command = commands.add_parser("export-expert", help="write one expert of a MoLE-Llama as a PEFT adapter folder")
    command.add_argument("--model", required=True, help="MoLE-Llama folder")
    command.add_argument("--expert", required=True, help="expert name, e.g. speech")
    command.add_argument("--out", required=True, help="output adapter folder")
    command.set_defaults(run=cmd_export_expert)

    command = commands.add_parser("ask", help="answer a question in text (greedy, through the chat template)")
    command.add_argument("question")
    command.add_argument(
        "-m", "--model", help="model folder (default: the embedded SmolLM2 base; with --speak the shipped MoLE-Llama)"
    )
    command.add_argument("--routing", help="MoLE only: an expert name, 'base', or 'learned'")
    command.add_argument("--max-new-tokens", type=int, default=64)
    command.add_argument("--speak", action="store_true", help="also say the answer (a speaking MoLE-Llama folder)")
    command.add_argument("-o", "--output", default="answer.wav", help="WAV file for --speak")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--temperature", type=float, help="--speak: sampling temperature (default: the model's)")
    command.add_argument("--max-speech-tokens", dest="max_new_tokens_speech", type=int,
                         help="--speak: cap on the unit tokens per sentence (default: the model's)")  # fmt: skip
    command.set_defaults(run=cmd_ask)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, OSError, SafetensorError) as error:
        print(f"mole-llama {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
