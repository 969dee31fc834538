"""lm-evaluation-harness's `hf` model type runs a local task on a MoLE-Llama folder (`trust_remote_code=True`):
a MoLE-Llama whose experts are fresh (they change nothing) scores exactly what its SmolLM2 base scores."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from mole_llama.conversion.peft_experts import mole_config_from_base
from mole_llama.embedded.base import embedded_base_path
from mole_llama.modeling import MoLELlamaForCausalLM

pytestmark = pytest.mark.slow  # the real SmolLM2 through lm-evaluation-harness
REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = REPO_ROOT / "tests" / "lm_eval_tasks"


def harness_accuracy(model_dir) -> float:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
        tasks=["mole_known_answers"],
        task_manager=TaskManager(include_path=str(TASKS)),
        device="cpu",
        batch_size=4,
    )
    return results["results"]["mole_known_answers"]["acc,none"]


def test_harness_scores_a_mole_llama_folder_like_its_base(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the task's data_files path is relative to the repository
    base_dir = embedded_base_path()
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the fresh experts and routers are "missing" from the base checkpoint
    mole = MoLELlamaForCausalLM.from_pretrained(base_dir, config=mole_config_from_base(base.config, ["text", "speech"]))
    logging.set_verbosity(verbosity)
    mole.save_pretrained(tmp_path / "mole")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp_path / "mole")

    mole_accuracy = harness_accuracy(tmp_path / "mole")
    assert 0.0 <= mole_accuracy <= 1.0
    assert mole_accuracy == pytest.approx(harness_accuracy(base_dir))
