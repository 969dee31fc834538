"""MoLE stage 2: base and experts frozen, only the routers trained, on mixed text-QA and TTS examples (TRL SFT).

While it trains, the trainer logs the routing: for each task of a small fixed probe set, the share of the answer
tokens that the routers (averaged over layers) send mainly to each expert, e.g. `routing/tts->speech: 0.97`.
"""

from trl import SFTConfig, SFTTrainer

from ..evaluation.routing import completion_rows, routed_token_counts
from ..modeling.modeling_mole_llama import MoLELlamaForCausalLM
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


class RouterSFTTrainer(SFTTrainer):
    """`SFTTrainer` that logs `routing_shares` of a fixed probe each time it logs the loss."""

    def __init__(self, *args, routing_probe: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.routing_probe = routing_probe or []

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.routing_probe and "loss" in logs:
            logs.update(routing_shares(self.accelerator.unwrap_model(self.model), self.routing_probe))
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
) -> RouterSFTTrainer:
    """Train the routers of `model` (everything else frozen) on `mixed_examples` and save the MoLE-Llama (with the
    tokenizer) in `args.output_dir`. Returns the trainer; its log history holds the losses and routing shares."""
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
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    return trainer


__all__ = ["RouterSFTTrainer", "probe_examples", "routing_shares", "tokenize_probe", "train_router"]
