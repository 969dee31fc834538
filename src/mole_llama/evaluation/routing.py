"""Router accuracy of a MoLE-Llama: does the learned router send each task's answer tokens to the right expert?

The routers only ever see the hidden states, never the task, so this is measured where it matters: on the
completion (answer) tokens of held-out prompt-completion examples, a token counting as "routed to" the expert with
the highest router weight averaged over layers (as the router training logs it). Per layer, the same share and the
entropy of the weights (0: one expert takes all; ln 2 for two experts: an even split) say where routing is unsure;
with hard routing each layer routes on its own, so one unsure layer is enough to send a token the wrong way.
"""

from ..routing import DEFAULT_EXPERT_FOR_TASK, completion_rows, expert_names_of, routed_token_counts

RESERVED_KEYS = ("tokens", "mean_weights", "per_layer")


def router_accuracy(model, tokenizer, examples, expert_for_task=None, batch_size: int = 8) -> dict:
    """Per task, the share of completion tokens whose layer-averaged router weight is highest for the task's
    expert (`expert_for_task`, default text -> "text", tts -> "speech"), with the learned router whatever routing
    the model was set to (restored after).

    Returns `{task: share, ..., "tokens": {task: completion tokens}, "mean_weights": {task: {expert: weight}},
    "per_layer": {task: {"share": [each layer's share of tokens routed to the task's expert], "entropy": [each
    layer's mean routing entropy, nats]}}}`.
    """
    expert_for_task = dict(DEFAULT_EXPERT_FOR_TASK if expert_for_task is None else expert_for_task)
    names = expert_names_of(model)
    unknown = {task: expert for task, expert in expert_for_task.items() if expert not in names}
    if unknown:
        raise ValueError(f"expert_for_task names experts the model lacks: {unknown} (its experts are {names})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    examples = list(examples)
    if not examples:
        raise ValueError("no examples: give at least one prompt-completion example")
    for example in examples:
        task = example.get("task") if hasattr(example, "get") else None
        if task not in expert_for_task or task in RESERVED_KEYS:
            raise ValueError(f"task {task!r} has no expected expert: expert_for_task covers {sorted(expert_for_task)}")
    counts = routed_token_counts(model, completion_rows(tokenizer, examples), batch_size)
    result = {
        task: int(count["chosen"][names.index(expert_for_task[task])]) / count["tokens"]
        for task, count in counts.items()
    }
    result["tokens"] = {task: count["tokens"] for task, count in counts.items()}
    result["mean_weights"] = {
        task: {name: float(count["weight_sums"][index]) / count["tokens"] for index, name in enumerate(names)}
        for task, count in counts.items()
    }
    result["per_layer"] = {
        task: {
            "share": (count["layer_chosen"][:, names.index(expert_for_task[task])] / count["tokens"]).tolist(),
            "entropy": (count["layer_entropy_sums"] / count["tokens"]).tolist(),
        }
        for task, count in counts.items()
    }
    return result


__all__ = ["router_accuracy"]
