"""Forward time of MoLE-Llama against its base, on the embedded SmolLM2-135M-Instruct (CPU).

Variants, timed round-robin in one process so that machine noise hits them alike:
  base                 plain LlamaForCausalLM
  peft-lora            PeftModel with one rank-r LoRA on all projections (the single-adapter reference)
  mole-learned         MoLE-Llama, two rank-r experts, learned routing (router + both experts per token)
  mole-speech          the same model with set_routing("speech") (one expert, no router)
  mole-base            the same model with set_routing("base") (no expert)

Prints a Markdown table of median milliseconds and ratios to the base.

    python benchmarks/bench_mole_forward.py [--tokens 256] [--repeats 15] [--rank 128]
"""

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from mole_llama.conversion.gguf import embedded_base_path
from mole_llama.conversion.peft_experts import mole_config_from_base
from mole_llama.modeling import MoLELlamaForCausalLM
from mole_llama.modeling.configuration_mole_llama import ALL_LLAMA_PROJECTIONS


def randomise_experts(model, seed=0):
    """Non-zero LoRA B and router weights, so no variant is timed on a degenerate (all-zero) path."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name or ".router." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rank", type=int, default=128)
    args = parser.parse_args()
    logging.set_verbosity_error()

    base_dir = embedded_base_path()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    config = mole_config_from_base(base.config, [{"name": "text", "r": args.rank}, {"name": "speech", "r": args.rank}])
    mole = MoLELlamaForCausalLM.from_pretrained(base_dir, config=config).eval()
    randomise_experts(mole)
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=ALL_LLAMA_PROJECTIONS)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora).eval()
    randomise_experts(peft)

    def with_routing(routing):
        def run(ids):
            mole.set_routing(routing)
            return mole(ids)

        return run

    variants = {
        "base": base,
        "peft-lora": peft,
        "mole-learned": with_routing(None),
        "mole-speech": with_routing("speech"),
        "mole-base": with_routing("base"),
    }
    ids = torch.randint(0, base.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    times = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():  # warm-up
            run(ids)
        for _ in range(args.repeats):
            for name, run in variants.items():
                started = time.perf_counter()
                run(ids)
                times[name].append(time.perf_counter() - started)

    base_ms = statistics.median(times["base"]) * 1000
    print(f"\nSmolLM2-135M-Instruct, {args.tokens}-token prompt, float32, {torch.get_num_threads()} threads, "
          f"LoRA rank {args.rank}, median of {args.repeats} round-robin runs\n")  # fmt: skip
    print("| variant | median ms | ratio to base |")
    print("|---|---:|---:|")
    for name, samples in times.items():
        median_ms = statistics.median(samples) * 1000
        print(f"| {name} | {median_ms:.1f} | {median_ms / base_ms:.2f} |")


if __name__ == "__main__":
    main()
