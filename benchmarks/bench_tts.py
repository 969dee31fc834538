"""Speed of the speaking path, side by side in one run, on the shipped TTS-Llama and MoLE-Llama (or `--tts DIR`
`--mole DIR`), over held-out fortune sentences:

- real-time factor (compute seconds / audio seconds, median over sentences) per stage: LLM units, durations,
  acoustic LM, codec (vocoder), and the whole `speak` call;
- time to the first streamed chunk of a one-sentence text;
- a batch of `--batch` sentences in one call vs the same sentences one call each (throughput ratio);
- MoLE-Llama speaking vs TTS-Llama (total time ratio on the same sentences), and per LLM token with soft (learned)
  and hard (top-1) routing.

    python benchmarks/bench_tts.py [--sentences 8] [--batch 8] [--threads 2]
"""

import argparse
import statistics
import time

import torch
from transformers import GenerationMixin, pipeline

from mole_llama.embedded import embedded_model_path
from mole_llama.embedded.festival import fortune_sentences, is_held_out


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def stage_seconds(model, text: str, seed: int) -> dict:
    """Each stage of `speak_batch` for one sentence, run and timed in turn (the same calls, split apart)."""
    units, llm = timed(model.speech_units_batch, [text])
    frames, durations = timed(model.units_to_frames, units[0], seed=seed, max_frames=model.frame_cap(text))
    output, acoustic = timed(
        model.acoustic_lm.generate, [torch.tensor(frames)], seed=[seed], temperature=0.4, top_k=10,
        return_dict_in_generate=True,
    )  # fmt: skip
    wave, codec = timed(model._decode, output.codes[:, :, : int(output.lengths[0])])
    return {"LLM": llm, "durations": durations, "acoustic LM": acoustic, "codec": codec,
            "audio": len(wave) / model.sampling_rate}  # fmt: skip


def seconds_per_token(model, prompt: torch.Tensor, tokens: int = 40) -> float:
    """Median over 5 runs of the LLM's seconds per generated token (forced to `tokens`, greedy, with the cache)."""
    settings = dict(attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=tokens,
                    min_new_tokens=tokens)  # fmt: skip
    runs = [timed(GenerationMixin.generate, model, prompt, **settings)[1] / tokens for _ in range(5)]
    return statistics.median(runs)


def set_hard_routing(model, hard: bool) -> None:
    from mole_llama.modeling.modeling_mole_llama import MoLERouter

    for module in model.modules():
        if isinstance(module, MoLERouter):
            module.hard = hard


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tts", help="a TTS-Llama folder (default: the shipped one)")
    parser.add_argument("--mole", help="a MoLE-Llama folder (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sentences = [s for s in fortune_sentences() if is_held_out(s) and 30 <= len(s) <= 120][: max(args.sentences,
                                                                                               args.batch)]  # fmt: skip
    tts = pipeline("text-to-speech", model=str(args.tts or embedded_model_path("tts-llama"))).model
    mole = pipeline("text-to-speech", model=str(args.mole or embedded_model_path("mole-llama"))).model
    tts.speak("Warm up.", seed=0)  # first-call costs (allocations, lazy imports) out of the figures

    print(f"torch threads: {torch.get_num_threads()}; {args.sentences} held-out sentences\n")
    rows = [stage_seconds(tts, text, seed) for seed, text in enumerate(sentences[: args.sentences])]
    totals = []
    for seed, text in enumerate(sentences[: args.sentences]):
        audio, seconds = timed(tts.speak, text, seed=seed)
        totals.append(seconds / (len(audio) / tts.sampling_rate))
    print("| stage | median real-time factor |")
    print("|---|---:|")
    for stage in ("LLM", "durations", "acoustic LM", "codec"):
        print(f"| {stage} | {statistics.median(row[stage] / row['audio'] for row in rows):.3f} |")
    print(f"| whole `speak` call | {statistics.median(totals):.3f} |")

    one = sentences[0]
    _, first_chunk = timed(next, tts.stream(one, seed=0))
    _, whole = timed(tts.speak, one, seed=0)
    print(f"\nfirst streamed chunk of a one-sentence text: {first_chunk:.2f} s (the whole call: {whole:.2f} s)")

    batch = sentences[: args.batch]
    _, batched = timed(tts.speak_texts, batch, seed=0, batch_size=args.batch)
    serial = sum(timed(tts.speak_texts, [text], seed=0, batch_size=1)[1] for text in batch)
    print(f"{len(batch)} sentences: one batched call {batched:.1f} s, one call each {serial:.1f} s: "
          f"throughput x{serial / batched:.2f}")  # fmt: skip

    spoken = sentences[: args.sentences]
    tts_seconds = sum(timed(tts.speak, text, seed=seed)[1] for seed, text in enumerate(spoken))
    mole_seconds = sum(timed(mole.speak, text, seed=seed)[1] for seed, text in enumerate(spoken))
    print(f"MoLE-Llama speaking / TTS-Llama: {mole_seconds:.1f} s / {tts_seconds:.1f} s = "
          f"x{mole_seconds / tts_seconds:.2f}")  # fmt: skip

    prompt = torch.tensor([tts._prompt_ids(one)])
    per_token = {
        "TTS-Llama": seconds_per_token(tts, prompt),
        "MoLE-Llama, soft routing": seconds_per_token(mole, prompt),
    }
    set_hard_routing(mole, True)
    per_token["MoLE-Llama, hard routing"] = seconds_per_token(mole, prompt)
    set_hard_routing(mole, mole.config.hard_routing)
    print("\n| LLM | ms per token | vs TTS-Llama |\n|---|---:|---:|")
    for name, seconds in per_token.items():
        print(f"| {name} | {1000 * seconds:.1f} | x{seconds / per_token['TTS-Llama']:.2f} |")


if __name__ == "__main__":
    main()
