"""The embedded demo (`make demo`): SmolLM2-135M-Instruct learns to speak, end to end, through the `mole-llama`
command a user would run, and the paper's claims are measured on what it ends with.

Steps: the festival/flite corpus (one voice held out of training), the shipped TTS-Llama reading its held-out
sentences in every voice (`mole-llama evaluate-speech`), the offline QA data, the shipped MoLE-Llama reading and
answering known-answer questions aloud, then every training stage with
`src/mole_llama/recipes/embedded.yaml` (shortened by `--set` overrides so the whole run fits about 20 minutes on 2
CPU cores), then `mole-llama evaluate`, which writes `demo_output/REPORT.md` with its tables and plots; the shipped
models' tables are appended. The models it ends with are `demo_output/models/tts-llama` and
`demo_output/models/mole-llama`.
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

TRAINED_VOICES = ("kal", "ked", "slt", "flite_awb", "flite_slt")
HELD_OUT_VOICES = ("flite_rms",)  # read only the test sentences: zero-shot voice
PROFILES = {
    # corpus: training sentences per voice, held-out sentences; qa: training questions; then per-stage overrides
    "default": {
        "train_sentences": 40, "test_sentences": 6, "qa_train": 48, "eval_sentences": 4, "eval_prompts": 60,
        "set": [
            "codec.training.max_steps=250", "duration_predictor.training.num_train_epochs=20",
            "acoustic_lm.training.num_train_epochs=3",
            "tts_expert.training.max_steps=36", "tts_expert.training.per_device_train_batch_size=4",
            "text_expert.training.max_steps=16", "text_expert.training.per_device_train_batch_size=4",
            "router.training.max_steps=16", "router.training.per_device_train_batch_size=4",
            "tts_expert.training.logging_steps=1", "text_expert.training.logging_steps=1",
            "router.training.logging_steps=1",
        ],
    },
    "tiny": {  # the suite's smoke profile: every step runs, nothing learns much
        "train_sentences": 6, "test_sentences": 2, "qa_train": 8, "eval_sentences": 1, "eval_prompts": 8,
        "set": [
            "duration_predictor.training.max_steps=3", "codec.training.max_steps=4",
            "codec.training.per_device_train_batch_size=4", "acoustic_lm.training.max_steps=3",
            "tts_expert.training.max_steps=2",
            "text_expert.training.max_steps=2", "router.training.max_steps=2",
            "tts_expert.training.per_device_train_batch_size=2", "text_expert.training.per_device_train_batch_size=2",
            "router.training.per_device_train_batch_size=2", "acoustic_lm.training.logging_steps=1",
            "tts_expert.training.logging_steps=1", "text_expert.training.logging_steps=1",
            "router.training.logging_steps=1",
        ],
    },
}  # fmt: skip


def run_step(title: str, command: str, *args, log: list, recipe: tuple = ()) -> None:
    """Run one `mole-llama` subcommand in a child process, as a user would, and log its wall time. The recipe
    arguments (the same for every stage) are passed but not printed."""
    shown = " ".join(map(str, args)) + (" [recipe]" if recipe else "")
    print(f"\n=== {title}: mole-llama {command} {shown}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mole_llama.cli", command, *map(str, recipe), *map(str, args)], check=True)
    log.append((title, time.perf_counter() - started))


def run_demo(out_dir="demo_output", profile: str = "default", config: str = "embedded") -> Path:
    """Every step of the demo; returns the REPORT.md path."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {sorted(PROFILES)}")
    settings = PROFILES[profile]
    out = Path(out_dir)
    work, models = out / "work", out / "models"
    recipe = ["--config", config, "--set", f"output_dir={work}"] + [
        item for value in settings["set"] for item in ("--set", value)
    ]
    print(f"recipe {config} with {' '.join(settings['set'])}")
    started, log = time.perf_counter(), []
    run_step("embedded base model", "embedded-base", log=log)
    run_step("speech corpus (festival, flite)", "build-corpus", "--out", work / "corpus",
             "--train", settings["train_sentences"], "--test", settings["test_sentences"], "--voices", *TRAINED_VOICES,
             "--held-out-voices", *HELD_OUT_VOICES, log=log)  # fmt: skip
    run_step("the shipped TTS-Llama speaks", "evaluate-speech", "--corpus", work / "corpus", "--out", out / "shipped",
             "--sentences", settings["eval_sentences"], log=log)  # fmt: skip
    run_step("text QA data (base answers)", "build-qa", "--out", work / "qa", "--train", settings["qa_train"],
             "--eval", settings["eval_prompts"], log=log)  # fmt: skip
    run_step("the shipped MoLE-Llama speaks and answers aloud", "evaluate-speech", "--tts", "mole-llama",
             "--corpus", work / "corpus", "--out", out / "shipped_mole", "--sentences", 1, "--qa", work / "qa",
             log=log)  # fmt: skip
    run_step("semantic units", "fit-semantic-tokenizer", "--dataset", work / "corpus", log=log, recipe=recipe)
    run_step("codec", "train-codec", "--dataset", work / "corpus", log=log, recipe=recipe)
    run_step("units and codes", "prepare", "--dataset", work / "corpus", log=log, recipe=recipe)
    run_step("durations", "train-duration", log=log, recipe=recipe)
    run_step("acoustic LM", "train-acoustic-lm", log=log, recipe=recipe)
    run_step("speech expert (TTS-Llama)", "train-tts", log=log, recipe=recipe)
    run_step("text expert", "train-text", "--dataset", work / "qa", log=log, recipe=recipe)
    run_step("router (MoLE-Llama)", "train-router", "--text-dataset", work / "qa",
             "--out", models / "mole-llama", log=log, recipe=recipe)  # fmt: skip
    if (models / "tts-llama").exists():
        shutil.rmtree(models / "tts-llama")
    shutil.copytree(work / "tts" / "model", models / "tts-llama")
    training_seconds = time.perf_counter() - started
    runs = {"codec": work / "codec", "durations": work / "duration_predictor", "acoustic LM": work / "acoustic_lm",
            "speech expert": work / "tts", "text expert": work / "text_expert",
            "router": models / "mole-llama"}  # fmt: skip
    header = (
        f"Embedded demo, profile `{profile}`: SmolLM2-135M-Instruct, recipe `{config}` with "
        + ", ".join(f"`{value}`" for value in settings["set"])
        + f"; corpus {settings['train_sentences']} training sentences per voice. Data and training took "
        f"{training_seconds / 60:.1f} min."
    )
    run_step("evaluation and report", "evaluate", "--tts", models / "tts-llama", "--mole", models / "mole-llama",
             "--corpus", work / "corpus", "--qa", work / "qa", "--out", out,
             "--sentences", settings["eval_sentences"], "--prompts", settings["eval_prompts"], "--header", header,
             *[item for name, folder in runs.items() for item in ("--run", f"{name}={folder}")], log=log)  # fmt: skip
    total = time.perf_counter() - started
    report = out / "REPORT.md"
    shipped = (out / "shipped" / "REPORT.md").read_text().split("\n", 2)[2]
    shipped_mole = (out / "shipped_mole" / "REPORT.md").read_text().split("\n", 2)[2]
    short_run = (
        "The tables above are the short from-scratch run of every stage, trained in minutes: its loss curves show each "
        "stage learning, not a finished model (the text expert's stays near where it starts: it learns the base's own "
        "answers at the recipe's small learning rate, so that it stays near the base). The shipped TTS-Llama (trained "
        "for hours, `mole-llama embedded-tts`) reads the same held-out sentences here:"
    )
    with report.open("a") as handle:
        handle.write(f"\n## The shipped TTS-Llama\n\n{short_run}\n\n{shipped}")
        handle.write(f"\n## The shipped MoLE-Llama (`mole-llama embedded-mole`)\n\n{shipped_mole}")
    timings = "\n".join(f"| {title} | {seconds:.0f} |" for title, seconds in log)
    with report.open("a") as handle:
        handle.write(f"\n## Wall time\n\n| step | seconds |\n|---|---:|\n{timings}\n| **total** | **{total:.0f}** |\n")
    print(f"\n=== done in {total / 60:.1f} min: {report}")
    print(report.read_text().split("## Samples")[0])
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mole_llama.embedded.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--config", default="embedded", help="recipe to train with")
    args = parser.parse_args(argv)
    run_demo(args.out, args.profile, args.config)


if __name__ == "__main__":
    main()
