"""Everyday sentences that carry numbers, for the embedded speech corpus.

Fortunes hardly say numbers ("thirteen", "seventeen" and "sixteen" never occur in 7,200 training sentences, "equals"
twice), but a speaking model reads every number a text or an answer holds: `spoken_form` turns "13 + 14 = 27." into
"thirteen plus fourteen equals twenty seven." before the speech expert sees it. These sentences teach it those words,
in many frames (counts, sums, ages, prices, times, years), and reach it in the same words `spoken_form` writes.
"""

import random

from ..modeling.spoken_form import spoken_form
from .festival import SENTENCE

FRAMES = (
    "{a} + {b} = {sum}.",
    "{big} - {a} = {big_minus_a}.",
    "{a} times {small} is {a_times_small}.",
    "What is {a} plus {b}?",
    "The answer is {sum}.",
    "She counted {a} birds and {b} cats.",
    "There are {a} chairs in the room.",
    "He was born in {year}.",
    "The train leaves at {hour} {minute}.",
    "It costs {big} dollars.",
    "My sister is {age} years old.",
    "We walked {a} miles before lunch.",
    "Page {big} has {b} pictures.",
    "Add {a} and {b} to get {sum}.",
    "The team scored {a} points in the first half.",
    "Only {small} of the {big} tickets were left.",
    "About {big} people came to the show.",
    "Room {big} is on floor {small}.",
)


def number_sentence(rng: random.Random) -> str:
    """One sentence: a frame filled with random numbers (digits), then said as words, capitalised."""
    a, b, small = rng.randint(0, 99), rng.randint(0, 99), rng.randint(2, 12)
    big = rng.randint(a, 999)
    numbers = {
        "a": a, "b": b, "small": small, "big": big, "sum": a + b, "big_minus_a": big - a, "a_times_small": a * small,
        "year": rng.randint(1800, 2030), "hour": rng.randint(1, 12), "minute": rng.randint(10, 59),
        "age": rng.randint(2, 90),
    }  # fmt: skip
    text = spoken_form(rng.choice(FRAMES).format(**numbers))
    return text[0].upper() + text[1:]


def number_sentences(count: int, seed: int = 0, exclude=lambda sentence: False) -> list:
    """`count` distinct number sentences in a fixed order (`seed`), none for which `exclude` is true."""
    if count < 0:
        raise ValueError(f"count={count}: give a number of sentences >= 0")
    rng, seen, sentences = random.Random(seed), set(), []
    for _ in range(100 * count + 100):
        if len(sentences) == count:
            return sentences
        sentence = number_sentence(rng)
        if sentence not in seen and not exclude(sentence) and SENTENCE.fullmatch(sentence):
            seen.add(sentence)
            sentences.append(sentence)
    raise RuntimeError(f"made only {len(sentences)} distinct number sentences of the {count} asked for")


__all__ = ["number_sentence", "number_sentences"]
