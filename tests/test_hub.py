"""Hub-ready folders: `mole-llama export` writes a complete repository with a model card whose metadata parses and
whose snippets run; the folder loads by repo id from an offline Hugging Face cache, in an interpreter that cannot
import mole_llama, and speaks the same audio; `mole-llama push` fails with one clear line without token or network.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from huggingface_hub import ModelCard
from test_remote_code import BLOCK_MOLE_LLAMA
from test_tts_pipeline import tts_dir  # noqa: F401  (the tiny speaking model fixture)
from transformers import pipeline

from mole_llama.cli import main
from mole_llama.conversion.hub import export_for_hub

pytestmark = pytest.mark.slow  # the real SmolLM2 tokenizer, subprocesses loading remote code
REPO_ID = "mole-llama-test/tiny-tts-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
METRICS = {
    "intelligibility": {
        "ground truth": {"all": {"wer": 0.25, "cer": 0.12, "wer_pocketsphinx": 0.3}},
        "TTS-Llama": {"all": {"wer": 0.5, "cer": 0.3, "wer_pocketsphinx": 0.6}},
    },
    "retention": {"TTS-Llama": {"agreement": 0.2, "token_agreement": 0.9, "kl": 0.05, "accuracy": 0.4}},
}


def place_in_hub_cache(folder, repo_id: str, cache_dir):
    """Lay `folder` out as huggingface_hub's cache holds a downloaded model repo: refs/main names a snapshot."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.parent.mkdir(parents=True)
    os.symlink(folder, snapshot, target_is_directory=True)
    return snapshot


@pytest.fixture(scope="module")
def exported(tts_dir, tmp_path_factory):  # noqa: F811
    (tts_dir / "checkpoint-3").mkdir(exist_ok=True)  # training leftovers must not travel
    (tts_dir / "checkpoint-3" / "optimizer.pt").write_bytes(b"pickle")
    (tts_dir / "training_args.bin").write_bytes(b"pickle")
    out = tmp_path_factory.mktemp("export") / "repo"
    main(["export", "--model", str(tts_dir), "--out", str(out), "--repo-id", REPO_ID, "--metrics",
          str(_write_metrics(tmp_path_factory.mktemp("metrics")))])  # fmt: skip
    return out


def _write_metrics(folder):
    path = folder / "metrics.json"
    path.write_text(json.dumps(METRICS))
    return path


def test_export_is_complete_and_clean(exported):
    names = {str(path.relative_to(exported)) for path in exported.rglob("*") if path.is_file()}
    for required in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md",
                     "modeling_tts_llama.py", "acoustic_lm/config.json", "acoustic_lm/model.safetensors",
                     "codec/config.json", "codec/model.safetensors"):  # fmt: skip
        assert required in names, required
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) or "checkpoint-" in name for name in names), names


def test_model_card_metadata_parses_and_holds_the_evaluation(exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-to-speech"
    assert data.license == "apache-2.0" and "mole-llama" in data.tags and data.base_model
    values = {(result.metric_type, result.metric_name): result.metric_value for result in data.eval_results}
    assert values[("wer", "TTS-Llama WER")] == 0.5 and values[("agreement", "TTS-Llama agreement")] == 0.2
    assert "arXiv:2410.20336" in card.text and "```bibtex" in card.text


def run_offline_without_package(code: str, cache_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir), "HF_HOME": str(cache_dir.parent)}
    script = BLOCK_MOLE_LLAMA + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)


def test_loads_by_repo_id_from_the_offline_cache_and_speaks_the_same(exported, tts_dir, tmp_path):  # noqa: F811
    cache = tmp_path / "hf" / "hub"
    place_in_hub_cache(exported, REPO_ID, cache)
    text = "The sun is warm today."
    snippets = re.findall(r"```python\n(.*?)```", (exported / "README.md").read_text(), flags=re.S)
    assert len(snippets) == 2 and all(REPO_ID in snippet for snippet in snippets)
    result = run_offline_without_package(
        "\n".join(snippets)  # the card's own usage snippets, as a reader would paste them
        + textwrap.dedent(
            f"""
            import numpy as np
            speaker = pipeline("text-to-speech", model={REPO_ID!r}, trust_remote_code=True)
            assert type(speaker.model).__module__.startswith("transformers_modules"), type(speaker.model).__module__
            np.save({str(tmp_path / "audio.npy")!r}, speaker({text!r}, generate_kwargs={{"seed": 5}})["audio"])
            """
        ),
        cache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MoLELlamaForCausalLM ['speech']" in result.stdout
    local = pipeline("text-to-speech", model=str(tts_dir))(text, generate_kwargs={"seed": 5})["audio"]
    np.testing.assert_array_equal(np.load(tmp_path / "audio.npy"), local)


def test_push_without_token_or_network_fails_with_one_line(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))  # no stored token there
    with pytest.raises(SystemExit):
        main(["push", str(exported), "--repo-id", REPO_ID])
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no Hugging Face token" in error and "HF_TOKEN" in error

    # With a token but no Hub to reach (a closed local port stands in for the network): one line, nothing written.
    command = [sys.executable, "-m", "mole_llama.cli", "push", str(exported), "--repo-id", REPO_ID]
    env = {**os.environ, "HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "home"), "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0], lines
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 1 and "HF_HUB_OFFLINE is set" in result.stderr.strip().splitlines()[-1]


def test_export_refuses_what_is_not_a_speaking_model(tmp_path, tts_dir):  # noqa: F811
    with pytest.raises(ValueError, match="not a speaking model folder"):
        export_for_hub(tmp_path, tmp_path / "out", REPO_ID)
    with pytest.raises(ValueError, match="ORG_OR_USER/NAME"):
        export_for_hub(tts_dir, tmp_path / "out", "no-slash")


def test_merged_tts_llama_speaks_through_the_pipeline(tts_dir, tmp_path):  # noqa: F811
    """merge-expert on a speaking folder: no experts left, the same logits as the expert forced on, and the stock
    text-to-speech pipeline still speaks with it."""
    import torch

    from mole_llama.modeling.modeling_tts_llama import MoLELlamaForTextToWaveform

    speaker = MoLELlamaForTextToWaveform.from_pretrained(str(tts_dir)).eval()
    with torch.no_grad():  # a trained expert: the fixture's is fresh (zero B), which would make merging trivial
        for name, parameter in speaker.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    speaker.save_pretrained(tmp_path / "trained")
    main(["merge-expert", "--model", str(tmp_path / "trained"), "--out", str(tmp_path / "merged")])
    merged = MoLELlamaForTextToWaveform.from_pretrained(str(tmp_path / "merged")).eval()
    assert merged.config.expert_names == [] and not any(".lora_" in key for key in merged.state_dict())
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (merged(ids).logits - speaker(ids).logits).abs().max() < 1e-4
    audio = pipeline("text-to-speech", model=str(tmp_path / "merged"))("Hello.", generate_kwargs={"seed": 0})
    assert audio["audio"].size > 0 and np.isfinite(audio["audio"]).all()
