"""The inference floor under the CLI, evaluation and training callbacks: chat turns and greedy speech units.

- one chat turn with a causal LM: the question through the model's chat template, a greedy answer back;
- batched greedy speech units for texts (the TTS prompt, constrained decoding), and their error rate against
  reference units, which training logs as its learning curve and evaluation reports.
"""

import jiwer
import torch

from .modeling.speech_units import (
    SPEECH_TOKEN_PREFIX,
    SpeechTokenIds,
    SpeechUnitsLogitsProcessor,
    deduplicate_units,
    tts_prompt_ids,
)


def pad_token_ids(sequences: list, pad_id: int, side: str) -> tuple:
    """Pad token id lists to one `(batch, longest)` tensor, on the left (generation) or right (teacher forcing);
    done here so the caller's tokenizer is never changed."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


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
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=blocked or None
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
