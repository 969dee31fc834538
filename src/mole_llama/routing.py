"""Routing statistics of a MoLE-Llama, for router training (its logged shares) and evaluation (router accuracy).

Measured on the completion (answer) tokens of prompt-completion examples with a `task`: per task, how many tokens
each expert took (by the router weight averaged over layers, and per layer), the weights' sums and their entropy,
with the learned router in eval mode whatever routing the model was set to.
"""

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .chat import chat_ids
from .modeling.speech_units import pad_token_ids

DEFAULT_EXPERT_FOR_TASK = {"text": "text", "tts": "speech"}


def expert_names_of(model) -> list:
    """The model's expert names, or a clear error for a model without a router."""
    if not callable(getattr(model, "set_routing", None)) or not getattr(model.config, "expert_names", None):
        raise ValueError(f"routing is measured on a MoLE-Llama with experts, got {type(model).__name__}")
    return list(model.config.expert_names)


@contextmanager
def learned_routing(model):
    """The learned router in eval mode for the duration, then the model's previous routing and mode back."""
    expert_names_of(model)
    routing, training = model.config.routing, model.training
    try:
        model.set_routing(None)
        model.eval()
        yield
    finally:
        model.set_routing(routing)
        model.train(training)


def layer_weights(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Each layer's router weights, `(layers, batch, seq, num_experts)`, in float32."""
    output = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask, output_expert_weights=True)
    return torch.stack([weights.float() for weights in output.expert_weights])


def _entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of routing weights along the last axis."""
    return -(weights * weights.clamp(min=1e-12).log()).sum(dim=-1)


def _completion_ids(tokenizer, example) -> tuple:
    """`(full_ids, prompt_length)` of one conversational prompt-completion example through the chat template."""
    missing = [key for key in ("prompt", "completion", "task") if key not in example]
    if missing:
        raise ValueError(f"an example lacks {missing}: give prompt-completion examples with a task (see sft_data)")
    prompt, completion = example["prompt"], example["completion"]
    if not isinstance(prompt, list) or not isinstance(completion, list) or not completion:
        raise ValueError("prompt and completion must be lists of {'role', 'content'} messages (conversational)")
    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = chat_ids(tokenizer, prompt + completion, add_generation_prompt=False)
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise ValueError(
            "the chat template does not render the prompt (with the generation prompt) as a prefix of the whole "
            "conversation, so the completion tokens cannot be told apart; use a template that does (e.g. SmolLM2's)"
        )
    return full_ids, len(prompt_ids)


def completion_rows(tokenizer, examples) -> list:
    """Prompt-completion examples (with a `task`) -> `(task, full_ids, prompt_length)` rows for
    `routed_token_counts`: tokenized once, then measured as often as needed (the router training's probe)."""
    return [(example["task"], *_completion_ids(tokenizer, example)) for example in examples]


def routed_token_counts(model, rows, batch_size: int = 8) -> dict:
    """Per task: `chosen` (completion tokens whose layer-averaged router weight is highest for each expert),
    `weight_sums` (those weights summed per expert), `tokens`, and per layer `layer_chosen` `(layers, experts)` and
    `layer_entropy_sums` `(layers,)`; with the learned router in eval mode (the model's routing and mode are
    restored after)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num_experts = len(expert_names_of(model))
    counts = {}
    with learned_routing(model), torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            input_ids, attention_mask = pad_token_ids(
                [ids for _, ids, _ in batch], 0, side="right"
            )  # masked: any pad id
            layers = layer_weights(model, input_ids, attention_mask.to(model.device)).cpu()
            weights = layers.mean(dim=0)
            for row, (task, ids, prompt_length) in enumerate(batch):
                completion = weights[row, prompt_length : len(ids)]  # (completion tokens, experts)
                per_layer = layers[:, row, prompt_length : len(ids)]  # (layers, completion tokens, experts)
                task_counts = counts.setdefault(task, {
                    "chosen": torch.zeros(num_experts, dtype=torch.long), "weight_sums": 0, "tokens": 0,
                    "layer_chosen": torch.zeros(layers.shape[0], num_experts, dtype=torch.long),
                    "layer_entropy_sums": torch.zeros(layers.shape[0]),
                })  # fmt: skip
                task_counts["chosen"] += torch.bincount(completion.argmax(dim=-1), minlength=num_experts)
                task_counts["weight_sums"] = task_counts["weight_sums"] + completion.sum(dim=0)
                task_counts["tokens"] += completion.shape[0]
                task_counts["layer_chosen"] += F.one_hot(per_layer.argmax(dim=-1), num_experts).sum(dim=1)
                task_counts["layer_entropy_sums"] += _entropy(per_layer).sum(dim=1)
    return counts


def expert_weight_trace(model, tokenizer, text: str) -> tuple:
    """`(tokens, weights)` for one string, tokenized as it is (no special tokens added; render a chat with
    `apply_chat_template(..., tokenize=False)` first): each token's text and its layer-averaged router weights,
    `(seq, num_experts)` in `model.config.expert_names` order, with the learned router. For plotting the routing."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"text {text!r} tokenizes to no tokens")
    with learned_routing(model), torch.no_grad():
        weights = layer_weights(model, torch.tensor([ids])).mean(dim=0)[0]
    return [tokenizer.decode([token]) for token in ids], weights.cpu().numpy().astype(np.float32)


__all__ = [
    "DEFAULT_EXPERT_FOR_TASK",
    "completion_rows",
    "expert_names_of",
    "expert_weight_trace",
    "layer_weights",
    "learned_routing",
    "routed_token_counts",
]
