"""One chat turn with a causal LM: the question through the model's chat template, a greedy answer back."""

import torch


def greedy_chat_reply(model, tokenizer, question: str, max_new_tokens: int = 64) -> torch.Tensor:
    """Token ids of the model's greedy reply to `question` (the prompt not included)."""
    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :]
