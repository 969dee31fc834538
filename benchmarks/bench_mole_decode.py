"""Decode speed and forward time of MoLE-Llama against its base, one LoRA, a merged expert and PEFT's X-LoRA.

Every variant carries the same two random LoRA adapters (saved as PEFT folders, so X-LoRA and the MoLE-Llama load
the very same weights) on the embedded SmolLM2-135M-Instruct, float32, CPU:

  base          plain LlamaForCausalLM
  peft-lora     PeftModel with one of the adapters (the single-LoRA reference)
  merged        that adapter merged into the weights (`merge_and_unload`): the base's cost
  mole-soft     MoLE-Llama, both experts, learned routing (router + both experts for every token)
  mole-hard     the same with `hard_routing=True`: top-1 per token; a step whose tokens all chose one expert
                computes only that one (always so in batch-1 decoding)
  mole-hard-cached  the same with `merged_expert_cache=True`: a single-expert step multiplies by the cached
                `W + s B A` instead of `W x + s B A x`
  mole-sequence-hard-cached  the same with `router_context="sequence"` (each layer routes by the running mean of
                its router logits over the sequence, with a prior towards text), as the shipped MoLE-Llama
  mole-forced   the same with `set_routing("speech")`: one expert, no router (and `-cached`, as above)
  x-lora        `peft.XLoraConfig` over the two adapters (a scaling pass, then the adapters' pass; no KV cache, which
                X-LoRA refuses)

Decoding is greedy with a KV cache, `--new-tokens` forced (`min_new_tokens`), from a short prompt; forward is one
pass over a `--prompt-tokens` prompt. The variants are timed round-robin in one process, so machine noise hits
them alike; medians and ratios are printed as Markdown tables.

    python benchmarks/bench_mole_decode.py [--ranks 16 128] [--new-tokens 32] [--repeats 5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, XLoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from mole_llama.conversion.peft_experts import build_mole_from_adapters
from mole_llama.embedded.base import embedded_base_path
from mole_llama.modeling.configuration_mole_llama import ALL_LLAMA_PROJECTIONS


def random_adapters(base_dir, rank: int, folder: Path) -> dict:
    """Two PEFT LoRA folders of rank `rank` on every projection, with non-zero B (no degenerate zero path)."""
    adapters = {}
    for index, name in enumerate(("text", "speech")):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_dir),
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_LLAMA_PROJECTIONS, task_type="CAUSAL_LM"),
        )
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if ".lora_B." in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
        model.save_pretrained(folder / name)
        adapters[name] = folder / name
    return adapters


def randomise_routers(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".router." in name and "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def variants(base_dir, adapters: dict) -> dict:
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapters["speech"]).eval()
    merged = (
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapters["speech"])
        .merge_and_unload()
        .eval()
    )
    soft = build_mole_from_adapters(base_dir, adapters).eval()
    randomise_routers(soft)
    hard = build_mole_from_adapters(base_dir, adapters, hard_routing=True).eval()
    hard.load_state_dict(soft.state_dict())
    cached = build_mole_from_adapters(base_dir, adapters, hard_routing=True, merged_expert_cache=True).eval()
    cached.load_state_dict(soft.state_dict())
    sequence = build_mole_from_adapters(
        base_dir, adapters, hard_routing=True, merged_expert_cache=True, router_context="sequence",
        router_context_prior={"text": 3.0, "speech": -3.0}, router_context_prior_tokens=2.0,
    ).eval()  # fmt: skip
    sequence.load_state_dict(soft.state_dict())
    forced = build_mole_from_adapters(base_dir, adapters).eval()
    forced.set_routing("speech")
    forced_cached = build_mole_from_adapters(base_dir, adapters, merged_expert_cache=True).eval()
    forced_cached.set_routing("speech")
    xlora_base = AutoModelForCausalLM.from_pretrained(base_dir)
    xlora_base.config.use_cache = False  # X-LoRA refuses a KV cache: its scaling pass re-reads the whole sequence
    xlora_config = XLoraConfig(
        task_type="CAUSAL_LM",
        hidden_size=xlora_base.config.hidden_size,
        xlora_depth=2,
        adapters={str(index): str(path) for index, path in enumerate(adapters.values())},  # PEFT names them 0, 1
    )
    xlora = get_peft_model(xlora_base, xlora_config).eval()
    return {"base": base, "peft-lora": peft, "merged": merged, "mole-soft": soft, "mole-hard": hard,
            "mole-hard-cached": cached, "mole-sequence-hard-cached": sequence, "mole-forced": forced,
            "mole-forced-cached": forced_cached, "x-lora": xlora}  # fmt: skip


def decode(model, prompt, new_tokens: int):
    return model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
    )  # fmt: skip


def time_round_robin(models: dict, job, repeats: int) -> dict:
    times = {name: [] for name in models}
    for model in models.values():  # warm-up
        job(model)
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            job(model)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.set_verbosity_error()
    base_dir = embedded_base_path()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 40_000, (1, 8), generator=generator)
    long_prompt = torch.randint(100, 40_000, (1, args.prompt_tokens), generator=generator)
    print(f"SmolLM2-135M-Instruct, float32, {torch.get_num_threads()} threads; medians of {args.repeats} "
          f"round-robin runs; decode: {args.new_tokens} greedy tokens after an 8-token prompt; forward: "
          f"{args.prompt_tokens} tokens")  # fmt: skip
    for rank in args.ranks:
        with tempfile.TemporaryDirectory() as folder:
            models = variants(base_dir, random_adapters(base_dir, rank, Path(folder)))
            with torch.inference_mode():
                decoding = time_round_robin(models, lambda m: decode(m, prompt, args.new_tokens), args.repeats)
                forward = time_round_robin(models, lambda m: m(input_ids=long_prompt), args.repeats)
        rate = {name: args.new_tokens / seconds for name, seconds in decoding.items()}
        print(f"\n### LoRA rank {rank}\n")
        print("| variant | decode tokens/s | vs base | vs peft-lora | forward ms | forward vs base |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in models:
            print(f"| {name} | {rate[name]:.1f} | {rate[name] / rate['base']:.2f} | "
                  f"{rate[name] / rate['peft-lora']:.2f} | {forward[name] * 1000:.1f} | "
                  f"{forward[name] / forward['base']:.2f} |")  # fmt: skip
        print(f"\nMoLE hard vs X-LoRA decode: {rate['mole-hard'] / rate['x-lora']:.2f}x (cached: "
              f"{rate['mole-hard-cached'] / rate['x-lora']:.2f}x; sequence context, cached: "
              f"{rate['mole-sequence-hard-cached'] / rate['x-lora']:.2f}x); MoLE soft vs X-LoRA: "
              f"{rate['mole-soft'] / rate['x-lora']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
