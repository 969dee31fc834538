"""MoLE stage 2: base and experts frozen, only the routers trained, on mixed text-QA and TTS examples (TRL SFT).

While it trains, the trainer logs the routing: for each task of a small fixed probe set, the share of the answer
tokens that the routers (averaged over layers) send mainly to each expert, e.g. `routing/tts->speech: 0.97`.

With `routing_loss_weight > 0` the routers also learn from the task of each example (a speech answer belongs to the
speech expert, a text answer to the text expert): a cross-entropy of every layer's router weights against that
expert, on every token of the example. The paper trains the routers with the LM loss alone; that leaves a share of each
layer's weight on the other expert (measured: speech answers 79% routed to speech, text tokens 8% speech), which
costs the base's text skills and, with hard routing, sends whole layers the wrong way. Still only the routers train.
"""

from contextlib import contextmanager

import torch
from trl import SFTConfig, SFTTrainer

from ..modeling.modeling_mole_llama import MoLELlamaForCausalLM, MoLERouter
from ..modeling.speech_units import SPEECH_START
from ..routing import DEFAULT_EXPERT_FOR_TASK, completion_rows, routed_token_counts
from .checkpoints import save_on_main_process
from .sft_data import TASK_COLUMN

PROBE_EXAMPLES_PER_TASK = 4


def tokenize_probe(tokenizer, examples) -> list:
    """Prompt-completion examples -> rows for `routing_shares` (tokenized once, measured at every log)."""
    return completion_rows(tokenizer, examples)


def routing_shares(model: MoLELlamaForCausalLM, probe: list) -> dict:
    """`{"routing/<task>-><expert>": share}`: per task, the share of answer tokens whose layer-averaged router
    weight is highest for that expert."""
    names = model.config.expert_names
    return {
        f"routing/{task}->{name}": float(count["chosen"][index]) / max(count["tokens"], 1)
        for task, count in routed_token_counts(model, probe).items()
        for index, name in enumerate(names)
    }


def task_routing_loss(
    expert_weights, labels: torch.Tensor, attention_mask: torch.Tensor, speech_marker_id: int, expert_index: dict
) -> torch.Tensor:
    """Mean cross-entropy of the router weights (one `(batch, seq, experts)` tensor per layer) against each example's
    task expert, over all its tokens (`attention_mask`): the prompt's too, since their keys and values feed every
    answer token (measured: prompt tokens left to the LM loss went 5-64% to the other expert, layer by layer). An
    example is speech when its answer (`labels != -100`) holds the speech start marker; `expert_index` maps "tts"
    and "text" to expert positions."""
    attended = attention_mask.bool()
    is_speech = (labels == speech_marker_id).any(dim=1, keepdim=True)
    target = torch.where(is_speech, expert_index["tts"], expert_index["text"]).expand_as(labels)
    weights = torch.stack([layer.float() for layer in expert_weights])  # (layers, batch, seq, experts)
    chosen = weights.gather(-1, target.expand(weights.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    log_weights = chosen.clamp(min=1e-9).log() * attended
    return -log_weights.sum() / (attended.sum() * weights.shape[0]).clamp(min=1)


@contextmanager
def recorded_router_weights(model):
    """A list that fills with each router's output weights during the `with` block (TRL's fused LM head returns
    only log-probabilities, so the weights are taken where the routers make them)."""
    weights = []
    hooks = [
        module.register_forward_hook(lambda _module, _inputs, output: weights.append(output))
        for module in model.modules()
        if isinstance(module, MoLERouter)
    ]
    try:
        yield weights
    finally:
        for hook in hooks:
            hook.remove()


class RouterSFTTrainer(SFTTrainer):
    """`SFTTrainer` that logs `routing_shares` of a fixed probe each time it logs the loss, and with
    `routing_loss_weight` adds `task_routing_loss` to the LM loss (logged as `routing_loss`)."""

    def __init__(self, *args, routing_probe: list | None = None, routing_loss_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if routing_loss_weight < 0:
            raise ValueError(f"routing_loss_weight={routing_loss_weight} must be >= 0 (0: the LM loss alone)")
        if routing_loss_weight and self.args.gradient_checkpointing:
            raise ValueError(
                "the routing loss needs the routers' weights with their gradients, which gradient checkpointing "
                "recomputes out of sight: set gradient_checkpointing=false or routing_loss_weight=0"
            )
        self.routing_probe = routing_probe or []
        self.routing_loss_weight = float(routing_loss_weight)
        names = list(self.accelerator.unwrap_model(self.model).config.expert_names)
        self.expert_index = {task: names.index(expert) for task, expert in DEFAULT_EXPERT_FOR_TASK.items()}
        self.speech_marker_id = self.processing_class.convert_tokens_to_ids(SPEECH_START)
        self._routing_losses = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.routing_loss_weight:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        with recorded_router_weights(model) as expert_weights:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(labels) if mask is None else mask
        routing = task_routing_loss(expert_weights, labels, mask, self.speech_marker_id, self.expert_index)
        self._routing_losses.append(float(routing.detach()))
        # Like TRL's MoE aux loss: a per-micro-batch mean, spread over the accumulation steps that the LM loss sums
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        extra = self.routing_loss_weight * routing / steps
        return (result[0] + extra, *result[1:]) if return_outputs else result + extra

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.routing_probe and "loss" in logs:
            logs.update(routing_shares(self.accelerator.unwrap_model(self.model), self.routing_probe))
        if self._routing_losses and "loss" in logs:
            logs["routing_loss"] = sum(self._routing_losses) / len(self._routing_losses)
            self._routing_losses = []
        super().log(logs, start_time)


def probe_examples(dataset, per_task: int = PROBE_EXAMPLES_PER_TASK) -> list:
    """The first `per_task` examples of each task in a mixed dataset."""
    chosen, seen = [], {}
    for example in dataset:
        task = example[TASK_COLUMN]
        if seen.get(task, 0) < per_task:
            chosen.append(example)
            seen[task] = seen.get(task, 0) + 1
    return chosen


def train_router(
    model: MoLELlamaForCausalLM,
    tokenizer,
    train_dataset,
    args: SFTConfig,
    eval_dataset=None,
    resume_from_checkpoint: str | bool | None = None,
    routing_loss_weight: float = 0.0,
    save_dir=None,
) -> RouterSFTTrainer:
    """Train the routers of `model` (everything else frozen) on `mixed_examples` and save the MoLE-Llama (with the
    tokenizer) in `save_dir` (default `args.output_dir`, where the trainer's checkpoints go). Returns the trainer;
    its log history holds the losses and routing shares.
    `routing_loss_weight` > 0 adds the task routing loss (0: the paper's LM loss alone)."""
    if not isinstance(model, MoLELlamaForCausalLM):
        raise ValueError(f"router training needs a MoLE-Llama (build one with build-mole), got {type(model).__name__}")
    if len(model.config.experts) < 2:
        raise ValueError(f"the model has {len(model.config.experts)} expert(s): a router needs at least two to choose")
    if model.config.routing is not None:
        raise ValueError(
            f"the model's routing is forced to {model.config.routing!r}: call model.set_routing(None) to train the "
            f"learned router"
        )
    if TASK_COLUMN not in (train_dataset.column_names or []):
        raise ValueError(f"the dataset lacks the {TASK_COLUMN!r} column: build it with mixed_examples(tts, text)")
    model.freeze_all_but_routers()
    probe = tokenize_probe(tokenizer, probe_examples(train_dataset))
    trainer = RouterSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset.remove_columns(TASK_COLUMN),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        routing_probe=probe,
        routing_loss_weight=routing_loss_weight,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    save_dir = save_dir or args.output_dir

    def save():
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)

    save_on_main_process(trainer, save)
    return trainer


__all__ = [
    "RouterSFTTrainer",
    "probe_examples",
    "routing_shares",
    "task_routing_loss",
    "tokenize_probe",
    "train_router",
]
