"""Resume under faults: a training process killed (SIGKILL) while it writes a checkpoint, then `--resume`, ends
with the same weights as a run that was never interrupted. The kill lands between the checkpoint's optimizer file
and its trainer state, so the newest checkpoint folder is there but incomplete, as after a real crash."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import save_tiny_llama_with_smollm2_tokenizer
from mole_llama.cli import main

pytestmark = pytest.mark.slow

KILL_AT_STEP = 6
KILLER = textwrap.dedent(f"""
    import os, signal, sys
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def killed_while_saving(self, output_dir):  # after the weights and optimizer, before the trainer state
        if self.state.global_step == {KILL_AT_STEP}:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = killed_while_saving
    from mole_llama.cli import main
    main(sys.argv[1:])
""")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    save_tiny_llama_with_smollm2_tokenizer(root / "base")
    turns = [(f"What is {a} plus {b}?", f"{a + b}") for a in range(1, 5) for b in range(1, 5)]
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in turns]
    (root / "chat.jsonl").write_text("\n".join(json.dumps(row) for row in chats))
    training = dict(
        max_steps=8, per_device_train_batch_size=4, learning_rate=5e-2, logging_steps=2, save_steps=2,
        gradient_checkpointing=False, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, max_length=128,
        seed=0,
    )  # fmt: skip
    lora = {"r": 4, "lora_alpha": 8}
    recipe = {"base_model": str(root / "base"), "text_expert": {"lora": lora, "training": training}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def adapter_weights(folder) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture
def one_thread():
    """Every run of the comparison at one intra-op thread, as the killed subprocess runs: a float sum's order
    depends on the thread count, and at this learning rate 8 steps grow that into more than the tolerance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_run_killed_while_saving_resumes_to_the_same_weights(recipe, tmp_path, one_thread):
    command = ["train-text", "--config", str(recipe / "recipe.yaml"), "--dataset", str(recipe / "chat.jsonl")]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    main([*command, "--out", str(straight)])

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-c", KILLER, *command, "--out", str(killed)], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    cut = killed / "checkpoints" / f"checkpoint-{KILL_AT_STEP}"
    assert (cut / "optimizer.pt").is_file() and not (cut / "trainer_state.json").is_file()  # half written
    assert not (killed / "adapter_model.safetensors").exists()

    main([*command, "--out", str(killed), "--resume"])  # from checkpoint-4, the newest complete one
    state = json.loads((killed / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    losses = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert losses == [2, 4, 6, 8]  # steps 1-4 from before the kill, 5-8 trained again after it
    expected, resumed = adapter_weights(straight), adapter_weights(killed)
    assert expected.keys() == resumed.keys() and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
