"""Training throughput of the speech (TTS) expert on the embedded SmolLM2 base: TRL's SFTTrainer (what
`mole-llama train-tts` runs) against a plain PyTorch forward/backward/AdamW loop over the very same batches and
the same PEFT model, so the difference is the framework's overhead. Prints the median step time of each, tokens/s
and the ratio, measured side by side in one run.

    python benchmarks/bench_sft_throughput.py [--sentences 32] [--steps 8] [--batch-size 4] [--rank 16]
"""

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging
from trl import SFTConfig

from mole_llama.data.audio import resample
from mole_llama.embedded.base import embedded_base_path
from mole_llama.embedded.festival import fortune_sentences, is_held_out, synthesize
from mole_llama.modeling.configuration_mole_llama import ExpertSpec
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.training.experts import TokenRowsSFTTrainer, expert_lora_config, load_base_for_expert
from mole_llama.training.semantic_tokenizer import fit_semantic_tokenizer
from mole_llama.training.sft_data import tts_examples


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self.started = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--units", type=int, default=256)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)

    texts = [s for s in fortune_sentences() if not is_held_out(s)][: args.sentences]
    audio = [{"array": resample(*synthesize(text, "kal"), 16000), "sampling_rate": 16000} for text in texts]
    tokenizer_units = fit_semantic_tokenizer([{"audio": a} for a in audio], SemanticUnitsConfig(num_units=args.units))
    rows = [{"text": t, "semantic_units": tokenizer_units.encode(a["array"])[0].tolist()} for t, a in zip(texts, audio)]
    examples = tts_examples(Dataset.from_list(rows))
    lora = ExpertSpec(name="speech", r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0)
    base = embedded_base_path()

    def fresh():
        model, tokenizer, new_rows = load_base_for_expert(base, args.units, seed=0)
        config = expert_lora_config(lora, new_rows, tied_embeddings=bool(model.config.tie_word_embeddings))
        return model, tokenizer, config

    with tempfile.TemporaryDirectory() as out:
        sft = SFTConfig(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=2e-3,
            logging_steps=1, save_strategy="no", report_to=[], gradient_checkpointing=False, use_cpu=True, bf16=False,
            disable_tqdm=True, seed=0, max_length=512, dataloader_drop_last=True,
        )  # fmt: skip
        model, tokenizer, peft_config = fresh()
        timer = StepTimer()
        trainer = TokenRowsSFTTrainer(
            model=model, args=sft, train_dataset=examples, processing_class=tokenizer, peft_config=peft_config,
            callbacks=[timer],
        )  # fmt: skip
        batches = [batch for _, batch in zip(range(args.steps), trainer.get_train_dataloader())]
        trainer.train()
        sft_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    model, _, peft_config = fresh()
    model = get_peft_model(model, peft_config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    loop_times, loop_losses = [], []
    for batch in batches:
        started = time.perf_counter()
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loop_times.append(time.perf_counter() - started)
        loop_losses.append(loss.item())

    tokens = statistics.median(int(batch["attention_mask"].sum()) for batch in batches)
    sft_step, loop_step = statistics.median(timer.times[1:]), statistics.median(loop_times[1:])  # first: warm-up
    print(f"\nSmolLM2-135M, LoRA r={args.rank} + {args.units + 2} token rows, batch {args.batch_size}, "
          f"median {tokens} tokens/batch, {args.steps} steps (first dropped)\n")  # fmt: skip
    print("| loop | median step (s) | tokens/s | first -> last loss |\n|---|---:|---:|---|")
    for name, step, losses in (("TRL SFTTrainer", sft_step, sft_losses), ("plain PyTorch", loop_step, loop_losses)):
        print(f"| {name} | {step:.2f} | {tokens / step:.0f} | {losses[0]:.2f} -> {losses[-1]:.2f} |")
    print(f"\nSFTTrainer / plain step time: {sft_step / loop_step:.2f}x")


if __name__ == "__main__":
    main()
