"""Speed of the speaking path, side by side in one run, on the shipped TTS-Llama and MoLE-Llama (or `--tts DIR`
`--mole DIR`), over held-out fortune sentences:

- real-time factor (compute seconds / audio seconds, median over sentences) per stage: LLM units, durations,
  acoustic LM, codec (vocoder), and the whole `speak` call, for the TTS-Llama as shipped (its LLM's and acoustic LM's
  products by float16 weights: `float16_decoding`, `modeling/float16_weights.py`), with plain float32 weights in both,
  with its LLM in int8 (`conversion.int8.quantize_llm_int8`), and as shipped with compiled decoding steps
  (`compile_decoding`: torch.compile of the LLM's and the acoustic LM's steps; its compile time printed apart),
  with the unit error rate of each variant's units against the plain float32
  ones (0: it says the same);
- time to the first streamed chunk of a one-sentence text (median over the sentences, each variant), beside the
  whole call;
- a batch of `--batch` sentences in one call vs the same sentences one call each (throughput ratio), eager and
  with compiled decoding (whose batch decodes eagerly, its single calls compiled);
- MoLE-Llama speaking vs TTS-Llama on the same sentences, round-robin, 3 rounds (total time and median real-time
  factor), and per LLM token with the MoLE-Llama's shipped routing and with soft routing, and the TTS-Llama's with
  the LM head over the whole vocabulary (before speaking scored the speech tokens alone).

    python benchmarks/bench_tts.py [--sentences 8] [--batch 8] [--threads 2]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import GenerationMixin, pipeline

from mole_llama.chat import unit_error_rate
from mole_llama.conversion.int8 import quantize_llm_int8
from mole_llama.embedded import embedded_model_path
from mole_llama.embedded.festival import fortune_sentences, is_held_out
from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def first_chunk(model, text: str, seed: int) -> tuple:
    """Seconds from the `stream` call to its first chunk, and the seconds of audio in that chunk."""
    started = time.perf_counter()
    stream = model.stream(text, seed=seed)
    chunk = next(stream)
    seconds = time.perf_counter() - started
    stream.close()  # the rest is not needed: the generation stops at its next token
    return seconds, len(chunk) / model.sampling_rate


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


def seconds_per_token(model, prompt: torch.Tensor, tokens: int = 40, full_head: bool = False) -> float:
    """The LLM's seconds per generated token (forced to `tokens`, greedy, with the cache), scoring the speech tokens
    alone as speaking does, or (`full_head`) the whole vocabulary, as before it did."""
    settings = dict(attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=tokens,
                    min_new_tokens=tokens)  # fmt: skip
    if not full_head:
        settings["logits_vocabulary"] = model.speech_ids.speakable()
    return timed(GenerationMixin.generate, model, prompt, **settings)[1] / tokens


def round_robin_medians(variants: dict, rounds: int = 5) -> dict:
    """Each variant's median over `rounds` runs, run in turn within each round, so that the machine's slow spells
    (other tenants) fall on all variants alike rather than on whichever ran then."""
    runs = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            runs[name].append(run())
    return {name: statistics.median(values) for name, values in runs.items()}


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
    tts_dir = str(args.tts or embedded_model_path("tts-llama"))
    tts = pipeline("text-to-speech", model=tts_dir).model
    tts_float32 = pipeline("text-to-speech", model=tts_dir, model_kwargs={"float16_decoding": False}).model
    tts_float32.acoustic_lm = AcousticLMForConditionalGeneration.from_pretrained(
        Path(tts_dir) / "acoustic_lm", float16_decoding=False
    ).eval()  # its frames in float32 too
    tts_int8 = quantize_llm_int8(pipeline("text-to-speech", model=tts_dir).model)
    tts_compiled = pipeline("text-to-speech", model=tts_dir, model_kwargs={"compile_decoding": True}).model
    mole = pipeline("text-to-speech", model=str(args.mole or embedded_model_path("mole-llama"))).model
    variants = {"float32 weights": tts_float32, "shipped (float16 weights)": tts, "int8 LLM": tts_int8,
                "shipped, compiled decoding": tts_compiled}  # fmt: skip
    for name, model in variants.items():
        _, seconds = timed(model.speak, "Warm up.", seed=0)  # first-call costs (allocations, compiles) kept apart
        print(f"first call of {name}: {seconds:.1f} s")

    spoken = sentences[: args.sentences]
    print(f"torch threads: {torch.get_num_threads()}; {args.sentences} held-out sentences; shipped float16_decoding="
          f"{tts.config.float16_decoding}\n")  # fmt: skip
    rows, totals = {name: [] for name in variants}, {name: [] for name in variants}
    for seed, text in enumerate(spoken):
        for name, model in variants.items():  # round-robin per sentence: the machine's noise hits both alike
            rows[name].append(stage_seconds(model, text, seed))
            audio, seconds = timed(model.speak, text, seed=seed)
            totals[name].append(seconds / (len(audio) / model.sampling_rate))
    print("| stage (median real-time factor) | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for stage in ("LLM", "durations", "acoustic LM", "codec"):
        cells = [statistics.median(row[stage] / row["audio"] for row in rows[name]) for name in rows]
        print(f"| {stage} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")
    print("| whole `speak` call | " + " | ".join(f"{statistics.median(totals[name]):.3f}" for name in variants) + " |")
    reference = [tts_float32.speech_units(text) for text in spoken]  # one text a call: the speaking path's steps
    for name, model in list(variants.items())[1:]:
        changed = unit_error_rate(reference, [model.speech_units(text) for text in spoken])
        print(f"\nunit error rate of {name} greedy units against float32 weights': {changed:.3f}")

    print("\n| one-sentence text | first streamed chunk (s) | audio in it (s) | whole `speak` call (s) |")
    print("|---|---:|---:|---:|")
    for name, model in variants.items():
        firsts = [first_chunk(model, text, seed) for seed, text in enumerate(spoken)]
        wholes = [timed(model.speak, text, seed=seed)[1] for seed, text in enumerate(spoken)]
        print(f"| {name}, median | {statistics.median(f[0] for f in firsts):.2f} | "
              f"{statistics.median(f[1] for f in firsts):.2f} | {statistics.median(wholes):.2f} |")  # fmt: skip
    one = sentences[0]

    batch = sentences[: args.batch]
    for name, model in (("eager", tts), ("compiled decoding", tts_compiled)):
        calls = round_robin_medians({
            "batched": lambda: timed(model.speak_texts, batch, seed=0, batch_size=args.batch)[1],
            "serial": lambda: sum(timed(model.speak_texts, [text], seed=0, batch_size=1)[1] for text in batch),
        }, rounds=3)  # fmt: skip
        print(f"{len(batch)} sentences, {name} (medians of 3 rounds): one batched call {calls['batched']:.1f} s, one "
              f"call each {calls['serial']:.1f} s: throughput x{calls['serial'] / calls['batched']:.2f}")  # fmt: skip

    speaking = {"TTS-Llama": [], "MoLE-Llama": []}  # per sentence and round: (seconds, audio seconds)
    for round_index in range(3):  # round-robin, the order alternating, so drift hits both alike
        for seed, text in enumerate(spoken):
            order = [("TTS-Llama", tts), ("MoLE-Llama", mole)]
            for name, model in order if (seed + round_index) % 2 == 0 else order[::-1]:
                wave, seconds = timed(model.speak, text, seed=seed)
                speaking[name].append((seconds, len(wave) / model.sampling_rate))
    totals = {name: sum(seconds for seconds, _ in runs) for name, runs in speaking.items()}
    factors = {name: statistics.median(s / audio for s, audio in runs) for name, runs in speaking.items()}
    print(f"MoLE-Llama speaking / TTS-Llama, 3 rounds round-robin: total {totals['MoLE-Llama']:.1f} s / "
          f"{totals['TTS-Llama']:.1f} s = x{totals['MoLE-Llama'] / totals['TTS-Llama']:.2f}; median real-time "
          f"factor {factors['MoLE-Llama']:.3f} / {factors['TTS-Llama']:.3f} = "
          f"x{factors['MoLE-Llama'] / factors['TTS-Llama']:.2f}")  # fmt: skip

    prompt = torch.tensor([tts._prompt_ids(one)])
    shipped = f"{mole.config.router_context} context, {'hard' if mole.config.hard_routing else 'soft'} (shipped)"

    def soft_routing_seconds() -> float:
        set_hard_routing(mole, False)
        try:
            return seconds_per_token(mole, prompt)
        finally:
            set_hard_routing(mole, mole.config.hard_routing)

    per_token = round_robin_medians({
        "TTS-Llama": lambda: seconds_per_token(tts, prompt),
        "TTS-Llama, float32 weights": lambda: seconds_per_token(tts_float32, prompt),
        "TTS-Llama, whole-vocabulary LM head": lambda: seconds_per_token(tts, prompt, full_head=True),
        "TTS-Llama, int8 LLM": lambda: seconds_per_token(tts_int8, prompt),
        "TTS-Llama, int8 LLM, whole-vocabulary LM head": lambda: seconds_per_token(tts_int8, prompt, full_head=True),
        f"MoLE-Llama, {shipped}": lambda: seconds_per_token(mole, prompt),
        f"MoLE-Llama, {mole.config.router_context} context, soft": soft_routing_seconds,
    })  # fmt: skip
    print("\n| LLM (medians of 5 rounds) | ms per token | vs TTS-Llama |\n|---|---:|---:|")
    for name, seconds in per_token.items():
        print(f"| {name} | {1000 * seconds:.1f} | x{seconds / per_token['TTS-Llama']:.2f} |")


if __name__ == "__main__":
    main()
