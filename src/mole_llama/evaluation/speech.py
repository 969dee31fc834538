"""Speech evaluation: speak held-out sentences in each voice and score them with Whisper tiny.en (pocketsphinx as a
second opinion) next to the same measure on the ground-truth recordings (the ceiling); speak a model's text answers
and compare what is heard.

The LLM's semantic units do not depend on the voice, so each sentence is turned into units once and rendered in
every voice by the acoustic LM with that voice's reference clip as prompt.
"""

from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm

from ..data.audio import decode_audio, without_audio_decoding
from ..modeling.modeling_tts_llama import NoSpeechUnitsError
from .intelligibility import clipped_sentence_wer, error_rates, transcribe

MIN_REFERENCE_SECONDS = 2.0
UNIT_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_k": 50}
"""How the LLM's frame-level units are drawn in evaluation: greedy decoding of 50 Hz units tends to loop on one
unit. A model that speaks collapsed units (it has a duration predictor) decodes with its own defaults (greedy), as
the pipeline does."""
MAX_UNITS = 300
"""Cap on units per sentence (6 s at 50 Hz; the corpus's 5-12-word sentences take 2-5 s), so an undertrained
speech expert that never ends its segment costs bounded time."""


def voice_references(dataset, voices, audio_column: str = "audio", min_seconds: float = MIN_REFERENCE_SECONDS):
    """`{voice: (waveform, rate)}`: the first clip of each voice at least `min_seconds` long (a training clip, so
    the voice prompt never holds a test sentence)."""
    references = {}
    for row in without_audio_decoding(dataset, audio_column):
        if row["voice"] in voices and row["voice"] not in references:
            waveform, rate = decode_audio(row[audio_column])
            if len(waveform) >= min_seconds * rate:
                references[row["voice"]] = (waveform, rate)
    missing = sorted(set(voices) - set(references))
    if missing:
        raise ValueError(f"no clip of at least {min_seconds} s for the voice(s) {missing}: give a larger corpus")
    return references


def held_out_sentences(corpus, num_sentences: int, audio_column: str = "audio") -> tuple:
    """`(test, references)`: the corpus's `test` rows of its first `num_sentences` held-out sentences (every voice),
    and a reference clip per voice: a training clip, or for a held-out voice (no training clip) its reading of the
    next held-out sentence, which is then not among the scored ones."""
    texts = list(dict.fromkeys(corpus["test"]["text"]))
    if len(texts) < num_sentences:
        raise ValueError(f"the corpus has {len(texts)} held-out sentences, fewer than the {num_sentences} asked")
    scored = set(texts[:num_sentences])
    test = without_audio_decoding(corpus["test"], audio_column).filter(lambda t: t in scored, input_columns=["text"])
    voices = sorted(set(test["voice"]))
    trained = [voice for voice in voices if voice in set(corpus["train"]["voice"])]
    references = voice_references(corpus["train"], trained, audio_column) if trained else {}
    if len(references) < len(voices):
        if len(texts) == num_sentences:
            raise ValueError("held-out voices need one more held-out sentence for their reference: ask for fewer")
        for row in without_audio_decoding(corpus["test"], audio_column):
            if row["text"] == texts[num_sentences] and row["voice"] not in references:
                references[row["voice"]] = decode_audio(row[audio_column])
    return test, references


def _unit_settings(model) -> dict:
    """Sampling and cap for the LLM's units: a model that speaks collapsed units (it has a duration predictor) keeps
    its own defaults and text-length cap; frame-level units are sampled (`UNIT_SAMPLING`) up to `MAX_UNITS`."""
    if model.duration_predictor is not None:
        return {}
    return {**UNIT_SAMPLING, "max_new_tokens": MAX_UNITS}


def _units_or_none(model, text: str, llm_kwargs: dict):
    """The model's units for `text`, or None when it says nothing (scored as an empty transcript, not skipped)."""
    try:
        return model.speech_units(text, **llm_kwargs)
    except NoSpeechUnitsError:
        return None


def _silence(model) -> np.ndarray:
    return np.zeros(int(0.2 * model.sampling_rate), dtype=np.float32)


def _heard(waveform, rate: int) -> dict:
    """What each judge hears: `transcript` (Whisper, the measure) and `transcript_pocketsphinx` (second opinion)."""
    return {
        "transcript": transcribe(waveform, rate),
        "transcript_pocketsphinx": transcribe(waveform, rate, judge="pocketsphinx"),
    }


def _rates(references: list, rows: list) -> dict:
    """`{"wer", "cer"}` of Whisper's transcripts in `rows`, `wer_clipped` (each sentence's WER capped at 1: one clip
    that Whisper loops on cannot outweigh the rest), and `wer_pocketsphinx`."""
    whisper = [row["transcript"] for row in rows]
    pocketsphinx = error_rates(references, [row["transcript_pocketsphinx"] for row in rows])
    return {**error_rates(references, whisper), "wer_clipped": clipped_sentence_wer(references, whisper),
            "wer_pocketsphinx": pocketsphinx["wer"]}  # fmt: skip


def _rates_by_voice(rows: list) -> dict:
    """`{voice: {"wer", "cer", "wer_clipped", "wer_pocketsphinx"}, "all": {...}}` over rows holding `voice`, `text`
    and both transcripts."""
    rates = {}
    for voice in sorted({row["voice"] for row in rows}):
        mine = [row for row in rows if row["voice"] == voice]
        rates[voice] = _rates([row["text"] for row in mine], mine)
    rates["all"] = _rates([row["text"] for row in rows], rows)
    return rates


def _write(path: Path, waveform, rate: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(waveform, dtype=np.float32).reshape(-1), int(rate))
    return str(path)


def ground_truth_intelligibility(test_dataset, out_dir=None, audio_column: str = "audio") -> tuple:
    """`(rates, rows)` of the recordings themselves; with `out_dir`, each clip is also written there as a WAV."""
    rows = []
    for index, row in enumerate(tqdm(without_audio_decoding(test_dataset, audio_column), desc="ground truth")):
        waveform, rate = decode_audio(row[audio_column])
        entry = {"voice": row["voice"], "text": row["text"], **_heard(waveform, rate)}
        if out_dir is not None:
            entry["path"] = _write(Path(out_dir) / f"{index:02d}-{row['voice']}.wav", waveform, rate)
        rows.append(entry)
    return _rates_by_voice(rows), rows


def synthesized_intelligibility(
    model, test_dataset, references: dict, out_dir, seed: int = 0, max_new_tokens: int | None = None, **llm_kwargs
) -> tuple:
    """`(rates, rows)` of `model` (a speaking model folder loaded with `AutoModelForTextToWaveform`) reading the
    test sentences in each voice of the test set; every clip is written to `out_dir`."""
    llm_kwargs = {**_unit_settings(model), **llm_kwargs}
    if max_new_tokens is not None:
        llm_kwargs["max_new_tokens"] = max_new_tokens
    voices = sorted(set(test_dataset["voice"]))
    missing = sorted(set(voices) - set(references))
    if missing:
        raise ValueError(f"no reference clip for the voice(s) {missing}: pass one per voice of the test set")
    prompts = {voice: model.voice_prompt(references[voice]) for voice in voices}
    sentences = list(dict.fromkeys(test_dataset["text"]))  # each sentence once, in order
    rows = []
    for index, text in enumerate(tqdm(sentences, desc="speaking held-out sentences")):
        torch.manual_seed(seed + index)
        units = _units_or_none(model, text, llm_kwargs)
        if units:  # the same units in every voice, in one batched acoustic pass
            frames = model.units_to_frames(units, seed=seed + index, max_frames=model.frame_cap(text, **llm_kwargs))
            waveforms = model.frames_to_waveforms(
                [frames] * len(voices), [prompts[voice] for voice in voices], [seed + index] * len(voices)
            )
        else:
            waveforms = [torch.from_numpy(_silence(model))] * len(voices)
        for voice, waveform in zip(voices, waveforms):
            waveform = waveform.numpy()
            rows.append(
                {
                    "voice": voice,
                    "text": text,
                    "units": len(units or []),
                    **_heard(waveform, model.sampling_rate),
                    "path": _write(Path(out_dir) / f"{index:02d}-{voice}.wav", waveform, model.sampling_rate),
                }
            )
    return _rates_by_voice(rows), rows


def intelligibility_side_by_side(models: dict, corpus, num_sentences: int, seed: int = 0) -> dict:
    """`{"ground truth": rates, name: rates, ...}` for each speaking model in `models` (`{name: model}`) reading the
    corpus's first `num_sentences` held-out sentences in every voice: the same sentences, voice prompts and seeds,
    so only the models differ. The clips go to a scratch folder that is removed."""
    import tempfile

    test, references = held_out_sentences(corpus, num_sentences)
    with tempfile.TemporaryDirectory() as scratch:
        rates = {"ground truth": ground_truth_intelligibility(test, f"{scratch}/ground-truth")[0]}
        for index, (name, model) in enumerate(models.items()):
            rates[name] = synthesized_intelligibility(model, test, references, f"{scratch}/{index}", seed)[0]
    return rates


def spoken_answers(speaker, tokenizer, questions, reference, out_dir, seed: int = 0, max_new_tokens: int = 32) -> list:
    """Text in, speech out: `speaker` (a MoLE-Llama folder loaded to speak, learned routing) answers each question
    in text, then says the answer in the `reference` voice; what Whisper (and pocketsphinx) hear is scored against
    the text answer."""
    from ..chat import greedy_answers

    answers = greedy_answers(speaker, tokenizer, list(questions), max_new_tokens=max_new_tokens, progress=False)
    prompt = speaker.voice_prompt(reference)
    rows = []
    for index, (question, answer) in enumerate(zip(tqdm(questions, desc="spoken answers"), answers)):
        if not answer:
            raise ValueError(f"the model gave an empty text answer to {question!r}: nothing to speak")
        try:
            waveform = speaker.speak(answer, prompt, seed=seed + index, **_unit_settings(speaker)).numpy()
        except NoSpeechUnitsError:
            waveform = _silence(speaker)
        heard = _heard(waveform, speaker.sampling_rate)
        rows.append(
            {
                "question": question,
                "answer": answer,
                **heard,
                "wer": error_rates([answer], [heard["transcript"]])["wer"],
                "wer_pocketsphinx": error_rates([answer], [heard["transcript_pocketsphinx"]])["wer"],
                "path": _write(Path(out_dir) / f"answer-{index}.wav", waveform, speaker.sampling_rate),
            }
        )
    return rows


__all__ = [
    "ground_truth_intelligibility",
    "intelligibility_side_by_side",
    "spoken_answers",
    "synthesized_intelligibility",
    "voice_references",
]
