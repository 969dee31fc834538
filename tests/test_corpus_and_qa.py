"""The demo's data: the festival corpus (splits, Audio column, caching) and the offline QA data (disjoint splits,
known answers, the base model's own answers as targets)."""

import json

import pytest
import torch
from datasets import Audio, load_from_disk

from conftest import save_tiny_llama_with_smollm2_tokenizer
from mole_llama.data.audio import decode_audio, without_audio_decoding
from mole_llama.embedded import corpus as corpus_module
from mole_llama.embedded.corpus import build_speech_corpus, split_sentences
from mole_llama.embedded.festival import SENTENCE, is_held_out
from mole_llama.embedded.number_sentences import number_sentences
from mole_llama.embedded.qa import (
    build_qa_dataset,
    is_evaluation_question,
    known_answer_questions,
    split_open_questions,
)


def test_sentence_splits_keep_held_out_sentences_apart():
    splits = split_sentences(num_train=30, num_test=5, voices=["kal", "ked", "slt"])
    train_texts = [text for _, text in splits["train"]]
    assert len(train_texts) == 90 and len(set(train_texts)) == 90  # no sentence read twice in training
    assert not any(is_held_out(text) for text in train_texts)
    assert all(is_held_out(text) for _, text in splits["test"])
    by_voice = {voice: [text for v, text in splits["test"] if v == voice] for voice in ("kal", "ked", "slt")}
    assert by_voice["kal"] == by_voice["ked"] == by_voice["slt"] and len(by_voice["kal"]) == 5
    assert split_sentences(30, 5, ["kal", "ked", "slt"]) == splits  # deterministic
    with pytest.raises(ValueError, match="unknown voice"):
        split_sentences(1, 1, ["bob"])
    with pytest.raises(ValueError, match="ask for fewer"):
        split_sentences(100_000, 1, ["kal"])


def test_number_sentences_say_numbers_in_words_and_keep_the_fortunes_as_they_were():
    sentences = number_sentences(200, exclude=is_held_out)
    assert len(set(sentences)) == 200 and sentences == number_sentences(200, exclude=is_held_out)
    assert all(SENTENCE.fullmatch(text) and not any(c.isdigit() for c in text) for text in sentences)
    assert not any(is_held_out(text) for text in sentences)
    words = {word.strip(".?,").lower() for text in sentences for word in text.split()}
    assert {"plus", "equals", "thirteen", "seventeen", "hundred", "thousand"} <= words

    plain = split_sentences(4, 2, ["kal", "ked"])
    with_numbers = split_sentences(4, 2, ["kal", "ked"], num_number_sentences=3)
    assert with_numbers["train"][:8] == plain["train"] and with_numbers["test"] == plain["test"]
    added = with_numbers["train"][8:]
    assert [voice for voice, _ in added] == ["kal", "ked"] * 3 and len({text for _, text in added}) == 6
    assert all(text in number_sentences(6, exclude=is_held_out) for _, text in added)
    with pytest.raises(ValueError, match="num_number_sentences=-1"):
        split_sentences(1, 1, ["kal"], num_number_sentences=-1)


def test_corpus_is_an_audio_dataset_cached_on_disk(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    corpus = build_speech_corpus(out, num_train=2, num_test=1, voices=["kal", "slt"], num_workers=2)
    assert set(corpus) == {"train", "test"} and len(corpus["train"]) == 4 and len(corpus["test"]) == 2
    assert isinstance(corpus["train"].features["audio"], Audio)
    for row in without_audio_decoding(corpus["test"]):
        waveform, rate = decode_audio(row["audio"])
        assert rate == {"kal": 16000, "slt": 32000}[row["voice"]] and len(waveform) > rate  # real speech, > 1 s
    assert json.loads((out / "corpus_settings.json").read_text())["voices"] == ["kal", "slt"]

    # The same settings load the saved corpus; other settings reuse the cached clips: festival is not called.
    def no_festival(*args):
        raise AssertionError("festival was called for a cached clip")

    monkeypatch.setattr(corpus_module, "synthesize", no_festival)
    again = build_speech_corpus(out, num_train=2, num_test=1, voices=["kal", "slt"])
    assert again["train"]["text"] == corpus["train"]["text"]
    fewer = build_speech_corpus(tmp_path / "fewer", num_train=1, num_test=1, voices=["kal"],
                                cache_dir=tmp_path / "corpus_clips")  # fmt: skip
    assert fewer["train"]["text"] == corpus["train"]["text"][:1]
    # A training-only corpus leaves the empty test split out, so it loads back (datasets cannot load an empty one).
    build_speech_corpus(tmp_path / "train_only", num_train=1, num_test=0, voices=["kal"],
                        cache_dir=tmp_path / "corpus_clips")  # fmt: skip
    assert set(load_from_disk(str(tmp_path / "train_only"))) == {"train"}


def test_qa_splits_are_disjoint_and_known_answers_are_right():
    train, evaluation = split_open_questions(150, 200)
    assert len(train) == 150 and len(evaluation) == 200 and not set(train) & set(evaluation)
    assert all(is_evaluation_question(q) for q in evaluation) and not any(is_evaluation_question(q) for q in train)
    for item in known_answer_questions(num_sums=20):
        if item["question"].startswith("What is") and "plus" in item["question"]:
            a, b = (int(word.rstrip("?")) for word in item["question"].split() if word.rstrip("?").isdigit())
            assert item["answer"] == str(a + b)
    with pytest.raises(ValueError, match="ask for fewer"):
        split_open_questions(10_000, 1)


def test_qa_data_refuses_a_base_that_answers_nothing(tmp_path):
    """A tiny random base only answers blank lines: that must stop the build, not train on empty targets."""
    torch.manual_seed(0)
    save_tiny_llama_with_smollm2_tokenizer(tmp_path / "base")
    with pytest.raises(RuntimeError, match="empty answers"):
        build_qa_dataset(tmp_path / "base", tmp_path / "qa", num_train=2, num_eval=2, max_new_tokens=4)


@pytest.mark.slow
def test_qa_data_from_the_embedded_base(tmp_path):
    from mole_llama.embedded.base import embedded_base_path

    qa = build_qa_dataset(
        embedded_base_path(), tmp_path / "qa", num_train=4, num_eval=3, max_new_tokens=12, train_max_new_tokens=96
    )
    # training answers are whole (cut ones are left out); evaluation answers all share the 12-token budget
    assert set(qa) == {"train", "eval", "known"} and 1 <= len(qa["train"]) <= 4 and len(qa["eval"]) == 3
    for messages in qa["train"]["messages"]:
        assert [turn["role"] for turn in messages] == ["user", "assistant"] and messages[1]["content"]
    assert all(qa["eval"]["base_answer"]) and qa["eval"]["max_new_tokens"] == [12, 12, 12]
    assert not set(m[0]["content"] for m in qa["train"]["messages"]) & set(qa["eval"]["question"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mole_llama.chat import greedy_answers

    model = AutoModelForCausalLM.from_pretrained(embedded_base_path()).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_base_path())
    question = ["Describe the moon in one sentence."]
    assert greedy_answers(model, tokenizer, question, max_new_tokens=2, return_finished=True)[0][1] is False
    assert greedy_answers(model, tokenizer, question, max_new_tokens=96, return_finished=True)[0][1] is True
