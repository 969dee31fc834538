"""Shared fixtures and builders: a tiny random Llama base saved to disk, PEFT LoRA adapters trained on it
(randomised), a tiny base with SmolLM2's real tokenizer, a tiny EnCodec, and WAV bytes for Audio columns."""

import io

import pytest
import soundfile
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, EncodecConfig, EncodecModel, LlamaConfig, LlamaForCausalLM

import mole_llama  # noqa: F401  (registers the auto classes)

TINY_LLAMA = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
NEW_TOKENS = 8  # rows added by a "speech" adapter, like the unit tokens of TTS-Llama


def tiny_llama(tie_word_embeddings=True, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tie_word_embeddings)).eval()


def save_tiny_llama_with_smollm2_tokenizer(path, max_position_embeddings: int = 512):
    """A tiny random Llama with the SmolLM2 tokenizer (its vocabulary and chat template), saved like a real base."""
    from mole_llama.embedded.base import embedded_base_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_base_path())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, max_position_embeddings=max_position_embeddings,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_encodec(sampling_rate: int = 8000, upsampling_ratios=(4, 4)):
    """A tiny random EnCodec behind the acoustic-codec interface (frame rate = rate / prod(upsampling_ratios))."""
    from mole_llama.modeling.acoustic_codec import EncodecAcousticCodec

    config = EncodecConfig(
        sampling_rate=sampling_rate, hidden_size=16, num_filters=4, upsampling_ratios=list(upsampling_ratios),
        codebook_size=32, num_lstm_layers=1, target_bandwidths=[3.0, 6.0],
    )  # fmt: skip
    torch.manual_seed(0)
    return EncodecAcousticCodec(EncodecModel(config))


def wav_bytes(waveform, rate: int) -> bytes:
    """A waveform as the bytes of a WAV file, as an `Audio` column stores it."""
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate, format="WAV")
    return buffer.getvalue()


def make_adapter(base_dir, out_dir, r=4, lora_alpha=8, target_modules=None, new_tokens=0, seed=1, **lora_kwargs):
    """A PEFT LoRA adapter on the base in `base_dir`, with random (non-zero) A, B and new token rows."""
    base = LlamaForCausalLM.from_pretrained(base_dir)
    token_indices = None
    if new_tokens:
        vocab = base.config.vocab_size
        base.resize_token_embeddings(vocab + new_tokens, mean_resizing=False)
        rows = list(range(vocab, vocab + new_tokens))
        token_indices = rows if base.config.tie_word_embeddings else {"embed_tokens": rows, "lm_head": rows}
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        trainable_token_indices=token_indices,
        **lora_kwargs,
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's training tests, then the count of before: tests after them compare audio
    made in-process with audio made in a fresh interpreter, which only agree at the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_base")
    tiny_llama().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_adapter_dir(tiny_base_dir, tmp_path_factory):
    return make_adapter(tiny_base_dir, tmp_path_factory.mktemp("text_adapter"), r=4, lora_alpha=8, seed=1)


@pytest.fixture(scope="session")
def speech_adapter_dir(tiny_base_dir, tmp_path_factory):
    return make_adapter(
        tiny_base_dir, tmp_path_factory.mktemp("speech_adapter"), r=8, lora_alpha=4, new_tokens=NEW_TOKENS, seed=2
    )


@pytest.fixture(scope="session")
def tiny_mole_dir(tiny_base_dir, text_adapter_dir, speech_adapter_dir, tmp_path_factory):
    """A MoLE-Llama built from the tiny base and both adapters, with a non-trivial (random) router, saved."""
    from mole_llama.conversion.peft_experts import build_mole_from_adapters

    model = build_mole_from_adapters(tiny_base_dir, {"text": text_adapter_dir, "speech": speech_adapter_dir})
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.router_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    path = tmp_path_factory.mktemp("tiny_mole")
    model.save_pretrained(path)
    return path
