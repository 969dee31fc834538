"""Pipelines: `TTSLlamaPipeline`, the "text-to-speech" pipeline of mole-llama's speaking models."""

from .text_to_speech import TTSLlamaPipeline, register_pipeline

__all__ = ["TTSLlamaPipeline", "register_pipeline"]
