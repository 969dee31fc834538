"""The embedded demo (`make demo`), in its first form: MoLE-Llama on the real SmolLM2-135M-Instruct.

It converts the embedded base once, puts two fresh LoRA experts (rank 128, all projections, as in the paper) and
a router on it, and checks that the result answers exactly as the base model does, printing the router's expert
weights. The speech stages join it as they land (issues 3-5).
"""

import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from .chat import greedy_chat_reply
from .conversion.gguf import embedded_base_path
from .conversion.peft_experts import mole_config_from_base
from .modeling import MoLELlamaForCausalLM

QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow."]


def main() -> None:
    started = time.perf_counter()
    base_dir = embedded_base_path()
    print(f"embedded base: {base_dir}")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the fresh experts and routers are "missing" from the base checkpoint, as intended
    mole = MoLELlamaForCausalLM.from_pretrained(
        base_dir, config=mole_config_from_base(base.config, ["text", "speech"])
    ).eval()
    logging.set_verbosity(verbosity)
    print(f"MoLE-Llama: experts {mole.config.expert_names}, rank {mole.config.experts[0]['r']}, "
          f"{sum(p.numel() for p in mole.router_parameters()):,} router parameters")  # fmt: skip

    for question in QUESTIONS:
        base_ids = greedy_chat_reply(base, tokenizer, question, max_new_tokens=32)
        mole_ids = greedy_chat_reply(mole, tokenizer, question, max_new_tokens=32)
        print(f"\nQ: {question}\nSmolLM2:    {tokenizer.decode(base_ids, skip_special_tokens=True).strip()}")
        print(f"MoLE-Llama: {tokenizer.decode(mole_ids, skip_special_tokens=True).strip()}")
        print(f"identical tokens: {torch.equal(base_ids, mole_ids)}")

    inputs = tokenizer(QUESTIONS[0], return_tensors="pt")
    with torch.no_grad():
        weights = mole(**inputs, output_expert_weights=True).expert_weights
    mean = torch.stack(weights).mean(dim=(0, 1, 2))
    print("\nmean expert weights (fresh router, equal by construction): "
          + ", ".join(f"{name} {w:.3f}" for name, w in zip(mole.config.expert_names, mean.tolist())))  # fmt: skip
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
