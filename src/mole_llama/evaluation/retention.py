"""Text-skill retention: does the speaking model still answer text questions like its base model?

Adding speech experts and a router must not cost the base model its text skills. Three views of that, from cheap
to strict: `accuracy` of greedy answers on questions with known answers, `agreement` of the model's greedy answers
with the base's, and `teacher_forced_divergence`: how far the model's next-token distributions drift from the
base's along the base's own answers (KL 0 and full greedy agreement for an unchanged model).
"""

import re

import torch

from ..chat import chat_prompts, evaluating, pad_id_of
from ..modeling.speech_units import pad_token_ids


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
    pad_id = pad_id_of(tokenizer)
    total, agreeing, count = 0.0, 0, 0
    with evaluating(model, reference), torch.no_grad():
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


__all__ = ["accuracy", "agreement", "teacher_forced_divergence"]
