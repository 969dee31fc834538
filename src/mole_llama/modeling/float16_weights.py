"""Float16-weight products for CPU inference, shared by the MoLE-Llama's projections and the acoustic LM.

Decoding multiplies a few rows (one token of each sequence) by every weight matrix: each step reads all the weights
and is bound by memory. FBGEMM's float16-weight GEMM (`torch.ops.quantized.linear_dynamic_fp16`, the kernel behind
PyTorch's dynamic float16 quantization) multiplies float32 rows by a prepacked float16 copy of the weight, half the
bytes, accumulating in float32. SmolLM2-135M's 210 projections took here (2 threads, weights not in cache) 9.0 ms for
one row against 36.3 in float32, and 14.5-21 ms for eight rows against 43.4 (PyTorch's own float16 kernel, used
before for single rows only: 9.3 and 54.3 ms). Its rows do not interact, so a row gets the same bits alone or in a
batch: batched decoding says what one-at-a-time decoding says. The rows stay float32, so no activation can
overflow float16 (SmolLM2's "massive activations" reach 3.4e4, near float16's 6.5e4).

Off the CPU, or in a PyTorch build without FBGEMM (not x86), the product is float32 by the weight rounded to float16
precision: the same numbers, to float rounding.

A compiled graph cannot hold FBGEMM's packed weight (an opaque object: dynamo breaks the graph there), so compiled
decoding steps (`compile_decoding`, one row at a time) multiply by a plain float16 copy with PyTorch's float16
matrix-vector kernel instead, their row rounded to float16 too (as fast for one row); such a product is unchecked,
and the step's output is checked (`check_finite_step`).

This file is copied into saved model folders for `trust_remote_code=True`: it imports nothing from `mole_llama`.
"""

import torch
import torch.nn.functional as F
from torch import nn

FLOAT16_MAX = 65504.0
FBGEMM_ENGINES = ("x86", "fbgemm")


def fbgemm_engine() -> bool:
    """Whether PyTorch's quantized engine is FBGEMM's (the default of x86 builds), which packs float16 weights."""
    return torch.backends.quantized.engine in FBGEMM_ENGINES


class Float16Weight:
    """A weight rounded to float16 precision, kept as its products need it: FBGEMM's packed copy for a weight on the
    CPU, else float32 values; with `for_compiled_steps`, also a plain float16 copy. Entries past float16's range
    saturate at +-65504, as FBGEMM packs them."""

    def __init__(self, weight: torch.Tensor, for_compiled_steps: bool = False):
        half = weight.detach().float().clamp(-FLOAT16_MAX, FLOAT16_MAX).half()
        if weight.device.type == "cpu" and fbgemm_engine():  # packs a copy: FBGEMM saturates its input in place
            self.packed, self.rounded = torch.ops.quantized.linear_prepack_fp16(half.float(), None), None
        else:
            self.packed, self.rounded = None, half.float()
        self.half = half if for_compiled_steps else None

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`x @ weight.T (+ bias)` for `x` on the weight's device, in `x`'s dtype (FBGEMM multiplies float32
        rows)."""
        if self.packed is None:
            return F.linear(x, self.rounded.to(x.dtype), None if bias is None else bias.to(x.dtype))
        result = torch.ops.quantized.linear_dynamic_fp16(x.float().contiguous(), self.packed)
        return (result if bias is None else result + bias).to(x.dtype)

    def compiled_row_linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`linear` of one row inside a compiled decoding step: by the float16 copy, the row rounded to float16,
        unchecked (an overflow reaches the step's output as inf or NaN)."""
        result = F.linear(x.half(), self.half).float()
        return result if bias is None else result + bias


def float16_product(module: nn.Module, kept: Float16Weight, x: torch.Tensor, bias=None) -> torch.Tensor:
    """The product of `module`, a projection keeping float16 weights: in its compiled decoding steps a single row
    goes through the plain float16 copy, anything else through FBGEMM (`Float16Weight.linear`)."""
    if in_compiled_step(module) and kept.half is not None and x.numel() == x.shape[-1]:
        return kept.compiled_row_linear(x, bias)
    return kept.linear(x, bias)


def in_compiled_step(module: nn.Module) -> bool:
    """Whether `module` runs inside a decoding step compiled by a model's `compile_decoding` (which sets its
    `compiled_steps`). There it reads its kept float16 weights without their staleness check (a data pointer, which
    dynamo cannot trace): the eager step that starts every generation (a prefill, the first acoustic frame)
    refreshes them. Any other compile of the module traces the eager code."""
    return module.compiled_steps and torch.compiler.is_compiling()


def allow_compiled_steps(module: nn.Module) -> None:
    """Mark every projection inside `module` that keeps float16 weights as run by compiled decoding steps; their
    kept weights are made again, with the plain float16 copies those steps multiply by."""
    for child in module.modules():
        if hasattr(child, "compiled_steps"):
            child.compiled_steps = True
            child.forget_float16_weights()


def check_finite_step(values: torch.Tensor) -> None:
    """Refuse a compiled decoding step's output that holds inf or NaN: its float16 products were not checked one by
    one (`Float16Weight.compiled_row_linear`)."""
    if not bool(torch.isfinite(values).all()):
        raise FloatingPointError(
            "a compiled decoding step gave inf or NaN (a float16 product overflowed, or the weights are not finite): "
            "speak without compile_decoding, or load the model with float16_decoding=False"
        )


class Float16WeightLinear(nn.Linear):
    """An `nn.Linear` (same parameters and state-dict keys) that, in inference on float32 weights and input,
    multiplies by its weight rounded to float16 precision (`Float16Weight`).

    With gradients on it is a plain `nn.Linear`. The float16 weight is kept until the weight changes in place (its
    version) or moves (its storage). `rows` multiplies by a slice of the output rows only (the acoustic LM's
    per-codebook heads share one matrix); each slice keeps its own."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.compiled_steps = False  # `allow_compiled_steps`
        self.forget_float16_weights()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Float16WeightLinear":
        """A `Float16WeightLinear` holding `linear`'s own parameters (no copy)."""
        projection = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        projection.weight, projection.bias = linear.weight, linear.bias
        return projection

    def forget_float16_weights(self) -> None:
        self._float16 = (None, {})  # (what they were made from, rows slice bounds -> Float16Weight); not state

    def float16_weight(self, rows: slice | None = None) -> Float16Weight:
        """The weight (or its `rows`) rounded to float16 precision; in a compiled decoding step, the one the eager step
        before it kept (`in_compiled_step`)."""
        bounds = None if rows is None else (rows.start, rows.stop)
        if in_compiled_step(self):
            return self._float16[1][bounds]
        weight = self._parameters["weight"]
        key = (weight.data_ptr(), weight._version)
        if self._float16[0] != key:
            self._float16 = (key, {})
        kept = self._float16[1]
        if bounds not in kept:
            kept[bounds] = Float16Weight(weight if rows is None else weight[rows], self.compiled_steps)
        return kept[bounds]

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        if rows is not None and bias is not None:
            bias = bias[rows]
        if not torch.is_grad_enabled() and weight.dtype == x.dtype == torch.float32:
            return float16_product(self, self.float16_weight(rows), x, bias)
        return F.linear(x, weight if rows is None else weight[rows], bias)


def use_float16_weights(module: nn.Module) -> None:
    """Replace every plain `nn.Linear` inside `module` by a `Float16WeightLinear` on the same parameters."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Float16WeightLinear.from_linear(child))
