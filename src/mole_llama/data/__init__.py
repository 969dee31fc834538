"""Embedded data: festival speech synthesis and plain English sentences from Debian's fortunes."""
