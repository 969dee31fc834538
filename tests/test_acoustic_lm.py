"""Acoustic LM: semantic units (+ voice prompt) -> multi-codebook acoustic codes, on tiny random configs."""

import json
import random
import subprocess
import sys
import textwrap
from copy import deepcopy

import pytest
import torch
from datasets import Dataset, concatenate_datasets
from transformers import TrainerCallback, TrainerState
from transformers.utils import logging as hf_logging

from mole_llama.modeling.configuration_acoustic_lm import AcousticLMConfig
from mole_llama.modeling.modeling_acoustic_lm import (
    PAD_CODE,
    AcousticLMForConditionalGeneration,
    SamplingSettings,
    choose_codes,
)
from mole_llama.training.acoustic_lm import (
    AcousticLMDataCollator,
    EpochToCollatorCallback,
    SpeakerPrompts,
    acoustic_lm_accuracy,
    build_acoustic_lm_trainer,
    default_training_arguments,
    train_acoustic_lm,
)

TINY = dict(
    num_semantic_units=20,
    num_codebooks=3,
    codebook_size=16,
    semantic_unit_rate=25,
    acoustic_frame_rate=50,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_model(seed=0, **overrides) -> AcousticLMForConditionalGeneration:
    torch.manual_seed(seed)
    return AcousticLMForConditionalGeneration(AcousticLMConfig(**{**TINY, **overrides})).eval()


def random_units(length, seed=0, high=20):
    return torch.randint(0, high, (length,), generator=torch.Generator().manual_seed(seed))


def random_codes(frames, seed=0, num_codebooks=3, size=16):
    return torch.randint(0, size, (num_codebooks, frames), generator=torch.Generator().manual_seed(seed))


def teacher_forced_argmax(model, units, codes, **kwargs):
    """The no-cache recomputation: one full forward over the given codes, argmax per (frame, codebook)."""
    with torch.no_grad():
        return model(units, codes, **kwargs).logits.argmax(dim=-1).transpose(1, 2)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ----------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_codebooks=0), "num_codebooks"),
        (dict(semantic_unit_rate=0), "semantic_unit_rate"),
        (dict(acoustic_frame_rate=-75.0), "acoustic_frame_rate"),
        (dict(hidden_size=30), "multiple of num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(unit_context_kernel_size=4), "odd"),
        (dict(unit_context_layers=-1), "unit_context_layers"),
        (dict(previous_code_noise=1.0), "previous_code_noise"),
    ],
)
def test_config_rejects_bad_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        AcousticLMConfig(**{**TINY, **bad})


def test_config_frame_counts():
    assert AcousticLMConfig(semantic_unit_rate=50, acoustic_frame_rate=50).num_frames(7) == 7
    assert AcousticLMConfig(semantic_unit_rate=25, acoustic_frame_rate=75).num_frames(7) == 21
    assert AcousticLMConfig(semantic_unit_rate=50, acoustic_frame_rate=75).num_frames(3) == 5  # ceil(4.5)


# ----------------------------------------------------------------------------------------------- forward


def test_forward_shapes_and_loss(model):
    units = torch.stack([random_units(6, seed) for seed in range(2)])
    codes = torch.stack([random_codes(12, seed) for seed in range(2)])
    output = model(units, codes)
    assert output.logits.shape == (2, 12, 3, 16)
    assert output.codebook_losses.shape == (3,)
    assert output.frames_mask.shape == (2, 12) and bool(output.frames_mask.all())
    # an untrained model is close to uniform over the 16 codes
    assert abs(output.loss.item() - torch.log(torch.tensor(16.0)).item()) < 0.5
    assert torch.allclose(output.loss, output.codebook_losses.mean(), atol=1e-6)


def test_padding_changes_nothing(model):
    """An item in a padded batch (with masks, with -100 frames, or as ragged lists) scores as it does alone."""
    short_units, long_units = random_units(4, 1), random_units(7, 2)
    short_codes, long_codes = random_codes(8, 1), random_codes(14, 2)
    alone = model(short_units, short_codes)
    units = torch.zeros(2, 7, dtype=torch.long)
    units[0, :4], units[1] = short_units, long_units
    units_mask = torch.zeros(2, 7, dtype=torch.long)
    units_mask[0, :4], units_mask[1] = 1, 1
    codes = torch.full((2, 3, 14), PAD_CODE)
    codes[0, :, :8], codes[1] = short_codes, long_codes
    padded = model(units, codes, semantic_units_mask=units_mask)
    ragged = model([short_units, long_units], [short_codes, long_codes])
    for batch in (padded, ragged):
        assert torch.allclose(batch.logits[0, :8], alone.logits[0], atol=1e-5)
        assert batch.frames_mask[0].tolist() == [1] * 8 + [0] * 6
    # the loss ignores padding: the mean of the two items' losses weighted by their frames
    long_alone = model(long_units, long_codes)
    expected = (alone.loss * 8 + long_alone.loss * 14) / 22
    assert torch.allclose(padded.loss, expected, atol=1e-5)


def test_labels_alone_are_enough_and_minus_100_is_ignored(model):
    units, codes = random_units(5, 3), random_codes(10, 3)
    full = model(units, codes)
    assert torch.allclose(model(units, labels=codes[None]).loss, full.loss, atol=1e-6)
    labels = codes.clone()[None]
    labels[0, 2] = PAD_CODE  # no loss on the last codebook
    partial = model(units, codes, labels=labels)
    assert torch.allclose(partial.loss, full.codebook_losses[:2].mean(), atol=1e-5)


def test_unit_context_lets_a_frame_hear_upcoming_units(model):
    units, codes = random_units(6, 0), random_codes(12, 0)
    changed = units.clone()
    changed[4] = (changed[4] + 1) % 20  # frames 8, 9 read unit 4; 3 blocks of kernel 5 reach 6 frames
    before = model(units[None], codes[None]).logits
    after = model(changed[None], codes[None]).logits
    moved = (after - before).abs().amax(dim=(0, 2, 3))
    assert bool((moved[2:8] > 0).all())  # earlier frames within the context window hear the change
    assert bool((moved[:2] == 0).all())  # frames beyond it do not
    no_context = tiny_model(unit_context_layers=0)
    moved = (no_context(changed[None], codes[None]).logits - no_context(units[None], codes[None]).logits).abs()
    assert bool((moved.amax(dim=(0, 2, 3))[:8] == 0).all())  # a causal decoder alone cannot look ahead


def test_previous_code_noise_only_in_training(model):
    units, codes = random_units(6, 0), random_codes(12, 0)
    noisy = tiny_model(previous_code_noise=0.5)
    noisy.train()
    torch.manual_seed(0)
    first = noisy(units[None], codes[None]).loss
    assert not torch.equal(first, noisy(units[None], codes[None]).loss)  # other codes replaced each call
    noisy.eval()
    assert torch.equal(noisy(units[None], codes[None]).loss, noisy(units[None], codes[None]).loss)


def test_loss_backpropagates_to_every_weight(model):
    trainable = tiny_model(seed=1).train()
    prompt = random_codes(4, 9)
    trainable(random_units(5, 3), random_codes(10, 3), prompt_codes=prompt).loss.backward()
    missing = [name for name, p in trainable.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# ----------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("unit_rate, frame_rate", [(50, 50), (25, 50), (25, 75), (50, 75)])
def test_generated_length_follows_the_units(unit_rate, frame_rate):
    model = tiny_model(semantic_unit_rate=unit_rate, acoustic_frame_rate=frame_rate)
    lengths = [1, 4, 9]
    output = model.generate([random_units(n, n) for n in lengths], seed=0, top_k=3, return_dict_in_generate=True)
    expected = [model.config.num_frames(n) for n in lengths]
    assert output.lengths.tolist() == expected
    assert output.codes.shape == (3, 3, max(expected))
    for row, frames in enumerate(expected):
        assert bool((output.codes[row, :, :frames] >= 0).all())
        assert bool((output.codes[row, :, frames:] == PAD_CODE).all())
    capped = model.generate(random_units(9, 9), seed=0, max_frames=5)
    assert capped.shape == (1, 3, 5)


def test_greedy_with_cache_equals_no_cache_recomputation(model):
    units = torch.stack([random_units(7, seed) for seed in (4, 5)])
    generated = model.generate(units, do_sample=False)
    assert generated.shape == (2, 3, 14)
    assert torch.equal(teacher_forced_argmax(model, units, generated), generated)
    prompt = random_codes(6, 7)
    prompted = model.generate(units, prompt_codes=prompt, do_sample=False)
    assert torch.equal(teacher_forced_argmax(model, units, prompted, prompt_codes=prompt), prompted)
    assert not torch.equal(prompted, generated)  # the prompt is seen


def test_batch_of_different_lengths_equals_items_alone(model):
    units = [random_units(n, n) for n in (3, 7, 5)]
    prompts = [random_codes(4, 11), None, random_codes(9, 12)]
    batch = model.generate(units, prompt_codes=prompts, do_sample=False)
    for row, (item_units, prompt) in enumerate(zip(units, prompts)):
        alone = model.generate(item_units, prompt_codes=prompt, do_sample=False)[0]
        assert torch.equal(batch[row, :, : alone.shape[1]], alone)
    # the same batch as padded tensors with masks (units left-padded, prompts right-padded)
    units_tensor = torch.zeros(3, 7, dtype=torch.long)
    units_mask = torch.zeros(3, 7, dtype=torch.long)
    prompt_tensor = torch.zeros(3, 3, 9, dtype=torch.long)
    prompt_mask = torch.zeros(3, 9, dtype=torch.long)
    for row, (item_units, prompt) in enumerate(zip(units, prompts)):
        units_tensor[row, 7 - len(item_units) :] = item_units
        units_mask[row, 7 - len(item_units) :] = 1
        if prompt is not None:
            prompt_tensor[row, :, : prompt.shape[1]] = prompt
            prompt_mask[row, : prompt.shape[1]] = 1
    padded = model.generate(
        units_tensor,
        prompt_codes=prompt_tensor,
        semantic_units_mask=units_mask,
        prompt_codes_mask=prompt_mask,
        do_sample=False,
    )
    assert torch.equal(padded, batch)


@pytest.mark.parametrize("unit_rate, max_frames", [(25, None), (25, 17), (50, None)])
def test_streamed_codes_equal_generate_for_the_same_seed(unit_rate, max_frames):
    model = tiny_model(semantic_unit_rate=unit_rate)
    units, prompt = random_units(23, 3).tolist(), random_codes(5, 2)
    settings = dict(prompt_codes=prompt, seed=9, temperature=0.8, top_k=5, max_frames=max_frames)
    whole = model.generate(units, **{**settings, "prompt_codes": prompt[None]})[0]
    stream = model.stream(**settings)
    chunks = [stream.push(units[start : start + 2]) for start in range(0, len(units), 2)]
    early = sum(chunk.shape[-1] for chunk in chunks)
    chunks.append(stream.finish())
    assert torch.equal(torch.cat(chunks, dim=-1), whole)
    assert 0 < early <= whole.shape[-1]  # frames came out before the units were finished
    with pytest.raises(RuntimeError, match="finished"):
        stream.push([1])
    with pytest.raises(ValueError, match="no semantic units"):
        model.stream().finish()
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        model.stream().push([25])


def test_code_probabilities_are_each_frames_distributions_beside_the_same_codes(model):
    units = [random_units(n, n) for n in (5, 8)]
    settings = dict(prompt_codes=[random_codes(4, 1), None], seed=[3, 4], temperature=0.7, top_k=4)
    codes = model.generate(units, **settings)
    output = model.generate(units, **settings, return_dict_in_generate=True, output_code_probabilities=True)
    assert torch.equal(output.codes, codes)  # asking for them draws nothing more
    probabilities = output.code_probabilities
    assert probabilities.shape == (2, 3, 16, 16)
    first = probabilities[0, :, : output.lengths[0]]
    torch.testing.assert_close(first.sum(dim=-1), torch.ones(3, int(output.lengths[0])))
    assert (probabilities[0, :, output.lengths[0] :] == 0).all()  # past the shorter item's end
    # the teacher-forced forward over the drawn codes gives the same distributions (temperature 1, no filter)
    with torch.no_grad():
        logits = model(
            units[0][None], codes[:1, :, : output.lengths[0]], prompt_codes=settings["prompt_codes"][0][None]
        ).logits
    torch.testing.assert_close(first, logits[0].float().softmax(dim=-1).transpose(0, 1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs return_dict_in_generate"):
        model.generate(units, output_code_probabilities=True)


@pytest.mark.parametrize("float16_decoding", [False, True])
def test_streamed_code_probabilities_match_generate(float16_decoding):
    """Streamed in any pieces, the conditioning blocks, codes and distributions are `generate`'s to the last bit."""
    model = tiny_model(semantic_unit_rate=25, float16_decoding=float16_decoding)
    units, prompt = random_units(13, 3).tolist(), random_codes(5, 2)
    output = model.generate(
        units, prompt_codes=prompt[None], seed=9, return_dict_in_generate=True, output_code_probabilities=True
    )
    stream = model.stream(prompt_codes=prompt, seed=9, output_code_probabilities=True)
    made = [stream.push(units[start : start + 3]) for start in range(0, len(units), 3)] + [stream.finish()]
    assert torch.equal(torch.cat([codes for codes, _ in made], dim=-1), output.codes[0])
    assert torch.equal(torch.cat([probabilities for _, probabilities in made], dim=1), output.code_probabilities[0])
    one_by_one = model.stream(prompt_codes=prompt, seed=9)
    codes = [one_by_one.push([unit]) for unit in units] + [one_by_one.finish()]
    assert torch.equal(torch.cat(codes, dim=-1), output.codes[0])


@torch.no_grad()
def test_compiled_decoding_makes_the_codes_and_distributions_of_eager_steps():
    """`compile_decoding` compiles a frame's step (decoder pass, heads, draws) for one item at a time, not a
    generation's first step, a batch's steps (FBGEMM's float16 products cannot be in a graph) nor training's
    forward. Its rows multiply by plain float16 copies, rounded to float16 themselves, so its distributions differ
    from eager steps' by that rounding: greedy codes stay the same, alone, streamed, and sampled draws mostly."""
    model = tiny_model(semantic_unit_rate=25, float16_decoding=True)
    units, prompt = [random_units(13, 3), random_units(7, 4)], random_codes(5, 2)
    settings = dict(prompt_codes=prompt[None], do_sample=False, return_dict_in_generate=True,
                    output_code_probabilities=True)  # fmt: skip
    eager = model.generate(units, **settings)
    alone = model.generate(units[:1], **settings)
    sampled = model.generate(units[:1], prompt_codes=prompt[None], seed=5, temperature=0.8, top_k=8)
    model.compile_decoding()
    compiled_step, calls = model._compiled_frame_step, []
    model._compiled_frame_step = lambda *args: calls.append(1) or compiled_step(*args)
    batch = model.generate(units, **settings)
    assert not calls and torch.equal(batch.codes, eager.codes)  # a batch steps eagerly
    torch.testing.assert_close(batch.code_probabilities, eager.code_probabilities, atol=0, rtol=0)
    compiled = model.generate(units[:1], **settings)
    assert len(calls) == compiled.codes.shape[-1] - 1  # every frame but the first
    assert torch.equal(compiled.codes, alone.codes)
    torch.testing.assert_close(compiled.code_probabilities, alone.code_probabilities, atol=2e-3, rtol=0)
    drawn = model.generate(units[:1], prompt_codes=prompt[None], seed=5, temperature=0.8, top_k=8)
    assert (drawn == sampled).float().mean() >= 0.9  # the same draws, but where rounding moves a boundary
    stream = model.stream(prompt_codes=prompt, do_sample=False)
    made = [stream.push(units[0][start : start + 4].tolist()) for start in range(0, 13, 4)] + [stream.finish()]
    assert torch.equal(torch.cat(made, dim=-1), alone.codes[0])
    copy = deepcopy(model)  # a copy steps with its own decoder weights through the same compiled function
    copy.model.layers[0].mlp.down_proj.weight.mul_(3)
    eager_copy = deepcopy(copy)
    eager_copy._compiled_frame_step = None
    changed = copy.generate(units[:1], **settings).code_probabilities
    assert not torch.allclose(changed, alone.code_probabilities, atol=1e-3)
    reference = eager_copy.generate(units[:1], **settings).code_probabilities
    torch.testing.assert_close(changed, reference, atol=2e-3, rtol=0)
    assert model.state_dict().keys() == tiny_model(semantic_unit_rate=25).state_dict().keys()


def test_codes_are_drawn_from_the_filtered_softmax_by_inverse_transform():
    """`choose_codes` turns uniform draws into codes with the filtered distribution's frequencies, never a code the
    filters removed (even at the draws' ends), and takes the argmax when greedy."""
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4]).log().expand(40000, -1)
    uniform = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    plain = choose_codes(logits, uniform, SamplingSettings(True, 1.0, None, None))
    torch.testing.assert_close(torch.bincount(plain, minlength=4) / 40000, torch.tensor([0.1, 0.2, 0.3, 0.4]),
                               atol=0.01, rtol=0)  # fmt: skip
    top_two = choose_codes(logits, uniform, SamplingSettings(True, 1.0, 2, None))
    torch.testing.assert_close(torch.bincount(top_two, minlength=4) / 40000, torch.tensor([0, 0, 3 / 7, 4 / 7]),
                               atol=0.01, rtol=0)  # fmt: skip
    ends = choose_codes(logits[:2], torch.tensor([0.0, 1 - 2**-24]), SamplingSettings(True, 1.0, 2, None))
    assert ends.tolist() == [3, 2]
    assert choose_codes(logits[:1], None, SamplingSettings(False, 1.0, None, None)).tolist() == [3]


def test_seed_gives_reproducible_samples_without_touching_global_rng(model):
    units = random_units(8, 6)
    state = torch.get_rng_state()
    first = model.generate(units, seed=123)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model.generate(units, seed=123), first)
    assert not torch.equal(model.generate(units, seed=124), first)


def test_sampling_filters(model):
    units = random_units(6, 8)
    greedy = model.generate(units, do_sample=False)
    assert torch.equal(model.generate(units, top_k=1, seed=0), greedy)
    assert torch.equal(model.generate(units, top_p=1e-6, seed=0), greedy)
    assert torch.equal(model.generate(units, temperature=1e-4, seed=0), greedy)
    mixed = model.generate(units, temperature=1.5, top_k=5, top_p=0.9, seed=0)
    assert mixed.shape == greedy.shape and bool((mixed >= 0).all() and (mixed < 16).all())
    with pytest.raises(ValueError, match="temperature"):
        model.generate(units, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(units, top_p=1.5)


# ----------------------------------------------------------------------------------------------- errors


def test_clear_errors(model):
    units = random_units(4, 0)
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        model.generate(torch.tensor([1, 2, 20]))
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        model.generate([[0, -1, 3]])
    with pytest.raises(ValueError, match="empty"):
        model.generate([[1, 2], []])
    with pytest.raises(ValueError, match="empty batch"):
        model.generate([])
    with pytest.raises(ValueError, match="num_codebooks=3"):
        model(units, torch.zeros(1, 2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, num_codebooks, frames\]"):
        model(units, torch.zeros(1, 1, 3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside \[0, 16\)"):
        model(units, torch.full((1, 3, 8), 16))
    with pytest.raises(ValueError, match="same audio"):
        model(units, torch.zeros(1, 3, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="num_codebooks=3"):
        model.generate(units, prompt_codes=torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(random_units(200, 1))
    with pytest.raises(ValueError, match="semantic_units_mask"):
        model.generate(units[None], semantic_units_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="acoustic_codes"):
        model(units)


# ----------------------------------------------------------------------------------------------- save / load


def test_save_and_load_give_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_acoustic_lm.AcousticLMConfig",
        "AutoModel": "modeling_acoustic_lm.AcousticLMForConditionalGeneration",
    }
    for name in ("configuration_acoustic_lm.py", "modeling_acoustic_lm.py"):
        source = (tmp_path / name).read_text()
        assert not any(
            line.lstrip().startswith(("import mole_llama", "from mole_llama", "from .."))
            for line in source.splitlines()
        ), name
    loaded = AcousticLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    units, codes, prompt = random_units(6, 2), random_codes(12, 2), random_codes(5, 3)
    with torch.no_grad():
        assert torch.equal(
            model(units, codes, prompt_codes=prompt).logits, loaded(units, codes, prompt_codes=prompt).logits
        )
    assert torch.equal(
        model.generate(units, prompt_codes=prompt, seed=5), loaded.generate(units, prompt_codes=prompt, seed=5)
    )


BLOCK_MOLE_LLAMA = textwrap.dedent(
    """
    import sys

    class BlockMoleLlama:
        def find_spec(self, name, path=None, target=None):
            if name == "mole_llama" or name.startswith("mole_llama."):
                raise ImportError("mole_llama is blocked in this interpreter")

    sys.meta_path.insert(0, BlockMoleLlama())
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~10 s here
def test_remote_code_loads_without_the_package(model, tmp_path):
    folder = tmp_path / "acoustic_lm"
    model.save_pretrained(folder)
    units, prompt = random_units(6, 4), random_codes(5, 6)
    torch.save({"units": units, "prompt": prompt}, tmp_path / "inputs.pt")
    script = BLOCK_MOLE_LLAMA + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel

        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        codes = model.generate(inputs["units"], prompt_codes=inputs["prompt"], seed=7)
        with torch.no_grad():
            logits = model(inputs["units"], codes, prompt_codes=inputs["prompt"]).logits
        torch.save({{"codes": codes, "logits": logits, "config": type(config).__name__,
                     "model": type(model).__name__}}, {str(tmp_path / "out.pt")!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert (remote["config"], remote["model"]) == ("AcousticLMConfig", "AcousticLMForConditionalGeneration")
    local_codes = model.generate(units, prompt_codes=prompt, seed=7)
    assert torch.equal(remote["codes"], local_codes)
    with torch.no_grad():
        assert torch.allclose(model(units, local_codes, prompt_codes=prompt).logits, remote["logits"], atol=1e-6)


# ----------------------------------------------------------------------------------------------- training

SYNTHETIC = dict(num_semantic_units=6, num_codebooks=3, codebook_size=8, num_speakers=4)


def synthetic_dataset(size: int, seed: int) -> Dataset:
    """Codes that follow from the aligned unit and the previous frame (codebook 0), the lower codebook and the
    frame's rank in its unit (codebook 1), and the speaker alone (codebook 2: only a voice prompt reveals it)."""
    rng = random.Random(seed)
    size_v = SYNTHETIC["codebook_size"]
    rows = []
    for _ in range(size):
        units = [rng.randrange(SYNTHETIC["num_semantic_units"]) for _ in range(rng.randint(6, 12))]
        speaker = rng.randrange(SYNTHETIC["num_speakers"])
        codes, previous = [[], [], []], 0
        for frame in range(2 * len(units)):  # 25 Hz units, 50 Hz frames
            code = (units[frame // 2] + previous) % size_v
            codes[0].append(code)
            codes[1].append((code + frame % 2) % size_v)
            codes[2].append(speaker)
            previous = code
        rows.append({"semantic_units": units, "acoustic_codes": codes, "speaker": speaker})
    return Dataset.from_list(rows)


def synthetic_model(seed=0) -> AcousticLMForConditionalGeneration:
    torch.manual_seed(seed)
    config = AcousticLMConfig(
        num_semantic_units=SYNTHETIC["num_semantic_units"],
        num_codebooks=SYNTHETIC["num_codebooks"],
        codebook_size=SYNTHETIC["codebook_size"],
        semantic_unit_rate=25,
        acoustic_frame_rate=50,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        unit_context_layers=1,
        previous_code_noise=0.0,  # codebook 0 is a running sum of the history: noise would make it unlearnable
    )
    return AcousticLMForConditionalGeneration(config)


def short_prompts_collator(config, **kwargs):
    return AcousticLMDataCollator(
        config, prompt_probability=0.5, min_prompt_seconds=0.1, max_prompt_seconds=0.2, min_target_seconds=0.1, **kwargs
    )


def test_collator_pads_and_cuts_prompts_from_the_same_utterance():
    config = synthetic_model().config
    data = synthetic_dataset(16, 3)
    collator = short_prompts_collator(config)
    batch = collator([data[i] for i in range(16)])
    assert "prompt_codes" in batch and 0 < int(batch["prompt_codes_mask"].sum(dim=1).gt(0).sum()) < 16
    for row in range(16):
        units = torch.tensor(data[row]["semantic_units"])
        codes = torch.tensor(data[row]["acoustic_codes"])
        n_units = int(batch["semantic_units_mask"][row].sum())
        n_frames = int(batch["acoustic_codes_mask"][row].sum())
        n_prompt = int(batch["prompt_codes_mask"][row].sum())
        prompt = batch["prompt_codes"][row, :, :n_prompt]
        target = batch["acoustic_codes"][row, :, :n_frames]
        assert torch.equal(torch.cat([prompt, target], dim=1), codes)  # prompt + target = the utterance
        assert torch.equal(batch["semantic_units"][row, :n_units], units[len(units) - n_units :])
        assert n_frames == config.num_frames(n_units)  # the cut falls on a unit boundary
        assert bool((batch["labels"][row, :, n_frames:] == PAD_CODE).all())
        assert torch.equal(batch["labels"][row, :, :n_frames], target)
    again = collator([data[i] for i in range(16)])
    assert all(torch.equal(batch[name], again[name]) for name in batch)  # same seed and epoch, same cuts
    collator.epoch = 1
    assert not torch.equal(collator([data[i] for i in range(16)])["semantic_units_mask"], batch["semantic_units_mask"])
    no_prompts = AcousticLMDataCollator(config, prompt_probability=0.0)([data[0], data[1]])
    assert "prompt_codes" not in no_prompts


def test_collator_prompts_with_another_utterance_of_the_same_speaker():
    config = synthetic_model().config
    data = synthetic_dataset(24, 4).add_column("row", list(range(24)))
    alone = data.filter(lambda row: row["speaker"] == 0).select([0]).map(lambda row: {"speaker": 99})
    data = concatenate_datasets([data, alone])  # speaker 99 has one utterance: no other to prompt with
    collator = short_prompts_collator(config, speaker_prompts=SpeakerPrompts(data, "speaker"))
    batch = collator(list(data))
    prompted = 0
    for row, example in enumerate(data):
        n_units = int(batch["semantic_units_mask"][row].sum())
        n_frames = int(batch["acoustic_codes_mask"][row].sum())
        n_prompt = int(batch["prompt_codes_mask"][row].sum())
        target = batch["acoustic_codes"][row, :, :n_frames]
        prompt = batch["prompt_codes"][row, :, :n_prompt]
        codes = torch.tensor(example["acoustic_codes"])
        if example["speaker"] == 99:  # falls back to a cut off its own front (this seed prompts it)
            assert n_prompt > 0 and torch.equal(torch.cat([prompt, target], 1), codes)
            continue
        assert n_units == len(example["semantic_units"]) and torch.equal(target, codes)  # the whole utterance
        if n_prompt == 0:
            continue
        prompted += 1
        assert 5 <= n_prompt <= 10  # 0.1-0.2 s at 50 frames a second
        fronts = [
            other["row"] for other in data if torch.equal(torch.tensor(other["acoustic_codes"])[:, :n_prompt], prompt)
        ]
        assert fronts and example["row"] not in fronts
        assert all(data[index]["speaker"] == example["speaker"] for index in fronts)
    assert 6 < prompted < 20, prompted
    again = collator(list(data))
    assert all(torch.equal(batch[name], again[name]) for name in batch)  # same seed and epoch, same prompts
    collator.epoch = 1
    assert not torch.equal(collator(list(data))["prompt_codes"], batch["prompt_codes"])
    with pytest.raises(ValueError, match="speaker column 'speaker'.*remove_unused_columns"):
        collator([{key: value for key, value in data[0].items() if key != "speaker"}])
    with pytest.raises(ValueError, match="no speaker column 'voice'.*data.speaker_column"):
        SpeakerPrompts(data, "voice")


def test_trainer_with_speaker_prompts_checks_both_datasets_and_feeds_the_collator_its_columns(tmp_path):
    model = synthetic_model()
    data = synthetic_dataset(8, 5).add_column("text", ["words"] * 8)
    args = default_training_arguments(tmp_path, use_cpu=True, disable_tqdm=True)
    trainer = build_acoustic_lm_trainer(model, data, args, eval_dataset=data, speaker_column="speaker")
    assert trainer.train_dataset.column_names == ["semantic_units", "acoustic_codes", "speaker"]
    assert trainer.data_collator.speaker_prompts.rows_by_speaker.keys() == set(data["speaker"])
    batch = next(iter(trainer.get_train_dataloader()))
    assert "prompt_codes" in batch and "speaker" not in batch  # the collator read it, the model does not get it
    without = data.remove_columns("speaker")
    with pytest.raises(ValueError, match="no speaker column 'speaker'"):
        build_acoustic_lm_trainer(model, data, args, eval_dataset=without, speaker_column="speaker")
    strict = default_training_arguments(tmp_path, use_cpu=True, remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        build_acoustic_lm_trainer(model, data, strict, speaker_column="speaker")


def test_epoch_callback_tells_the_collator_the_epoch_also_when_resuming():
    collator = short_prompts_collator(synthetic_model().config)
    callback = EpochToCollatorCallback(collator)
    for epoch, expected in ((0.0, 0), (1.0, 1), (1.6, 1), (2.0, 2)):
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), None)
        assert collator.epoch == expected


@pytest.mark.slow
def test_training_learns_the_synthetic_task_and_the_voice_prompt(tmp_path):
    hf_logging.set_verbosity_error()
    train, held_out = synthetic_dataset(192, 0), synthetic_dataset(24, 1)
    model = synthetic_model()
    args = default_training_arguments(
        tmp_path,
        num_train_epochs=8,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        save_strategy="no",
        logging_steps=10,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = train_acoustic_lm(
        model, train, args, eval_dataset=held_out, collator=short_prompts_collator(model.config)
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[0] > 1.2 and losses[-1] < 0.3, losses
    assert trainer.evaluate()["eval_loss"] < 0.4
    accuracy = acoustic_lm_accuracy(model, held_out, greedy=True)
    assert min(accuracy["teacher_forced_accuracy_per_codebook"][:2]) > 0.95, accuracy
    assert min(accuracy["greedy_accuracy_per_codebook"][:2]) > 0.9, accuracy
    # the speaker codebook is a guess without a prompt, and follows a prompt of another utterance of that speaker
    prompt_hits = frames = 0
    for example in held_out:
        prompt = torch.tensor([[0, 1, 2, 3], [0, 2, 2, 4], [example["speaker"]] * 4])
        generated = model.generate(example["semantic_units"], prompt_codes=prompt, do_sample=False)[0]
        prompt_hits += int((generated[2] == example["speaker"]).sum())
        frames += generated.shape[1]
    assert prompt_hits / frames > 0.9
    assert prompt_hits / frames > accuracy["greedy_accuracy_per_codebook"][2] + 0.3
    reloaded = AcousticLMForConditionalGeneration.from_pretrained(tmp_path)  # saved at the end
    assert torch.equal(reloaded.generate([1, 2, 3], do_sample=False), model.generate([1, 2, 3], do_sample=False))


class StopAt(TrainerCallback):
    """Interrupts training after a given step (the checkpoint of that step is written first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.slow
def test_resuming_from_a_checkpoint_gives_the_same_weights(tmp_path):
    hf_logging.set_verbosity_error()
    data = synthetic_dataset(40, 2)

    def run(output_dir, stop_at=None, resume=None):
        model = synthetic_model(seed=0)
        args = default_training_arguments(
            output_dir,
            max_steps=10,
            per_device_train_batch_size=8,
            save_steps=4,
            save_total_limit=None,
            logging_steps=2,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = build_acoustic_lm_trainer(model, data, args, collator=short_prompts_collator(model.config))
        if stop_at is not None:
            trainer.add_callback(StopAt(stop_at))
        trainer.train(resume_from_checkpoint=resume)
        return model

    straight = run(tmp_path / "straight")
    run(tmp_path / "interrupted", stop_at=8)  # 40 examples / 8 = 5 steps per epoch: resumes inside epoch 2
    assert (tmp_path / "interrupted" / "checkpoint-8").exists()
    resumed = run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-8"))
    for (name, expected), (_, actual) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(expected, actual, atol=1e-6), name
