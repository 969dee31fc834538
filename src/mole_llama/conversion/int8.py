"""int8 inference on the CPU for a speaking model's LLM, the stage that dominates its run time.

PyTorch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`, FBGEMM kernels): each linear layer keeps
its weights in int8 with a scale per output row (or per matrix), and quantizes its input on the fly at every call.
On SmolLM2-135M greedy decoding it ran 2.7x faster than float32 here. torchao, its successor, ran about 3x slower
than float32 on this CPU without `torch.compile`, so the older path is used; PyTorch deprecates it, and the pinned
torch still has it.

Only plain linear layers can be quantized this way, so a forced expert (a TTS-Llama speaks with its speech expert
forced) is first folded into the weights, `W + s B A`, as `merge_expert` does; a MoLE-Llama with learned routing has
two experts per projection and is refused. The speech parts (acoustic LM, codec, duration predictor) stay float32.
In place and for inference only: packed int8 weights cannot be saved, and `save_pretrained` refuses such a model.
"""

import warnings

import torch
from torch import nn

from ..modeling.configuration_mole_llama import NO_EXPERT
from ..modeling.modeling_mole_llama import INT8_ATTRIBUTE, MoLELinear


def _fold_forced_expert(model, expert: str) -> None:
    """Replace every `MoLELinear` by a plain `nn.Linear` holding `W + s B A` of `expert` (or `W` for "base")."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, MoLELinear):
                continue
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            with torch.no_grad():
                weight = child.weight.float()
                if expert != NO_EXPERT and expert in child.lora_A:
                    weight = weight + child.delta_weight(expert)
                plain.weight.copy_(weight)
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
            setattr(parent, name, plain)


def quantize_llm_int8(model, per_channel: bool = True):
    """Quantize `model`'s LLM (decoder projections and LM head) to int8 in place and return it; `model` is a
    float32 `MoLELlamaForCausalLM` or speaking model on the CPU whose routing is forced (`config.routing` set).
    `per_channel`: one scale per output row (PyTorch's `per_channel_dynamic_qconfig`) rather than one per matrix,
    which keeps rows with small weights apart from the large ones (see benchmarks/int8_intelligibility.py)."""
    if getattr(model, INT8_ATTRIBUTE, False):
        raise ValueError("this model is already quantized to int8")
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError(
            f"int8 dynamic quantization runs on a float32 model on the CPU; this one is {model.dtype} on "
            f"{model.device}: load it with dtype=torch.float32 on the CPU"
        )
    routing = model.config.routing
    if model.config.expert_names and routing is None:
        raise ValueError(
            "this MoLE-Llama routes with its learned router (two experts per projection), which int8 dynamic "
            "quantization cannot keep: use a TTS-Llama, or force one expert first (model.set_routing('speech'))"
        )
    model.eval()
    _fold_forced_expert(model.model, routing or NO_EXPERT)
    with warnings.catch_warnings():  # PyTorch's notice that this API moves to torchao (see the module docstring)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quantization = torch.ao.quantization
        qconfig = {
            nn.Linear: quantization.per_channel_dynamic_qconfig if per_channel else quantization.default_dynamic_qconfig
        }
        quantization.quantize_dynamic(model.model, qconfig, dtype=torch.qint8, inplace=True)
        model.lm_head = quantization.quantize_dynamic(nn.Sequential(model.lm_head), qconfig, dtype=torch.qint8)[
            0
        ]  # its own copy of the (tied) embedding rows: the input embeddings stay float
    setattr(model, INT8_ATTRIBUTE, True)
    return model


__all__ = ["INT8_ATTRIBUTE", "quantize_llm_int8"]
