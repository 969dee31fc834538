"""Float16-weight products (`modeling/float16_weights.py`) and the acoustic LM's `float16_decoding`."""

import pytest
import torch
import torch.nn.functional as F
from test_acoustic_lm import TINY, random_codes, random_units
from torch import nn

from mole_llama.modeling import float16_weights
from mole_llama.modeling.configuration_acoustic_lm import AcousticLMConfig
from mole_llama.modeling.float16_weights import (
    Float16Weight,
    Float16WeightLinear,
    allow_compiled_steps,
    check_finite_step,
    fbgemm_engine,
    use_float16_weights,
)
from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration


def weight_linear(seed=0, bias=True) -> tuple:
    torch.manual_seed(seed)
    linear = nn.Linear(24, 10, bias=bias)
    return linear, Float16WeightLinear.from_linear(linear)


@torch.no_grad()
@pytest.mark.skipif(not fbgemm_engine(), reason="FBGEMM packs float16 weights on x86 builds only")
def test_products_use_the_weight_rounded_to_float16_and_a_row_gets_the_same_bits_alone_or_in_a_batch():
    linear, step = weight_linear()
    rounded = linear.weight.half().float()
    assert not torch.equal(rounded, linear.weight)
    batch = torch.randn(5, 3, 24)
    torch.testing.assert_close(step(batch), F.linear(batch, rounded, linear.bias), atol=1e-6, rtol=1e-5)
    for index in range(5):  # rows do not interact: one alone gets what it gets in the batch
        assert torch.equal(step(batch[index : index + 1]), step(batch)[index : index + 1])
    rows = slice(2, 7)
    torch.testing.assert_close(step(batch, rows=rows), F.linear(batch, rounded[rows], linear.bias[rows]))
    assert set(step._float16[1]) == {None, (2, 7)}  # each slice keeps its own packed weight


def test_with_gradients_it_is_the_plain_linear_and_keeps_its_parameters():
    linear, step = weight_linear()
    assert step.weight is linear.weight and step.bias is linear.bias
    assert step.state_dict().keys() == linear.state_dict().keys()
    x = torch.randn(1, 24)
    assert torch.equal(step(x), linear(x))
    step(x).sum().backward()
    assert linear.weight.grad is not None


@torch.no_grad()
def test_its_float16_weight_follows_the_weight_and_large_activations_do_not_overflow():
    _, step = weight_linear(bias=False)
    x = torch.randn(1, 24)
    before = step(x)
    step.weight.mul_(2)  # in place: the version changes
    torch.testing.assert_close(step(x), 2 * before)
    step.weight.fill_(1.0)
    big = torch.full((2, 24), 5e4)  # each product 1.2e6, past float16's 6.5e4: the rows stay float32
    torch.testing.assert_close(step(big), torch.full((2, 10), 1.2e6))


@torch.no_grad()
def test_without_fbgemm_the_product_is_float32_by_the_same_rounded_weight_and_the_weight_stays(monkeypatch):
    weight = torch.randn(10, 24)
    weight[0, 0] = 1e5  # past float16's range: saturates at 65504, as FBGEMM packs it
    original = weight.clone()
    x = torch.randn(3, 24)
    packed = Float16Weight(weight)
    assert torch.equal(weight, original)  # FBGEMM saturates what it packs in place: it packs a copy
    monkeypatch.setattr(torch.backends.quantized, "engine", "qnnpack")  # e.g. set by other code in the process
    assert not float16_weights.fbgemm_engine()
    plain = Float16Weight(weight)
    assert plain.packed is None and plain.rounded[0, 0] == 65504.0 and torch.equal(weight, original)
    assert torch.equal(plain.linear(x), F.linear(x, plain.rounded))
    torch.testing.assert_close(packed.linear(x), plain.linear(x))
    assert packed.linear(x.bfloat16()).dtype == plain.linear(x.bfloat16()).dtype == torch.bfloat16


def test_use_float16_weights_replaces_plain_linears_only():
    module = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2), nn.ReLU()), nn.Embedding(3, 4))
    keys = module.state_dict().keys()
    use_float16_weights(module)
    assert isinstance(module[0], Float16WeightLinear) and isinstance(module[1][0], Float16WeightLinear)
    assert isinstance(module[1][1], nn.ReLU) and module.state_dict().keys() == keys


@torch.no_grad()
def test_acoustic_lm_float16_decoding_loads_the_same_weights_and_an_item_decodes_alike_alone_and_batched(
    tmp_path, monkeypatch
):
    torch.manual_seed(0)
    plain = AcousticLMForConditionalGeneration(AcousticLMConfig(**TINY)).eval()
    plain.save_pretrained(tmp_path)
    half = AcousticLMForConditionalGeneration.from_pretrained(tmp_path, float16_decoding=True).eval()
    assert not plain.config.float16_decoding and not isinstance(plain.lm_head, Float16WeightLinear)
    assert half.config.float16_decoding and isinstance(half.lm_head, Float16WeightLinear)
    assert half.state_dict().keys() == plain.state_dict().keys()
    units, prompt = [random_units(9, seed=1), random_units(6, seed=2)], random_codes(4, seed=3)
    settings = dict(do_sample=False, prompt_codes=prompt, return_dict_in_generate=True, output_code_probabilities=True)
    products = []
    linear = Float16Weight.linear
    monkeypatch.setattr(Float16Weight, "linear", lambda self, x, b=None: products.append(x.shape) or linear(self, x, b))
    alone = half.generate(units[:1], **settings)
    assert products  # the decoder's and heads' products went through the float16 weights
    batch = half.generate(units, **settings)
    reference = plain.generate(units[:1], **settings)
    frames = int(alone.lengths[0])
    assert torch.equal(alone.codes[0, :, :frames], batch.codes[0, :, :frames])
    assert torch.equal(alone.codes[0, :, :frames], reference.codes[0, :, :frames])
    for other, tolerance in ((batch, 1e-5), (reference, 2e-3)):  # float32 weights: to float16 rounding
        torch.testing.assert_close(
            alone.code_probabilities[0, :, :frames], other.code_probabilities[0, :, :frames], atol=tolerance, rtol=0
        )


@torch.no_grad()
def test_a_compiled_decoding_step_multiplies_a_row_by_the_float16_copy_the_eager_step_kept():
    """Marked for compiled decoding (`allow_compiled_steps`), a projection also keeps a plain float16 copy (FBGEMM's
    packed weight is opaque to a graph); a compiled step multiplies one row by it, the row rounded to float16 too,
    without the staleness check (a data pointer, which dynamo cannot trace) or an overflow check: the step's output
    is checked instead. Unmarked, a compiled module traces the eager code and follows the weight by itself."""
    _, step = weight_linear(bias=False)
    row = torch.randn(1, 24)
    unmarked = torch.compile(step, dynamic=False)
    eager = step(row)
    assert torch.equal(unmarked(row), eager) and step.float16_weight().half is None
    step.weight.mul_(2)
    torch.testing.assert_close(unmarked(row), 2 * eager)  # no eager call in between
    step.weight.div_(2)
    allow_compiled_steps(step)
    eager = step(row)  # FBGEMM's product; it keeps the float16 copy too
    assert step.float16_weight().half is not None
    compiled = torch.compile(step, dynamic=False)
    torch.testing.assert_close(compiled(row), F.linear(row.half(), step.weight.half()).float())
    torch.testing.assert_close(compiled(row), eager, atol=1e-2, rtol=1e-2)
    step.weight.mul_(2)  # in place: the compiled step follows once an eager step has refreshed the kept weight
    torch.testing.assert_close(step(row), 2 * eager)
    torch.testing.assert_close(compiled(row), 2 * eager, atol=2e-2, rtol=1e-2)
    step.weight.fill_(1.0)
    big = torch.full((1, 24), 5e4)  # each product 1.2e6, past float16's 6.5e4
    torch.testing.assert_close(step(big), torch.full((1, 10), 1.2e6))  # eagerly the row stays float32
    check_finite_step(compiled(row))
    with pytest.raises(FloatingPointError, match="without compile_decoding"):
        check_finite_step(compiled(big))
