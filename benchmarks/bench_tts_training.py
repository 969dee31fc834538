"""Training speed of the speech expert (TTS-Llama) on the embedded SmolLM2, before and after each change of the
LLM side, measured side by side (round-robin steps over the same sentences, one run):

- before: frame-level phone units (50/s), SmolLM2's default system prompt, loss over the whole vocabulary, fp32;
- + collapsed units (`tts_expert.deduplicate_units`), + a short system turn (`TTS_SYSTEM`),
- + the speech-vocabulary loss with the LM head only at the targets (`tts_expert.speech_vocabulary_loss`),
- + length-grouped batches (`train_sampling_strategy: group_by_length`): each batch's sentences are of near-equal
  length, so it pads less (transformers groups within mega-batches of up to 50 batches, so give a few hundred
  sentences);
- padding-free rows instead of grouping (TRL's `padding_free`, over random batches: each batch's sentences joined
  into one row, kept apart by their position ids; transformers then masks attention block by block). Against
  grouping it can gain only the padding grouping leaves, and on a CPU without varlen attention kernels each
  sentence's attention still spans the whole joined row, masked;
- with `--bf16`: + bf16 autocast. This CPU has avx512_bf16, but torch 2.13's CPU matmuls in bf16 fall back to a
  slow generic gemm here (py-spy: `cpublas_gemm_impl`): 8 steps had not finished in 10 CPU minutes where fp32
  takes 9 s a step, so the recipe trains in fp32.

Grouping changes which batches an epoch has, not what one step costs, so each variant builds its whole epoch of
batches over the same sentences and times `--steps` of them drawn at the same random positions (after one untimed
warm-up step). Its epoch time is estimated from its seconds per padded token over the timed steps times the padded
tokens of its whole epoch (less noisy than the mean step times the batches, as the drawn batches differ in length).
Prints the mean timed step, the real and padded tokens per batch over the epoch, the epoch's estimated seconds and
sentences/s. Sentences come from a corpus (`mole-llama build-corpus`), aligned here with the "phones" units.

    python benchmarks/bench_tts_training.py --corpus CORPUS [--sentences 800] [--steps 12] [--batch-size 8] [--bf16]
"""

import argparse
import random
import statistics
import tempfile
import time
from contextlib import nullcontext

import torch
from datasets import load_from_disk
from transformers.utils import logging as hf_logging
from trl import SFTConfig

from mole_llama.data.audio import decode_audio, without_audio_decoding
from mole_llama.embedded.base import embedded_base_path
from mole_llama.modeling.configuration_mole_llama import ExpertSpec
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.modeling_semantic_units import SemanticUnitsModel
from mole_llama.modeling.phone_units import PHONES, TranscriptAlignmentError
from mole_llama.training.experts import TokenRowsSFTTrainer, expert_lora_config, load_base_for_expert
from mole_llama.training.sft_data import tts_examples

VARIANTS = (  # name, collapsed units, short system turn, speech-vocabulary loss, batches, bf16
    ("before", False, False, False, "random", False),
    ("+ collapsed units", True, False, False, "random", False),
    ("+ short system turn", True, True, False, "random", False),
    ("+ speech-vocabulary loss", True, True, True, "random", False),
    ("+ length-grouped batches", True, True, True, "grouped", False),
    ("padding-free rows instead of grouping", True, True, True, "padding-free", False),
)
BF16 = ("+ bf16 autocast", True, True, True, "grouped", True)


def real_and_padded_tokens(batch) -> tuple[int, int]:
    """A padding-free batch is one row without padding or attention mask."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    return int(mask.sum()), mask.numel()


def aligned_rows(corpus, count: int) -> list:
    tokenizer = SemanticUnitsModel(SemanticUnitsConfig(backend="phones"))
    rows = []
    for row in without_audio_decoding(load_from_disk(corpus)["train"], "audio"):
        try:
            waveform, _ = decode_audio(row["audio"], 16000)
            units = tokenizer.encode(torch.from_numpy(waveform), row["text"])[0].tolist()
        except TranscriptAlignmentError:
            continue
        rows.append({"text": row["text"], "semantic_units": units})
        if len(rows) == count:
            return rows
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a build-corpus folder")
    parser.add_argument("--sentences", type=int, default=800, help="one epoch of them per variant")
    parser.add_argument("--steps", type=int, default=12, help="timed batches of each variant's epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (very slow here)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from datasets import Dataset

    rows = Dataset.from_list(aligned_rows(args.corpus, args.sentences))
    lora = ExpertSpec(name="speech", r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0)
    runs = {}
    with tempfile.TemporaryDirectory() as out:
        for name, collapsed, short_prompt, vocabulary_loss, batching, bf16 in VARIANTS + ((BF16,) if args.bf16 else ()):
            examples = tts_examples(rows, deduplicate=collapsed)
            if not short_prompt:  # the user turn alone: SmolLM2's template adds its default system prompt
                examples = examples.map(lambda example: {"prompt": example["prompt"][1:]})
            model, tokenizer, new_rows = load_base_for_expert(embedded_base_path(), len(PHONES), unit_names=PHONES)
            padding_free = batching == "padding-free"  # TRL then leaves truncation to us: no sentence is near 1024
            sft = SFTConfig(
                output_dir=out, per_device_train_batch_size=args.batch_size, report_to=[], use_cpu=True, bf16=False,
                disable_tqdm=True, seed=0, max_length=None if padding_free else 1024, dataloader_drop_last=True,
                train_sampling_strategy="group_by_length" if batching == "grouped" else "random",
                padding_free=padding_free,
            )  # fmt: skip
            trainer = TokenRowsSFTTrainer(
                model=model, args=sft, train_dataset=examples, processing_class=tokenizer,
                peft_config=expert_lora_config(lora, new_rows),
                speech_vocabulary=new_rows[1:] if vocabulary_loss else None,
            )  # fmt: skip
            optimizer = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=2e-3)
            batches = list(trainer.get_train_dataloader())
            runs[name] = dict(trainer=trainer, batches=batches, optimizer=optimizer, bf16=bf16, times=[])
        epoch_batches = min(len(run["batches"]) for run in runs.values())
        draw = random.Random(0).sample(range(epoch_batches), min(args.steps, epoch_batches))
        timed = [0, *draw]  # the first warms up
        for step, position in enumerate(timed):  # round-robin: every variant sees the same machine load
            for run in runs.values():
                trainer, batch = run["trainer"], run["batches"][position]
                trainer.model.train()
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16) if run["bf16"] else nullcontext():
                    loss = trainer.compute_loss(trainer.model, dict(batch))
                loss.backward()
                run["optimizer"].step()
                run["optimizer"].zero_grad()
                if step > 0:
                    run["times"].append(time.perf_counter() - started)
            print(f"round {step} of {len(timed) - 1} done", flush=True)

    sentences = epoch_batches * args.batch_size
    print(f"\nSmolLM2-135M, LoRA r={args.rank} + 42 token rows, batch {args.batch_size}, an epoch of {sentences} "
          f"aligned sentences ({epoch_batches} batches, {len(timed) - 1} timed round-robin, after a warm-up step), "
          f"{args.threads} threads\n")  # fmt: skip
    print("| variant | mean step (s) | tokens/batch | padded tokens/batch | epoch (s) | sentences/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    first = None
    for name, run in runs.items():
        counts = [real_and_padded_tokens(batch) for batch in run["batches"][:epoch_batches]]
        real, padded = sum(count[0] for count in counts), sum(count[1] for count in counts)
        timed_padded = sum(counts[position][1] for position in draw)
        epoch = sum(run["times"]) / timed_padded * padded
        first = first or epoch
        print(f"| {name} | {statistics.mean(run['times']):.2f} | {real / epoch_batches:.0f} | "
              f"{padded / epoch_batches:.0f} | {epoch:.0f} | {sentences / epoch:.2f} | "
              f"{first / epoch:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
