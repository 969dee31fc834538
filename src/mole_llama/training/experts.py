"""Training one LoRA expert with TRL's `SFTTrainer` and PEFT: the speech expert (TTS-Llama) or the text expert.

The speech expert also learns the unit tokens: they are added to the tokenizer, the embeddings are resized, and
only the new rows are trained, through PEFT's `trainable_token_indices` (the base rows stay frozen, so the base
model's text is untouched when the expert is off). The result is a plain PEFT adapter folder with the extended
tokenizer, which `build_mole_from_adapters` (or `mole-llama build-mole`) turns into a MoLE-Llama.
"""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
from trl import SFTConfig, SFTTrainer

from ..modeling.configuration_mole_llama import ExpertSpec
from ..modeling.speech_units import add_speech_tokens
from .checkpoints import save_on_main_process

PAPER_LORA = {"r": 128, "lora_alpha": 256, "lora_dropout": 0.05}
"""The paper's LoRA of each expert (every attention and MLP projection): what `train_expert` uses by default."""


def expert_lora_config(spec: ExpertSpec, new_token_rows: list | None = None, tied_embeddings: bool = True):
    """PEFT's config of `spec`; `new_token_rows` (the added unit tokens) become trainable rows of the embedding
    table, and of the output head too when it is not tied to the embeddings."""
    token_indices = None
    if new_token_rows:
        rows = list(new_token_rows)
        token_indices = rows if tied_embeddings else {"embed_tokens": rows, "lm_head": list(rows)}
    return spec.to_lora_config(trainable_token_indices=token_indices)


def speech_vocabulary_loss(logits: torch.Tensor, labels: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the speech vocabulary only (`vocabulary`: the unit ids and the end marker),
    at the positions whose label is in it: what constrained decoding chooses from at inference. `logits` (batch,
    positions, vocab) predict `labels` (batch, positions), already shifted."""
    lookup = torch.full((logits.shape[-1],), -100, dtype=torch.long, device=labels.device)
    lookup[vocabulary] = torch.arange(len(vocabulary), device=labels.device)
    targets = torch.where(labels >= 0, lookup[labels.clamp(min=0)], -100)
    if not (targets >= 0).any():
        raise ValueError("no speech-unit targets in the batch: the speech-vocabulary loss needs TTS examples")
    restricted = logits[..., vocabulary].float()
    return torch.nn.functional.cross_entropy(restricted.flatten(0, -2), targets.flatten(), ignore_index=-100)


class TokenRowsSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss comes from the model's own forward.

    TRL computes its loss with a fused LM head that multiplies by `lm_head.weight` directly; PEFT's trainable token
    rows are a delta held beside that weight, so the new unit tokens would never be scored as outputs (and never
    learnt). The model's own forward applies the delta; the loss is the same next-token cross-entropy over the
    completion, averaged over the batch's target tokens.

    With `speech_vocabulary` (token ids: the units and the end marker) the loss is `speech_vocabulary_loss` instead:
    a softmax over those tokens only, at the unit and end-marker targets, and the LM head runs only at those
    positions. The model then does not spend its first steps learning to suppress ~49k text tokens that
    constrained decoding never lets it choose (the full loss starts above ln(vocab)). Completion tokens outside that
    vocabulary (the start marker, which the TTS prompt supplies, and the end of turn after the end marker) are not
    trained.
    """

    def __init__(self, *args, speech_vocabulary=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.speech_vocabulary = None if speech_vocabulary is None else torch.as_tensor(speech_vocabulary)
        if self.speech_vocabulary is not None:
            self.loss_is_scaled_for_ga = False  # a batch mean: the Trainer divides it over accumulation steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, "use_cache": False}
        if self.speech_vocabulary is None:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")[:, 1:]
        inputs.pop("completion_mask", None)
        vocabulary = self.speech_vocabulary.to(labels.device)
        targeted = torch.isin(labels, vocabulary)
        positions = targeted.any(dim=0).nonzero().squeeze(-1)  # where any row of the batch has a speech target
        outputs = model(**inputs, logits_to_keep=positions)
        loss = speech_vocabulary_loss(outputs.logits, torch.where(targeted, labels, -100)[:, positions], vocabulary)
        return (loss, outputs) if return_outputs else loss


def load_base_for_expert(
    base_model, num_speech_units: int | None = None, dtype=torch.float32, seed: int = 0, unit_names=None
):
    """The base model and tokenizer, with the speech tokens added (and the embeddings resized) when
    `num_speech_units` is given. Returns `(model, tokenizer, new_token_rows)`.

    The new rows are drawn around the mean of the existing ones (transformers' `mean_resizing`) from `seed`, so that
    a resumed run starts from the same rows as the run it continues. With `unit_names` (e.g. the phones "AH", "K")
    each unit's row starts instead as the mean embedding of the text tokens spelling its name, so the model starts
    with a hint of what each unit sounds like."""
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
        if unit_names is not None:
            _rows_from_names(model, tokenizer, speech.first_unit, list(unit_names), num_speech_units)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, new_rows


def _rows_from_names(model, tokenizer, first_unit: int, names: list, num_units: int) -> None:
    if len(names) != num_units:
        raise ValueError(f"{len(names)} unit names for {num_units} units: give one name per unit")
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        for unit, name in enumerate(names):
            spelled = tokenizer(f" {name}", add_special_tokens=False)["input_ids"]
            table[first_unit + unit] = table[spelled].mean(dim=0)


def _load_adapter_weights(peft_model, adapter_dir) -> None:
    """Start `peft_model` from the weights of a saved adapter (any float dtype), refusing one of another shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{adapter_dir} holds no adapter_model.safetensors: give a saved PEFT adapter folder")
    state = load_file(weights)
    expected = {key for key, _ in peft_model.named_parameters() if _.requires_grad}
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as error:  # shape mismatch: another rank or unit count
        raise ValueError(f"{adapter_dir} does not fit this expert's LoRA settings: {str(error)[:300]}") from error
    missing = [key for key in result.missing_keys if key in expected]
    if missing:
        raise ValueError(f"{adapter_dir} lacks {len(missing)} trained weights of this expert, e.g. {missing[0]}")


def train_expert(
    base_model,
    train_dataset,
    args: SFTConfig,
    lora: ExpertSpec | None = None,
    num_speech_units: int | None = None,
    eval_dataset=None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list | None = None,
    unit_names: list | None = None,
    speech_vocabulary_loss: bool = False,
    init_adapter=None,
    save_dir=None,
) -> SFTTrainer:
    """Fine-tune one LoRA expert on prompt-completion examples and save the adapter (with the tokenizer) in
    `save_dir` (default `args.output_dir`, where the trainer's checkpoints go).

    Args:
        base_model: folder or Hub id of the Llama instruct base.
        train_dataset: examples from `tts_examples` (speech expert) or `text_examples` (text expert).
        args: TRL's `SFTConfig` (see `mole_llama/recipes/` for the paper's and the embedded settings).
        lora: the expert's rank, alpha, dropout and targets (default: the paper's, `PAPER_LORA`).
        num_speech_units: K for the speech expert (its unit tokens are added and trained); None for a text expert.
        resume_from_checkpoint: a checkpoint folder, or True for the latest in `args.output_dir`.
        unit_names: a name per unit (phones), to start the unit rows from the text tokens that spell them.
        speech_vocabulary_loss: the speech expert's loss over the unit tokens and end marker only
            (`TokenRowsSFTTrainer`), instead of over the whole vocabulary.
        init_adapter: an adapter folder of the same shape (e.g. the shipped speech expert) to start from instead of
            a fresh LoRA: training goes on across sessions and machines without checkpoints or optimizer state.

    Returns the trainer: `trainer.state.log_history` holds the losses, `trainer.model` the PEFT model.
    """
    lora = lora or ExpertSpec(name="speech" if num_speech_units else "text", **PAPER_LORA)
    model, tokenizer, new_rows = load_base_for_expert(
        base_model, num_speech_units, seed=args.seed, unit_names=unit_names
    )
    peft_config = expert_lora_config(lora, new_rows, tied_embeddings=bool(model.config.tie_word_embeddings))
    extra = {}
    if speech_vocabulary_loss:
        if not new_rows:
            raise ValueError("speech_vocabulary_loss is for the speech expert: give num_speech_units")
        extra["speech_vocabulary"] = new_rows[1:]  # the end marker and the units
    trainer_class = TokenRowsSFTTrainer if new_rows else SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        **extra,
    )
    if init_adapter is not None and not resume_from_checkpoint:
        _load_adapter_weights(trainer.model, init_adapter)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    save_dir = save_dir or args.output_dir

    def save():
        # The trained token rows are in the adapter; without save_embedding_layers=False PEFT would also store the
        # whole resized embedding table (and the tied head), ~230 MB for SmolLM2, for rows the base already has.
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(save_dir, save_embedding_layers=False)
        tokenizer.save_pretrained(save_dir)

    save_on_main_process(trainer, save)
    return trainer


__all__ = [
    "PAPER_LORA",
    "expert_lora_config",
    "TokenRowsSFTTrainer",
    "load_base_for_expert",
    "speech_vocabulary_loss",
    "train_expert",
]
