"""Evaluation: intelligibility (pocketsphinx WER/CER), speech, text retention, router accuracy, `evaluate` and
the report (`mole-llama evaluate`)."""
