"""Text retention and speech routing of the shipped MoLE-Llama under each inference routing mode, side by side.

One model (the embedded MoLE-Llama's experts and routers), loaded once per mode:

  token-soft        the paper's router: each token's own hidden state, soft weights
  token-hard        the same, each token's top expert only
  sequence-soft     `router_context="sequence"`: the running mean of the router logits over the sequence so far
  sequence-hard     the same, top expert only (with the merged-expert cache: one expert per step, base speed)
  text-forced       the text expert for every token (no router): the best retention routing could give

Text: on held-out open questions, teacher-forced on the base's greedy answers (`token_agreement`, `kl`), the share
of greedy answers identical to the base's, and the known-answer accuracy; the router accuracy on the text answers.
Speech: on held-out fortune sentences, the greedy units against the TTS-Llama's (its speech expert alone): the
share of identical unit sequences and the unit error rate, and the router accuracy on those units. The speech side
needs no audio: a mode whose units equal the TTS-Llama's speaks exactly as the TTS-Llama does.

    python benchmarks/bench_mole_retention.py [--prompts 60] [--sentences 24] [--modes sequence-hard ...]
"""

import argparse
import json
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from mole_llama import MoLELlamaForCausalLM
from mole_llama.chat import greedy_answers, greedy_speech_units, unit_error_rate
from mole_llama.embedded.base import embedded_base_path
from mole_llama.embedded.corpus import split_sentences
from mole_llama.embedded.qa import known_answer_questions, split_open_questions
from mole_llama.embedded.shipped import embedded_model_path
from mole_llama.evaluation.retention import accuracy, agreement, teacher_forced_divergence
from mole_llama.evaluation.routing import router_accuracy
from mole_llama.training.sft_data import text_examples, tts_examples

NO_PRIOR = {"router_context_prior": None, "router_context_prior_tokens": 0.0}
MODES = {
    "token-soft": {"router_context": "token", "hard_routing": False, **NO_PRIOR},
    "token-hard": {"router_context": "token", "hard_routing": True, **NO_PRIOR},
    "sequence-soft": {"router_context": "sequence", "hard_routing": False},
    "sequence-hard": {"router_context": "sequence", "hard_routing": True},
    "text-forced": {"routing": "text"},
}
MAX_NEW_TOKENS = 24  # the QA data's evaluation budget (build_qa_dataset)


def load_mode(folder, mode: str, prior: dict):
    settings = dict(MODES[mode])
    if settings.get("router_context") == "sequence":
        settings.update(prior)
    routing = settings.pop("routing", None)
    model = MoLELlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, **settings).eval()
    model.set_routing(routing)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=60, help="held-out open questions")
    parser.add_argument("--sentences", type=int, default=24, help="held-out sentences for the speech side")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    parser.add_argument(
        "--prior", nargs=2, type=float, metavar=("LOGIT", "TOKENS"),
        help="sequence modes: start the running mean at text +LOGIT / speech -LOGIT, counted as TOKENS tokens "
        "(default: the shipped model's own setting)",
    )  # fmt: skip
    parser.add_argument(
        "--split", choices=["eval", "train"], default="eval",
        help="held-out questions and sentences (eval), or training ones, to choose settings on without touching eval",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.set_verbosity_error()

    base_dir, mole_dir = embedded_base_path(), embedded_model_path("mole-llama")
    tts_dir = embedded_model_path("tts-llama")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base_tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(mole_dir)
    train_questions, questions = split_open_questions(args.prompts if args.split == "train" else 0, args.prompts)
    questions = train_questions if args.split == "train" else questions
    known = known_answer_questions()
    base_answers = greedy_answers(base, base_tokenizer, questions, MAX_NEW_TOKENS)
    base_known = accuracy(greedy_answers(base, base_tokenizer, [k["question"] for k in known], MAX_NEW_TOKENS),
                          [k["answer"] for k in known])  # fmt: skip
    split = "train" if args.split == "train" else "test"
    counts = (args.sentences, 0) if args.split == "train" else (0, args.sentences)
    sentences = list(dict.fromkeys(text for _, text in split_sentences(*counts, ["slt"])[split]))
    tts = MoLELlamaForCausalLM.from_pretrained(tts_dir, dtype=torch.float32).eval()
    num_units = tts.config.num_speech_units
    tts_units = greedy_speech_units(tts, tokenizer, sentences, num_units)
    del tts
    speech_rows = tts_examples(Dataset.from_dict({"text": sentences, "semantic_units": tts_units}), deduplicate=True)
    text_rows = text_examples(Dataset.from_list([
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in zip(questions, base_answers)
    ]))  # fmt: skip
    examples = list(speech_rows) + list(text_rows)

    rows = {}
    for mode in args.modes:
        prior = {}
        if args.prior:
            logit, tokens = args.prior
            prior = {"router_context_prior": {"text": logit, "speech": -logit}, "router_context_prior_tokens": tokens}
        model = load_mode(mole_dir, mode, prior)
        started = time.perf_counter()
        answers = greedy_answers(model, tokenizer, questions, MAX_NEW_TOKENS, progress=False)
        known_answers = greedy_answers(model, tokenizer, [k["question"] for k in known], MAX_NEW_TOKENS, progress=False)
        units = greedy_speech_units(model, tokenizer, sentences, num_units)
        routed = router_accuracy(model, tokenizer, examples) if model.config.routing is None else {}
        rows[mode] = {
            **teacher_forced_divergence(model, base, tokenizer, questions, base_answers),
            "identical": agreement(answers, base_answers),
            "accuracy": accuracy(known_answers, [k["answer"] for k in known]),
            "router_text": routed.get("text"),
            "router_speech": routed.get("tts"),
            "units_identical": sum(a == b for a, b in zip(units, tts_units)) / len(units),
            "unit_error_rate": unit_error_rate(tts_units, units),
            "seconds": time.perf_counter() - started,
        }
        del model

    def cell(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"\n{args.split} split: {args.prompts} questions (base known-answer accuracy {base_known:.3f}), "
          f"{len(sentences)} sentences, sequence prior {args.prior or 'as the model has it'}\n")  # fmt: skip
    print("| mode | token agreement | KL | identical answers | known-answer accuracy | router text | router speech "
          "| units = TTS-Llama's | unit error vs TTS-Llama | seconds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, row in rows.items():
        print(f"| {mode} | {cell(row['token_agreement'])} | {cell(row['kl'])} | {cell(row['identical'])} | "
              f"{cell(row['accuracy'])} | {cell(row['router_text'])} | {cell(row['router_speech'])} | "
              f"{cell(row['units_identical'])} | {cell(row['unit_error_rate'])} | {row['seconds']:.0f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"base_accuracy": base_known, "modes": rows}, file, indent=2)


if __name__ == "__main__":
    main()
