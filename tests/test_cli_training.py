"""The `mole-llama` training stages end to end on real festival speech and tiny models, driven by a recipe file
with `--set` overrides: fit-semantic-tokenizer -> train-codec -> prepare -> train-acoustic-lm -> train-tts ->
train-text -> train-router -> synthesize / ask --speak. Also: the shipped recipes parse and build their trainer
arguments (the paper's cannot run here), and a 2-process `accelerate launch` trains the speech expert."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from datasets import Audio, Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from conftest import save_tiny_llama_with_smollm2_tokenizer, wav_bytes
from mole_llama.cli import main
from mole_llama.embedded.festival import synthesize
from mole_llama.modeling.modeling_mole_llama import MoLELlamaForCausalLM
from mole_llama.training.recipes import (
    RECIPES_DIR,
    acoustic_training_arguments,
    load_recipe,
    lora_settings,
    sft_config,
)

pytestmark = pytest.mark.slow  # festival speech, SmolLM2's tokenizer, several short training runs
SENTENCES = [
    "Good morning, how are you today?", "The cat sat on the mat.", "Please call me tomorrow.",
    "It is raining in the city.", "She reads a book every night.", "We will meet at noon.",
    "The dog runs in the park.", "Open the window, please.",
]  # fmt: skip
SFT = dict(
    max_steps=6, per_device_train_batch_size=4, learning_rate=5e-2, logging_steps=2, save_steps=3,
    gradient_checkpointing=False, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, max_length=256, seed=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, one_torch_thread):
    """A festival speech dataset and a chat dataset on disk, a tiny Llama base with SmolLM2's tokenizer, and a
    tiny recipe pointing at them."""
    hf_logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("cli")
    audio = [synthesize(text, voice="kal") for text in SENTENCES]
    speech = Dataset.from_dict(
        {
            "text": SENTENCES,
            "audio": [{"bytes": wav_bytes(w, r), "path": None} for w, r in audio],
            "voice": ["kal"] * len(SENTENCES),
        }
    )
    speech.cast_column("audio", Audio()).save_to_disk(str(root / "speech"))
    turns = [(f"What is {a} plus {b}?", f"{a + b}") for a in range(1, 5) for b in range(1, 5)]
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in turns]
    (root / "chat.jsonl").write_text("\n".join(json.dumps(row) for row in chats))
    save_tiny_llama_with_smollm2_tokenizer(root / "base")
    recipe = {
        "base_model": str(root / "base"),
        "output_dir": str(root / "out"),
        "data": {"max_seconds": 10.0, "batch_size": 4, "speaker_column": "voice"},  # voice prompts: another clip
        "semantic_tokenizer": {"config": {"num_units": 16, "unit_rate": 50}, "iterations": 5},
        "codec": {
            "kind": "mel", "init_frames": 500,
            "training": {"max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 2, "logging_steps": 2},
            "config": {"hidden_size": 16, "num_residual_layers": 1, "codebook_dim": 8, "num_codebooks": 2,
                       "codebook_size": 16, "griffin_lim_iterations": 4},
        },
        "acoustic_lm": {
            "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            "training": {"max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 2, "logging_steps": 2,
                         "use_cpu": True, "disable_tqdm": True},
        },
        "tts_expert": {"lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}, "training": SFT},
        "text_expert": {"lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}, "training": SFT},
        "router": {"router_hidden_size": 8, "training": {**SFT, "max_steps": 4}},
    }  # fmt: skip
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def run(*argv):
    main([str(a) for a in argv])


def test_every_stage_runs_from_the_command_line(workspace, capsys, monkeypatch):
    recipe, out = workspace / "recipe.yaml", workspace / "out"
    run("fit-semantic-tokenizer", "--config", recipe, "--dataset", workspace / "speech")
    run("train-codec", "--config", recipe, "--dataset", workspace / "speech")
    run("prepare", "--config", recipe, "--dataset", workspace / "speech")
    assert "prepared 8 of 8 rows" in capsys.readouterr().err
    assert load_from_disk(str(out / "prepared"))["voice"] == ["kal"] * 8  # the speaker column is kept
    with pytest.raises(SystemExit):
        run("prepare", "--config", recipe, "--dataset", workspace / "speech", "--set", "data.speaker_column=speaker")
    assert "data.speaker_column='speaker' is not a column" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the recipe's speaker column reaches the acoustic LM's training
        run("train-acoustic-lm", "--config", recipe, "--set", "data.speaker_column=nope")
    assert "no speaker column 'nope'" in capsys.readouterr().err
    run("train-acoustic-lm", "--config", recipe)
    for stage in ("semantic_tokenizer", "codec", "prepared", "acoustic_lm"):
        assert (out / stage).is_dir(), stage
    # a stage's --set wins over the file
    run("train-tts", "--config", recipe, "--set", "tts_expert.training.max_steps=8")
    adapter_state = json.loads((out / "tts" / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert adapter_state["global_step"] == 8
    assert (out / "tts" / "adapter" / "adapter_config.json").is_file()
    assert not list((out / "tts" / "adapter").glob("checkpoint-*")), "the final adapter lies apart from checkpoints"
    assert (out / "tts" / "model" / "acoustic_lm").is_dir() and (out / "tts" / "model" / "codec").is_dir()
    run("train-text", "--config", recipe, "--dataset", workspace / "chat.jsonl")
    run("train-router", "--config", recipe, "--text-dataset", workspace / "chat.jsonl")
    mole = AutoModelForCausalLM.from_pretrained(out / "mole")
    assert isinstance(mole, MoLELlamaForCausalLM) and mole.config.expert_names == ["text", "speech"]
    capsys.readouterr()

    wav = workspace / "hello.wav"
    run("synthesize", "Hello there.", "-m", out / "tts" / "model", "-o", wav, "--max-new-tokens", 20)
    assert capsys.readouterr().out.strip() == str(wav)
    waveform, rate = soundfile.read(wav)
    assert rate == 16000 and len(waveform) > 0 and np.abs(waveform).max() <= 1.0
    # text in, speech out: the answer is printed and said
    answer_wav = workspace / "answer.wav"
    run("ask", "What is 2 plus 3?", "-m", out / "mole", "--speak", "-o", answer_wav, "--max-new-tokens", 4)
    printed = capsys.readouterr()
    assert printed.out.strip() and printed.err.strip().endswith(str(answer_wav))
    assert soundfile.read(answer_wav)[1] == 16000
    # an empty answer is refused instead of written as an empty WAV
    empty_wav = workspace / "empty.wav"
    with monkeypatch.context() as patch:
        patch.setattr("mole_llama.chat.greedy_chat_reply", lambda *args, **kwargs: torch.zeros(0, dtype=torch.long))
        with pytest.raises(SystemExit):
            run("ask", "What is 2 plus 3?", "-m", out / "mole", "--speak", "-o", empty_wav)
    assert "empty answer: nothing to speak" in capsys.readouterr().err and not empty_wav.exists()


def test_resume_picks_up_the_latest_checkpoint(workspace, capsys):
    """--resume on a finished acoustic LM run continues from its last checkpoint instead of starting again."""
    recipe, out = workspace / "recipe.yaml", workspace / "resumed"
    run("fit-semantic-tokenizer", "--config", recipe, "--dataset", workspace / "speech", "--out", out / "units")
    run("train-codec", "--config", recipe, "--dataset", workspace / "speech", "--out", out / "codec")
    run("prepare", "--config", recipe, "--dataset", workspace / "speech", "--semantic-tokenizer", out / "units",
        "--codec", out / "codec", "--out", out / "prepared")  # fmt: skip
    common = ["--config", recipe, "--dataset", out / "prepared", "--semantic-tokenizer", out / "units",
              "--codec", out / "codec", "--out", out / "am"]  # fmt: skip
    run("train-acoustic-lm", *common, "--set", "acoustic_lm.training.max_steps=2")
    run("train-acoustic-lm", *common, "--resume")
    state = json.loads((out / "am" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [entry["step"] for entry in state["log_history"] if "loss" in entry] == [2, 4]

    # --init-weights continues from a finished model's weights (at learning rate 0 they come out unchanged) ...
    run("train-acoustic-lm", *common[:-1], out / "am_continued", "--init-weights", out / "am",
        "--set", "acoustic_lm.training.max_steps=1", "--set", "acoustic_lm.training.learning_rate=0.0")  # fmt: skip
    start, continued = (load_file(out / name / "model.safetensors") for name in ("am", "am_continued"))
    assert start.keys() == continued.keys() and all(torch.equal(start[k], continued[k]) for k in start)
    # ... with the recipe's regularisation, which is not the architecture ...
    run("train-acoustic-lm", *common[:-1], out / "am_dropout", "--init-weights", out / "am",
        "--set", "acoustic_lm.training.max_steps=1", "--set", "acoustic_lm.config.attention_dropout=0.1",
        "--set", "acoustic_lm.config.previous_code_noise=0.3")  # fmt: skip
    saved = json.loads((out / "am_dropout" / "config.json").read_text())
    assert (saved["attention_dropout"], saved["previous_code_noise"]) == (0.1, 0.3)
    assert json.loads((out / "am" / "config.json").read_text())["attention_dropout"] == 0.0
    # ... and refuses one whose sizes are not the recipe's, naming the size
    with pytest.raises(SystemExit):
        run("train-acoustic-lm", *common[:-1], out / "am_wider", "--init-weights", out / "am",
            "--set", "acoustic_lm.config.hidden_size=64")  # fmt: skip
    assert "hidden_size: 32 there, 64 here" in capsys.readouterr().err


def test_errors_name_the_fix(workspace, capsys):
    with pytest.raises(SystemExit):
        run("train-tts", "--config", "no-such-recipe")
    assert "no recipe file 'no-such-recipe'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("train-tts", "--config", workspace / "recipe.yaml", "--set", "nonsense")
    assert "section.key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("prepare", "--config", workspace / "recipe.yaml", "--set", "unknown_section.x=1")
    assert "unknown section" in capsys.readouterr().err
    # recipe values are checked against the trainer arguments before any model loads
    for override, message in (
        ("tts_expert.training.learning_rate=abc", "learning_rate='abc': give a float"),
        ("tts_expert.training.nosuchkey=1", "has no setting(s) ['nosuchkey']"),
        ("tts_expert=3", "section tts_expert is 3, not a mapping"),
        ("codec.steps=3", "trainer settings go in codec.training"),  # one recipe shape: the codec's too
        ("router.router_contxt=sequence", "router.router_contxt is not a router setting"),
    ):
        with pytest.raises(SystemExit):
            run("train-tts", "--config", workspace / "recipe.yaml", "--set", override)
        assert message in capsys.readouterr().err
    # output paths and questions are checked before any model loads (the model given does not even exist)
    for output, message in ((workspace, "is a folder"), (workspace / "out.mp3x", "not an audio format")):
        with pytest.raises(SystemExit):
            run("synthesize", "Hello.", "-m", workspace / "no-such-model", "-o", output)
        assert message in capsys.readouterr().err
        with pytest.raises(SystemExit):
            run("ask", "What is 2 plus 3?", "--speak", "-m", workspace / "no-such-model", "-o", output)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("ask", "  ", "-m", workspace / "no-such-model")
    assert "the question is empty" in capsys.readouterr().err
    # a speech part a stage reads is looked for where the step that makes it writes, and named when absent
    with pytest.raises(SystemExit):
        run("train-tts", "--dataset", workspace / "no-such-data", "--semantic-tokenizer", workspace / "none")
    assert "no semantic tokenizer at" in (err := capsys.readouterr().err) and "fit-semantic-tokenizer" in err


@pytest.mark.parametrize("name", ["embedded", "paper"])
def test_shipped_recipes_build_their_trainer_arguments(name):
    cpu = [f"{stage}.training.use_cpu=true" for stage in ("tts_expert", "text_expert", "router", "acoustic_lm")]
    recipe = load_recipe(name, cpu if name == "paper" else [])
    for stage in ("tts_expert", "text_expert", "router"):
        args = sft_config(recipe, stage, "unused")
        assert args.learning_rate > 0 and args.output_dir == "unused"
    assert acoustic_training_arguments(recipe, "unused").learning_rate > 0
    if name == "paper":  # the paper's settings: rank 128, alpha 256, every projection, bf16, checkpointing
        lora = lora_settings(recipe, "tts_expert")
        assert (lora.r, lora.lora_alpha, len(lora.target_modules)) == (128, 256, 7)
        assert (
            sft_config(recipe, "tts_expert", "x").bf16 and sft_config(recipe, "tts_expert", "x").gradient_checkpointing
        )
        assert recipe["semantic_tokenizer"]["config"]["num_units"] == 4096
        accelerate = yaml.safe_load((RECIPES_DIR / recipe["accelerate_config"]).read_text())
        assert accelerate["num_processes"] == 8 and accelerate["distributed_type"] == "FSDP"
    # an override reaches one stage only, even where the file shares settings between stages (YAML anchors)
    changed = load_recipe(name, cpu * (name == "paper") + ["tts_expert.training.max_steps=3"])
    assert (
        sft_config(changed, "tts_expert", "x").max_steps == 3
        and sft_config(changed, "text_expert", "x").max_steps == -1
    )


def test_accelerate_two_processes_train_the_speech_expert(workspace, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) runs train-tts; the loss falls and one adapter is written."""
    prepared = workspace / "out" / "prepared"
    if not prepared.is_dir():
        pytest.skip("needs the prepared dataset of test_every_stage_runs_from_the_command_line")
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(RECIPES_DIR / "accelerate" / "cpu_2proc.yaml"),
        "-m", "mole_llama.cli", "train-tts", "--config", str(workspace / "recipe.yaml"), "--out", str(out),
        "--set", "tts_expert.training.max_steps=8", "--set", "tts_expert.training.per_device_train_batch_size=2",
        "--set", "tts_expert.training.logging_steps=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads(sorted((out / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    # 8 examples, 2 per process: two processes see them all in 2 steps (4 epochs in 8 steps); one would need 4
    assert state["epoch"] == pytest.approx(4.0), state["epoch"]
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_evaluate_writes_metrics_and_the_report(workspace, capsys):
    """`mole-llama evaluate` on the tiny models the stages above trained: every measure runs, the base scores
    itself perfectly, and REPORT.md holds the tables, plots and clips."""
    out = workspace / "out"
    if not (out / "mole").is_dir():
        pytest.skip("needs the models of test_every_stage_runs_from_the_command_line")
    run("build-corpus", "--out", workspace / "corpus", "--train", 2, "--test", 1, "--voices", "kal")
    assert capsys.readouterr().out.strip() == str(workspace / "corpus")
    questions = ["What is 1 plus 1?", "Name a colour.", "What is the moon?", "Say hello."]
    qa = DatasetDict(
        {
            "eval": Dataset.from_dict(
                {"question": questions, "base_answer": ["Two.", "Blue.", "A rock in the sky.", "Hello!"],
                 "max_new_tokens": [4] * 4}
            ),
            "known": Dataset.from_list([{"question": "What is 2 plus 3?", "answer": "5"}]),
        }
    )  # fmt: skip
    qa.save_to_disk(str(workspace / "qa"))
    report_dir = workspace / "report"
    run("evaluate", "--tts", out / "tts" / "model", "--mole", out / "mole", "--base", workspace / "base",
        "--corpus", workspace / "corpus", "--qa", workspace / "qa", "--out", report_dir, "--sentences", 1,
        "--prompts", 4, "--run", f"router={out / 'mole'}")  # fmt: skip
    assert capsys.readouterr().out.strip() == str(report_dir / "REPORT.md")
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["retention"]["base"]["kl"] == 0.0 and metrics["retention"]["base"]["token_agreement"] == 1.0
    assert set(metrics["intelligibility"]) == {"ground truth", "TTS-Llama", "MoLE-Llama"}
    assert metrics["routing"]["tokens"]["tts"] > 0 and metrics["routing"]["tokens"]["text"] > 0
    assert all(Path(row["path"]).is_file() for rows in metrics["clips"].values() for row in rows)
    report = (report_dir / "REPORT.md").read_text()
    for title in ("## Claims of the paper", "## Intelligibility", "## Text retention", "## Router accuracy",
                  "## Text in, speech out", "plots/mel_spectrograms.png", "plots/router_weights.png",
                  "plots/loss_curves.png"):  # fmt: skip
        assert title in report
    speech_dir = workspace / "speech_report"  # one model alone: its column is named for what it is
    run("evaluate-speech", "--tts", out / "mole", "--corpus", workspace / "corpus", "--out", speech_dir,
        "--sentences", 1)  # fmt: skip
    capsys.readouterr()
    speech_metrics = json.loads((speech_dir / "metrics.json").read_text())
    assert set(speech_metrics["intelligibility"]) == {"ground truth", "MoLE-Llama"}
    common = ["--base", workspace / "base", "--corpus", workspace / "corpus", "--qa", workspace / "qa"]
    with pytest.raises(SystemExit):
        run("evaluate", "--tts", out / "tts" / "model", "--mole", out / "mole", *common, "--out", report_dir,
            "--prompts", 300)  # fmt: skip
    assert "fewer than 300 asked" in capsys.readouterr().err


def test_overrides_read_exponent_numbers_as_numbers():
    """YAML 1.1 reads `1e-2` as a string; an override means the number (the optimizer would refuse a string)."""
    from mole_llama.training.recipes import parse_override

    assert parse_override("router.training.learning_rate=1e-2") == (["router", "training", "learning_rate"], 0.01)
    assert parse_override("a.b=2.5E+3")[1] == 2500.0 and parse_override("a.b=nan")[1] == "nan"
    assert parse_override("data.text_column=sentence")[1] == "sentence" and parse_override("a.b=10")[1] == 10


def test_the_demo_profiles_fit_the_embedded_recipe():
    from mole_llama.embedded.demo import PROFILES

    for name, profile in PROFILES.items():
        recipe = load_recipe("embedded", profile["set"])  # every override names a real setting of its stage
        assert recipe["codec"]["training"]["max_steps"] > 0, name


def test_resume_refuses_checkpoints_left_where_stages_kept_them_before(tmp_path):
    from mole_llama.training.checkpoints import checkpoint_to_resume, checkpoints_dir

    (tmp_path / "tts" / "adapter" / "checkpoint-4").mkdir(parents=True)  # the layout before OUT/checkpoints
    with pytest.raises(ValueError, match="move the checkpoint-N folders into"):
        checkpoint_to_resume(checkpoints_dir(tmp_path / "tts"), resume=True)
    assert checkpoint_to_resume(checkpoints_dir(tmp_path / "fresh"), resume=True) is None  # nothing: a fresh start
    assert checkpoint_to_resume(checkpoints_dir(tmp_path / "tts"), resume=False) is None  # resume only when asked
