"""PEFT LoRA adapters <-> MoLE-Llama experts.

Stage 1 of the paper trains each expert as an ordinary PEFT LoRA adapter; `build_mole_from_adapters` puts a base
model and one adapter per expert into one `MoLELlamaForCausalLM`. `export_expert_adapter` writes an expert back
as a PEFT adapter folder that `PeftModel.from_pretrained` loads.

Token rows trained with PEFT's `trainable_token_indices` (e.g. the speech unit tokens) are written into the
MoLE model's one shared embedding table: every expert sees the same vocabulary.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig
from transformers.utils import logging

from ..modeling import MoLELlamaConfig, MoLELlamaForCausalLM
from ..modeling.configuration_mole_llama import ALL_LLAMA_PROJECTIONS, ExpertSpec

logger = logging.get_logger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
TOKEN_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.token_adapter\.trainable_tokens_delta$")
# PEFT also saves whole embedding tables when the base's vocabulary was resized (save_embedding_layers="auto").
TABLE_KEY = re.compile(
    r"^base_model\.model\.(?P<module>model\.embed_tokens|lm_head)(\.token_adapter)?(\.base_layer)?\.weight$"
)
EMBEDDING_MODULES = {"model.embed_tokens", "lm_head"}
# LoRA adapter settings that leave the maths of a plain LoRA unchanged (or are read explicitly below).
HARMLESS_LORA_SETTINGS = {
    "peft_type", "peft_version", "task_type", "auto_mapping", "base_model_name_or_path", "revision",
    "inference_mode", "init_lora_weights", "r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules",
    "trainable_token_indices", "bias", "megatron_core", "qalora_group_size", "ensure_weight_tying", "loftq_config",
    "layers_pattern",
}  # fmt: skip
# Keys of a Llama config.json that describe the file, not the architecture.
NON_ARCHITECTURE_KEYS = {"model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"}


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter folder, read and checked: its expert settings, LoRA weights and trained token rows."""

    path: Path
    expert: dict
    lora_weights: dict  # MoLE module path -> {"A": tensor [r, in], "B": tensor [out, r]}
    token_rows: dict  # "model.embed_tokens" / "lm_head" -> (indices, rows [n, hidden])
    tables: dict  # "model.embed_tokens" / "lm_head" -> whole saved table [vocab, hidden]


def read_lora_adapter(path, name: str) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder, refusing what a MoLE expert cannot hold, with the reason and the fix."""
    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_file.is_file():
        raise ValueError(f"{path} is not a PEFT adapter folder: {ADAPTER_CONFIG} is missing")
    if not weights_file.is_file():
        hint = (
            " (only a pickled .bin is there: re-save it with safetensors)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise ValueError(f"{path}: the adapter weights {ADAPTER_WEIGHTS} are missing{hint}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}): re-save the adapter") from error
    _check_supported(config, config_file)
    try:
        weights = load_file(weights_file)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_file} is corrupt or truncated ({error}): re-save or re-download it") from error

    expert = ExpertSpec.from_peft_config(name, config).to_dict()
    r = expert["r"]
    token_indices = _token_indices(config.get("trainable_token_indices"))
    lora_weights, token_rows, tables = {}, {}, {}
    for key, tensor in weights.items():
        if match := LORA_KEY.match(key):
            rank = tensor.shape[0] if match["ab"] == "A" else tensor.shape[1]
            if rank != r:
                raise ValueError(
                    f"{weights_file}: {key} has rank {rank} but {ADAPTER_CONFIG} says r={r}; "
                    "the config and weights come from different adapters"
                )
            lora_weights.setdefault(match["module"], {})[match["ab"]] = tensor
        elif (match := TOKEN_KEY.match(key)) and match["module"] in EMBEDDING_MODULES:
            short = match["module"].rsplit(".", 1)[-1]
            indices = token_indices.get(short) or token_indices.get("embed_tokens")
            if indices is None or len(indices) != tensor.shape[0]:
                raise ValueError(f"{weights_file}: {key} does not match trainable_token_indices in {ADAPTER_CONFIG}")
            token_rows[match["module"]] = (indices, tensor)
        elif match := TABLE_KEY.match(key):
            tables[match["module"]] = tensor
        else:
            raise ValueError(
                f"{weights_file}: weight {key} is not a LoRA or trainable-token weight, which a MoLE expert "
                "cannot hold; train the expert with plain LoRA (and trainable_token_indices for new tokens)"
            )
    return LoraAdapter(path, expert, lora_weights, token_rows, tables)


def _check_supported(config: dict, config_file: Path) -> None:
    """Accept only settings known not to change what a plain LoRA computes; name any other one that is set."""
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{config_file}: peft_type is {config.get('peft_type')!r}; a MoLE expert must be a LoRA adapter"
        )
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ValueError(f"{config_file} has no {key!r}: it is not a complete LoRA adapter config")
    for key, value in config.items():
        if key not in HARMLESS_LORA_SETTINGS and value not in (None, False, {}, [], "", "none"):
            raise ValueError(f"{config_file}: {key}={value!r} is not supported in a MoLE expert; retrain without it")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{config_file}: bias={config['bias']!r} is not supported; retrain with bias='none'")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not set(targets) <= set(ALL_LLAMA_PROJECTIONS):
        raise ValueError(
            f"{config_file}: target_modules={targets!r}; a MoLE expert needs a list of Llama projections "
            f"from {ALL_LLAMA_PROJECTIONS}"
        )


def _token_indices(trainable_token_indices) -> dict:
    if trainable_token_indices is None:
        return {}
    if isinstance(trainable_token_indices, list):
        return {"embed_tokens": list(trainable_token_indices)}
    return {module: list(indices) for module, indices in trainable_token_indices.items()}


def mole_config_from_base(base_config, experts: list, **router_settings) -> MoLELlamaConfig:
    """A MoLE-Llama config with the architecture of a Llama (or MoLE-Llama) config and the given experts."""
    if base_config.model_type == MoLELlamaConfig.model_type:
        raise ValueError(
            "the base is already a MoLE-Llama; build from the plain Llama it was made from "
            f"(config.base_model_name_or_path: {base_config.base_model_name_or_path})"
        )
    if base_config.model_type != "llama":
        raise ValueError(
            f"the base model is a {base_config.model_type!r} model; MoLE-Llama needs a Llama-architecture base"
        )
    architecture = {k: v for k, v in base_config.to_dict().items() if k not in NON_ARCHITECTURE_KEYS}
    architecture.update(experts=experts, base_vocab_size=base_config.vocab_size, **router_settings)
    architecture.setdefault("base_model_name_or_path", getattr(base_config, "_name_or_path", None) or None)
    return MoLELlamaConfig(**architecture)


def build_mole_from_adapters(
    base_model_path, expert_adapters: dict, dtype=torch.float32, **router_settings
) -> MoLELlamaForCausalLM:
    """Load a Llama base and put one PEFT LoRA adapter per named expert on it.

    Args:
        base_model_path: folder (or Hub id) of the base Llama checkpoint the adapters were trained on.
        expert_adapters: expert name -> adapter folder, in gate order, e.g. `{"text": ..., "speech": ...}`.
        dtype: dtype of the built model.
        router_settings: extra `MoLELlamaConfig` fields (`router_hidden_size`, `router_top_k`, ...).
    """
    if not expert_adapters:
        raise ValueError("no experts given: pass at least one name=adapter_folder")
    adapters = [read_lora_adapter(path, name) for name, path in expert_adapters.items()]
    base_config = AutoConfig.from_pretrained(base_model_path)
    config = mole_config_from_base(
        base_config,
        [adapter.expert for adapter in adapters],
        base_model_name_or_path=str(base_model_path),
        **router_settings,
    )
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report would list every expert and router weight as "missing"
    try:
        model, report = MoLELlamaForCausalLM.from_pretrained(
            base_model_path, config=config, dtype=dtype, output_loading_info=True
        )
    finally:
        logging.set_verbosity(verbosity)
    _check_base_loaded(base_model_path, report)
    _extend_vocabulary(model, adapters)
    for adapter in adapters:
        _load_expert(model, adapter)
    return model


def _check_base_loaded(base_model_path, report: dict) -> None:
    """Only expert and router weights may be missing from the base; anything else means a different layout."""
    missing = [key for key in report["missing_keys"] if ".lora_" not in key and ".router." not in key]
    problems = missing + list(report["unexpected_keys"]) + list(report["mismatched_keys"])
    if problems:
        raise ValueError(
            f"{base_model_path} does not load as a Llama checkpoint ({len(problems)} missing, unexpected or "
            f"mismatched weights, e.g. {problems[0]}); give the folder of the base the adapters were trained on"
        )


def _embedding_tables(model: MoLELlamaForCausalLM) -> dict:
    """The token tables by module path: the input embeddings, and the LM head when it is not tied to them."""
    tables = {"model.embed_tokens": model.get_input_embeddings().weight}
    if not model.config.tie_word_embeddings:
        tables["lm_head"] = model.get_output_embeddings().weight
    return tables


def _extend_vocabulary(model: MoLELlamaForCausalLM, adapters: list) -> None:
    """Grow the embedding table(s) to the experts' vocabulary and write in the rows they trained."""
    vocab_size = model.config.vocab_size
    tied = model.config.tie_word_embeddings
    tables = _embedding_tables(model)
    rows_by_table = {
        module: _trained_rows(module, tied, adapters, table[:vocab_size]) for module, table in tables.items()
    }
    wanted = max([vocab_size] + [index + 1 for rows in rows_by_table.values() for index in rows])
    if wanted > vocab_size:
        model.resize_token_embeddings(wanted, mean_resizing=False)
        tables = _embedding_tables(model)
    for module, table in tables.items():
        rows = rows_by_table[module]
        untrained = sorted(set(range(vocab_size, wanted)) - set(rows))
        if untrained:
            raise ValueError(
                f"the experts extend the vocabulary to {wanted} tokens, but rows {untrained[:5]} of {module} have "
                "no trained values; train every added token with trainable_token_indices (for untied embeddings "
                "name both embed_tokens and lm_head)"
            )
        with torch.no_grad():
            for index, row in rows.items():
                table[index] = row.to(table.dtype)


def _trained_rows(module: str, tied: bool, adapters: list, base_rows: torch.Tensor) -> dict:
    """Token index -> row for one table, merged over the experts (whole saved tables first, then trained rows)."""
    merged = {}
    for adapter in adapters:
        rows = {}
        table = adapter.tables.get(module)
        if table is None and tied:
            table = adapter.tables.get("lm_head")
        if table is not None:
            known = min(len(base_rows), table.shape[0])
            if not torch.equal(table[:known].to(base_rows.dtype), base_rows[:known]):
                logger.warning(f"{adapter.path}: its saved {module} differs from the base on existing tokens")
            rows.update({index: table[index] for index in range(len(base_rows), table.shape[0])})
        indices, trained = adapter.token_rows.get(module, ([], []))
        rows.update(zip(indices, trained))
        for index, row in rows.items():
            if index in merged and not torch.equal(merged[index], row):
                raise ValueError(
                    f"two experts give token {index} of {module} different values; MoLE-Llama shares one "
                    "vocabulary, so train added tokens in one expert only"
                )
            merged[index] = row
    if any(index < len(base_rows) for index in merged):
        logger.warning(
            f"an expert retrained existing tokens of {module}; the shared table takes its values, so routing "
            "'base' no longer equals the original base model on those tokens"
        )
    return merged


def _load_expert(model: MoLELlamaForCausalLM, adapter: LoraAdapter) -> None:
    name = adapter.expert["name"]
    parameters = dict(model.named_parameters())
    expected = {key for key in parameters if key.endswith((f".lora_A.{name}", f".lora_B.{name}"))}
    state = {}
    for module, pair in adapter.lora_weights.items():
        for ab, tensor in pair.items():
            key = f"{module}.lora_{ab}.{name}"
            if key not in parameters:
                raise ValueError(
                    f"{adapter.path}: the adapter has LoRA weights for {module}, which is not among its "
                    f"target_modules or not in the base model (fewer layers?); check the adapter and the base"
                )
            if parameters[key].shape != tensor.shape:
                raise ValueError(
                    f"{adapter.path}: {key} has shape {tuple(tensor.shape)}, but the base model needs "
                    f"{tuple(parameters[key].shape)}; the adapter was trained on a different base model"
                )
            state[key] = tensor
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{adapter.path}: the adapter lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
    with torch.no_grad():
        for key, tensor in state.items():
            parameters[key].copy_(tensor)


def export_expert_adapter(model: MoLELlamaForCausalLM, name: str, out_dir) -> Path:
    """Write expert `name` as a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    Token rows added beyond the base vocabulary go out as `trainable_token_indices`; load the adapter onto a base
    whose embeddings were resized to `model.config.vocab_size`.
    """
    experts = {expert["name"]: expert for expert in model.config.experts}
    if name not in experts:
        raise ValueError(f"unknown expert {name!r}: this model has experts {list(experts)}")
    expert, config = experts[name], model.config
    new_tokens = list(range(config.base_vocab_size, config.vocab_size))
    token_indices = None
    if new_tokens:
        token_indices = (
            new_tokens if config.tie_word_embeddings else {"embed_tokens": new_tokens, "lm_head": new_tokens}
        )
    lora_config = ExpertSpec(**expert).to_lora_config(
        base_model_name_or_path=config.base_model_name_or_path, trainable_token_indices=token_indices
    )
    state = {}
    for key, parameter in model.named_parameters():
        if key.endswith((f".lora_A.{name}", f".lora_B.{name}")):
            module, ab = key[: -len(f".lora_X.{name}")], key[-len(f"X.{name}")]
            state[f"{PEFT_PREFIX}{module}.lora_{ab}.weight"] = parameter.detach().contiguous()
    if new_tokens:
        for module, table in _embedding_tables(model).items():
            state[f"{PEFT_PREFIX}{module}.token_adapter.trainable_tokens_delta"] = table[new_tokens].detach().clone()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(out_dir)
    save_file(state, out_dir / ADAPTER_WEIGHTS)
    return out_dir
