"""Text-skill retention: does the speaking model still answer text questions like its base model?

Adding speech experts and a router must not cost the base model its text skills. Three views of that, from cheap
to strict: `accuracy` of greedy answers on questions with known answers, `agreement` of the model's greedy answers
with the base's, and `teacher_forced_divergence`: how far the model's next-token distributions drift from the
base's along the base's own answers (KL 0 and full greedy agreement for an unchanged model).
"""

import re
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from ..chat import generate_text, speech_token_ids
from ..modeling.speech_units import pad_token_ids


def _chat_ids(tokenizer, messages: list, add_generation_prompt: bool) -> list:
    """Token ids of `messages` through the tokenizer's chat template (a plain list, whatever the version returns)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _pad_id(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
    return pad_id


@contextmanager
def _evaluating(*models):
    """Eval mode (no dropout) for the duration, then each model's previous mode back."""
    modes = [model.training for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def _check_questions(questions) -> list:
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
        _chat_ids(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
        for question in _check_questions(questions)
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
    pad_id, blocked = _pad_id(tokenizer), speech_token_ids(tokenizer)
    answers = []
    batches = range(0, len(prompts), batch_size)
    with _evaluating(model), torch.no_grad():
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


def teacher_forced_divergence(model, reference, tokenizer, questions, answers, batch_size: int = 16) -> dict:
    """Teacher-force each question's chat prompt followed by its answer (typically the reference's own greedy
    answer) through both models; over the answer tokens, return `kl`, the mean KL(reference || model) between the
    next-token distributions, and `token_agreement`, the share of positions where both pick the same greedy token.

    `answers` are strings, tokenized without special tokens (so no end-of-turn token is scored), or token id lists
    used as they are (e.g. raw generated ids). Only the first `reference.config.vocab_size` logits of `model` are
    compared (renormalised), as the model may have extra (speech) tokens the reference lacks.
    """
    prompts = chat_prompts(tokenizer, questions)
    if isinstance(answers, str) or len(answers) != len(prompts):
        raise ValueError(f"need one answer per question: {len(prompts)} questions, got {len(answers)} answers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    answer_ids = [
        tokenizer(answer, add_special_tokens=False)["input_ids"] if isinstance(answer, str) else list(answer)
        for answer in answers
    ]
    vocab_size = reference.config.vocab_size
    if any(int(token) >= vocab_size or int(token) < 0 for ids in answer_ids for token in ids):
        raise ValueError(f"an answer has a token id outside the reference's vocabulary of {vocab_size}")
    pad_id = _pad_id(tokenizer)
    total, agreeing, count = 0.0, 0, 0
    with _evaluating(model, reference), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            pairs = list(zip(prompts[start : start + batch_size], answer_ids[start : start + batch_size]))
            input_ids, attention_mask = pad_token_ids(
                [prompt + answer for prompt, answer in pairs], pad_id, side="right"
            )
            # The logit at position t predicts token t + 1: score the positions just before each answer token.
            scored = torch.zeros_like(input_ids, dtype=torch.bool)
            for row, (prompt, answer) in enumerate(pairs):
                scored[row, len(prompt) - 1 : len(prompt) + len(answer) - 1] = True
            if not scored.any():
                continue
            logits = []
            for network in (reference, model):
                inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
                output = network(**{key: value.to(network.device) for key, value in inputs.items()})
                if output.logits.shape[-1] < vocab_size:
                    raise ValueError(
                        f"the model has {output.logits.shape[-1]} logits, fewer than the reference's vocabulary "
                        f"of {vocab_size}: compare a model with its own base"
                    )
                logits.append(output.logits[..., :vocab_size][scored.to(network.device)].float().cpu())
            reference_logp, model_logp = (values.log_softmax(dim=-1) for values in logits)
            kl = (reference_logp.exp() * (reference_logp - model_logp)).sum(dim=-1)
            total += float(kl.sum())
            agreeing += int((reference_logp.argmax(dim=-1) == model_logp.argmax(dim=-1)).sum())
            count += kl.numel()
    if count == 0:
        raise ValueError("the answers have no tokens: there is nothing to compare")
    return {"kl": total / count, "token_agreement": agreeing / count}


def _normalize(text: str) -> str:
    return " ".join(str(text).split())


def _check_pairs(answers, others, name: str) -> None:
    if isinstance(answers, str) or isinstance(others, str):
        raise ValueError(f"answers and {name} must be lists of strings, not one string")
    if len(answers) != len(others) or len(answers) == 0:
        raise ValueError(f"need as many answers as {name}, and at least one: {len(answers)} vs {len(others)}")


def agreement(answers, reference_answers) -> float:
    """Share of answers identical to the reference's (whitespace normalised): how often the greedy answer kept."""
    _check_pairs(answers, reference_answers, "reference answers")
    return sum(_normalize(a) == _normalize(b) for a, b in zip(answers, reference_answers)) / len(answers)


def accuracy(answers, expected) -> float:
    """Share of answers containing the expected answer as a whole word or number (case- and whitespace-
    normalised): "12" counts in "The answer is 12." but not in "120" or "0.12"."""
    _check_pairs(answers, expected, "expected answers")
    hits = 0
    for answer, target in zip(answers, expected):
        target = _normalize(target).lower()
        if not target:
            raise ValueError("an expected answer is empty")
        # Not inside a longer word or number: no word character beside it, nor a decimal or thousands separator.
        pattern = rf"(?<!\w)(?<!\d[.,]){re.escape(target)}(?!\w)(?![.,]\d)"
        hits += re.search(pattern, _normalize(answer).lower()) is not None
    return hits / len(answers)


__all__ = ["accuracy", "agreement", "chat_prompts", "greedy_answers", "teacher_forced_divergence"]
