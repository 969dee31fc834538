"""PEFT adapters <-> MoLE-Llama: building, exporting back, extended vocabularies, and refusals."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from conftest import NEW_TOKENS, TINY_LLAMA, make_adapter, tiny_llama
from mole_llama import MoLELlamaConfig, MoLELlamaForCausalLM
from mole_llama.conversion.peft_experts import build_mole_from_adapters, export_expert_adapter
from mole_llama.modeling.configuration_mole_llama import ExpertSpec


def ids_for(vocab, seed=0):
    return torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


def test_built_model_has_extended_vocabulary_and_expert_settings(tiny_mole_dir):
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir)
    assert model.config.vocab_size == TINY_LLAMA["vocab_size"] + NEW_TOKENS
    assert model.config.base_vocab_size == TINY_LLAMA["vocab_size"]
    experts = {e["name"]: e for e in model.config.experts}
    assert (experts["text"]["r"], experts["text"]["lora_alpha"]) == (4, 8)
    assert (experts["speech"]["r"], experts["speech"]["lora_alpha"]) == (8, 4)


@pytest.mark.parametrize("name", ["text", "speech"])
def test_exported_expert_loads_in_peft_with_the_same_logits(tiny_mole_dir, tiny_base_dir, tmp_path, name):
    mole = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).eval()
    export_expert_adapter(mole, name, tmp_path)
    base = LlamaForCausalLM.from_pretrained(tiny_base_dir)
    base.resize_token_embeddings(mole.config.vocab_size, mean_resizing=False)
    peft = PeftModel.from_pretrained(base, tmp_path).eval()
    ids = ids_for(mole.config.vocab_size)
    mole.set_routing(name)
    with torch.no_grad():
        assert (peft(ids).logits - mole(ids).logits).abs().max() < 1e-4


def test_untied_embeddings_carry_both_tables(tmp_path):
    base_dir = tmp_path / "base"
    tiny_llama(tie_word_embeddings=False).save_pretrained(base_dir)
    adapter = make_adapter(base_dir, tmp_path / "speech", new_tokens=NEW_TOKENS, seed=4)
    mole = build_mole_from_adapters(base_dir, {"speech": adapter}).eval()
    mole.set_routing("speech")
    base = LlamaForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(mole.config.vocab_size, mean_resizing=False)
    peft = PeftModel.from_pretrained(base, adapter).eval()
    ids = ids_for(mole.config.vocab_size)
    with torch.no_grad():
        assert (peft(ids).logits - mole(ids).logits).abs().max() < 1e-4
    exported = export_expert_adapter(mole, "speech", tmp_path / "exported")
    assert json.loads((exported / "adapter_config.json").read_text())["trainable_token_indices"].keys() == {
        "embed_tokens",
        "lm_head",
    }


def test_cli_build_mole_writes_a_loadable_folder(tiny_base_dir, text_adapter_dir, speech_adapter_dir, tmp_path):
    out = tmp_path / "mole"
    result = subprocess.run(
        [sys.executable, "-m", "mole_llama.cli", "build-mole", "--base", str(tiny_base_dir),
         "--expert", f"text={text_adapter_dir}", "--expert", f"speech={speech_adapter_dir}", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    model = MoLELlamaForCausalLM.from_pretrained(out)
    assert model.config.expert_names == ["text", "speech"]

    exported = tmp_path / "speech_adapter"
    result = subprocess.run(
        [sys.executable, "-m", "mole_llama.cli", "export-expert", "--model", str(out), "--expert", "speech",
         "--out", str(exported)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (exported / "adapter_model.safetensors").is_file()


def test_cli_reports_bad_expert_argument(tiny_base_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mole_llama.cli", "build-mole", "--base", str(tiny_base_dir),
         "--expert", "speech", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "NAME=ADAPTER_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def copy_adapter(source, target):
    shutil.copytree(source, target)
    return target


def edit_config(adapter_dir, **changes):
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_adapter_from_another_base_is_refused(tiny_base_dir, text_adapter_dir, tmp_path):
    wider = dict(TINY_LLAMA, hidden_size=48, num_attention_heads=4)
    from transformers import LlamaConfig

    other_base = tmp_path / "other_base"
    LlamaForCausalLM(LlamaConfig(**wider)).save_pretrained(other_base)
    with pytest.raises(ValueError, match="different base model"):
        build_mole_from_adapters(other_base, {"text": text_adapter_dir})


def test_rank_mismatch_between_config_and_weights_is_refused(tiny_base_dir, text_adapter_dir, tmp_path):
    adapter = copy_adapter(text_adapter_dir, tmp_path / "adapter")
    edit_config(adapter, r=16)
    with pytest.raises(ValueError, match="rank 4 but adapter_config.json says r=16"):
        build_mole_from_adapters(tiny_base_dir, {"text": adapter})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"use_dora": True}, "use_dora=True is not supported"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
        ({"peft_type": "IA3"}, "must be a LoRA adapter"),
        ({"target_modules": "q_proj|v_proj"}, "needs a list of Llama projections"),
        ({"bias": "all"}, "bias='all'"),
        ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
    ],
)
def test_unsupported_adapter_settings_are_refused(tiny_base_dir, text_adapter_dir, tmp_path, changes, message):
    adapter = copy_adapter(text_adapter_dir, tmp_path / "adapter")
    edit_config(adapter, **changes)
    with pytest.raises(ValueError, match=message):
        build_mole_from_adapters(tiny_base_dir, {"text": adapter})


def test_missing_or_corrupt_adapter_files_are_refused(tiny_base_dir, text_adapter_dir, tmp_path):
    with pytest.raises(ValueError, match="not a PEFT adapter folder"):
        build_mole_from_adapters(tiny_base_dir, {"text": tmp_path / "nowhere"})
    adapter = copy_adapter(text_adapter_dir, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        build_mole_from_adapters(tiny_base_dir, {"text": adapter})
    weights.unlink()
    with pytest.raises(ValueError, match="adapter_model.safetensors are missing"):
        build_mole_from_adapters(tiny_base_dir, {"text": adapter})


def test_incomplete_adapter_is_refused(tiny_base_dir, text_adapter_dir, tmp_path):
    adapter = copy_adapter(text_adapter_dir, tmp_path / "adapter")
    weights = load_file(adapter / "adapter_model.safetensors")
    dropped = next(key for key in weights if "layers.1.mlp.up_proj.lora_B" in key)
    del weights[dropped]
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="lacks 1 LoRA weights"):
        build_mole_from_adapters(tiny_base_dir, {"text": adapter})


def test_two_experts_training_the_same_new_token_differently_are_refused(tiny_base_dir, tmp_path):
    first = make_adapter(tiny_base_dir, tmp_path / "a", new_tokens=NEW_TOKENS, seed=5)
    second = make_adapter(tiny_base_dir, tmp_path / "b", new_tokens=NEW_TOKENS, seed=6)
    with pytest.raises(ValueError, match="train added tokens in one expert only"):
        build_mole_from_adapters(tiny_base_dir, {"text": first, "speech": second})


def test_non_llama_base_is_refused(tmp_path, text_adapter_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=96)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a Llama-architecture base"):
        build_mole_from_adapters(tmp_path, {"text": text_adapter_dir})


def test_base_with_another_layout_is_refused(tiny_base_dir, text_adapter_dir, tmp_path):
    from safetensors.torch import load_file as load_weights

    broken = tmp_path / "base"
    shutil.copytree(tiny_base_dir, broken)
    weights = load_weights(broken / "model.safetensors")
    weights["model.layers.0.self_attn.qkv.weight"] = weights.pop("model.layers.0.self_attn.q_proj.weight")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not load as a Llama checkpoint"):
        build_mole_from_adapters(broken, {"text": text_adapter_dir})


def test_mole_base_is_refused(tiny_mole_dir, text_adapter_dir):
    with pytest.raises(ValueError, match="already a MoLE-Llama"):
        build_mole_from_adapters(tiny_mole_dir, {"text": text_adapter_dir})


def test_merged_speech_expert_gives_the_logits_of_base_plus_adapter(tiny_base_dir, speech_adapter_dir, tmp_path):
    """The merged model has no experts, no router and no LoRA at run time, and the logits of PEFT's base + adapter."""
    from mole_llama.conversion.merge import merge_expert

    mole = build_mole_from_adapters(tiny_base_dir, {"speech": speech_adapter_dir}).eval()
    merged = merge_expert(mole, "speech")
    merged.save_pretrained(tmp_path / "merged")
    merged = MoLELlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.expert_names == [] and merged.config.routing == "base"
    assert not any(".lora_" in key or ".router." in key for key in merged.state_dict())
    base = LlamaForCausalLM.from_pretrained(tiny_base_dir)
    base.resize_token_embeddings(mole.config.vocab_size, mean_resizing=False)
    peft = PeftModel.from_pretrained(base, speech_adapter_dir).eval()
    ids = ids_for(mole.config.vocab_size)
    with torch.no_grad():
        assert (peft(ids).logits - merged(ids).logits).abs().max() < 1e-4
        with peft.disable_adapter():
            assert (peft(ids).logits - merged(ids).logits).abs().max() > 1e-3  # the expert did change something
    with pytest.raises(ValueError, match="merged into its weights"):
        merged.set_routing(None)
    with pytest.raises(ValueError, match="no expert 'text'"):
        merge_expert(mole, "text")


def test_int8_llm_keeps_the_forced_experts_predictions_and_refuses_what_it_cannot_keep(
    tiny_base_dir, text_adapter_dir, speech_adapter_dir, tmp_path
):
    from mole_llama.conversion.int8 import quantize_llm_int8

    mole = build_mole_from_adapters(tiny_base_dir, {"text": text_adapter_dir, "speech": speech_adapter_dir}).eval()
    with pytest.raises(ValueError, match="learned router"):
        quantize_llm_int8(mole)  # two experts per projection: nothing plain to quantize
    mole.set_routing("speech")
    ids = ids_for(mole.config.vocab_size)
    with torch.no_grad():
        reference = mole(ids).logits
        quantize_llm_int8(mole)
        quantized = mole(ids).logits
    assert not any(isinstance(module, torch.nn.Linear) for module in mole.model.modules())  # all int8 now
    assert (quantized - reference).abs().max() < 0.05 * reference.abs().max()  # the speech expert folded in, not lost
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
    allowed = torch.tensor([4, 9, mole.config.vocab_size - 1])
    with torch.no_grad():  # the int8 head's rows, unpacked for a constrained vocabulary, score as the packed head
        sliced = mole(ids, logits_vocabulary=allowed).logits
    assert (sliced[..., allowed] - quantized[..., allowed]).abs().max() < 0.05 * quantized.abs().max()
    assert torch.isneginf(sliced).sum() == sliced[..., 0].numel() * (mole.config.vocab_size - len(allowed))
    with pytest.raises(ValueError, match="cannot be saved"):
        mole.save_pretrained(tmp_path / "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_llm_int8(mole)


def test_one_expert_spec_for_the_config_peft_and_the_recipe():
    spec = ExpertSpec.from_dict({"name": "speech", "r": 8}, r=128, target_modules=["q_proj", "v_proj"])
    assert spec.to_dict() == {"name": "speech", "r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
                              "use_rslora": False, "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    lora = spec.to_lora_config(trainable_token_indices=[5, 6])
    assert (lora.r, lora.lora_alpha, sorted(lora.target_modules), lora.trainable_token_indices) == (
        8, 16.0, ["q_proj", "v_proj"], [5, 6]
    )  # fmt: skip
    assert ExpertSpec.from_peft_config("speech", lora.to_dict()) == spec  # PEFT's adapter_config.json and back
    assert MoLELlamaConfig(experts=[spec.to_dict()]).experts == [spec.to_dict()]
    with pytest.raises(ValueError, match=r"unknown LoRA setting\(s\) \['rank'\]"):
        ExpertSpec.from_dict({"name": "speech", "rank": 8})
    with pytest.raises(ValueError, match=r"unknown LoRA setting"):
        MoLELlamaConfig(experts=[{"name": "text", "alpha": 3}])
