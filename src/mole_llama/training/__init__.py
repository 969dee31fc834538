"""Training recipes (data preparation, SFT of experts, router and speech-side models) land here (issue 4)."""
