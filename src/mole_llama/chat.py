"""The inference floor under the CLI, evaluation, the QA builder and training callbacks: chat turns, greedy
answers and greedy speech units.

- one chat turn with a causal LM: the question through the model's chat template, a greedy answer back;
- greedy answers to many questions, batched with left padding (the QA builder's targets, retention's answers);
- batched greedy speech units for texts (the TTS prompt, constrained decoding), and their error rate against
  reference units, which training logs as its learning curve and evaluation reports.
"""

from contextlib import contextmanager

import jiwer
import torch
from tqdm.auto import tqdm
from transformers import GenerationMixin

from .modeling.speech_units import (
    SPEECH_TOKEN_PREFIX,
    SpeechTokenIds,
    SpeechUnitsLogitsProcessor,
    collapsed_units_cap,
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


def chat_ids(tokenizer, messages: list, add_generation_prompt: bool) -> list:
    """Token ids of `messages` through the tokenizer's chat template (a plain list, whatever the version returns)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def pad_id_of(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
    return pad_id


@contextmanager
def evaluating(*models):
    """Eval mode (no dropout) for the duration, then each model's previous mode back."""
    modes = [model.training for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def check_questions(questions) -> list:
    if isinstance(questions, str):
        raise ValueError("questions must be a list of strings, got one string: wrap it in a list")
    questions = list(questions)
    if not questions:
        raise ValueError("no questions: give at least one")
    bad = [question for question in questions if not isinstance(question, str)]
    if bad:
        raise ValueError(f"questions must be strings, got a {type(bad[0]).__name__}")
    return questions


def chat_prompts(tokenizer, questions) -> list:
    """Token ids of each question as one user turn through the chat template, with the generation prompt: what the
    model sees before it answers (as `greedy_chat_reply` prompts it)."""
    return [
        chat_ids(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
        for question in check_questions(questions)
    ]


def greedy_answers(
    model, tokenizer, questions, max_new_tokens: int = 32, batch_size: int = 16, progress=True, return_finished=False
) -> list:
    """Greedy text answers to `questions`, batched: the same answers as `greedy_chat_reply` one question at a time
    (left padding, speech tokens never chosen), decoded without special tokens and stripped. With
    `return_finished`, `(answer, finished)` pairs: `finished` is False when the answer was cut at `max_new_tokens`."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be positive, got {batch_size} and {max_new_tokens}")
    prompts = chat_prompts(tokenizer, questions)
    pad_id, blocked = pad_id_of(tokenizer), speech_token_ids(tokenizer)
    answers = []
    batches = range(0, len(prompts), batch_size)
    with evaluating(model), torch.no_grad():
        for start in tqdm(batches, desc="greedy answers", disable=not progress):
            input_ids, attention_mask = pad_token_ids(prompts[start : start + batch_size], pad_id, side="left")
            output = generate_text(
                model,
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                suppress_tokens=blocked or None,
                pad_token_id=pad_id,
            )
            replies = output[:, input_ids.shape[1] :]
            texts = [text.strip() for text in tokenizer.batch_decode(replies, skip_special_tokens=True)]
            if return_finished:
                ended = torch.isin(replies, torch.tensor(_end_ids(model, tokenizer), device=replies.device)).any(dim=1)
                texts = list(zip(texts, ended.tolist()))
            answers.extend(texts)
    return answers


def _end_ids(model, tokenizer) -> list:
    """The token ids that end an answer (the generation config's eos, else the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def greedy_speech_units(
    model, tokenizer, texts, num_units: int, max_new_tokens: int = 256, batch_size: int = 8, collapsed: bool = False
):
    """The model's greedy speech units for each text (batched, left-padded, constrained to units and the end
    marker): what a speaking model's LLM says before any sampling. With `collapsed` (a speech expert that speaks
    run-length collapsed units), each text's units are cut at its `collapsed_units_cap`, as a speaking model cuts
    a piece's (one cap for the whole text: give texts of one piece, like the learning curve's sentences), and
    `max_new_tokens` bounds them all."""
    speech = SpeechTokenIds.from_tokenizer(tokenizer, num_units)
    caps = [min(collapsed_units_cap(text), max_new_tokens) if collapsed else max_new_tokens for text in texts]
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
                max_new_tokens=max(caps[start : start + batch_size]),
                do_sample=False,
            )
            rows = output[:, input_ids.shape[1] :]
            units += [speech.token_ids_to_units(row[:cap]) for row, cap in zip(rows, caps[start : start + batch_size])]
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


__all__ = [
    "chat_ids",
    "chat_prompts",
    "check_questions",
    "evaluating",
    "generate_text",
    "greedy_answers",
    "greedy_chat_reply",
    "greedy_speech_units",
    "pad_id_of",
    "speech_token_ids",
    "unit_error_rate",
]
