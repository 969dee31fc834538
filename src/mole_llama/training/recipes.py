"""Training recipes: one YAML file per scale (`mole_llama/recipes/paper.yaml`, `.../embedded.yaml`, package data)
holding every stage's settings, read with `--set section.key=value` overrides, and turned into the trainers'
argument objects.

A recipe's sections: `base_model`, `output_dir`, `accelerate_config` (a launch config, relative to `recipes/`),
`data`, `semantic_tokenizer`, `codec`, `acoustic_lm`, `duration_predictor`, `tts_expert`, `text_expert`, `router`;
each training section has a `training` mapping of TRL `SFTConfig` / transformers `TrainingArguments` fields, so
anything those accept can be set.
"""

import copy
import dataclasses
import json
import re
from pathlib import Path

import yaml
from transformers import TrainingArguments
from trl import SFTConfig

from ..modeling.configuration_mole_llama import ExpertSpec
from .experts import PAPER_LORA

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
"""The package's `recipes/` folder (package data, so a wheel install has it); names such as "embedded" resolve there,
and its `accelerate/` folder holds the launch configs."""

SECTIONS = (
    "base_model",
    "output_dir",
    "accelerate_config",
    "data",
    "semantic_tokenizer",
    "codec",
    "acoustic_lm",
    "duration_predictor",
    "tts_expert",
    "text_expert",
    "router",
)
SFT_STAGES = ("tts_expert", "text_expert", "router")
TRAINED_SECTIONS = ("codec", "acoustic_lm", "duration_predictor") + SFT_STAGES
CODEC_SECTION_KEYS = {"kind", "config", "training", "segment_seconds", "init_frames", "pretrained", "bandwidth"}
ROUTER_MODEL_KEYS = ("router_hidden_size", "router_top_k", "router_context", "router_context_prior",
                     "router_context_prior_tokens")  # fmt: skip
"""The router section's `MoLELlamaConfig` fields (the rest: `routing_loss_weight`, `training`)."""
ROUTER_SECTION_KEYS = {*ROUTER_MODEL_KEYS, "routing_loss_weight", "training"}


def recipe_path(name_or_path) -> Path:
    """A recipe file: a path, or the name of one in the package's `recipes/` ("embedded", "paper")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = RECIPES_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise ValueError(f"no recipe file {name_or_path!r}: give a YAML path or one of {known}")


EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_override(text: str) -> tuple:
    """`"tts_expert.training.max_steps=10"` -> `(["tts_expert", "training", "max_steps"], 10)`; the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r}: write it as section.key=value, e.g. tts_expert.training.max_steps=10")
    return key.strip().split("."), _yaml_value(value)


def _yaml_value(text: str):
    """A YAML scalar, except that `1e-3` is a number (YAML 1.1 reads exponents without a dot as strings)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def load_recipe(name_or_path, overrides: list | None = None) -> dict:
    """The recipe as a dict, with `overrides` (`section.key=value` strings) applied; unknown sections are errors."""
    path = recipe_path(name_or_path)
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(recipe).__name__}")
    recipe = json.loads(json.dumps(recipe))  # YAML anchors share one object: an override must touch one stage only
    for keys, value in map(parse_override, overrides or []):
        node = recipe
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {'.'.join(keys)}: {key} is a value, not a section")
        node[keys[-1]] = value
    unknown = sorted(set(recipe) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    for name in SECTIONS[3:]:
        if recipe.get(name) is not None and not isinstance(recipe[name], dict):
            raise ValueError(
                f"{path}: section {name} is {recipe[name]!r}, not a mapping: set its keys, e.g. {name}.x=1"
            )
    unknown = sorted(set(recipe.get("codec") or {}) - CODEC_SECTION_KEYS)
    if unknown:
        raise ValueError(
            f"codec.{unknown[0]} is not a codec setting ({sorted(CODEC_SECTION_KEYS)}); trainer settings go in "
            "codec.training, as in every stage: max_steps, per_device_train_batch_size, ..."
        )
    unknown = sorted(set(recipe.get("router") or {}) - ROUTER_SECTION_KEYS)
    if unknown:
        raise ValueError(f"router.{unknown[0]} is not a router setting: choose from {sorted(ROUTER_SECTION_KEYS)}")
    for name in TRAINED_SECTIONS:
        _check_training((recipe.get(name) or {}).get("training") or {}, name)
    recipe["_path"] = str(path)
    return recipe


def _check_training(training: dict, name: str) -> None:
    """Refuse, before any model loads, a `training` setting the stage's trainer arguments do not have, or a value
    of the wrong kind (a word where a number or a bool belongs)."""
    arguments = SFTConfig if name in SFT_STAGES else TrainingArguments
    fields = {field.name: field for field in dataclasses.fields(arguments)}
    unknown = sorted(set(training) - set(fields))
    if unknown:
        raise ValueError(
            f"{name}.training: {arguments.__name__} has no setting(s) {unknown} (e.g. learning_rate, max_steps, "
            "per_device_train_batch_size)"
        )
    for key, value in training.items():
        default = fields[key].default
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not fits:
            raise ValueError(f"{name}.training.{key}={value!r}: give a {type(default).__name__}, like {default!r}")


def section(recipe: dict, name: str) -> dict:
    return copy.deepcopy(recipe.get(name) or {})


def sft_config(recipe: dict, stage: str, output_dir) -> SFTConfig:
    """TRL's `SFTConfig` of an SFT stage ("tts_expert", "text_expert", "router") writing to `output_dir`."""
    if stage not in SFT_STAGES:
        raise ValueError(f"{stage!r} is not an SFT stage; choose one of {SFT_STAGES}")
    training = section(recipe, stage).get("training") or {}
    return SFTConfig(output_dir=str(output_dir), **training)


EXPERT_OF_STAGE = {"tts_expert": "speech", "text_expert": "text"}


def lora_settings(recipe: dict, stage: str) -> ExpertSpec:
    """The expert's LoRA settings (the paper's defaults where the recipe is silent)."""
    lora = section(recipe, stage).get("lora") or {}
    return ExpertSpec.from_dict({"name": EXPERT_OF_STAGE[stage], **lora}, **PAPER_LORA)


def acoustic_training_arguments(recipe: dict, output_dir) -> TrainingArguments:
    from .acoustic_lm import default_training_arguments

    return default_training_arguments(str(output_dir), **(section(recipe, "acoustic_lm").get("training") or {}))


def stage_output(recipe: dict, stage: str, out=None) -> Path:
    """Where a stage writes: `--out` when given, else `<recipe output_dir>/<stage>`."""
    if out:
        return Path(out)
    return Path(recipe.get("output_dir") or "mole_llama_out") / stage


__all__ = [
    "RECIPES_DIR",
    "acoustic_training_arguments",
    "load_recipe",
    "lora_settings",
    "parse_override",
    "recipe_path",
    "sft_config",
    "stage_output",
]
