"""A saved MoLE-Llama loads with `trust_remote_code=True` in an interpreter where mole_llama cannot be imported."""

import json
import re
import subprocess
import sys
import textwrap

import torch

from mole_llama import MoLELlamaForCausalLM

BLOCK_MOLE_LLAMA = textwrap.dedent(
    """
    import sys

    class BlockMoleLlama:
        def find_spec(self, name, path=None, target=None):
            if name == "mole_llama" or name.startswith("mole_llama."):
                raise ImportError("mole_llama is blocked in this interpreter")

    sys.meta_path.insert(0, BlockMoleLlama())
    try:
        import mole_llama
        raise SystemExit("mole_llama must not be importable here")
    except ImportError:
        pass
    """
)


def run_without_package(code: str) -> subprocess.CompletedProcess:
    script = BLOCK_MOLE_LLAMA + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)


def test_remote_code_gives_the_same_logits_and_generation(tiny_mole_dir, tmp_path):
    ids = torch.randint(3, 100, (1, 7), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    result = run_without_package(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        folder = {str(tiny_mole_dir)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        backbone = AutoModel.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        with torch.no_grad():
            logits = model(ids).logits
            generated = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
        torch.save({{"logits": logits, "generated": generated, "config": type(config).__name__,
                     "backbone": type(backbone).__name__}}, {str(tmp_path / "out.pt")!r})
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert (remote["config"], remote["backbone"]) == ("MoLELlamaConfig", "MoLELlamaModel")

    local = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).eval()
    with torch.no_grad():
        assert (local(ids).logits - remote["logits"]).abs().max() < 1e-5
        generated = local.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(generated, remote["generated"])


def test_saved_folder_names_every_entry_point(tiny_mole_dir):
    config = json.loads((tiny_mole_dir / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    for entry in config["auto_map"].values():
        module = entry.split(".")[0]
        source = (tiny_mole_dir / f"{module}.py").read_text()
        assert not re.search(r"^\s*(import mole_llama|from mole_llama|from \.\.)", source, re.MULTILINE), module
    assert not list(tiny_mole_dir.glob("*.bin")), "weights must be safetensors only"


def test_hard_routing_sequence_context_and_the_merged_cache_survive_remote_code_loading(tiny_mole_dir, tmp_path):
    folder = tmp_path / "hard"
    routing = dict(hard_routing=True, merged_expert_cache=True, router_context="sequence",
                   router_context_prior={"text": 1.0, "speech": -1.0}, router_context_prior_tokens=2.0)  # fmt: skip
    MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, **routing).save_pretrained(folder)
    ids = torch.randint(3, 100, (1, 7), generator=torch.Generator().manual_seed(1))
    torch.save(ids, tmp_path / "ids.pt")
    result = run_without_package(
        f"""
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert model.config.hard_routing and model.config.merged_expert_cache
        assert model.config.router_context == "sequence" and model.config.router_context_prior_tokens == 2.0
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        torch.save(generated, {str(tmp_path / "out.pt")!r})
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    local = MoLELlamaForCausalLM.from_pretrained(folder).eval()
    assert local.config.hard_routing and local.config.merged_expert_cache and local.config.router_context == "sequence"
    with torch.no_grad():
        assert torch.equal(local.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0),
                           torch.load(tmp_path / "out.pt"))  # fmt: skip
