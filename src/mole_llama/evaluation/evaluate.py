"""`mole-llama evaluate`: the paper's claims measured on a TTS-Llama and a MoLE-Llama folder, in one JSON.

- intelligibility: held-out sentences spoken in each voice, Whisper tiny.en WER/CER (pocketsphinx WER as a second
  opinion), next to the ground truth;
- text retention: greedy agreement with the base, mean per-token KL from the base, known-answer accuracy, for the
  base, TTS-Llama (speech expert always on) and MoLE-Llama (learned routing);
- router accuracy: share of held-out text-task and speech tokens routed mainly to their expert;
- text in, speech out: MoLE-Llama answers questions in text, then says the answers.
"""

import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForTextToWaveform, AutoTokenizer
from transformers.utils import logging

from ..conversion.hub import describe_model

logger = logging.get_logger(__name__)
METRICS_FILE = "metrics.json"


def check_learned_routing(model, folder) -> None:
    """Text answers, and routing figures, need a MoLE-Llama that routes by itself, not one forced to an expert."""
    if model.config.routing is not None:
        raise ValueError(f"{folder} forces routing={model.config.routing!r}: give a MoLE-Llama with its learned router")


def _load_speaking(folder):
    return AutoModelForTextToWaveform.from_pretrained(str(folder), dtype=torch.float32).eval()


def held_out_speech_examples(test_dataset, semantic_tokenizer, deduplicate: bool = False):
    """TTS prompt-completion examples of held-out recordings (units from the model's own semantic tokenizer, aligned
    to the transcript where it needs one; recordings it cannot align are left out), collapsed when the model
    speaks collapsed units."""
    from datasets import Dataset

    from ..data.audio import decode_audio, without_audio_decoding
    from ..modeling.phone_units import TranscriptAlignmentError
    from ..training.prepare import encode
    from ..training.sft_data import tts_examples

    if semantic_tokenizer is None:
        raise ValueError("the MoLE-Llama folder has no semantic_tokenizer/: its held-out units cannot be made")
    rate_needed = semantic_tokenizer.config.sampling_rate
    rows = []
    for row in without_audio_decoding(test_dataset):
        waveform, rate = decode_audio(row["audio"])
        transcript = row["text"] if semantic_tokenizer.config.needs_transcript else None
        try:
            with torch.no_grad():
                units = encode(semantic_tokenizer, waveform, rate, rate_needed, transcript)[0]
        except TranscriptAlignmentError:
            continue
        rows.append({"text": row["text"], "semantic_units": units.tolist()})
    if not rows:
        raise ValueError("no held-out recording could be turned into units: check the corpus's test split")
    return tts_examples(Dataset.from_list(rows), deduplicate=deduplicate)


def evaluate_models(
    tts_dir,
    mole_dir,
    base_dir,
    corpus,
    qa,
    out_dir,
    num_sentences: int = 8,
    num_prompts: int = 200,
    num_spoken_answers: int = 3,
    seed: int = 0,
) -> dict:
    """Measure everything on the corpus's `test` split and the QA data's `eval`/`known` splits; write the clips
    under `out_dir/audio/` and the numbers to `out_dir/metrics.json`; return them."""
    from ..chat import greedy_answers
    from ..routing import expert_weight_trace
    from ..training.sft_data import text_examples
    from .retention import accuracy, agreement, teacher_forced_divergence
    from .routing import router_accuracy
    from .speech import ground_truth_intelligibility, held_out_sentences, spoken_answers, synthesized_intelligibility

    out_dir = Path(out_dir)
    if len(qa["eval"]) < num_prompts:
        raise ValueError(f"the QA data has {len(qa['eval'])} evaluation prompts, fewer than {num_prompts} asked")
    test, references = held_out_sentences(corpus, num_sentences)
    sentences = list(dict.fromkeys(test["text"]))

    base_tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    speakers = {"TTS-Llama": _load_speaking(tts_dir), "MoLE-Llama": _load_speaking(mole_dir)}
    tts, mole = speakers["TTS-Llama"], speakers["MoLE-Llama"]  # one load each: text goes through `generate_text`
    tokenizer, mole_tokenizer = tts.tokenizer, mole.tokenizer
    check_learned_routing(mole, mole_dir)

    metrics = {"settings": {"sentences": len(sentences), "voices": sorted(set(test["voice"])),
                            "prompts": num_prompts, "seed": seed}}  # fmt: skip
    logger.warning("intelligibility: ground truth, TTS-Llama, MoLE-Llama ...")
    intelligibility, clips = {}, {}
    intelligibility["ground truth"], clips["ground truth"] = ground_truth_intelligibility(test, out_dir / "audio/gt")
    for (name, speaker), folder in zip(speakers.items(), ("tts", "mole")):
        intelligibility[name], clips[name] = synthesized_intelligibility(
            speaker, test, references, out_dir / "audio" / folder, seed=seed
        )
    metrics["intelligibility"], metrics["clips"] = intelligibility, clips

    logger.warning("text retention ...")
    evaluation = qa["eval"].select(range(num_prompts))
    questions, base_answers = evaluation["question"], evaluation["base_answer"]
    max_new_tokens = evaluation["max_new_tokens"][0]  # the base answered with this budget: the models get the same
    known = qa["known"]
    retention = {}
    for name, model, model_tokenizer in (("base", base, base_tokenizer), ("TTS-Llama", tts, tokenizer),
                                         ("MoLE-Llama", mole, mole_tokenizer)):  # fmt: skip
        answers = base_answers if model is base else greedy_answers(model, model_tokenizer, questions, max_new_tokens)
        known_answers = greedy_answers(model, model_tokenizer, known["question"], max_new_tokens)
        divergence = teacher_forced_divergence(model, base, model_tokenizer, questions, base_answers)
        retention[name] = {
            "agreement": agreement(answers, base_answers),
            **divergence,
            "accuracy": accuracy(known_answers, known["answer"]),
            "examples": [{"question": q, "answer": a} for q, a in zip(questions[:3], answers[:3])],
        }
    metrics["retention"] = retention

    logger.warning("router accuracy ...")
    collapsed = mole.duration_predictor is not None
    speech_examples = held_out_speech_examples(test, mole.semantic_tokenizer, deduplicate=collapsed)
    text_rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in zip(questions[:50], base_answers[:50])
    ]
    examples = list(speech_examples) + list(text_examples(Dataset.from_list(text_rows)))
    metrics["routing"] = router_accuracy(mole, mole_tokenizer, examples)
    speech = speech_examples[0]
    conversation = text_rows[0]["messages"] + speech["prompt"] + speech["completion"]
    rendered = mole_tokenizer.apply_chat_template(conversation, tokenize=False)
    tokens, weights = expert_weight_trace(mole, mole_tokenizer, rendered)
    metrics["routing_trace"] = {"tokens": tokens, "weights": weights.tolist(), "experts": mole.config.expert_names}

    logger.warning("text in, speech out ...")
    spoken = known.select(range(min(num_spoken_answers, len(known))))["question"]
    metrics["spoken_answers"] = spoken_answers(
        mole,
        mole_tokenizer,
        spoken,
        references[sorted(references)[0]],
        out_dir / "audio/answers",
        seed=seed,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


__all__ = ["evaluate_models", "held_out_speech_examples"]


def evaluate_speech(tts_dir, corpus, out_dir, num_sentences: int = 8, seed: int = 0, qa=None,
                    num_spoken_answers: int = 3) -> dict:  # fmt: skip
    """Intelligibility of one speaking folder alone: the corpus's held-out sentences in every voice, held-out voices
    included, next to the ground truth; with `qa` (build-qa data) and a MoLE-Llama with its learned router, also its
    spoken answers to the first known-answer questions. Clips under `out_dir/audio/`, numbers in
    `out_dir/metrics.json`."""
    from .speech import ground_truth_intelligibility, held_out_sentences, spoken_answers, synthesized_intelligibility

    out_dir = Path(out_dir)
    speaker = _load_speaking(tts_dir)
    kind = describe_model(speaker.config.to_dict())["kind"]  # the column's name: TTS-Llama or MoLE-Llama
    if qa is not None:
        check_learned_routing(speaker, tts_dir)
    test, references = held_out_sentences(corpus, num_sentences)
    truth, _ = ground_truth_intelligibility(test, out_dir / "audio/gt")
    rates, clips = synthesized_intelligibility(speaker, test, references, out_dir / "audio/tts", seed)
    metrics = {
        "settings": {"sentences": num_sentences, "voices": sorted(set(test["voice"])), "seed": seed},
        "intelligibility": {"ground truth": truth, kind: rates},
        "clips": {kind: clips},
    }
    if qa is not None:
        known = qa["known"].select(range(min(num_spoken_answers, len(qa["known"]))))
        metrics["spoken_answers"] = spoken_answers(
            speaker, speaker.tokenizer, known["question"], references[sorted(references)[0]],
            out_dir / "audio/answers", seed=seed,
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics
