"""Evaluation: intelligibility (Whisper tiny.en WER/CER, pocketsphinx as a second opinion), speech, text retention,
router accuracy, `evaluate` and the report (`mole-llama evaluate`)."""
