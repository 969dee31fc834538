"""REPORT.md from known metrics: the tables hold the numbers, the claims are judged from them, the plots are PNGs,
and loss curves come from the Trainer state with the most steps."""

import json

import numpy as np
import soundfile

from mole_llama.evaluation.report import claims, training_losses, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rates(wer, cer):
    return {"wer": wer, "cer": cer, "wer_clipped": wer * 0.9, "wer_pocketsphinx": min(1.0, wer * 1.5)}


def known_metrics(tmp_path, tts_wer=0.3, mole_wer=0.33, tts_agreement=0.8, mole_agreement=0.97):
    """Metrics as `evaluate_models` writes them, with clips that are real WAV files (tones)."""
    clips = {}
    for name in ("ground truth", "TTS-Llama", "MoLE-Llama"):
        clips[name] = []
        for voice in ("kal", "slt"):
            path = tmp_path / "audio" / name.replace(" ", "_") / f"00-{voice}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            tone = 0.3 * np.sin(np.linspace(0, 2000 * np.pi, 16000)).astype(np.float32)
            soundfile.write(path, tone, 16000)
            clips[name].append({"voice": voice, "text": "Hello there.", "transcript": "hello", "path": str(path)})
    retention = {
        "base": {"agreement": 1.0, "token_agreement": 1.0, "kl": 0.0, "accuracy": 0.5},
        "TTS-Llama": {"agreement": 0.4, "token_agreement": tts_agreement, "kl": 0.21, "accuracy": 0.25},
        "MoLE-Llama": {"agreement": 0.9, "token_agreement": mole_agreement, "kl": 0.02, "accuracy": 0.5},
    }
    return {
        "settings": {"sentences": 1, "voices": ["kal", "slt"], "prompts": 200, "seed": 0},
        "intelligibility": {
            "ground truth": {"kal": rates(0.2, 0.1), "slt": rates(0.25, 0.12), "all": rates(0.225, 0.11)},
            "TTS-Llama": {"kal": rates(0.3, 0.2), "slt": rates(0.3, 0.2), "all": rates(tts_wer, 0.2)},
            "MoLE-Llama": {"kal": rates(0.33, 0.2), "slt": rates(0.33, 0.2), "all": rates(mole_wer, 0.2)},
        },
        "clips": clips,
        "retention": retention,
        "routing": {"tts": 0.95, "text": 0.875, "tokens": {"tts": 400, "text": 120},
                    "mean_weights": {"tts": {"text": 0.1, "speech": 0.9}, "text": {"text": 0.8, "speech": 0.2}},
                    "per_layer": {"tts": {"share": [0.9, 0.7, 1.0], "entropy": [0.2, 0.5, 0.2]},
                                  "text": {"share": [0.8, 0.9, 0.95], "entropy": [0.3, 0.3, 0.3]}}},
        "routing_trace": {"tokens": ["What", "?", "<|speech_start|>", "<|speech_3|>"],
                          "weights": [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]], "experts": ["text", "speech"]},
        "spoken_answers": [{"question": "What is 2 plus 3?", "answer": "2 + 3 = 5.\nSo | five.",
                            "transcript": "five", "wer": 0.8, "wer_pocketsphinx": 1.0,
                            "path": str(tmp_path / "audio/answers/answer-0.wav")}],
    }  # fmt: skip


def write_state(folder, steps_and_losses):
    folder.mkdir(parents=True)
    history = [{"step": step, "loss": loss} for step, loss in steps_and_losses] + [{"step": 99, "train_runtime": 1}]
    state = {"global_step": steps_and_losses[-1][0], "log_history": history}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def test_training_losses_come_from_the_latest_state(tmp_path):
    write_state(tmp_path / "run" / "checkpoint-2", [(1, 3.0), (2, 2.5)])
    write_state(tmp_path / "run" / "checkpoint-4", [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5)])
    assert training_losses(tmp_path / "run") == [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5)]
    assert training_losses(tmp_path / "nothing") == []


def test_claims_are_judged_from_the_numbers(tmp_path):
    held = {claim: holds for claim, holds, _ in claims(known_metrics(tmp_path))}
    assert all(held.values())  # WER 0.3 <= 1.5 x 0.225; agreement 0.8 < 1; 0.97 >= 0.9; 0.33 <= 1.25 x 0.3
    failing = {
        claim: holds
        for claim, holds, _ in claims(
            known_metrics(tmp_path, tts_wer=0.5, mole_wer=0.9, tts_agreement=1.0, mole_agreement=0.5)
        )
    }
    assert not any(failing.values())  # fmt: skip


def test_report_holds_the_tables_and_the_plots(tmp_path):
    write_state(tmp_path / "runs" / "tts" / "checkpoint-3", [(1, 5.0), (2, 4.0), (3, 3.5)])
    report = write_report(known_metrics(tmp_path), tmp_path, {"speech expert": tmp_path / "runs" / "tts"},
                          header="A test run.")  # fmt: skip
    text = report.read_text()
    assert "A test run." in text
    assert (
        "| kal | 0.200 / 0.100 | 0.300 / 0.200 | 0.330 / 0.200 | TTS-Llama 1.50x, MoLE-Llama 1.65x | "
        "0.180 / 0.270 / 0.297 | 0.300 / 0.450 / 0.495 |"
    ) in text
    assert "| TTS-Llama | 0.400 | 0.800 | 0.2100 | 0.250 |" in text
    assert "| tts | 400 | 0.950 | text 0.10, speech 0.90 | 1 (0.700) | 0.300 |" in text
    assert "2 + 3 = 5. So \\| five." in text  # the answer stays in its table cell
    assert "[kal 0](audio/TTS-Llama/00-kal.wav)" in text  # clip links relative to the report
    for name in ("mel_spectrograms", "router_weights", "routing_by_layer", "loss_curves"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and f"(plots/{name}.png)" in text
