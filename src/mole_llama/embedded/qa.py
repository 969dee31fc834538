"""Offline text QA data for the text expert, the router and the retention test (no Hub access needed).

- Open questions from templates x topics, answered by the base model itself (its greedy answers are the targets):
  a text expert trained on them keeps the base's behaviour, and retention is measured as agreement with the base.
- Known-answer questions (small sums, capitals, everyday counts): accuracy says whether a model still knows them.

The split is by content (a hash of the question), so no training step ever sees an evaluation question.
"""

import json
import random
from pathlib import Path

from transformers.utils import logging

from .festival import is_held_out

logger = logging.get_logger(__name__)

TEMPLATES = [
    "What is {topic}?",
    "Describe {topic} in one sentence.",
    "Give one interesting fact about {topic}.",
    "Why do people care about {topic}?",
    "Name two things related to {topic}.",
    "How would you explain {topic} to a child?",
    "What is a common use of {topic}?",
    "Write a short sentence about {topic}.",
]
TOPICS = [
    "the moon", "a bicycle", "rain", "the ocean", "a library", "coffee", "the sun", "a forest", "music", "a river",
    "bread", "a volcano", "the internet", "a telephone", "snow", "a garden", "mathematics", "a train", "the heart",
    "a mountain", "chess", "an apple", "electricity", "a camera", "the wind", "a clock", "honey", "a bridge",
    "the desert", "a piano", "friendship", "a map", "the brain", "a candle", "football", "a window", "gold",
    "a storm", "the alphabet", "a hospital", "cheese", "a satellite", "the weather", "a dog", "recycling",
    "a newspaper", "tea", "a calendar", "the stars", "a kitchen", "painting", "a battery", "the forest floor",
    "a museum", "salt", "a rocket", "the seasons", "a school", "sleep", "a computer", "an island", "glass",
]  # fmt: skip
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid",
    "England": "London", "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens",
}  # fmt: skip
COUNTS = {
    "How many days are in a week?": "7", "How many legs does a spider have?": "8",
    "How many months are in a year?": "12", "How many sides does a triangle have?": "3",
    "How many hours are in a day?": "24", "How many minutes are in an hour?": "60",
}  # fmt: skip


def is_evaluation_question(question: str, percent: int = 50) -> bool:
    """A fixed, content-based split (the corpus's own): the same question is for evaluation in every run."""
    return is_held_out(question, percent)


def open_questions() -> list:
    """Every template x topic question, in a fixed order."""
    return [template.format(topic=topic) for topic in TOPICS for template in TEMPLATES]


def known_answer_questions(num_sums: int = 40, seed: int = 0) -> list:
    """`[{"question", "answer"}]`: small sums (seeded), capitals and everyday counts, answers as short strings."""
    rng = random.Random(seed)
    items = []
    for _ in range(num_sums):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        items.append({"question": f"What is {a} plus {b}?", "answer": str(a + b)})
    items += [{"question": f"What is the capital of {c}?", "answer": city} for c, city in CAPITALS.items()]
    items += [{"question": question, "answer": answer} for question, answer in COUNTS.items()]
    return items


def split_open_questions(num_train: int, num_eval: int, seed: int = 0) -> tuple:
    """`(train, eval)` lists of open questions, disjoint by `is_evaluation_question`, shuffled with `seed`."""
    questions = open_questions()
    train = [q for q in questions if not is_evaluation_question(q)]
    evaluation = [q for q in questions if is_evaluation_question(q)]
    if num_train > len(train) or num_eval > len(evaluation) or num_train < 0 or num_eval < 0:
        raise ValueError(
            f"asked for {num_train} training and {num_eval} evaluation questions; there are {len(train)} and "
            f"{len(evaluation)}: ask for fewer"
        )
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(evaluation)
    return train[:num_train], evaluation[:num_eval]


def build_qa_dataset(
    base_model_dir,
    out_dir,
    num_train: int = 200,
    num_eval: int = 200,
    max_new_tokens: int = 24,
    train_max_new_tokens: int = 128,
    batch_size: int = 16,
    seed: int = 0,
):
    """Answer the questions with the base model (greedy) and save a DatasetDict in `out_dir`:

    - `train`: `messages` (user question, assistant = the base's whole answer, up to `train_max_new_tokens`; cut
      answers are left out), for `mole-llama train-text` and the router;
    - `eval`: `question`, `base_answer`, `max_new_tokens` (held out from every training step; models are compared
      with the base under the same answer budget);
    - `known`: `question`, `answer` (known answers, for accuracy).

    A folder already holding a QA dataset with the same settings is loaded instead of rebuilt.
    """
    import torch
    from datasets import Dataset, DatasetDict, load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..chat import greedy_answers

    out_dir = Path(out_dir)
    settings = {
        "base_model": str(base_model_dir), "num_train": num_train, "num_eval": num_eval,
        "max_new_tokens": max_new_tokens, "train_max_new_tokens": train_max_new_tokens, "seed": seed,
    }  # fmt: skip
    settings_file = out_dir / "qa_settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
        return load_from_disk(str(out_dir))
    train, evaluation = split_open_questions(num_train, num_eval, seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()
    eval_answers = greedy_answers(model, tokenizer, evaluation, max_new_tokens, batch_size)
    # Training targets must be whole answers: one cut at a budget, then closed by the chat template's end-of-turn,
    # would teach the text expert to stop early. Unfinished ones are left out (and counted).
    finished = greedy_answers(model, tokenizer, train, train_max_new_tokens, batch_size, return_finished=True)
    empty = [q for q, a in zip(train + evaluation, [a for a, _ in finished] + eval_answers) if not a]
    if empty:
        raise RuntimeError(f"the base model gave {len(empty)} empty answers (e.g. to {empty[0]!r}): check the model")
    kept = [(question, answer) for question, (answer, done) in zip(train, finished) if done]
    logger.warning(f"{len(kept)} of {len(train)} training answers finished within {train_max_new_tokens} tokens")
    if train and not kept:
        raise RuntimeError(f"no training answer finished within {train_max_new_tokens} tokens: raise the budget")
    known = known_answer_questions(seed=seed)
    qa = DatasetDict(
        {
            "train": Dataset.from_dict(
                {"messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in kept]}
            ),
            "eval": Dataset.from_dict(
                {
                    "question": evaluation,
                    "base_answer": eval_answers,
                    "max_new_tokens": [max_new_tokens] * len(evaluation),
                }
            ),
            "known": Dataset.from_list(known),
        }
    )
    qa.save_to_disk(str(out_dir))
    settings_file.write_text(json.dumps(settings))
    return qa


__all__ = [
    "build_qa_dataset",
    "is_evaluation_question",
    "known_answer_questions",
    "open_questions",
    "split_open_questions",
]
