"""Float16 one-row products (`modeling/float16_steps.py`) and the acoustic LM's `float16_decoding`."""

import pytest
import torch
import torch.nn.functional as F
from test_acoustic_lm import TINY, random_codes, random_units
from torch import nn

from mole_llama.modeling.configuration_acoustic_lm import AcousticLMConfig
from mole_llama.modeling.float16_steps import (
    Float16StepLinear,
    allow_compiled_steps,
    check_finite_step,
    use_float16_steps,
)
from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration


def step_linear(seed=0, bias=True) -> tuple:
    torch.manual_seed(seed)
    linear = nn.Linear(24, 10, bias=bias)
    return linear, Float16StepLinear.from_linear(linear)


@torch.no_grad()
def test_a_single_row_multiplies_in_float16_and_a_batch_by_the_same_rounded_numbers():
    linear, step = step_linear()
    half = linear.weight.half()
    row = torch.randn(1, 1, 24)
    assert torch.equal(step(row), F.linear(row.half(), half).float() + linear.bias)
    batch = torch.randn(3, 1, 24)
    assert torch.equal(step(batch), F.linear(batch, half.float(), linear.bias))
    # a row alone and in a batch differ only by the row's rounding to float16
    torch.testing.assert_close(step(row), step(torch.cat([row, batch]))[:1], atol=1e-2, rtol=1e-2)
    rows = slice(2, 7)
    assert torch.equal(step(row, rows=rows), F.linear(row.half(), half[rows]).float() + linear.bias[rows])


def test_with_gradients_it_is_the_plain_linear_and_keeps_its_parameters():
    linear, step = step_linear()
    assert step.weight is linear.weight and step.bias is linear.bias
    assert step.state_dict().keys() == linear.state_dict().keys()
    x = torch.randn(1, 24)
    assert torch.equal(step(x), linear(x))
    step(x).sum().backward()
    assert linear.weight.grad is not None


@torch.no_grad()
def test_its_copies_follow_the_weight_and_a_product_past_float16_is_redone_in_float32():
    _, step = step_linear(bias=False)
    x = torch.randn(1, 24)
    before = step(x)
    step.weight.mul_(2)  # in place: the version changes
    torch.testing.assert_close(step(x), 2 * before)
    step.weight.fill_(1.0)
    big = torch.full((1, 24), 5e4)  # each product 1.2e6, past float16's 6.5e4
    assert torch.equal(step(big), torch.full((1, 10), 1.2e6))


def test_use_float16_steps_replaces_plain_linears_only():
    module = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2), nn.ReLU()), nn.Embedding(3, 4))
    keys = module.state_dict().keys()
    use_float16_steps(module)
    assert isinstance(module[0], Float16StepLinear) and isinstance(module[1][0], Float16StepLinear)
    assert isinstance(module[1][1], nn.ReLU) and module.state_dict().keys() == keys


@torch.no_grad()
def test_acoustic_lm_float16_decoding_loads_the_same_weights_and_steps_in_float16(tmp_path, monkeypatch):
    torch.manual_seed(0)
    plain = AcousticLMForConditionalGeneration(AcousticLMConfig(**TINY)).eval()
    plain.save_pretrained(tmp_path)
    half = AcousticLMForConditionalGeneration.from_pretrained(tmp_path, float16_decoding=True).eval()
    assert not plain.config.float16_decoding and not isinstance(plain.lm_head, Float16StepLinear)
    assert half.config.float16_decoding and isinstance(half.lm_head, Float16StepLinear)
    assert half.state_dict().keys() == plain.state_dict().keys()
    units, prompt = [random_units(9, seed=1), random_units(6, seed=2)], random_codes(4, seed=3)
    settings = dict(do_sample=False, prompt_codes=prompt, return_dict_in_generate=True, output_code_probabilities=True)
    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: calls.append(w.dtype) or linear(x, w, b))
    alone = half.generate(units[:1], **settings)
    assert torch.float16 in calls and torch.float32 in calls  # frames in float16, the voice prompt in float32
    batch = half.generate(units, **settings)
    reference = plain.generate(units[:1], **settings)
    frames = int(alone.lengths[0])
    for other in (batch, reference):  # the same codes, distributions to float16 rounding
        assert torch.equal(alone.codes[0, :, :frames], other.codes[0, :, :frames])
        torch.testing.assert_close(
            alone.code_probabilities[0, :, :frames], other.code_probabilities[0, :, :frames], atol=2e-3, rtol=0
        )


@torch.no_grad()
def test_a_compiled_decoding_step_reads_the_copies_the_eager_step_kept_and_its_overflow_is_refused():
    """Marked for compiled decoding (`allow_compiled_steps`), a compiled step skips the per-product overflow check (a
    host sync) and the copies' staleness check (a data pointer): it reads the copies the eager step before it made,
    and the step's output is checked. Unmarked, a compiled module traces the eager, checked code."""
    _, step = step_linear(bias=False)
    row = torch.randn(1, 24)
    eager = step(row)  # keeps the float16 copy
    unmarked = torch.compile(step, dynamic=False)
    step.weight.fill_(1.0)
    big = torch.full((1, 24), 5e4)  # each product 1.2e6, past float16's 6.5e4
    assert torch.equal(unmarked(big), torch.full((1, 10), 1.2e6))  # redone in float32, as eagerly
    step.weight.normal_()
    eager = step(row)
    allow_compiled_steps(step)
    compiled = torch.compile(step, dynamic=False)
    assert torch.equal(compiled(row), eager)
    step.weight.mul_(2)  # in place: the compiled step follows once an eager step has refreshed the copies
    assert torch.equal(step(row), 2 * eager) and torch.equal(compiled(row), 2 * eager)
    check_finite_step(eager, float16=True)
    step.weight.fill_(1.0)
    assert torch.isfinite(step(big)).all()  # eagerly redone in float32
    overflowed = compiled(big)
    with pytest.raises(FloatingPointError, match="float16_decoding=False"):
        check_finite_step(overflowed, float16=True)
    with pytest.raises(FloatingPointError, match="not finite"):
        check_finite_step(torch.tensor([1.0, float("nan")]), float16=False)
