"""The inference floor under the CLI, evaluation and training callbacks: chat turns and greedy speech units.

- one chat turn with a causal LM: the question through the model's chat template, a greedy answer back;
- batched greedy speech units for texts (the TTS prompt, constrained decoding), and their error rate against
  reference units, which training logs as its learning curve and evaluation reports.
"""

import jiwer
import torch
from transformers import GenerationMixin

from .modeling.speech_units import (
    SPEECH_TOKEN_PREFIX,
    SpeechTokenIds,
    SpeechUnitsLogitsProcessor,
    deduplicate_units,
    pad_token_ids,
    tts_prompt_ids,
)


def generate_text(model, **kwargs) -> torch.Tensor:
    """transformers' text generation on any causal LM, a speaking model too (whose own `generate` speaks), so one
    loaded speaking folder serves both text and speech."""
    return GenerationMixin.generate(model, **kwargs)


def speech_token_ids(tokenizer) -> list:
    """Ids of the speech markers and unit tokens the tokenizer holds (none for a plain text tokenizer)."""
    return sorted(i for name, i in tokenizer.get_vocab().items() if name.startswith(SPEECH_TOKEN_PREFIX))


def greedy_chat_reply(model, tokenizer, question: str, max_new_tokens: int = 64) -> torch.Tensor:
    """Token ids of the model's greedy reply to `question` (the prompt not included). The reply is text: speech
    tokens, when the tokenizer has them, are never chosen (speaking goes through the text-to-speech path)."""
    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    blocked = speech_token_ids(tokenizer)
    with torch.no_grad():
        output = generate_text(
            model, **inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=blocked or None
        )
    return output[0, inputs["input_ids"].shape[1] :]


@torch.no_grad()
def greedy_speech_units(model, tokenizer, texts, num_units: int, max_new_tokens: int = 256, batch_size: int = 8):
    """The model's greedy speech units for each text (batched, left-padded, constrained to units and the end
    marker): what a speaking model's LLM says before any sampling."""
    speech = SpeechTokenIds.from_tokenizer(tokenizer, num_units)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [tts_prompt_ids(tokenizer, text, speech) for text in texts]
    was_training = model.training
    model.eval()
    units = []
    try:
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = pad_token_ids(prompts[start : start + batch_size], pad_id, side="left")
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                logits_processor=[SpeechUnitsLogitsProcessor(speech)],
                eos_token_id=speech.end,
                pad_token_id=pad_id,
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            units += [speech.token_ids_to_units(row) for row in output[:, input_ids.shape[1] :]]
    finally:
        model.train(was_training)
    return units


def unit_error_rate(references: list, hypotheses: list, deduplicate: bool = True) -> float:
    """Edit distance between unit sequences over the references' length (WER with units as words), after
    run-length collapsing both (`deduplicate`), as the LLM speaks them."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need as many hypotheses as references, and some: {len(references)} vs {len(hypotheses)}")
    if deduplicate:
        references = [deduplicate_units(units)[0] for units in references]
        hypotheses = [deduplicate_units(units)[0] for units in hypotheses]
    if any(not units for units in references):
        raise ValueError("a reference has no units")
    return jiwer.wer([" ".join(map(str, u)) for u in references], [" ".join(map(str, u)) or "-" for u in hypotheses])
