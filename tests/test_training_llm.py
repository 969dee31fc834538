"""LLM-side training on a tiny random Llama with SmolLM2's real tokenizer and chat template: the speech (TTS)
expert and the text expert through TRL's SFTTrainer + PEFT, resume, and router-only training of the MoLE-Llama."""

import json
import math
import random

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
from transformers.utils import logging as hf_logging
from trl import SFTConfig

from conftest import save_tiny_llama_with_smollm2_tokenizer
from mole_llama.chat import unit_error_rate
from mole_llama.conversion.peft_experts import build_mole_from_adapters
from mole_llama.modeling.configuration_mole_llama import ExpertSpec
from mole_llama.modeling.speech_units import SPEECH_END, SPEECH_START, SpeechTokenIds, add_speech_tokens, unit_token
from mole_llama.routing import DEFAULT_EXPERT_FOR_TASK
from mole_llama.training.experts import load_base_for_expert, train_expert
from mole_llama.training.learning_curve import UnitErrorRateCallback
from mole_llama.training.router import routing_shares, task_routing_loss, tokenize_probe, train_router
from mole_llama.training.sft_data import mixed_examples, speech_completion, text_examples, tts_examples

UNITS = 12
LORA = ExpertSpec(name="speech", r=4, lora_alpha=8, lora_dropout=0.0)


@pytest.fixture(scope="module", autouse=True)
def quiet(one_torch_thread):
    hf_logging.set_verbosity_error()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama_with_smollm2_tokenizer(tmp_path_factory.mktemp("base"), max_position_embeddings=256)


def speech_rows(count=48, seed=0, most_words=4):
    """Prepared-dataset rows of 2 to `most_words` words where the units follow from the words (a learnable
    mapping)."""
    rng = random.Random(seed)
    words = ["red", "green", "blue", "cat", "dog", "sun"]
    rows = []
    for _ in range(count):
        chosen = [rng.randrange(len(words)) for _ in range(rng.randint(2, most_words))]
        units = [unit for index in chosen for unit in (2 * index, 2 * index + 1)]
        rows.append({"text": " ".join(words[i] for i in chosen), "semantic_units": units, "seconds": 1.0})
    return Dataset.from_list(rows)


def qa_rows(count=48, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = {"role": "user", "content": f"What is {a} plus {b}?"}
        rows.append({"messages": [question, {"role": "assistant", "content": str(a + b)}]})
    return Dataset.from_list(rows)


def sft_args(output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir), max_steps=24, per_device_train_batch_size=8, learning_rate=5e-2, logging_steps=4,
        save_strategy="no", report_to=[], gradient_checkpointing=False, use_cpu=True, bf16=False, disable_tqdm=True,
        seed=0, max_length=128,
    )  # fmt: skip
    settings.update(overrides)
    return SFTConfig(**settings)


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(scope="module")
def speech_expert(base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tts_expert")
    trainer = train_expert(base_dir, tts_examples(speech_rows()), sft_args(out), LORA, num_speech_units=UNITS)
    return out, trainer


@pytest.fixture(scope="module")
def text_expert(base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("text_expert")
    trainer = train_expert(base_dir, text_examples(qa_rows()), sft_args(out), LORA)
    return out, trainer


def test_examples_follow_the_inference_prompt():
    example = tts_examples(speech_rows(1))[0]
    assert [turn["role"] for turn in example["prompt"]] == ["system", "user"] and example["task"] == "tts"
    assert example["completion"][0]["content"] == speech_completion(speech_rows(1)[0]["semantic_units"])
    first_unit = speech_rows(1)[0]["semantic_units"][0]
    assert example["completion"][0]["content"].startswith(SPEECH_START + unit_token(first_unit))
    assert example["completion"][0]["content"].endswith(SPEECH_END)
    qa = text_examples(qa_rows(1))[0]
    assert [turn["role"] for turn in qa["prompt"]] == ["user"] and qa["completion"][0]["role"] == "assistant"
    with pytest.raises(ValueError, match="semantic_units"):
        tts_examples(Dataset.from_list([{"text": "hi"}]))
    with pytest.raises(ValueError, match="end with the assistant"):
        text_examples(Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(ValueError, match="no semantic units"):
        speech_completion([])


def test_speech_expert_learns_units_and_saves_a_small_adapter(speech_expert, base_dir):
    out, trainer = speech_expert
    history = losses(trainer)
    assert history[-1] < 0.75 * history[0], history
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == LORA.r and sorted(config["target_modules"]) == sorted(LORA.target_modules)
    tokenizer = AutoTokenizer.from_pretrained(out)
    speech = SpeechTokenIds.from_tokenizer(tokenizer, UNITS)
    unit_rows = range(speech.first_unit, speech.first_unit + UNITS)
    assert config["trainable_token_indices"] == [speech.start, speech.end, *unit_rows]
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        shapes = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    assert not any("base_layer" in name for name in shapes), "the whole embedding table was saved"
    assert all(shape[0] == UNITS + 2 for name, shape in shapes.items() if "trainable_tokens" in name)
    # the loss is on the answer only: the prompt's tokens are not targets
    batch = trainer.data_collator([trainer.train_dataset[0]])
    targets = batch["input_ids"][0][batch["labels"][0] != -100]
    assert int(targets[0]) == speech.start and tokenizer.decode(targets).count("user") == 0


def test_speech_expert_with_the_fast_settings_learns_and_logs_its_learning_curve(base_dir, tmp_path):
    """Collapsed units, the speech-vocabulary loss, rows started from unit names, and the unit error rate logged."""
    rows = speech_rows()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    add_speech_tokens(tokenizer, UNITS)
    curve = UnitErrorRateCallback(tokenizer, rows["text"][:4], rows["semantic_units"][:4], UNITS, every_steps=12)
    names = [f"u{unit}" for unit in range(UNITS)]
    trainer = train_expert(
        base_dir, tts_examples(rows, deduplicate=True), sft_args(tmp_path), LORA, num_speech_units=UNITS,
        unit_names=names, speech_vocabulary_loss=True, callbacks=[curve],
    )  # fmt: skip
    history = losses(trainer)
    assert history[0] < 1.1 * math.log(UNITS + 1)  # a softmax over the units and the end marker only
    assert history[-1] < 0.75 * history[0], history
    logged = [entry for entry in trainer.state.log_history if "unit_error_rate" in entry]
    assert [entry["step"] for entry in logged] == [12, 24] and all(0 <= e["unit_error_rate"] <= 1.5 for e in logged)
    assert logged[-1]["cpu_minutes"] > logged[0]["cpu_minutes"] > 0


def test_training_continues_from_a_saved_adapter(speech_expert, base_dir, tmp_path):
    """A later session starts from the shipped adapter's weights (float16 there): with a zero learning rate the
    saved result is that adapter, to float16 precision."""
    from safetensors.torch import load_file, save_file

    earlier, _ = speech_expert
    half = tmp_path / "half"
    half.mkdir()
    (half / "adapter_config.json").write_text((earlier / "adapter_config.json").read_text())
    weights = load_file(earlier / "adapter_model.safetensors")
    save_file({key: value.half() for key, value in weights.items()}, half / "adapter_model.safetensors")
    args = sft_args(tmp_path / "again", max_steps=1, learning_rate=0.0)
    train_expert(base_dir, tts_examples(speech_rows(8)), args, LORA, num_speech_units=UNITS, init_adapter=half)
    again = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert again.keys() == weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(again[key], value.half().float(), rtol=0, atol=0)
    wider = ExpertSpec(name="speech", r=8, lora_alpha=16, lora_dropout=0.0)
    with pytest.raises(ValueError, match="does not fit"):
        train_expert(base_dir, tts_examples(speech_rows(8)), args, wider, num_speech_units=UNITS, init_adapter=half)


def test_unit_rows_start_from_the_tokens_that_spell_their_names(base_dir):
    model, tokenizer, rows = load_base_for_expert(base_dir, UNITS, unit_names=[f"AH{u}" for u in range(UNITS)])
    speech = SpeechTokenIds.from_tokenizer(tokenizer, UNITS)
    table = model.get_input_embeddings().weight
    spelled = tokenizer(" AH3", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(table[speech.first_unit + 3], table[spelled].mean(dim=0))
    with pytest.raises(ValueError, match="one name per unit"):
        load_base_for_expert(base_dir, UNITS, unit_names=["AH"])


def test_units_decoding_and_their_error_rate():
    assert unit_error_rate([[1, 1, 2, 3]], [[1, 2, 2, 3]]) == 0.0  # collapsed: the same units
    assert unit_error_rate([[1, 2, 3]], [[1, 3]]) == pytest.approx(1 / 3)
    assert unit_error_rate([[1, 2]], [[]]) == 1.0
    with pytest.raises(ValueError, match="as many hypotheses"):
        unit_error_rate([[1]], [])


def test_text_expert_learns(text_expert):
    out, trainer = text_expert
    history = losses(trainer)
    # a frozen 16-wide random head over 49k tokens caps how far LoRA alone can move the loss: it must fall steadily
    assert all(later < earlier for earlier, later in zip(history, history[1:])), history
    assert json.loads((out / "adapter_config.json").read_text())["trainable_token_indices"] is None


class StopAtStep(TrainerCallback):
    """Interrupts training after a given step (its checkpoint is written first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resumed_expert_training_ends_with_the_same_weights(base_dir, tmp_path):
    data = tts_examples(speech_rows())
    whole = train_expert(base_dir, data, sft_args(tmp_path / "whole", max_steps=8), LORA, num_speech_units=UNITS)
    args = dict(max_steps=8, save_strategy="steps", save_steps=4)
    train_expert(base_dir, data, sft_args(tmp_path / "stopped", **args), LORA, num_speech_units=UNITS,
                 callbacks=[StopAtStep(4)])  # fmt: skip
    resumed = train_expert(
        base_dir, data, sft_args(tmp_path / "stopped", **args), LORA, num_speech_units=UNITS,
        resume_from_checkpoint=str(tmp_path / "stopped" / "checkpoint-4"),
    )  # fmt: skip
    reference = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    for name, parameter in resumed.model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_router_training_changes_only_the_routers_and_routes_by_task(base_dir, speech_expert, text_expert, tmp_path):
    model = build_mole_from_adapters(
        base_dir, {"text": text_expert[0], "speech": speech_expert[0]}, router_hidden_size=16
    )
    tokenizer = AutoTokenizer.from_pretrained(speech_expert[0])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    router_names = {name for name, _ in model.named_parameters() if ".router." in name}
    data = mixed_examples(tts_examples(speech_rows(48, seed=1)), text_examples(qa_rows(48, seed=1)))
    trainer = train_router(model, tokenizer, data, sft_args(tmp_path, max_steps=30, learning_rate=5e-2))
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= router_names, sorted(changed - router_names)[:5]
    history = losses(trainer)
    assert history[-1] < history[0], history
    logged = [entry for entry in trainer.state.log_history if "routing/tts->speech" in entry]
    assert logged and set(logged[-1]) >= {"routing/tts->speech", "routing/text->text", "routing/text->speech"}
    probe = tokenize_probe(tokenizer, [row for row in data][:16])
    shares = routing_shares(model, probe)
    # the router tells the tasks apart (how well is measured on the real model, see evaluation)
    assert shares["routing/tts->speech"] > shares["routing/text->speech"] + 0.1, shares
    assert (tmp_path / "config.json").is_file() and (tmp_path / "tokenizer.json").is_file()


def test_task_routing_loss_is_the_cross_entropy_against_each_examples_expert():
    # two layers, two examples of three tokens; example 0 holds the speech marker (id 7) in its answer; the last
    # token of example 0 is padding
    labels = torch.tensor([[-100, 7, -100], [-100, -100, 4]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    weights = [torch.tensor([[[0.5, 0.5], [0.2, 0.8], [0.1, 0.9]], [[0.5, 0.5], [0.3, 0.7], [0.6, 0.4]]])] * 2
    loss = task_routing_loss(weights, labels, mask, speech_marker_id=7, expert_index={"text": 0, "tts": 1})
    # every attended token, prompt too, against its example's expert; the same in both layers
    expected = -(math.log(0.5) + math.log(0.8) + math.log(0.5) + math.log(0.3) + math.log(0.6)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@torch.no_grad()
def held_out_routing_loss(model, tokenizer, probe) -> float:
    """`task_routing_loss` of the model's soft routing over every token of each probe example, one at a time."""
    marker = tokenizer.convert_tokens_to_ids(SPEECH_START)
    index = {task: model.config.expert_names.index(expert) for task, expert in DEFAULT_EXPERT_FOR_TASK.items()}
    losses = []
    for _, ids, prompt_length in probe:
        input_ids = torch.tensor([ids])
        labels = input_ids.clone()
        labels[:, :prompt_length] = -100
        weights = model.eval()(input_ids, output_expert_weights=True).expert_weights
        losses.append(float(task_routing_loss(weights, labels, torch.ones_like(input_ids), marker, index)))
    return sum(losses) / len(losses)


def test_routing_loss_sends_each_task_to_its_expert_more_sharply(base_dir, speech_expert, text_expert, tmp_path):
    """The same short router training with and without the task routing loss: with it, the routing loss falls
    while it trains, and on held-out examples each task's tokens weigh their own expert more."""
    tokenizer = AutoTokenizer.from_pretrained(speech_expert[0])
    data = mixed_examples(tts_examples(speech_rows(32, seed=2)), text_examples(qa_rows(32, seed=2)))
    held_out = mixed_examples(tts_examples(speech_rows(8, seed=3)), text_examples(qa_rows(8, seed=3)))
    probe = tokenize_probe(tokenizer, [row for row in held_out])
    held_out_loss = {}
    for weight in (0.0, 10.0):  # the tiny random model's LM loss is ~10: the routing loss must weigh in
        model = build_mole_from_adapters(
            base_dir, {"text": text_expert[0], "speech": speech_expert[0]}, router_hidden_size=16
        )
        trainer = train_router(
            model, tokenizer, data, sft_args(tmp_path / str(weight), max_steps=12, learning_rate=5e-2),
            routing_loss_weight=weight,
        )  # fmt: skip
        held_out_loss[weight] = held_out_routing_loss(model, tokenizer, probe)
        logged = [entry["routing_loss"] for entry in trainer.state.log_history if "routing_loss" in entry]
        assert bool(logged) == bool(weight), logged
    assert held_out_loss[10.0] < 0.8 * held_out_loss[0.0], held_out_loss
    assert logged[-1] < logged[0], logged


def test_router_training_refuses_what_it_cannot_train(base_dir, speech_expert, tmp_path):
    single = build_mole_from_adapters(base_dir, {"speech": speech_expert[0]})
    tokenizer = AutoTokenizer.from_pretrained(speech_expert[0])
    data = mixed_examples(tts_examples(speech_rows(4)), text_examples(qa_rows(4)))
    with pytest.raises(ValueError, match="at least two"):
        train_router(single, tokenizer, data, sft_args(tmp_path))
    with pytest.raises(ValueError, match="router training needs a MoLE-Llama"):
        train_router(LlamaForCausalLM.from_pretrained(base_dir), tokenizer, data, sft_args(tmp_path))


def test_greedy_units_of_a_collapsed_speaker_are_cut_at_each_texts_cap(base_dir):
    """The learning curve decodes as a speaking model does: each text's units cut at its own cap, the rest the
    same greedy units (an untrained model rarely ends on its own)."""
    from mole_llama.chat import greedy_speech_units
    from mole_llama.modeling.speech_units import collapsed_units_cap

    model, tokenizer, _ = load_base_for_expert(base_dir, UNITS)
    texts = ["red cat", "the green dog saw the blue sun and the red cat"]
    free = greedy_speech_units(model, tokenizer, texts, UNITS, max_new_tokens=100)
    capped = greedy_speech_units(model, tokenizer, texts, UNITS, max_new_tokens=100, collapsed=True)
    caps = [collapsed_units_cap(text) for text in texts]
    assert caps[0] < caps[1] < 100 and len(free[0]) > caps[0], (caps, [len(units) for units in free])
    assert capped == [units[:cap] for units, cap in zip(free, caps)]


def test_the_embedded_recipe_batches_speech_examples_of_like_length(base_dir, tmp_path):
    """The embedded recipe's speech expert trains on length-grouped batches (every example once an epoch, as the
    random order has them), which pad far less than random batches: less computation spent on padding."""
    from mole_llama.training.experts import TokenRowsSFTTrainer, expert_lora_config
    from mole_llama.training.recipes import load_recipe, sft_config

    examples = tts_examples(speech_rows(96, most_words=16), deduplicate=True)
    grouped = sft_config(load_recipe("embedded"), "tts_expert", tmp_path)
    shuffled = sft_config(load_recipe("embedded", ["tts_expert.training.train_sampling_strategy=random"]), "tts_expert",
                          tmp_path)  # fmt: skip

    def epoch(args):
        model, tokenizer, new_rows = load_base_for_expert(base_dir, UNITS)
        trainer = TokenRowsSFTTrainer(
            model=model, args=args, train_dataset=examples, processing_class=tokenizer,
            peft_config=expert_lora_config(LORA, new_rows), speech_vocabulary=new_rows[1:],
        )  # fmt: skip
        batches = list(trainer.get_train_dataloader())
        sequences = sorted(
            tuple(ids[mask.bool()].tolist()) for batch in batches
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
        )  # fmt: skip
        real = sum(int(batch["attention_mask"].sum()) for batch in batches)
        return 1 - real / sum(batch["attention_mask"].numel() for batch in batches), sequences

    (grouped_padding, grouped_sequences), (random_padding, random_sequences) = epoch(grouped), epoch(shuffled)
    assert len(grouped_sequences) == len(examples) and grouped_sequences == random_sequences
    assert grouped_padding < 0.5 * random_padding, (grouped_padding, random_padding)
