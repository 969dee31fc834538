"""Float16 one-row products for CPU decoding, shared by the MoLE-Llama's projections and the acoustic LM.

A decoding step multiplies one row (one token of one sequence) by every weight matrix: it reads the weights once
and is bound by memory. PyTorch's CPU matrix-vector kernel for float16 reads half the bytes of float32 and
accumulates in float32: SmolLM2-135M's 210 projections took 9.3 ms per token against 37.0 in float32 here, and a
768 x 256 matrix not in cache 23 us against 104. For two rows or more float32 is faster, so only single rows go
through float16. The float32 weights used for everything else are rounded to float16 precision, so a batch and a
single row multiply by the same numbers and differ only by the rounding of the row itself.

This file is copied into saved model folders for `trust_remote_code=True`: it imports nothing from `mole_llama`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def is_cpu_row(x: torch.Tensor) -> bool:
    """Whether `x` is a single row (one token of one sequence) on the CPU, the case the float16 kernel speeds up
    (on a GPU the overflow check's sync would stall every projection)."""
    return x.device.type == "cpu" and x.numel() == x.shape[-1]


def float16_row_product(x: torch.Tensor, weight16: torch.Tensor, bias=None, checked: bool = True):
    """`x @ weight16.T (+ bias)` in float32 from a float16 product, or None when a value passes float16's range.

    Llama's "massive activations" reach ~3e4 in SmolLM2's residual stream, near float16's 6.5e4; a value past it
    makes the sum inf or NaN, and the caller takes the float32 product instead (one sum: a quarter of
    `isfinite().all()`'s time). `checked=False` skips that check: a compiled decoding step (`in_compiled_step`)
    cannot stop for a host sync at every projection, and checks its output instead (`check_finite_step`), which an
    overflow anywhere in the step reaches as inf or NaN."""
    result = F.linear(x.half(), weight16).float()
    if checked and not math.isfinite(result.sum().item()):
        return None
    return result if bias is None else result + bias


def in_compiled_step(module: nn.Module) -> bool:
    """Whether `module` runs inside a decoding step compiled by a model's `compile_decoding` (which sets its
    `compiled_steps`). There its float16 products go unchecked and its kept copies are read without their staleness
    check (a data pointer, which dynamo cannot trace): the eager step that starts every generation (a prefill, the
    first acoustic frame) refreshes them. Any other compile of the module traces the eager code."""
    return module.compiled_steps and torch.compiler.is_compiling()


def allow_compiled_steps(module: nn.Module) -> None:
    """Mark every projection inside `module` that keeps float16 copies as run by compiled decoding steps."""
    for child in module.modules():
        if hasattr(child, "compiled_steps"):
            child.compiled_steps = True


def check_finite_step(values: torch.Tensor, float16: bool) -> None:
    """Refuse a compiled decoding step's output that holds inf or NaN (`float16`: the step multiplies in float16,
    whose products it did not check one by one)."""
    if not bool(torch.isfinite(values).all()):
        cause = (
            "a float16 product overflowed: load the model with float16_decoding=False, or speak without "
            "compile_decoding"
            if float16
            else "the model's weights or its input are not finite"
        )
        raise FloatingPointError(f"a compiled decoding step gave inf or NaN: {cause}")


def rounded_copies(weight: torch.Tensor) -> tuple:
    """`weight` rounded to float16 precision, in its own dtype, and its float16 copy."""
    half = weight.detach().half()
    return half.to(weight.dtype), half


class Float16StepLinear(nn.Linear):
    """An `nn.Linear` (same parameters and state-dict keys) that, in inference on float32 weights, multiplies a single
    row on the CPU by a float16 copy of its weight and anything else by that copy's float32 values (`rounded_copies`).

    With gradients on it is a plain `nn.Linear`. The copies are kept until the weight changes in place (its version)
    or moves (its storage). `rows` multiplies by a slice of the output rows only (the acoustic LM's per-codebook
    heads share one matrix)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._rounded = None  # (what it was made from, rounded weight, float16 copy); not state
        self.compiled_steps = False  # `allow_compiled_steps`

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Float16StepLinear":
        """A `Float16StepLinear` holding `linear`'s own parameters (no copy)."""
        step = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        step.weight, step.bias = linear.weight, linear.bias
        return step

    def rounded_weights(self) -> tuple:
        """The weight rounded to float16 precision (float32) and its float16 copy (in a compiled decoding step, the
        ones the eager step before it kept: `in_compiled_step`)."""
        if in_compiled_step(self):
            return self._rounded[1:]
        weight = self._parameters["weight"]
        key = (weight.data_ptr(), weight._version)
        if self._rounded is None or self._rounded[0] != key:
            self._rounded = (key, *rounded_copies(weight))
        return self._rounded[1:]

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        weight, bias, half = self._parameters["weight"], self._parameters["bias"], None
        if not torch.is_grad_enabled() and weight.dtype == x.dtype == torch.float32:
            weight, half = self.rounded_weights()
        if rows is not None:
            weight, bias = weight[rows], None if bias is None else bias[rows]
            half = None if half is None else half[rows]
        if half is not None and is_cpu_row(x):
            result = float16_row_product(x, half, bias, checked=not in_compiled_step(self))
            if result is not None:
                return result
        return F.linear(x, weight, bias)


def use_float16_steps(module: nn.Module) -> None:
    """Replace every plain `nn.Linear` inside `module` by a `Float16StepLinear` on the same parameters."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Float16StepLinear.from_linear(child))
