"""Which semantic units can an LLM learn? On a corpus's held-out split (the same sentences read by every voice):

- units per second, raw and run-length collapsed;
- normalised edit distance of collapsed units between the same sentence in two voices (should be small) and two
  sentences in one voice (the scale to compare with);
- with `--speaking-model` (a folder with `acoustic_lm/`, `codec/` and `duration_predictor/`, trained on the
  aligned phones): oracle resynthesis of the aligned phones (collapsed units -> predicted durations -> acoustic
  LM sampled with a voice prompt, with the folder's settings -> codec), the same with the recording's own durations
  (what a perfect duration predictor would give) and with no voice prompt (what continuing the prompt's voice
  costs), its codec resynthesis and the ground truth, Whisper WER per voice. The acoustic LM's frames are decoded
  as the speaking model decodes them (the embedded models: their expected codebook vectors).

Units compared: log-mel k-means (K=1024, fitted here on training clips), phone recognition (pocketsphinx allphone,
no transcript) and forced-aligned phones (the embedded default).

    python benchmarks/semantic_units_quality.py --corpus CORPUS [--sentences 50] [--speaking-model DIR [--draws 4]]
"""

import argparse
import itertools
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk
from rapidfuzz.distance import Levenshtein
from tqdm.auto import tqdm

from mole_llama.data.audio import decode_audio, without_audio_decoding
from mole_llama.evaluation.intelligibility import error_rates, transcribe
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.modeling_semantic_units import SemanticUnitsModel
from mole_llama.modeling.modeling_tts_llama import SPEECH_GENERATION_DEFAULTS
from mole_llama.modeling.phone_units import TranscriptAlignmentError
from mole_llama.modeling.speech_units import deduplicate_units
from mole_llama.training.semantic_tokenizer import fit_semantic_tokenizer

RATE = 16000
OWN_DURATIONS = "aligned phones, own durations -> acoustic LM"
PROMPTED = "aligned phones -> predicted durations -> acoustic LM"
UNPROMPTED = "the same, no voice prompt"
ACOUSTIC_SETTINGS = ("acoustic_temperature", "acoustic_top_k", "acoustic_do_sample", "acoustic_expected_decoding")


def held_out_clips(corpus, sentences: int) -> dict:
    """`{(voice, text): waveform}` for the first `sentences` test sentences that every voice read."""
    test = without_audio_decoding(load_from_disk(corpus)["test"], "audio")
    texts = list(dict.fromkeys(test["text"]))[:sentences]
    clips = {}
    for row in test:
        if row["text"] in texts:
            clips[(row["voice"], row["text"])] = decode_audio(row["audio"], RATE)[0]
    return clips


def unit_table(tokenizers: dict, clips: dict) -> tuple:
    voices = sorted({voice for voice, _ in clips})
    texts = list(dict.fromkeys(text for _, text in clips))
    rows, aligned = [], {}
    for name, (tokenizer, needs_text) in tokenizers.items():
        units = {}
        for key, waveform in tqdm(clips.items(), desc=name):
            try:
                frames = tokenizer.encode(torch.from_numpy(waveform), key[1] if needs_text else None)[0].tolist()
            except TranscriptAlignmentError:
                continue
            units[key] = frames
        kept = [text for text in texts if all((voice, text) in units for voice in voices)]
        collapsed = {key: deduplicate_units(frames)[0] for key, frames in units.items()}
        same_sentence = [
            Levenshtein.normalized_distance(collapsed[(a, text)], collapsed[(b, text)])
            for text in kept
            for a, b in itertools.combinations(voices, 2)
        ]
        across = [
            Levenshtein.normalized_distance(collapsed[(voice, a)], collapsed[(voice, b)])
            for voice in voices
            for a, b in zip(kept, kept[1:])
        ]
        seconds = sum(len(clips[key]) for key in units) / RATE  # the clips it could encode
        raw = sum(len(u) for u in units.values()) / seconds
        short = sum(len(u) for u in collapsed.values()) / seconds
        rows.append((name, raw, short, statistics.mean(same_sentence), statistics.mean(across), len(kept)))
        if name == "aligned phones":
            aligned = units  # frame level: their own durations, for resynthesis
    return rows, aligned


def acoustic_settings(folder) -> dict:
    """How the speaking model in `folder` samples and decodes its acoustic LM, resolved as its `speech_setting`
    does: its generation_config.json's value, else the default."""
    saved = json.loads((Path(folder) / "generation_config.json").read_text())
    return {name: saved.get(name, SPEECH_GENERATION_DEFAULTS[name]) for name in ACOUSTIC_SETTINGS}


def resynthesis_table(folder, settings: dict, clips: dict, aligned: dict, corpus, sentences: int, draws: int) -> list:
    """Whisper WER per voice: ground truth, codec resynthesis, aligned phones through the acoustic LM with their own
    durations and with predicted ones (`aligned`: frame-level units per clip), in the voice of a prompt and without
    one (the acoustic LM's own voice: what the voice prompt costs), sampled and decoded with `settings`
    (`acoustic_settings`). Each acoustic LM column pools `draws` sampled draws per sentence: one draw moves a
    sentence's WER more than most changes move a voice's."""
    from mole_llama.modeling.acoustic_codec import load_acoustic_codec
    from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
    from mole_llama.modeling.modeling_duration_predictor import DurationPredictorModel
    from mole_llama.modeling.speech_units import expand_units

    acoustic_lm = AcousticLMForConditionalGeneration.from_pretrained(f"{folder}/acoustic_lm").eval()
    codec = load_acoustic_codec(f"{folder}/codec")
    durations = DurationPredictorModel.from_pretrained(f"{folder}/duration_predictor").eval()
    train = without_audio_decoding(load_from_disk(corpus)["train"], "audio")
    prompts = {}  # a training clip of each voice (a held-out voice: one of its test clips of another sentence)
    for row in train:
        if row["voice"] not in prompts:  # decode only the first clip of each voice
            prompts[row["voice"]] = decode_audio(row["audio"], RATE)[0]
    texts = list(dict.fromkeys(text for _, text in clips))
    for voice, text in clips:
        if voice not in prompts:
            prompts[voice] = clips[(voice, texts[-1] if text != texts[-1] else texts[0])]
    prompt_codes = {voice: codec.encode(torch.from_numpy(clip[: 3 * RATE])[None]) for voice, clip in prompts.items()}
    expected = settings["acoustic_expected_decoding"]
    sampling = {name: settings[f"acoustic_{name}"] for name in ("temperature", "top_k", "do_sample")}

    def speech(output) -> np.ndarray:
        return (codec.decode_expected(output.code_probabilities) if expected else codec.decode(output.codes))[0].numpy()

    heard = defaultdict(lambda: defaultdict(list))
    scored = set(texts[:sentences])
    for index, ((voice, text), waveform) in enumerate(tqdm(clips.items(), desc="resynthesis")):
        if (voice, text) not in aligned or text not in scored:
            continue
        codes = codec.encode(torch.from_numpy(waveform)[None])
        own_frames = aligned[(voice, text)]
        units = deduplicate_units(own_frames)[0]
        predicted_frames = expand_units(units, durations.predict(units))
        made = [("ground truth", waveform), ("codec resynthesis", codec.decode(codes)[0].numpy())]
        for draw in range(draws):  # the first draw's seed is the clip's index, as with one draw
            for name, frames, prompt in (
                (OWN_DURATIONS, own_frames, prompt_codes[voice]),
                (PROMPTED, predicted_frames, prompt_codes[voice]),
                (UNPROMPTED, predicted_frames, None),
            ):
                output = acoustic_lm.generate(
                    torch.tensor([frames]),
                    prompt_codes=prompt,
                    **sampling,
                    seed=index + draw * len(clips),
                    return_dict_in_generate=True,
                    output_code_probabilities=expected,
                )
                made.append((name, speech(output)))
        for name, audio in made:
            heard[voice][name].append((text, transcribe(np.asarray(audio, dtype=np.float32), RATE)))
    rows = []
    for voice, columns in sorted(heard.items()):
        rates = {
            name: error_rates([t for t, _ in pairs], [h for _, h in pairs])["wer"] for name, pairs in columns.items()
        }
        rows.append((voice, rates, len(next(iter(columns.values())))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a build-corpus folder (train and test splits)")
    parser.add_argument("--sentences", type=int, default=50, help="held-out sentences (each read by every voice)")
    parser.add_argument("--kmeans-clips", type=int, default=300, help="training clips the log-mel k-means sees")
    parser.add_argument("--speaking-model", help="folder with acoustic_lm/, codec/, duration_predictor/")
    parser.add_argument("--resynthesis-sentences", type=int, help="score resynthesis on the first N sentences only")
    parser.add_argument("--draws", type=int, default=1, help="acoustic LM draws per sentence, pooled in its WER")
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws {args.draws}: give 1 or more draws per sentence")
    torch.set_num_threads(1)
    clips = held_out_clips(args.corpus, args.sentences)
    train = load_from_disk(args.corpus)["train"].select(range(args.kmeans_clips))
    logmel = fit_semantic_tokenizer(train, SemanticUnitsConfig(backend="logmel", num_units=1024))
    recognition = SemanticUnitsConfig(backend="phones", phone_source="recognition")
    tokenizers = {
        "log-mel k-means K=1024": (logmel, False),
        "phone recognition (allphone)": (SemanticUnitsModel(recognition), False),
        "aligned phones": (SemanticUnitsModel(SemanticUnitsConfig(backend="phones")), True),
    }
    rows, aligned = unit_table(tokenizers, clips)
    voices = sorted({voice for voice, _ in clips})
    print(f"\n{args.sentences} held-out sentences x {len(voices)} voices ({', '.join(voices)}); collapsed units, "
          "normalised edit distance\n")  # fmt: skip
    print("| units | units/s raw | units/s collapsed | same sentence, two voices | two sentences, one voice | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, raw, short, same, across, kept in rows:
        print(f"| {name} | {raw:.1f} | {short:.1f} | {same:.3f} | {across:.3f} | {same / across:.2f} |")
    if args.speaking_model:
        sentences = args.resynthesis_sentences or args.sentences
        settings = acoustic_settings(args.speaking_model)
        shown = ", ".join(f"{name} {value}" for name, value in settings.items())
        print(f"\nWhisper tiny.en WER per voice, {sentences} sentences (the acoustic LM as the speaking model runs "
              f"it: {shown}; 3-s voice prompt; {args.draws} draw(s) per sentence pooled)\n")  # fmt: skip
        table = resynthesis_table(args.speaking_model, settings, clips, aligned, args.corpus, sentences, args.draws)
        names = list(table[0][1])
        print("| voice | " + " | ".join(names) + " | ratio to ground truth (voice prompt, none) |")
        print("|---|" + "---:|" * (len(names) + 1))
        for voice, rates, count in table:
            ratios = [rates[name] / max(rates["ground truth"], 1e-9) for name in (PROMPTED, UNPROMPTED)]
            cells = " | ".join(f"{rates[n]:.3f}" for n in names)
            print(f"| {voice} ({count}) | {cells} | {ratios[0]:.2f}, {ratios[1]:.2f} |")


if __name__ == "__main__":
    main()
