"""Intelligibility through the speech stack, on festival speech: ground truth, codec resynthesis, and
semantic units -> acoustic LM -> codec (teacher-forced and sampled), judged by Whisper tiny.en (pocketsphinx as
a second opinion).

Trains (or loads) the embedded codec, fits the semantic tokenizer, trains the acoustic LM on the training
sentences of every voice, then scores held-out sentences per voice. The trained parts are kept in `--work`.

    python benchmarks/speech_stack_intelligibility.py --work /tmp/stack [--codec DIR] [--train 200] [--test 50]
"""

import argparse
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from mole_llama.data.audio import resample
from mole_llama.embedded.festival import VOICES, fortune_sentences, is_held_out, synthesize
from mole_llama.evaluation.intelligibility import score_waveforms
from mole_llama.modeling.acoustic_codec import load_acoustic_codec
from mole_llama.modeling.configuration_acoustic_lm import AcousticLMConfig
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
from mole_llama.modeling.modeling_semantic_units import SemanticUnitsModel
from mole_llama.training.acoustic_lm import default_training_arguments, train_acoustic_lm
from mole_llama.training.codec import train_mel_codec
from mole_llama.training.semantic_tokenizer import fit_semantic_tokenizer

RATE = 16000


def festival_audio(texts, voice, cache: Path):
    """Waveforms at 16 kHz, cached as .npy files so reruns skip synthesis."""
    cache.mkdir(parents=True, exist_ok=True)
    waves = []
    for text in tqdm(texts, desc=f"festival {voice}"):
        path = cache / f"{voice}-{zlib.crc32(text.encode())}.npy"
        if not path.exists():
            np.save(path, resample(*synthesize(text, voice), RATE))
        waves.append(np.load(path))
    return waves


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder for the audio cache and the trained parts")
    parser.add_argument("--codec", help="a trained codec folder (default: train one in WORK/codec)")
    parser.add_argument("--train", type=int, default=200, help="training sentences per voice")
    parser.add_argument("--test", type=int, default=50, help="held-out sentences per voice")
    parser.add_argument("--voices", nargs="+", default=sorted(VOICES))
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--unit-rate", type=int, default=50)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--codec-steps", type=int, default=1500)
    parser.add_argument("--reuse", action="store_true", help="load the tokenizer and acoustic LM found in WORK")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: a second thread only adds synchronisation on a shared machine
    work = Path(args.work)
    started = time.perf_counter()
    sentences = fortune_sentences()
    train_texts = [s for s in sentences if not is_held_out(s)][: args.train]
    test_texts = [s for s in sentences if is_held_out(s)][: args.test]
    train = {v: festival_audio(train_texts, v, work / "audio") for v in args.voices}
    test = {v: festival_audio(test_texts, v, work / "audio") for v in args.voices}
    all_train = [w for v in args.voices for w in train[v]]

    if args.codec:
        codec = load_acoustic_codec(args.codec)
    else:
        codec = train_mel_codec([(w, RATE) for w in all_train], str(work / "codec"), steps=args.codec_steps)
    codec.eval()
    if args.reuse and (work / "semantic_tokenizer").is_dir():
        tokenizer = SemanticUnitsModel.from_pretrained(work / "semantic_tokenizer")
    else:
        tokenizer = fit_semantic_tokenizer(
            [{"audio": {"array": w, "sampling_rate": RATE}} for w in all_train],
            SemanticUnitsConfig(num_units=args.units, unit_rate=args.unit_rate),
        )
        tokenizer.save_pretrained(work / "semantic_tokenizer")

    def units_and_codes(waves):
        rows = {"semantic_units": [], "acoustic_codes": []}
        with torch.no_grad():
            for wave in tqdm(waves, desc="units and codes"):
                rows["semantic_units"].append(tokenizer.encode(wave)[0].tolist())
                rows["acoustic_codes"].append(codec.encode(torch.from_numpy(wave)[None])[0].tolist())
        return rows

    if args.reuse and (work / "acoustic_lm" / "config.json").is_file():
        acoustic_lm = AcousticLMForConditionalGeneration.from_pretrained(work / "acoustic_lm")
    else:
        dataset = Dataset.from_dict(units_and_codes(all_train))
        config = AcousticLMConfig(
            num_semantic_units=args.units, num_codebooks=codec.num_codebooks, codebook_size=codec.codebook_size,
            semantic_unit_rate=args.unit_rate, acoustic_frame_rate=codec.frame_rate,
            hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        )  # fmt: skip
        acoustic_lm = AcousticLMForConditionalGeneration(config)
        training = default_training_arguments(
            str(work / "acoustic_lm"), num_train_epochs=args.epochs, save_strategy="no", use_cpu=True
        )
        train_acoustic_lm(acoustic_lm, dataset, training)
    acoustic_lm.eval()

    rows = []
    for voice in args.voices:
        prompt = codec.encode(torch.from_numpy(train[voice][0][: 2 * RATE])[None])[0]
        variants = {"ground truth": test[voice], "codec resynthesis": [], "units -> acoustic LM (teacher-forced)": []}
        variants["units -> acoustic LM (sampled, voice prompt)"] = []
        with torch.no_grad():
            for wave in tqdm(test[voice], desc=f"synthesis {voice}"):
                units = tokenizer.encode(wave)
                codes = codec.encode(torch.from_numpy(wave)[None])
                variants["codec resynthesis"].append(codec.decode(codes)[0].numpy())
                logits = acoustic_lm(semantic_units=units, acoustic_codes=codes).logits
                variants["units -> acoustic LM (teacher-forced)"].append(
                    codec.decode(logits.argmax(-1).transpose(1, 2))[0].numpy()
                )
                sampled = acoustic_lm.generate(units, prompt_codes=prompt[None], temperature=0.4, top_k=10, seed=0)
                variants["units -> acoustic LM (sampled, voice prompt)"].append(codec.decode(sampled)[0].numpy())
        for name, waves in variants.items():
            rows.append((voice, name, score_waveforms(test_texts, waves, RATE)))

    print(f"\n{args.train} training / {args.test} held-out sentences per voice, {args.units} units at "
          f"{args.unit_rate} Hz, {time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print("| voice | audio | Whisper WER | Whisper CER | pocketsphinx WER |\n|---|---|---:|---:|---:|")
    for voice, name, rates in rows:
        print(f"| {voice} | {name} | {rates['wer']:.3f} | {rates['cer']:.3f} | {rates['wer_pocketsphinx']:.3f} |")


if __name__ == "__main__":
    main()
