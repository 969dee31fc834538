"""A short speech-expert (TTS-Llama) run on the real embedded SmolLM2 base and real festival speech: the loss on
the unit tokens falls, and the adapter builds into a TTS-Llama that emits a speech segment."""

import pytest
import torch
from datasets import Dataset
from transformers.utils import logging as hf_logging
from trl import SFTConfig

from mole_llama.conversion.peft_experts import build_mole_from_adapters
from mole_llama.data.audio import resample
from mole_llama.embedded.base import embedded_base_path
from mole_llama.embedded.festival import fortune_sentences, is_held_out, synthesize
from mole_llama.modeling.configuration_mole_llama import ExpertSpec
from mole_llama.modeling.configuration_semantic_units import SemanticUnitsConfig
from mole_llama.modeling.speech_units import SpeechTokenIds, SpeechUnitsLogitsProcessor, tts_prompt_ids
from mole_llama.training.experts import train_expert
from mole_llama.training.semantic_tokenizer import fit_semantic_tokenizer
from mole_llama.training.sft_data import tts_examples

pytestmark = pytest.mark.slow
UNITS = 64


def test_short_speech_expert_run_on_smollm2_lowers_the_loss(tmp_path, one_torch_thread):
    hf_logging.set_verbosity_error()
    texts = [s for s in fortune_sentences() if not is_held_out(s)][:12]
    audio = [resample(*synthesize(text, "kal"), 16000) for text in texts]
    units = fit_semantic_tokenizer(
        [{"audio": {"array": a, "sampling_rate": 16000}} for a in audio],
        SemanticUnitsConfig(num_units=UNITS, unit_rate=25),
    )  # 25 Hz units keep the sequences short for a CPU test
    rows = [{"text": t, "semantic_units": units.encode(a)[0].tolist()} for t, a in zip(texts, audio)]
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=2,
        save_strategy="no", report_to=[], gradient_checkpointing=False, use_cpu=True, bf16=False, disable_tqdm=True,
        seed=0, max_length=512,
    )  # fmt: skip
    lora = ExpertSpec(name="speech", r=8, lora_alpha=16, lora_dropout=0.0)
    trainer = train_expert(
        embedded_base_path(), tts_examples(Dataset.from_list(rows)), args, lora, num_speech_units=UNITS
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.8 * losses[0], losses

    model = build_mole_from_adapters(embedded_base_path(), {"speech": tmp_path}).eval()
    model.set_routing("speech")
    tokenizer = trainer.processing_class
    speech = SpeechTokenIds.from_tokenizer(tokenizer, UNITS)
    prompt = torch.tensor([tts_prompt_ids(tokenizer, texts[0], speech)])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=20, do_sample=False,
                             logits_processor=[SpeechUnitsLogitsProcessor(speech)])[0, prompt.shape[1] :]  # fmt: skip
    assert bool(speech.is_unit(out[:5]).all()), out  # after the start marker, the trained expert speaks units
