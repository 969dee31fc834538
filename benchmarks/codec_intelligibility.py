"""Does the embedded acoustic codec keep speech intelligible? Whisper tiny.en WER/CER (pocketsphinx WER as a second
opinion) on held-out festival sentences.

Trains `MelCodecModel` on festival speech of non-held-out fortune sentences (all voices, resampled to 16 kHz), or
loads one with `--codec`, then prints a Markdown table per voice for: the ground truth, log-mel -> Griffin-Lim
(the codec's vocoder without quantization: its ceiling), and codec resynthesis (encode -> decode), plus
`--truncate` variants that keep only the first codebooks of the same codec (and, with `--whole-signal-griffin-lim`,
the codec's Griffin-Lim run over each whole clip instead of in its streaming blocks; with `--decode-lookahead`, each
log-mel block decoded from fewer later code frames than the decoder reaches, which lets a stream start sooner).

    python benchmarks/codec_intelligibility.py --output /work/codec_run --cache /work/codec_cache --eval-sentences 0
    for v in kal ked slt; do
        python benchmarks/codec_intelligibility.py --codec /work/codec_run --cache /work/codec_cache --voices $v
    done

Training (300 clips, 16 min of audio, 1800 steps, 1 thread) takes ~6 min; scoring one voice ~6 min (Whisper and
pocketsphinx take ~1.2 s each per clip, three clips per sentence), so training and evaluation run as separate
processes. Measured with 4x256 codes at 50 Hz (1.6 kbps), 50 held-out sentences per voice, WER / CER by pocketsphinx
(before Whisper was the judge):
    kal  ground truth 0.258/0.125  log-mel->Griffin-Lim 0.290/0.143  codec 0.271/0.131
    ked  ground truth 0.348/0.173  log-mel->Griffin-Lim 0.422/0.223  codec 0.425/0.216
    slt  ground truth 0.225/0.113  log-mel->Griffin-Lim 0.234/0.125  codec 0.255/0.139
"""

import argparse
import copy
import hashlib
import math
import time
from pathlib import Path

import soundfile
import torch

from mole_llama.data.audio import resample
from mole_llama.embedded.festival import fortune_sentences, is_held_out, synthesize
from mole_llama.evaluation.intelligibility import score_waveforms
from mole_llama.modeling.acoustic_codec import load_acoustic_codec
from mole_llama.modeling.configuration_mel_codec import MelCodecConfig
from mole_llama.training.codec import train_mel_codec

RATE = 16000


def speech(sentences, voice, cache):
    """Festival speech of each sentence at 16 kHz; with `cache`, WAV files are kept and reused."""
    clips = []
    for sentence in sentences:
        path = Path(cache) / voice / f"{hashlib.sha1(sentence.encode()).hexdigest()[:16]}.wav" if cache else None
        if path is not None and path.is_file():
            clips.append(soundfile.read(path, dtype="float32")[0])
            continue
        waveform, rate = synthesize(sentence, voice)
        waveform = resample(waveform, rate, RATE)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, waveform, RATE)
        clips.append(waveform)
    return clips


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", default="kal,ked,slt")
    parser.add_argument("--train-sentences", type=int, default=100, help="per voice, distinct sentences per voice")
    parser.add_argument("--eval-sentences", type=int, default=50, help="held-out sentences per voice (0: no eval)")
    parser.add_argument("--codec", help="evaluate this saved codec instead of training one")
    parser.add_argument("--output", default="/work/codec_run", help="where the trained codec is saved")
    parser.add_argument("--cache", help="folder keeping synthesized WAVs between runs")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment-seconds", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--num-codebooks", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--codebook-dim", type=int, default=64)
    parser.add_argument("--num-residual-layers", type=int, default=4)
    parser.add_argument("--downsampling-factor", type=int, default=1)
    parser.add_argument("--quantizer-dropout", type=float, default=0.0)
    parser.add_argument("--truncate", default="", help="also score the codec cut to these codebook counts, e.g. 2,4")
    parser.add_argument(
        "--whole-signal-griffin-lim",
        action="store_true",
        help="also score the codec with Griffin-Lim over each whole clip, beside its streaming blocks",
    )
    parser.add_argument(
        "--decode-lookahead", default="",
        help="also score the codec decoding each block with only these later code frames (decode_lookahead_frames), "
        "e.g. 4,8: the streaming latency setting",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    voices = args.voices.split(",")
    started, timings = time.time(), {}

    sentences = fortune_sentences()
    train_pool = [s for s in sentences if not is_held_out(s)]
    held_out = [s for s in sentences if is_held_out(s)][: args.eval_sentences]

    if args.codec:
        codec = load_acoustic_codec(args.codec)
    else:
        tick = time.time()
        data = []
        for index, voice in enumerate(voices):  # each voice reads different sentences
            chosen = train_pool[index * args.train_sentences : (index + 1) * args.train_sentences]
            data += [(clip, RATE) for clip in speech(chosen, voice, args.cache)]
        timings["synthesize training speech"] = time.time() - tick
        print(f"training audio: {len(data)} clips, {sum(len(c) for c, _ in data) / RATE / 60:.1f} min", flush=True)
        config = MelCodecConfig(
            num_codebooks=args.num_codebooks,
            codebook_size=args.codebook_size,
            hidden_size=args.hidden_size,
            codebook_dim=args.codebook_dim,
            num_residual_layers=args.num_residual_layers,
            downsampling_factor=args.downsampling_factor,
            quantizer_dropout=args.quantizer_dropout,
        )
        tick = time.time()
        codec = train_mel_codec(
            data, args.output, config, steps=args.steps, batch_size=args.batch_size,
            segment_seconds=args.segment_seconds, learning_rate=args.learning_rate, logging_steps=100,
            save_steps=max(100, args.steps // 4), disable_tqdm=True,
        )  # fmt: skip
        timings["train codec"] = time.time() - tick
        print(f"codec saved to {args.output}", flush=True)

    bits = codec.num_codebooks * math.log2(codec.codebook_size) * codec.frame_rate
    variants = {f"codec {codec.num_codebooks}x{codec.codebook_size} ({bits / 1000:.1f} kbps)": codec}
    if args.whole_signal_griffin_lim:
        whole = copy.deepcopy(codec)
        whole.config.griffin_lim_block_frames = None
        variants[f"codec {codec.num_codebooks}x{codec.codebook_size}, Griffin-Lim over the whole clip"] = whole
    for frames in [int(f) for f in args.decode_lookahead.split(",") if f]:
        shorter = copy.deepcopy(codec)
        shorter.config.decode_lookahead_frames = frames
        variants[f"codec {codec.num_codebooks}x{codec.codebook_size}, decoded with {frames} later frames"] = shorter
    for count in [int(c) for c in args.truncate.split(",") if c]:
        cut = codec.truncated(count)
        variants[f"codec first {count} codebooks ({bits * count / codec.num_codebooks / 1000:.1f} kbps)"] = cut

    rows = []
    for voice in voices if held_out else []:
        tick = time.time()
        clips = speech(held_out, voice, args.cache)
        timings[f"synthesize {voice}"] = time.time() - tick
        tick = time.time()
        rows.append((voice, "ground truth", score_waveforms(held_out, clips, RATE)))
        timings[f"score {voice} ground truth"] = time.time() - tick
        tick = time.time()
        features = codec.features if hasattr(codec, "features") else None
        if features is not None:
            vocoded = [codec.log_mel_to_waveform(features(torch.from_numpy(c)[None]))[0].numpy() for c in clips]
            rows.append((voice, "log-mel -> Griffin-Lim (no quantization)", score_waveforms(held_out, vocoded, RATE)))
        timings[f"score {voice} log-mel"] = time.time() - tick
        for name, variant in variants.items():
            tick = time.time()
            resynthesized = []
            for clip in clips:
                waveform = torch.from_numpy(resample(clip, RATE, variant.sampling_rate))[None]
                resynthesized.append(variant.decode(variant.encode(waveform))[0].numpy())
            rows.append((voice, name, score_waveforms(held_out, resynthesized, variant.sampling_rate)))
            timings[f"score {voice} {name}"] = time.time() - tick
        print(f"{voice} done at {time.time() - started:.0f} s", flush=True)

    source = args.codec or args.output
    print(f"\n{len(held_out)} held-out sentences per voice; Whisper tiny.en and pocketsphinx; codec from {source}\n")
    if rows:
        print("| voice | audio | Whisper WER | Whisper CER | pocketsphinx WER |\n| --- | --- | --- | --- | --- |")
        for voice, name, rates in rows:
            print(f"| {voice} | {name} | {rates['wer']:.3f} | {rates['cer']:.3f} | {rates['wer_pocketsphinx']:.3f} |")
    print("\n| step | seconds |\n| --- | --- |")
    for step, seconds in timings.items():
        print(f"| {step} | {seconds:.0f} |")
    print(f"| total | {time.time() - started:.0f} |")


if __name__ == "__main__":
    main()
