"""Pipelines: TTSLlamaPipeline ("text-to-speech") lands here with the speech stack (issue 3)."""
