"""One chat turn with a causal LM: the question through the model's chat template, a greedy answer back."""

import torch

from .modeling.speech_units import SPEECH_TOKEN_PREFIX


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
