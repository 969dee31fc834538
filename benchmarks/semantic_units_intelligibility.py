"""How much speech content do semantic units keep? Crude centroid-lookup resynthesis, judged by Whisper tiny.en.

Fits log-mel k-means units on festival speech of training sentences, then for held-out sentences: units ->
centroid features -> (the utterance's own mean/std put back) -> log-mel -> Griffin-Lim -> Whisper tiny.en
(pocketsphinx as a second opinion). Compared with ground truth and with unquantised log-mel -> Griffin-Lim. Prints a
Markdown table of WER/CER per voice.

    python benchmarks/semantic_units_intelligibility.py [--train 120] [--test 30] [--voices kal slt]
"""

import argparse
import time

import torch
from tqdm.auto import tqdm

from mole_llama.data.audio import resample
from mole_llama.embedded.festival import fortune_sentences, is_held_out, synthesize
from mole_llama.evaluation.intelligibility import score_waveforms
from mole_llama.modeling.audio_features import LogMelSpectrogram
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.training.semantic_tokenizer import fit_semantic_tokenizer

RATE = 16000


def speech(sentences, voice):
    return [resample(*synthesize(text, voice), RATE) for text in tqdm(sentences, desc=f"festival {voice}")]


def resynthesize(tokenizer, waveform):
    """Units -> centroids, de-normalised with the utterance's own statistics -> Griffin-Lim."""
    log_mel = tokenizer.log_mel(torch.from_numpy(waveform))[0].T
    mean, std = log_mel.mean(0), log_mel.std(0).clamp(min=1e-3)
    units = tokenizer.encode(waveform)[0]
    rebuilt = tokenizer.centroids[units] * std + mean
    return tokenizer.log_mel.invert(rebuilt.T[None])[0].numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=120, help="training sentences per voice")
    parser.add_argument("--test", type=int, default=30, help="held-out sentences per voice")
    parser.add_argument("--voices", nargs="+", default=["kal", "slt"])
    parser.add_argument("--settings", nargs="+", default=["256@50", "1024@50", "1024@25"], help="UNITS@RATE_HZ")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    sentences = fortune_sentences()
    train_texts = [s for s in sentences if not is_held_out(s)][: args.train]
    test_texts = [s for s in sentences if is_held_out(s)][: args.test]

    rows = []
    for voice in args.voices:
        train = [{"audio": {"array": w, "sampling_rate": RATE}} for w in speech(train_texts, voice)]
        test = speech(test_texts, voice)
        variants = {"ground truth": test}
        plain = LogMelSpectrogram(RATE)
        variants["log-mel -> Griffin-Lim"] = [plain.invert(plain(torch.from_numpy(w)))[0].numpy() for w in test]
        for setting in args.settings:
            units, rate = (int(x) for x in setting.split("@"))
            tokenizer = fit_semantic_tokenizer(train, SemanticUnitsConfig(num_units=units, unit_rate=rate))
            variants[f"units K={units}, {rate} Hz"] = [resynthesize(tokenizer, w) for w in tqdm(test, desc=setting)]
        for name, waves in variants.items():
            rows.append((voice, name, score_waveforms(test_texts, waves, RATE)))

    print(
        f"\n{args.train} training / {args.test} held-out sentences per voice, {time.perf_counter() - started:.0f} s\n"
    )
    print("| voice | audio | Whisper WER | Whisper CER | pocketsphinx WER |\n|---|---|---:|---:|---:|")
    for voice, name, rates in rows:
        print(f"| {voice} | {name} | {rates['wer']:.3f} | {rates['cer']:.3f} | {rates['wer_pocketsphinx']:.3f} |")


if __name__ == "__main__":
    main()
