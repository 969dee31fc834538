"""Collapsed units with durations: dedup/expand, the duration predictor (learning on real speech, save/load, remote
code), the speaking model timing collapsed units, and the speech-vocabulary loss of the speech expert."""

import random
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import Dataset
from test_remote_code import BLOCK_MOLE_LLAMA
from transformers.utils import logging as hf_logging

from mole_llama.data.audio import resample
from mole_llama.embedded.festival import fortune_sentences, is_held_out, synthesize
from mole_llama.modeling.configuration_duration_predictor import DurationPredictorConfig
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.modeling_duration_predictor import DurationPredictorModel
from mole_llama.modeling.modeling_semantic_units import SemanticUnitsModel
from mole_llama.modeling.phone_units import TranscriptAlignmentError
from mole_llama.modeling.speech_units import deduplicate_units, expand_units
from mole_llama.training.duration import DurationDataCollator, default_duration_arguments, train_duration_predictor
from mole_llama.training.experts import speech_vocabulary_loss
from mole_llama.training.sft_data import tts_examples

RATE = 16000
# The median error of a held-out sentence's predicted total length (flite awb + slt, 48 training / 12 held-out clips,
# 150 steps). The predictor trained on the full corpus (4,601 rows) measured 10.6% on 270 held-out readings
# (2026-12-01); this small run's own figure was not recorded, so the bound is loose.
MAX_TOTAL_LENGTH_ERROR = 0.3


def test_deduplicate_and_expand_round_trip():
    rng = random.Random(0)
    for _ in range(50):
        frames = [rng.choice([0, 1, 2]) for _ in range(rng.randint(1, 40))]
        units, durations = deduplicate_units(frames)
        assert all(a != b for a, b in zip(units, units[1:])) and sum(durations) == len(frames)
        assert expand_units(units, durations) == frames
    assert deduplicate_units([]) == ([], [])
    with pytest.raises(ValueError, match="one duration per unit"):
        expand_units([1, 2], [3])
    with pytest.raises(ValueError, match=">= 1 frame"):
        expand_units([1, 2], [3, 0])


@pytest.mark.parametrize("temperature, right_context", [(0.0, None), (1.0, None), (0.0, 1), (1.0, 0)])
def test_timing_units_as_they_arrive_equals_timing_them_at_once(temperature, right_context):
    from mole_llama.modeling.speech_stream import DurationStream

    torch.manual_seed(0)
    config = DurationPredictorConfig(num_units=12, hidden_size=16, num_layers=2, right_context=right_context)
    model = DurationPredictorModel(config).eval()
    units = torch.randint(0, 12, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    whole = model.predict(units, temperature, generator=torch.Generator().manual_seed(3))
    stream = DurationStream(model, temperature, 1.0, torch.Generator().manual_seed(3))
    frames = []
    for start in range(0, len(units), 3):
        frames += stream.push(units[start : start + 3])
    early = len(frames)
    frames += stream.finish()
    assert frames == expand_units(units, whole)
    if model.lookahead:
        assert 0 < early < len(frames)  # timed before the last unit, but not the last lookahead units
    else:
        assert early == len(frames)  # a predictor that reads no later unit times each unit as it arrives
    if temperature == 0:  # a window times only its middle units, as the whole sequence does
        assert model.predict(units, start=4, end=9) == whole[4:9]


@pytest.mark.parametrize("right_context", [None, 0, 1, 4])
def test_a_units_duration_hears_exactly_its_context(right_context):
    """Changing one unit changes the durations of the units within the convolutions' reach of it, and no others:
    `lookahead` later and `lookbehind` earlier units (a centred kernel by default)."""
    torch.manual_seed(0)
    config = DurationPredictorConfig(num_units=12, hidden_size=16, num_layers=2, right_context=right_context)
    model = DurationPredictorModel(config).eval()
    assert (model.lookahead, model.lookbehind) == {None: (4, 4), 0: (0, 8), 1: (2, 6), 4: (8, 0)}[right_context]
    units = torch.randint(0, 12, (1, 30), generator=torch.Generator().manual_seed(1))
    changed = units.clone()
    changed[0, 15] = (units[0, 15] + 1) % 12
    with torch.no_grad():
        moved = (model(units).log_duration_mean != model(changed).log_duration_mean)[0].nonzero()[:, 0]
    assert moved.tolist() == list(range(15 - model.lookahead, 16 + model.lookbehind))


def test_a_right_context_outside_the_kernel_is_refused():
    with pytest.raises(ValueError, match=r"right_context=5 must lie in \[0, kernel_size - 1 = 4\]"):
        DurationPredictorConfig(kernel_size=5, right_context=5)


def test_tts_examples_can_speak_collapsed_units():
    rows = Dataset.from_list([{"text": "Hi there.", "semantic_units": [3, 3, 3, 5, 5, 3]}])
    full = tts_examples(rows)[0]["completion"][0]["content"]
    short = tts_examples(rows, deduplicate=True)[0]["completion"][0]["content"]
    assert full.count("<|speech_3|>") == 4 and short.count("<|speech_3|>") == 2 and short.count("<|speech_5|>") == 1


@pytest.fixture(scope="module")
def aligned_speech():
    """Frame-level aligned phones of real flite speech (two voices), split into training and held-out rows."""
    tokenizer = SemanticUnitsModel(SemanticUnitsConfig(backend="phones"))
    sentences = [s for s in fortune_sentences() if not is_held_out(s)][:72]
    rows = []
    for index, text in enumerate(sentences):
        voice = ("flite_awb", "flite_slt")[index % 2]
        try:
            units = tokenizer.encode(resample(*synthesize(text, voice), RATE), text)[0].tolist()
        except TranscriptAlignmentError:
            continue
        rows.append({"text": text, "semantic_units": units})
    return rows[:48], rows[48:60]


def total_length_errors(model, rows) -> list:
    errors = []
    for row in rows:
        units, durations = deduplicate_units(row["semantic_units"])
        errors.append(abs(sum(model.predict(units)) - sum(durations)) / sum(durations))
    return errors


def test_duration_predictor_learns_real_durations(aligned_speech, tmp_path):
    hf_logging.set_verbosity_error()
    train, held_out = aligned_speech
    torch.manual_seed(0)
    model = DurationPredictorModel(DurationPredictorConfig(num_units=40, hidden_size=64, num_layers=2))
    untrained = sorted(total_length_errors(model.eval(), held_out))
    args = default_duration_arguments(
        str(tmp_path), max_steps=150, per_device_train_batch_size=16, logging_steps=10, save_strategy="no",
        disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = train_duration_predictor(model, Dataset.from_list(train), args)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.5
    errors = sorted(total_length_errors(model.eval(), held_out))
    assert errors[len(errors) // 2] < MAX_TOTAL_LENGTH_ERROR < untrained[len(untrained) // 2]
    # Faster speech is shorter; sampled durations vary around the median ones.
    units = deduplicate_units(held_out[0]["semantic_units"])[0]
    assert sum(model.predict(units, speed=2.0)) < 0.6 * sum(model.predict(units))
    generator = torch.Generator().manual_seed(0)
    assert model.predict(units, temperature=1.0, generator=generator) != model.predict(units)
    assert model.predict(units) == model.predict(units)


def test_saved_predictor_loads_with_the_package_and_as_remote_code(tmp_path):
    torch.manual_seed(1)
    model = DurationPredictorModel(DurationPredictorConfig(num_units=8, hidden_size=16, num_layers=1)).eval()
    units = [1, 5, 2, 7, 0]
    expected = model(torch.tensor([units])).log_duration_mean
    model.save_pretrained(tmp_path / "durations")
    loaded = DurationPredictorModel.from_pretrained(tmp_path / "durations")
    assert torch.equal(loaded(torch.tensor([units])).log_duration_mean, expected)
    script = BLOCK_MOLE_LLAMA + textwrap.dedent(
        f"""
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "durations")!r}, trust_remote_code=True)
        print(model.predict({units}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(model.predict(units))


def test_padding_does_not_change_predictions():
    torch.manual_seed(2)
    model = DurationPredictorModel(DurationPredictorConfig(num_units=8, hidden_size=16, num_layers=2)).eval()
    batch = DurationDataCollator()([{"semantic_units": [1, 1, 2, 3, 3, 3]}, {"semantic_units": [4, 5]}])
    assert batch["units"].tolist() == [[1, 2, 3], [4, 5, 0]] and batch["durations"][0].tolist() == [2, 1, 3]
    padded = model(batch["units"], batch["units_mask"]).log_duration_mean
    alone = model(torch.tensor([[4, 5]])).log_duration_mean
    torch.testing.assert_close(padded[1, :2], alone[0])


def test_bad_input_is_a_clear_error():
    model = DurationPredictorModel(DurationPredictorConfig(num_units=8, hidden_size=16, num_layers=1))
    with pytest.raises(ValueError, match="positive factor"):
        model.predict([1, 2], speed=0)
    with pytest.raises(ValueError, match="temperature"):
        model.predict([1, 2], temperature=-1)
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        model.predict([1, 9])
    with pytest.raises(ValueError, match="at least one unit"):
        model.predict([])
    with pytest.raises(ValueError, match="odd"):
        DurationPredictorConfig(kernel_size=4)
    with pytest.raises(ValueError, match="knows 8 units"):
        train_duration_predictor(
            model, Dataset.from_list([{"semantic_units": [9, 9]}]), default_duration_arguments("x")
        )


def test_speech_vocabulary_loss_is_the_full_loss_restricted_to_the_speech_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 30, generator=generator)
    vocabulary = torch.tensor([20, 21, 22, 23])
    labels = torch.tensor([[-100, 21, 23, 20, 5], [22, 22, -100, 7, 20]])  # 5 and 7: text tokens, not trained
    loss = speech_vocabulary_loss(logits, labels, vocabulary)
    picked = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 4)]
    expected = torch.stack([
        -torch.log_softmax(logits[row, position, vocabulary], -1)[(vocabulary == labels[row, position]).nonzero()[0, 0]]
        for row, position in picked
    ]).mean()  # fmt: skip
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="no speech-unit targets"):
        speech_vocabulary_loss(logits, torch.full((2, 5), -100), vocabulary)
