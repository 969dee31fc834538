"""Embedded data: festival speech synthesis, fortune sentences, the speech corpus builder and offline QA data."""
