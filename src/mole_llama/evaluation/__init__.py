"""Evaluation (intelligibility, text retention, router accuracy) lands here (issue 5)."""
