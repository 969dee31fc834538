"""A saved speaking model as a Hub repository: a self-contained folder with a filled model card
(`mole-llama export`), and its upload with huggingface_hub (`mole-llama push`).

The folder is what `save_tts_model` writes (safetensors, code files for `trust_remote_code`, tokenizer,
generation config, `acoustic_lm/`, `codec/`, `duration_predictor/`, `semantic_tokenizer/`), without training
leftovers, plus README.md.
Loading it by repo id is transformers' and huggingface_hub's own path: nothing here is needed at load time.
"""

import json
import shutil
from pathlib import Path

from ..training.checkpoints import CHECKPOINTS_FOLDER

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "speaking_llama.md"
ALLOWED_SUFFIXES = {".safetensors", ".json", ".py", ".txt", ".model", ".jinja"}
"""What a Hub folder may hold: weights as safetensors only (nothing that unpickles), configs, code, tokenizer."""
REQUIRED_PARTS = ("config.json", "model.safetensors", "acoustic_lm/config.json", "codec/config.json")
PAPER = "arXiv:2410.20336"
JUDGE = "whisper-tiny.en"
"""The recognizer behind the card's WER / CER (`mole_llama.evaluation.intelligibility`), as the metrics' config."""


class HubError(RuntimeError):
    """A Hub operation that cannot go on, with the reason and the fix in one line."""


def _model_files(model_dir: Path) -> list:
    files = []
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        leftover = relative.parts[0] == CHECKPOINTS_FOLDER or any(
            part.startswith(("checkpoint-", ".")) for part in relative.parts
        )  # a stage's checkpoints (`OUT/checkpoints/`, or a trainer's `checkpoint-N` anywhere) never travel
        if not path.is_file() or leftover:
            continue
        if path.suffix in ALLOWED_SUFFIXES:
            files.append(relative)
    return files


def describe_model(config: dict) -> dict:
    """Who this model is, from its config: TTS-Llama (one expert, forced) or MoLE-Llama (learned routing)."""
    experts = [expert["name"] for expert in config.get("experts", [])]
    routing = config.get("routing")
    is_tts = routing is not None
    return {
        "kind": "TTS-Llama" if is_tts else "MoLE-Llama",
        "pipeline_tag": "text-to-speech" if is_tts else "text-generation",
        "experts": ", ".join(experts) or "none",
        "routing": f"always `{routing}`" if is_tts else "learned router",
    }


def _evaluation_section(metrics: dict | None) -> tuple:
    """`(EvalResults for the model-index, Markdown)` from `mole-llama evaluate`'s metrics.json."""
    from huggingface_hub import EvalResult

    if not metrics:
        return [], "Not evaluated at export: run `mole-llama evaluate` and export with `--metrics metrics.json`."
    results, lines = [], ["| measure | value |", "|---|---:|"]
    dataset = {"dataset_type": "festival-fortunes", "dataset_name": "festival voices reading held-out fortunes"}
    for model, rates in metrics.get("intelligibility", {}).items():
        for metric in ("wer", "cer"):
            value = round(float(rates["all"][metric]), 4)
            lines.append(f"| {model}: {metric.upper()} (Whisper tiny.en) | {value} |")
            if model != "ground truth":
                results.append(EvalResult(task_type="text-to-speech", metric_type=metric, metric_value=value,
                                          metric_name=f"{model} {metric.upper()}", metric_config=JUDGE,
                                          **dataset))  # fmt: skip
        value = round(float(rates["all"]["wer_pocketsphinx"]), 4)
        lines.append(f"| {model}: WER (pocketsphinx, second opinion) | {value} |")
    qa = {"dataset_type": "mole-llama-qa", "dataset_name": "held-out open questions (base answers)"}
    for model, row in metrics.get("retention", {}).items():
        for metric in ("agreement", "token_agreement", "kl", "accuracy"):
            value = round(float(row[metric]), 4)
            lines.append(f"| {model}: {metric.replace('_', ' ')} with the base | {value} |")
            if model != "base":
                results.append(EvalResult(task_type="text-generation", metric_type=metric, metric_value=value,
                                          metric_name=f"{model} {metric}", **qa))  # fmt: skip
    return results, "\n".join(lines)


def write_model_card(
    out_dir, repo_id: str, metrics: dict | None = None, training: str = "", license: str = "apache-2.0"
):
    """Fill `model_cards/speaking_llama.md` for the model in `out_dir` and write `out_dir/README.md`."""
    from huggingface_hub import ModelCard, ModelCardData

    out_dir = Path(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    who = describe_model(config)
    eval_results, evaluation = _evaluation_section(metrics)
    base_model = config.get("base_model_name_or_path") or "HuggingFaceTB/SmolLM2-135M-Instruct"
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag=who["pipeline_tag"],
        base_model=base_model,
        license=license,
        tags=["mole-llama", who["kind"].lower(), "text-to-speech", "lora", "mixture-of-lora-experts", PAPER.lower()],
        datasets=["festival-fortunes"],
        eval_results=eval_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        num_speech_units=config.get("num_speech_units"),
        sampling_rate=config.get("sampling_rate"),
        experts=who["experts"],
        routing=who["routing"],
        evaluation=evaluation,
        training=training or "See the mole-llama recipe this model was trained with.",
        speech_data="the festival voices of the embedded corpus",
    )
    card.save(out_dir / "README.md")
    return out_dir / "README.md"


def _read_metrics(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"--metrics {path}: no such file; `mole-llama evaluate --out DIR` writes DIR/metrics.json")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"--metrics {path} is not JSON ({error}): give the metrics.json that evaluate wrote"
        ) from error
    if not isinstance(metrics, dict):
        raise ValueError(f"--metrics {path} holds a {type(metrics).__name__}, not evaluate's metrics mapping")
    for model, rates in (metrics.get("intelligibility") or {}).items():
        missing = sorted({"wer", "cer", "wer_pocketsphinx"} - set((rates or {}).get("all") or {}))
        if missing:
            raise ValueError(
                f"--metrics {path}: intelligibility of {model!r} lacks {missing} (an older or edited file): run "
                "`mole-llama evaluate` again and export with its metrics.json"
            )
    return metrics


def export_for_hub(model_dir, out_dir, repo_id: str, metrics=None, training: str = "") -> Path:
    """Copy a speaking model folder into `out_dir` as a complete Hub repository, with its model card.

    `metrics` is `mole-llama evaluate`'s metrics.json (a path or a dict); its numbers go in the card's model-index.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    missing = [part for part in REQUIRED_PARTS if not (model_dir / part).is_file()]
    if missing:
        raise ValueError(f"{model_dir} is not a speaking model folder (missing {missing}): export what "
                         "train-tts (tts/model) or train-router wrote")  # fmt: skip
    config = json.loads((model_dir / "config.json").read_text())
    auto_map = config.get("auto_map") or {}
    code = {reference.split(".")[0] + ".py" for reference in auto_map.values()}
    if not auto_map or any(not (model_dir / name).is_file() for name in code):
        raise ValueError(f"{model_dir} lacks the code files of its auto_map ({sorted(code)}): save it again")
    if "/" not in repo_id:
        raise ValueError(f"repo id {repo_id!r}: write it as ORG_OR_USER/NAME")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty: give a new folder")
    if isinstance(metrics, (str, Path)):  # read before anything is copied, so a bad file leaves no half export
        metrics = _read_metrics(Path(metrics))
    for relative in _model_files(model_dir):
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_dir / relative, out_dir / relative)
    write_model_card(out_dir, repo_id, metrics, training)
    return out_dir


def push_to_hub(repo_dir, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload an exported folder with huggingface_hub (`create_repo` + `upload_folder`); returns the commit URL.
    Fails with one clear line when no token is set or the Hub cannot be reached, before anything is written."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled

    repo_dir = Path(repo_dir)
    if not (repo_dir / "README.md").is_file() or not (repo_dir / "config.json").is_file():
        raise ValueError(f"{repo_dir} is not an exported folder: run `mole-llama export` first")
    exported = {*_model_files(repo_dir), Path("README.md")}
    leftovers = sorted(
        str(relative) for relative in (path.relative_to(repo_dir) for path in repo_dir.rglob("*") if path.is_file())
        if relative not in exported and not any(part.startswith(".") for part in relative.parts)
    )  # fmt: skip
    if leftovers:
        raise ValueError(
            f"{repo_dir} holds files export never writes ({', '.join(leftovers[:3])}"
            f"{', ...' if len(leftovers) > 3 else ''}: training leftovers?): run `mole-llama export --model "
            f"{repo_dir} --repo-id ORG/NAME --out NEW_FOLDER` and push NEW_FOLDER"
        )
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(repo_dir), repo_id=repo_id, repo_type="model",
                                   commit_message="Upload with mole-llama push")  # fmt: skip
    except OfflineModeIsEnabled as error:
        raise HubError("HF_HUB_OFFLINE is set: unset it on a machine with network access to push") from error
    except (OSError, HfHubHTTPError, HTTPError) as error:  # HTTPError: its HTTP client's, whatever the version
        reason = str(error).splitlines()[0][:200]
        raise HubError(f"cannot reach the Hugging Face Hub to push {repo_id} ({reason}): check the network") from error
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


__all__ = ["HubError", "export_for_hub", "push_to_hub", "write_model_card"]
