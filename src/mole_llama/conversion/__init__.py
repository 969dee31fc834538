"""Conversions: PEFT LoRA adapters <-> MoLE-Llama checkpoints, and GGUF -> safetensors."""
