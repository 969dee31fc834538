"""Training one LoRA expert with TRL's `SFTTrainer` and PEFT: the speech expert (TTS-Llama) or the text expert.

The speech expert also learns the unit tokens: they are added to the tokenizer, the embeddings are resized, and
only the new rows are trained, through PEFT's `trainable_token_indices` (the base rows stay frozen, so the base
model's text is untouched when the expert is off). The result is a plain PEFT adapter folder with the extended
tokenizer, which `build_mole_from_adapters` (or `mole-llama build-mole`) turns into a MoLE-Llama.
"""

from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
from trl import SFTConfig, SFTTrainer

from ..modeling.speech_units import add_speech_tokens

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ExpertLoraSettings:
    """LoRA of one expert; the defaults are the paper's (rank 128, alpha 256, every attention and MLP projection)."""

    r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    target_modules: list = field(default_factory=lambda: list(ALL_PROJECTIONS))

    def lora_config(self, new_token_rows: list | None = None, tied_embeddings: bool = True) -> LoraConfig:
        """PEFT's config; `new_token_rows` (the added unit tokens) become trainable rows of the embedding table,
        and of the output head too when it is not tied to the embeddings."""
        token_indices = None
        if new_token_rows:
            rows = list(new_token_rows)
            token_indices = rows if tied_embeddings else {"embed_tokens": rows, "lm_head": list(rows)}
        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
            trainable_token_indices=token_indices,
            task_type="CAUSAL_LM",
        )


class TokenRowsSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss comes from the model's own forward.

    TRL computes its loss with a fused LM head that multiplies by `lm_head.weight` directly; PEFT's trainable token
    rows are a delta held beside that weight, so the new unit tokens would never be scored as outputs (and never
    learnt). The model's own forward applies the delta; the loss is the same next-token cross-entropy over the
    completion, averaged over the batch's target tokens.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, "use_cache": False}
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def load_base_for_expert(base_model, num_speech_units: int | None = None, dtype=torch.float32, seed: int = 0):
    """The base model and tokenizer, with the speech tokens added (and the embeddings resized) when
    `num_speech_units` is given. Returns `(model, tokenizer, new_token_rows)`.

    The new rows are drawn around the mean of the existing ones (transformers' `mean_resizing`) from `seed`, so that
    a resumed run starts from the same rows as the run it continues."""
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if model.config.model_type != "llama":
        raise ValueError(
            f"{base_model} is a {model.config.model_type!r} model: experts are trained on the plain Llama base "
            f"(for a MoLE-Llama, use its config.base_model_name_or_path)"
        )
    new_rows = []
    if num_speech_units:
        speech = add_speech_tokens(tokenizer, num_speech_units)
        if model.config.vocab_size < len(tokenizer):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        new_rows = [speech.start, speech.end, *range(speech.first_unit, speech.first_unit + num_speech_units)]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, new_rows


def train_expert(
    base_model,
    train_dataset,
    args: SFTConfig,
    lora: ExpertLoraSettings | None = None,
    num_speech_units: int | None = None,
    eval_dataset=None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list | None = None,
) -> SFTTrainer:
    """Fine-tune one LoRA expert on prompt-completion examples and save the adapter (with the tokenizer) in
    `args.output_dir`.

    Args:
        base_model: folder or Hub id of the Llama instruct base.
        train_dataset: examples from `tts_examples` (speech expert) or `text_examples` (text expert).
        args: TRL's `SFTConfig` (see `recipes/` for the paper's and the embedded settings).
        lora: rank, alpha, dropout, targets (default: the paper's).
        num_speech_units: K for the speech expert (its unit tokens are added and trained); None for a text expert.
        resume_from_checkpoint: a checkpoint folder, or True for the latest in `args.output_dir`.

    Returns the trainer: `trainer.state.log_history` holds the losses, `trainer.model` the PEFT model.
    """
    lora = lora or ExpertLoraSettings()
    model, tokenizer, new_rows = load_base_for_expert(base_model, num_speech_units, seed=args.seed)
    peft_config = lora.lora_config(new_rows, tied_embeddings=bool(model.config.tie_word_embeddings))
    trainer_class = TokenRowsSFTTrainer if new_rows else SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        # The trained token rows are in the adapter; without save_embedding_layers=False PEFT would also store the
        # whole resized embedding table (and the tied head), ~230 MB for SmolLM2, for rows the base already has.
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(args.output_dir, save_embedding_layers=False)
        tokenizer.save_pretrained(args.output_dir)
    return trainer


__all__ = [
    "ALL_PROJECTIONS",
    "ExpertLoraSettings",
    "TokenRowsSFTTrainer",
    "load_base_for_expert",
    "train_expert",
]
