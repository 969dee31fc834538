"""Text retention (batched greedy answers, token KL to the base, agreement, accuracy) and router accuracy, on a tiny
random Llama / MoLE-Llama with SmolLM2's real tokenizer and chat template (plus speech tokens)."""

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from conftest import save_tiny_llama_with_smollm2_tokenizer
from mole_llama import MoLELlamaForCausalLM
from mole_llama.chat import chat_prompts, greedy_answers, greedy_chat_reply, speech_token_ids
from mole_llama.conversion.peft_experts import mole_config_from_base
from mole_llama.evaluation.retention import accuracy, agreement, teacher_forced_divergence
from mole_llama.evaluation.routing import router_accuracy
from mole_llama.modeling.speech_units import add_speech_tokens, tts_messages
from mole_llama.routing import expert_weight_trace
from mole_llama.training.sft_data import speech_completion

UNITS = 8
QUESTIONS = ["Hi", "What is 2 plus 3?", "Name a colour of the sky on a clear summer day, please.", "Why?", "Count"]


@pytest.fixture(scope="module", autouse=True)
def quiet():
    hf_logging.set_verbosity_error()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama_with_smollm2_tokenizer(tmp_path_factory.mktemp("smol_base"))


@pytest.fixture(scope="module")
def base(base_dir):
    return LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    """SmolLM2's tokenizer with speech tokens, as a speaking model's."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    add_speech_tokens(tokenizer, UNITS)
    return tokenizer


def make_mole(base_dir, tokenizer, seed=0) -> MoLELlamaForCausalLM:
    """The base's weights in a MoLE-Llama with speech tokens, random (non-zero) experts and routers, and speech
    token rows large enough that greedy decoding would pick them if they were not suppressed."""
    base_config = LlamaForCausalLM.config_class.from_pretrained(base_dir)
    config = mole_config_from_base(base_config, ["text", "speech"], lora_r=4, router_hidden_size=8)
    model = MoLELlamaForCausalLM.from_pretrained(base_dir, config=config, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name or ".router.proj_out" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        rows = speech_token_ids(tokenizer)
        model.get_output_embeddings().weight[rows] = 5.0 * torch.randn(len(rows), config.hidden_size)
    return model.eval()


@pytest.fixture(scope="module")
def mole(base_dir, tokenizer):
    return make_mole(base_dir, tokenizer)


def test_chat_prompts_are_the_chat_template_with_the_generation_prompt(tokenizer):
    ids = chat_prompts(tokenizer, ["Hi"])[0]
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="one string"):
        chat_prompts(tokenizer, "Hi")
    with pytest.raises(ValueError, match="at least one"):
        chat_prompts(tokenizer, [])


def test_batched_greedy_answers_equal_one_at_a_time(mole, tokenizer):
    padding_side = tokenizer.padding_side
    answers = greedy_answers(mole, tokenizer, QUESTIONS, max_new_tokens=8, batch_size=2, progress=False)
    assert tokenizer.padding_side == padding_side
    expected = []
    for question in QUESTIONS:
        reply = greedy_chat_reply(mole, tokenizer, question, max_new_tokens=8)
        assert not set(reply.tolist()) & set(speech_token_ids(tokenizer))
        expected.append(tokenizer.decode(reply, skip_special_tokens=True).strip())
    assert answers == expected
    assert any(answers)  # a random model still says something


def mean_token_kl(*args, **kwargs) -> float:
    return teacher_forced_divergence(*args, **kwargs)["kl"]


def test_token_kl_is_zero_for_the_same_model_and_grows_with_changes(mole, base, tokenizer):
    # (the random base only answers newlines, which strip to nothing: score fixed answers instead)
    answers = ["Hello, how can I help?", "5", "Blue."]
    same = teacher_forced_divergence(base, base, tokenizer, QUESTIONS[:3], answers, batch_size=2)
    assert abs(same["kl"]) < 1e-6 and same["token_agreement"] == 1.0

    # The MoLE with its experts off is the base (its extra speech logits are left out of the comparison) ...
    mole.set_routing("base")
    try:
        assert abs(mean_token_kl(mole, base, tokenizer, QUESTIONS[:3], answers)) < 1e-5
    finally:
        mole.set_routing(None)
    # ... and with its (random) experts on it is not; token ids are accepted for the answers too.
    answer_ids = [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in answers]
    drift = mean_token_kl(mole, base, tokenizer, QUESTIONS[:3], answer_ids)
    assert drift > 1e-3
    assert drift == pytest.approx(mean_token_kl(mole, base, tokenizer, QUESTIONS[:3], answers, batch_size=1))

    perturbed = copy.deepcopy(base)
    with torch.no_grad():
        perturbed.model.layers[0].mlp.down_proj.weight.add_(
            0.5 * torch.randn_like(perturbed.model.layers[0].mlp.down_proj.weight)
        )
    drifted = teacher_forced_divergence(perturbed, base, tokenizer, QUESTIONS[:3], answers)
    assert drifted["kl"] > 1e-4
    assert 0.0 <= drifted["token_agreement"] < 1.0  # a large perturbation changes some greedy choices

    with pytest.raises(ValueError, match="one answer per question"):
        mean_token_kl(base, base, tokenizer, QUESTIONS[:3], answers[:2])
    with pytest.raises(ValueError, match="outside the reference's vocabulary"):
        mean_token_kl(base, base, tokenizer, ["Hi"], [[speech_token_ids(tokenizer)[0]]])
    with pytest.raises(ValueError, match="no tokens"):
        mean_token_kl(base, base, tokenizer, ["Hi"], [""])
    with pytest.raises(ValueError, match="fewer than the reference's"):
        mean_token_kl(base, mole, tokenizer, ["Hi"], ["Hello"])


def test_agreement_and_accuracy():
    assert agreement(["The  answer\nis 5", "no"], ["The answer is 5", "yes"]) == 0.5
    answers = ["The answer is 12.", "120", "0.12", "12,000", "x12", "It is 12, I think", "PARIS!", "paris"]
    expected = ["12", "12", "12", "12", "12", "12", "Paris", "Paris"]
    assert accuracy(answers, expected) == pytest.approx(4 / 8)
    assert accuracy(["the  New York  times"], ["new york"]) == 1.0
    for score in (agreement, accuracy):
        with pytest.raises(ValueError, match="as many"):
            score(["a", "b"], ["a"])
        with pytest.raises(ValueError, match="as many"):
            score([], [])
        with pytest.raises(ValueError, match="not one string"):
            score("ab", "ab")


def examples():
    text = [("What is 2 plus 3?", "5"), ("Say hello.", "Hello there, friend!"), ("Capital of France?", "Paris.")]
    rows = [
        {
            "prompt": [{"role": "user", "content": q}],
            "completion": [{"role": "assistant", "content": a}],
            "task": "text",
        }
        for q, a in text
    ]
    for words, units in (("red cat", [1, 2, 3]), ("a dog on the sun", [4, 5, 6, 7, 0, 1])):
        completion = [{"role": "assistant", "content": speech_completion(units)}]
        rows.append({"prompt": tts_messages(words), "completion": completion, "task": "tts"})
    return rows


def completion_token_counts(tokenizer, rows) -> dict:
    """Completion tokens counted on the rendered strings: the text after the rendered prompt, tokenized alone."""
    counts = {}
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert full.startswith(prompt)
        tokens = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        counts[row["task"]] = counts.get(row["task"], 0) + len(tokens)
    return counts


def test_router_accuracy_counts_completion_tokens_and_restores_the_routing(base_dir, tokenizer):
    model = make_mole(base_dir, tokenizer, seed=1)
    with torch.no_grad():  # every router prefers expert 0 ("text") for every token
        for layer in model.model.layers:
            layer.router.proj_out.weight.zero_()
            layer.router.proj_out.bias.copy_(torch.tensor([10.0, 0.0]))
    model.set_routing("speech")
    model.train()
    rows = examples()
    for data in (rows, Dataset.from_list(rows)):
        result = router_accuracy(model, tokenizer, data, batch_size=2)
        assert result["text"] == 1.0 and result["tts"] == 0.0
        assert result["tokens"] == completion_token_counts(tokenizer, rows)
        assert result["mean_weights"]["tts"]["text"] == pytest.approx(float(torch.tensor([10.0, 0.0]).softmax(0)[0]))
        weights = torch.tensor([10.0, 0.0]).softmax(0)
        entropy = float(-(weights * weights.log()).sum())
        layers = len(model.model.layers)
        assert (
            result["per_layer"]["text"]["share"] == [1.0] * layers
            and result["per_layer"]["tts"]["share"] == [0.0] * layers
        )
        assert result["per_layer"]["tts"]["entropy"] == pytest.approx([entropy] * layers, rel=1e-4)
    assert model.config.routing == "speech" and all(layer.routing == "speech" for layer in model.model.layers)
    assert model.training

    swapped = router_accuracy(model, tokenizer, rows, expert_for_task={"text": "speech", "tts": "text"})
    assert swapped["text"] == 0.0 and swapped["tts"] == 1.0


def test_router_accuracy_matches_one_example_at_a_time(mole, tokenizer):
    rows = examples()
    batched = router_accuracy(mole, tokenizer, rows, batch_size=4)
    single = [router_accuracy(mole, tokenizer, [row], batch_size=1) for row in rows]
    for task in ("text", "tts"):
        parts = [(r[task], r["tokens"][task]) for r in single if task in r]
        expected = sum(share * count for share, count in parts) / sum(count for _, count in parts)
        assert batched[task] == pytest.approx(expected)
        assert 0.0 < batched["mean_weights"][task]["speech"] < 1.0


def test_router_accuracy_refuses_bad_input(mole, base, tokenizer):
    rows = examples()
    with pytest.raises(ValueError, match="has no expected expert"):
        router_accuracy(mole, tokenizer, rows, expert_for_task={"text": "text"})
    with pytest.raises(ValueError, match="lacks"):
        router_accuracy(mole, tokenizer, rows, expert_for_task={"text": "music", "tts": "speech"})
    with pytest.raises(ValueError, match="MoLE-Llama"):
        router_accuracy(base, tokenizer, rows)
    with pytest.raises(ValueError, match="at least one"):
        router_accuracy(mole, tokenizer, [])
    with pytest.raises(ValueError, match="conversational"):
        router_accuracy(mole, tokenizer, [{"prompt": "Hi", "completion": "Hello", "task": "text"}])
    odd = copy.deepcopy(tokenizer)
    odd.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant says: ' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="as a prefix"):
        router_accuracy(mole, odd, rows)


def test_expert_weight_trace(mole, tokenizer):
    text = "Hello there, how are you"
    mole.set_routing("text")
    tokens, weights = expert_weight_trace(mole, tokenizer, text)
    assert mole.config.routing == "text"
    mole.set_routing(None)
    assert "".join(tokens) == text
    assert isinstance(weights, np.ndarray) and weights.shape == (len(tokens), 2) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        expert_weight_trace(mole, tokenizer, "")
