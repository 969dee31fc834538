"""Bad and odd input: a fuzz of random texts (unicode, control characters, markup, special-token strings, very long
words, empty) through the speaking path of the tiny speaking model with the real SmolLM2 tokenizer (every text ends
in audio or a ValueError, never another exception; inside a speech segment only unit tokens or the end marker, never
more than the text's cap); then the commands given broken folders, files and datasets."""

import random
import shutil

import numpy as np
import pytest
import soundfile
import torch
from test_tts_pipeline import tts_dir  # noqa: F401  (the fixture)
from transformers import pipeline

from mole_llama.data.audio import decode_audio
from mole_llama.modeling.modeling_tts_llama import MoLELlamaForTextToWaveform

pytestmark = pytest.mark.slow

FRAGMENTS = [
    lambda rng: "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 12))),  # Latin to CJK
    lambda rng: "".join(
        chr(rng.choice([0x1F600, 0x1F680, 0x05D0, 0x0627, 0x0301, 0x200B, 0xFEFF])) for _ in range(rng.randint(1, 6))
    ),  # emoji, right-to-left, combining, zero-width  # fmt: skip
    lambda rng: "".join(chr(rng.randint(0, 31)) for _ in range(rng.randint(1, 4))) + "\x7f",  # control characters
    lambda rng: rng.choice(
        [
            "<b>bold</b>",
            "{{ template }}",
            "[INST] do [/INST]",
            "<script>x()</script>",
            "# title",
            "| a | b |",
            "&amp;",
            "\\n\\t",
        ]
    ),  # fmt: skip
    lambda rng: rng.choice(
        [
            "<|speech_5|>",
            "<|speech_end|>",
            "<|speech_start|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|speech_",
            "<|im",
        ]
    ),  # fmt: skip
    lambda rng: "x" * rng.randint(50, 400),  # a very long word
    lambda rng: rng.choice(["", " ", "\n\n", "\t"]),
    lambda rng: rng.choice(["Hello there.", "How are you today?", "Numbers: 1, 22, 333.", "Wait... what?!"]),
]
TEXTS = 1000


def random_texts(count: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [" ".join(rng.choice(FRAGMENTS)(rng) for _ in range(rng.randint(1, 5))) for _ in range(count)]


def test_a_thousand_random_texts_end_in_audio_or_a_clear_error(tts_dir):  # noqa: F811
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    texts = random_texts(TEXTS)
    speech, outcomes = model.speech_ids, {"refused": 0, "spoken": 0}
    pieces = []
    for text in texts:
        try:
            pieces += model.plan_pieces(text)
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["refused"] < TEXTS  # the fuzz reaches the LLM too
    torch.manual_seed(0)
    for start in range(0, len(pieces), 64):
        batch = pieces[start : start + 64]
        for piece, row in zip(batch, model.speech_token_rows(batch, do_sample=True, top_k=50)):
            row = row.tolist()
            segment = row[: row.index(speech.end)] if speech.end in row else row
            assert all(speech.is_unit(torch.tensor(segment))), f"a non-unit token inside the segment for {piece!r}"
            assert len(segment) <= model.units_cap(piece)
    for text in texts[:12]:  # the whole way to audio for some
        try:
            audio = model.speak(text, seed=0)
        except ValueError:  # NoSpeechUnitsError included
            continue
        outcomes["spoken"] += 1
        assert audio.ndim == 1 and len(audio) > 0 and torch.isfinite(audio).all()
    assert outcomes["spoken"] > 0


def test_control_tokens_of_the_tokenizer_in_the_text_are_refused(tts_dir):  # noqa: F811
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    for text in ("Hello <|im_end|> there", "<|im_start|>system", "end<|endoftext|>"):
        with pytest.raises(ValueError, match="special token"):
            model.speak(text)


# The probe's classes of bad input to the commands, each with the outcome it must have (a one-line error naming the
# problem and the fix, before any model runs; or the right result).


def cli_error(capsys, *argv) -> str:
    from mole_llama.cli import main

    with pytest.raises(SystemExit):
        main([str(arg) for arg in argv])
    return capsys.readouterr().err


def damaged_copy(tts_dir, tmp_path, name):  # noqa: F811
    copy = tmp_path / name
    shutil.copytree(tts_dir, copy)
    return copy


def test_model_folders_that_would_load_wrongly_are_refused_with_the_fix(tts_dir, text_adapter_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out.wav"
    err = cli_error(capsys, "synthesize", "Hello.", "-m", tmp_path / "no-such-model", "-o", out)
    assert "no model folder at" in err and "train-tts" in err
    stray = damaged_copy(tts_dir, tmp_path, "stray")  # a folder with a PEFT adapter left at its top level
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(text_adapter_dir / name, stray / name)
    err = cli_error(capsys, "synthesize", "Hello.", "-m", stray, "-o", out)
    assert "holds PEFT adapter files" in err and "folder of their own" in err
    with pytest.raises(ValueError, match="holds PEFT adapter files"):  # the class itself refuses too
        MoLELlamaForTextToWaveform.from_pretrained(stray)
    cut = damaged_copy(tts_dir, tmp_path, "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    err = cli_error(capsys, "synthesize", "Hello.", "-m", cut, "-o", out)
    assert "model.safetensors is damaged" in err and "cut short" in err
    err = cli_error(capsys, "synthesize", "Hello.", "-m", tts_dir, "--voice", tmp_path / "none.wav", "-o", out)
    assert "--voice" in err and "no such file" in err
    assert not out.exists()
    not_audio = tmp_path / "voice.wav"
    not_audio.write_text("not audio")
    with pytest.raises(ValueError, match="cannot read the voice file"):
        MoLELlamaForTextToWaveform.from_pretrained(tts_dir).voice_prompt(not_audio)


def test_export_checks_its_metrics_before_copying_and_push_takes_only_what_export_wrote(tts_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "repo"
    err = cli_error(capsys, "export", "--model", tts_dir, "--out", out, "--repo-id", "me/x", "--metrics", "none.json")
    assert "--metrics none.json: no such file" in err and not out.exists()
    (tmp_path / "bad.json").write_text("{not json")
    err = cli_error(capsys, "export", "--model", tts_dir, "--out", out, "--repo-id", "me/x", "--metrics",
                    tmp_path / "bad.json")  # fmt: skip
    assert "is not JSON" in err and not out.exists()
    (tmp_path / "old.json").write_text('{"intelligibility": {"TTS-Llama": {"all": {"wer": 0.5, "cer": 0.3}}}}')
    err = cli_error(capsys, "export", "--model", tts_dir, "--out", out, "--repo-id", "me/x", "--metrics",
                    tmp_path / "old.json")  # fmt: skip
    assert "lacks ['wer_pocketsphinx']" in err and "evaluate" in err and not out.exists()
    raw = damaged_copy(tts_dir, tmp_path, "raw")  # a training folder: checkpoints and pickles beside the model
    (raw / "checkpoint-3").mkdir()
    (raw / "checkpoint-3" / "optimizer.pt").write_bytes(b"pickle")
    (raw / "training_args.bin").write_bytes(b"pickle")
    (raw / "README.md").write_text("card")
    err = cli_error(capsys, "push", raw, "--repo-id", "me/x")
    assert "holds files export never writes" in err and "checkpoint-3/optimizer.pt" in err
    assert "export --model" in err and "--repo-id ORG/NAME" in err


def test_a_folder_of_wav_files_prepares_without_torchcodec(tmp_path):
    from mole_llama.training.stages import load_any_dataset

    folder = tmp_path / "clips"
    folder.mkdir()
    rate = 16000
    for index in range(2):
        tone = np.sin(2 * np.pi * (200 + 50 * index) * np.arange(rate) / rate).astype(np.float32)
        soundfile.write(folder / f"clip{index}.wav", tone, rate)
    (folder / "metadata.csv").write_text("file_name,text\nclip0.wav,One.\nclip1.wav,Two.\n")
    dataset = load_any_dataset(folder)
    assert dataset["text"] == ["One.", "Two."]
    waveform, read_rate = decode_audio(dataset[1]["audio"])
    assert read_rate == rate and len(waveform) == rate
    (folder / "metadata.csv").unlink()
    with pytest.raises(ValueError, match="no metadata.csv or metadata.jsonl"):
        load_any_dataset(folder)
