"""The spoken form of a text: numbers and the symbols read aloud with them, written as words.

The speech expert learned to read words (the embedded corpus holds letters and punctuation only, as most TTS corpora
are normalised), so "13 + 14 = 27." must reach it as "thirteen plus fourteen equals twenty seven.", as a TTS
front end does. Evaluation spells numbers the same way before it compares transcripts (one `number_words`).

Self-contained (re only) for `trust_remote_code`.
"""

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()  # fmt: skip
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
# Symbols said as words between two numbers: "3x4", "3 * 4"; a dash or a slash only with spaces around it ("2 - 1",
# "6 / 2"), since "1990-2000" and "12/25" are a range and a date, left for the reader to say.
_TIGHT = {"+": "plus", "*": "times", "x": "times", "×": "times", "=": "equals"}
_SPACED = {"-": "minus", "/": "over"}
_ANYWHERE = {"+": " plus ", "=": " equals ", "%": " percent", "&": " and ", "×": " times "}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
MAX_SPELLED_DIGITS = 9
"""Longer digit runs (beyond `number_words`' millions, phone numbers, codes) are read digit by digit."""


def number_words(number: int) -> str:
    """`number` spelled out as a reader says it ("two hundred thousand"); from a billion up, left in digits."""
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens - 2] + (f" {_ONES[ones]}" if ones else "")
    for value, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if value <= number < 1000 * value:
            head, rest = divmod(number, value)
            return f"{number_words(head)} {name}" + (f" {number_words(rest)}" if rest else "")
    return str(number)


def _digits(digits: str) -> str:
    return " ".join(_ONES[int(digit)] for digit in digits)


def _say_number(match: re.Match) -> str:
    whole, _, decimals = match.group().partition(".")
    said = _digits(whole) if len(whole) > MAX_SPELLED_DIGITS else number_words(int(whole))
    if decimals:  # "2.5" -> "two point five": digits after the point one by one
        said += " point " + _digits(decimals)
    return f" {said} "


def spoken_form(text: str) -> str:
    """`text` with its numbers, amounts and arithmetic written as words; text without digits or those symbols comes
    back as it was (apart from runs of spaces), so applying it twice changes nothing more."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # "1,000" is one number
    # dotted runs ("1.2.3", an address) part by part, "5:30" as "five thirty": neither may end a sentence piece
    text = re.sub(r"\d+(?:\.\d+){2,}", lambda match: " dot ".join(match.group().split(".")), text)
    text = re.sub(r"(?<=\d):(?=\d\d\b)", " ", text)
    text = re.sub(r"\$(\d+)\.(\d\d)\b", r"\1 dollars \2 cents", text)
    text = re.sub(r"\$(\d+(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(r"(?<![\w.])\.(?=\d)", "point ", text)  # ".5"
    text = re.sub(r"(?:(?<=^)|(?<=[\s(]))-(?=\d)", "minus ", text)  # "-5", "(-5)"; not "10-3", a range
    for symbol, word in _TIGHT.items():
        text = re.sub(rf"(?<=\d)\s*{re.escape(symbol)}\s*(?=\d)", f" {word} ", text)
    for symbol, word in _SPACED.items():
        text = re.sub(rf"(?<=\d)\s+{re.escape(symbol)}\s+(?=\d)", f" {word} ", text)
    for symbol, word in _ANYWHERE.items():
        text = text.replace(symbol, word)
    text = _NUMBER.sub(_say_number, text)
    text = re.sub(r"\s+([.,!?;:)])", r"\1", text)  # "twenty five ." -> "twenty five."
    return " ".join(text.split())


__all__ = ["number_words", "spoken_form"]
