"""Conversions: PEFT LoRA adapters <-> MoLE-Llama, merging an expert into the weights, GGUF -> safetensors, and
Hub export/push."""
