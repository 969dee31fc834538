"""TTS-Llama / MoLE-Llama that speaks: text -> semantic units (the LLM) -> acoustic codes (acoustic LM) -> waveform.

`MoLELlamaForTextToWaveform` is the LLM itself (same weights and keys as `MoLELlamaForCausalLM`); its speech parts
live in subfolders of the saved model (`acoustic_lm/`, `codec/`, and `duration_predictor/` when the LLM speaks
run-length-collapsed units) and are loaded beside it, outside its module tree. Registered under
`AutoModelForTextToWaveform`, it is what transformers' stock "text-to-speech" pipeline loads: the pipeline
calls `generate(input_ids)` and takes `output["audio"]`, the Bark pattern.

Self-contained (torch, transformers, huggingface_hub and sibling files) for `trust_remote_code=True`.
"""

import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LogitsProcessorList

from .acoustic_codec import load_acoustic_codec
from .modeling_acoustic_lm import AcousticLMForConditionalGeneration
from .modeling_duration_predictor import DurationPredictorModel
from .modeling_mole_llama import MoLELlamaForCausalLM
from .speech_units import (
    SPEECH_END,
    TTS_INSTRUCTION,
    SpeechTokenIds,
    SpeechUnitsLogitsProcessor,
    check_tts_text,
    expand_units,
    tts_prompt_ids,
)

TEXT_TO_WAVEFORM_AUTO_MAP = {"AutoModelForTextToWaveform": "modeling_tts_llama.MoLELlamaForTextToWaveform"}
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
MAX_CHUNK_WORDS = 30
UNITS_PER_CHARACTER_CAP, UNITS_CAP_MARGIN = 1.5, 16
"""Collapsed units the LLM may speak for a text: measured 0.72 per character (median), 1.0 at most, on 4,601
training sentences; without this cap a model that misses its end marker runs to max_new_tokens."""
FRAMES_PER_CHARACTER_CAP, FRAMES_CAP_MARGIN = 8.0, 50
"""Acoustic frames a text may last (at speed 1): measured 3.4 per character (median), 5.7 at most, on the same
sentences; it stops an untrained duration predictor from asking the acoustic LM for minutes of speech."""
PROGRESS_MIN_PIECES = 4
PAUSE_SECONDS = 0.15
MIN_VOICE_SECONDS = 1.0
ACOUSTIC_TEMPERATURE, ACOUSTIC_TOP_K = 0.4, 10
LLM_GENERATE_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
SPEECH_KEYS = ("speed", "duration_temperature", "acoustic_temperature", "acoustic_top_k", "acoustic_do_sample")
PIPELINE_KEYS = ("return_dict_in_generate", "pad_token_id")
"""What the stock pipeline adds to every call: the output is always a dict, and one text is decoded at a time with the
tokenizer's own pad token, so both are taken and need nothing."""
logger = logging.getLogger(__name__)


class NoSpeechUnitsError(ValueError):
    """The LLM ended its speech segment before any unit (an undertrained speech expert does this)."""


def check_speaking_kwargs(kwargs: dict) -> None:
    """Refuse, before any model runs, a generation setting the speaking path does not know or cannot use."""
    unknown = sorted(set(kwargs) - set(LLM_GENERATE_KEYS) - set(SPEECH_KEYS) - set(PIPELINE_KEYS))
    if unknown:
        raise ValueError(
            f"unknown generation setting(s) {unknown}: the speaking model takes {list(LLM_GENERATE_KEYS)} for the LLM "
            f"and {list(SPEECH_KEYS)} for the speech parts (plus voice= and seed= on generate)"
        )
    for name in ("temperature", "acoustic_temperature", "repetition_penalty", "speed"):
        if name in kwargs and not (isinstance(kwargs[name], (int, float)) and kwargs[name] > 0):
            raise ValueError(f"{name}={kwargs[name]!r}: give a positive number")
    if "duration_temperature" in kwargs and not (
        isinstance(kwargs["duration_temperature"], (int, float)) and kwargs["duration_temperature"] >= 0
    ):
        raise ValueError(f"duration_temperature={kwargs['duration_temperature']!r}: give 0 (median durations) or more")
    for name in ("top_k", "acoustic_top_k"):
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name}={value!r}: give a whole number of at least 1 (or None to keep every token)")
    if kwargs.get("top_p") is not None and not (isinstance(kwargs["top_p"], (int, float)) and 0 < kwargs["top_p"] <= 1):
        raise ValueError(f"top_p={kwargs['top_p']!r}: give a number in (0, 1]")
    for name in ("do_sample", "acoustic_do_sample"):
        if name in kwargs and not isinstance(kwargs[name], bool):
            raise ValueError(f"{name}={kwargs[name]!r}: give True or False")


def split_text(text: str) -> list:
    """Sentences of `text`, long ones cut at commas or every `MAX_CHUNK_WORDS` words, so each piece stays short."""
    pieces = []
    for sentence in SENTENCE_END.split(text.strip()):
        words = sentence.split()
        while len(words) > MAX_CHUNK_WORDS:
            pieces.append(" ".join(words[:MAX_CHUNK_WORDS]))
            words = words[MAX_CHUNK_WORDS:]
        if words:
            pieces.append(" ".join(words))
    return pieces


def _resolve_folder(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path)))


def _mono(waveform: np.ndarray) -> np.ndarray:
    """A 1-D waveform: channels of a `(samples, channels)` or `(channels, samples)` array are averaged (the shorter
    axis is taken as the channels), as a stereo file is mixed down."""
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise ValueError(f"the voice reference must be (samples,) or (samples, channels), got {waveform.shape}")
    return waveform.mean(axis=int(np.argmin(waveform.shape)))


class MoLELlamaForTextToWaveform(MoLELlamaForCausalLM):
    """Speaks with `generate(input_ids)` -> `{"audio": (batch, samples) or list, "sampling_rate": int}`.

    `input_ids` are the plain tokenized text (as the pipeline gives them); the TTS prompt (chat template + start
    marker) is built here, long text is split into sentences and joined with short pauses, and `voice` (a
    waveform at the codec's rate, or `(waveform, rate)`) conditions the acoustic LM on a reference speaker.
    """

    def __init__(self, config):
        super().__init__(config)
        self.speech_parts = {}  # tokenizer, acoustic_lm, codec: kept out of the module tree (saved in subfolders)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.load_speech_parts(pretrained_model_name_or_path)
        return model

    def load_speech_parts(self, name_or_path) -> None:
        folder = _resolve_folder(name_or_path)
        for part in ("acoustic_lm", "codec"):
            if not (folder / part / "config.json").is_file():
                raise ValueError(f"{folder} has no {part}/ subfolder: it is not a complete TTS model folder")
        self.speech_parts = {
            "tokenizer": AutoTokenizer.from_pretrained(folder),
            "acoustic_lm": AcousticLMForConditionalGeneration.from_pretrained(folder / "acoustic_lm").eval(),
            "codec": load_acoustic_codec(folder / "codec"),
        }
        if (folder / "duration_predictor" / "config.json").is_file():
            predictor = DurationPredictorModel.from_pretrained(folder / "duration_predictor").eval()
            self.speech_parts["duration_predictor"] = predictor
        self.speech_ids = SpeechTokenIds.from_tokenizer(self.speech_parts["tokenizer"], self.config.num_speech_units)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the LLM with every entry point (causal LM and text-to-waveform), then its speech parts."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **TEXT_TO_WAVEFORM_AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.speech_parts:
            self.speech_parts["tokenizer"].save_pretrained(save_directory)
            self.speech_parts["acoustic_lm"].save_pretrained(Path(save_directory) / "acoustic_lm")
            self.speech_parts["codec"].save_pretrained(Path(save_directory) / "codec")
            if "duration_predictor" in self.speech_parts:
                self.speech_parts["duration_predictor"].save_pretrained(Path(save_directory) / "duration_predictor")

    @property
    def sampling_rate(self) -> int:
        return self.speech_parts["codec"].sampling_rate

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, voice=None, seed=None, **kwargs):
        if not self.speech_parts:
            raise ValueError("the speech parts are not loaded: load the model with from_pretrained(folder)")
        tokenizer = self.speech_parts["tokenizer"]
        rows = (
            input_ids if attention_mask is None else [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]
        )
        for ids in rows:  # decoding below drops special tokens: a speech marker in the text would vanish silently
            ids = torch.as_tensor(ids)
            if (self.speech_ids.is_unit(ids) | (ids == self.speech_ids.start) | (ids == self.speech_ids.end)).any():
                raise ValueError(
                    f"the text contains speech token strings (e.g. {SPEECH_END}): they are markers, not words; "
                    "remove them from the text"
                )
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        prompt_codes = self.voice_prompt(voice) if voice is not None else None
        plans = [self.plan_pieces(text, prompt_codes, **kwargs) for text in texts]  # every text checked first
        if seed is not None:
            torch.manual_seed(seed)
        audio = [self.speak_pieces(pieces, prompt_codes, **kwargs) for pieces in plans]
        return {"audio": audio if len(audio) > 1 else audio[0][None], "sampling_rate": self.sampling_rate}

    def voice_prompt(self, voice) -> torch.LongTensor:
        """Acoustic codes of reference audio: a waveform at the codec's rate, `(waveform, rate)` or a file path."""
        codec = self.speech_parts["codec"]
        if isinstance(voice, (str, Path)):
            import soundfile

            waveform, rate = soundfile.read(str(voice), dtype="float32", always_2d=True)
            waveform = waveform.mean(axis=1)
        elif isinstance(voice, tuple):
            waveform, rate = voice
        else:
            waveform, rate = voice, codec.sampling_rate
        waveform = _mono(np.asarray(waveform, dtype=np.float32))
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"the voice reference's sampling rate is {rate!r}: give it in Hz, e.g. (waveform, 16000)")
        if not np.isfinite(waveform).all():
            raise ValueError("the voice reference has NaN or infinite samples: give a clean recording")
        if rate != codec.sampling_rate:
            from scipy.signal import resample_poly

            waveform = resample_poly(waveform, codec.sampling_rate, rate).astype(np.float32)
        if len(waveform) < MIN_VOICE_SECONDS * codec.sampling_rate:
            raise ValueError(
                f"the voice reference is {len(waveform) / codec.sampling_rate:.2f} s: "
                f"give at least {MIN_VOICE_SECONDS} s of speech"
            )
        if np.abs(waveform).max() < 1e-3:
            raise ValueError("the voice reference is silent: give a recording of someone speaking")
        return codec.encode(torch.from_numpy(waveform)[None])[0]

    def speak(self, text: str, prompt_codes=None, **kwargs) -> torch.Tensor:
        """One text to one waveform (1-D float tensor), sentence by sentence."""
        return self.speak_pieces(self.plan_pieces(text, prompt_codes, **kwargs), prompt_codes, **kwargs)

    def stream(self, text: str, voice=None, seed=None, **kwargs):
        """Speak `text` piece by piece, yielding each piece's audio (1-D float tensors, the pause after it included)
        as soon as it is made; joined, the chunks equal `generate`'s audio for the same seed."""
        prompt_codes = self.voice_prompt(voice) if voice is not None else None
        pieces = self.plan_pieces(text, prompt_codes, **kwargs)
        if seed is not None:
            torch.manual_seed(seed)
        yield from self.piece_waves(pieces, prompt_codes, **kwargs)

    def plan_pieces(self, text: str, prompt_codes=None, **kwargs) -> list:
        """The short pieces `text` is spoken in, after checking, before any model runs, that every piece's caps
        (LLM units, acoustic frames) fit the models' positions."""
        check_speaking_kwargs(kwargs)
        if "duration_predictor" not in self.speech_parts:
            timed = sorted({"speed", "duration_temperature"} & set(kwargs))
            if timed:
                raise ValueError(f"{timed} need a model that times its units with a duration predictor; this one "
                                 "speaks frame-level units")  # fmt: skip
        pieces = split_text(check_tts_text(text))
        max_new_tokens = kwargs.get("max_new_tokens")
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
                raise ValueError(f"max_new_tokens={max_new_tokens!r}: give a whole number of speech units")
            room = self.config.max_position_embeddings - self.prompt_length(max(pieces, key=len))
            if not 1 <= max_new_tokens <= room:
                raise ValueError(
                    f"max_new_tokens={max_new_tokens} is out of range: give 1 to {room} (the LLM's "
                    f"max_position_embeddings={self.config.max_position_embeddings} less the prompt), or leave it "
                    "unset for the cap from the text's length"
                )
        acoustic = self.speech_parts["acoustic_lm"].config
        prompt_frames = 0 if prompt_codes is None else len(prompt_codes)
        for piece in pieces:
            frames = self.frame_cap(piece, **kwargs)
            if prompt_frames + frames > acoustic.max_position_embeddings:
                raise ValueError(
                    f"a piece of {len(piece)} characters may need {frames} acoustic frames, and the voice prompt "
                    f"has {prompt_frames}: more than the acoustic LM's max_position_embeddings="
                    f"{acoustic.max_position_embeddings}; give a shorter voice prompt, shorter sentences or a "
                    "higher speed"
                )
        return pieces

    def prompt_length(self, text: str) -> int:
        instruction = getattr(self.config, "tts_instruction", None) or TTS_INSTRUCTION
        return len(tts_prompt_ids(self.speech_parts["tokenizer"], text, self.speech_ids, instruction))

    def units_cap(self, text: str, **kwargs) -> int:
        """The most units the LLM may speak for `text`: `max_new_tokens` when given, else (collapsed units) the
        text-length cap, or the generation config's `max_new_tokens` (frame-level units)."""
        if kwargs.get("max_new_tokens") is not None:
            return kwargs["max_new_tokens"]
        default = self.generation_config.max_new_tokens
        if "duration_predictor" not in self.speech_parts:
            return default
        cap = int(UNITS_PER_CHARACTER_CAP * len(text)) + UNITS_CAP_MARGIN
        return min(cap, default or cap)

    def frame_cap(self, text: str, **kwargs) -> int:
        """The most acoustic frames `text` may last: from its length (timed units; `speed` divides it), or its
        units cap at the acoustic LM's frame rate (frame-level units)."""
        acoustic = self.speech_parts["acoustic_lm"].config
        if "duration_predictor" not in self.speech_parts:
            return math.ceil(
                self.units_cap(text, **kwargs) * acoustic.acoustic_frame_rate / acoustic.semantic_unit_rate
            )
        speed = kwargs.get("speed", 1.0)  # checked by check_speaking_kwargs (and the duration predictor)
        return math.ceil((FRAMES_PER_CHARACTER_CAP * len(text) + FRAMES_CAP_MARGIN) / speed)

    def speak_pieces(self, pieces: list, prompt_codes=None, **kwargs) -> torch.Tensor:
        """Checked pieces (`plan_pieces`) to one waveform joined by short pauses; a progress bar for long texts."""
        return torch.cat(list(self.piece_waves(pieces, prompt_codes, **kwargs)))

    def piece_waves(self, pieces: list, prompt_codes=None, **kwargs):
        """Each checked piece's waveform, followed (but the last) by a short pause."""
        pause = torch.zeros(int(PAUSE_SECONDS * self.sampling_rate))
        progress = tqdm(pieces, desc="speaking", unit="piece", disable=len(pieces) < PROGRESS_MIN_PIECES)
        for index, piece in enumerate(progress):
            wave = self.speak_piece(piece, prompt_codes, **kwargs)
            yield wave if index == len(pieces) - 1 else torch.cat([wave, pause])

    def speak_piece(self, text: str, prompt_codes=None, **kwargs) -> torch.Tensor:
        units = self.speech_units(text, **kwargs)
        return self.units_to_waveform(units, prompt_codes, max_frames=self.frame_cap(text, **kwargs), **kwargs)

    def speech_units(self, text: str, **kwargs) -> list:
        """The LLM's semantic units for one short text (generation settings from `LLM_GENERATE_KEYS`)."""
        tokenizer, speech = self.speech_parts["tokenizer"], self.speech_ids
        instruction = getattr(self.config, "tts_instruction", None) or TTS_INSTRUCTION
        prompt = torch.tensor([tts_prompt_ids(tokenizer, text, speech, instruction)], device=self.device)
        llm_kwargs = {key: kwargs[key] for key in LLM_GENERATE_KEYS if key in kwargs}
        llm_kwargs["max_new_tokens"] = self.units_cap(text, **kwargs)
        generated = super().generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            logits_processor=LogitsProcessorList([SpeechUnitsLogitsProcessor(speech)]),
            eos_token_id=speech.end,
            pad_token_id=tokenizer.pad_token_id,
            **llm_kwargs,
        )
        units = speech.token_ids_to_units(generated[0, prompt.shape[1] :])
        if not units:
            raise NoSpeechUnitsError(f"the model produced no speech units for {text!r}")
        return units

    def units_to_frames(self, units, **kwargs) -> list:
        """Frame-level units for the acoustic LM: with a duration predictor, each spoken (collapsed) unit repeated
        for its predicted frames (`duration_temperature`, default 0 = median durations; `speed`, default 1.0)."""
        predictor = self.speech_parts.get("duration_predictor")
        if predictor is None:
            return list(units)
        durations = predictor.predict(
            units, temperature=kwargs.get("duration_temperature", 0.0), speed=kwargs.get("speed", 1.0)
        )
        return expand_units(units, durations)

    def units_to_waveform(self, units, prompt_codes=None, max_frames=None, **kwargs) -> torch.Tensor:
        """Semantic units -> frames (durations) -> acoustic codes (acoustic LM, in the voice of `prompt_codes`) ->
        waveform. Frames past `max_frames` (`frame_cap` of the text) are cut, with a warning. Sampling defaults
        (temperature 0.4, top-k 10) are the settings measured best in benchmarks/."""
        frames = self.units_to_frames(units, **kwargs)
        if max_frames is not None and len(frames) > max_frames:
            rate = self.speech_parts["acoustic_lm"].config.acoustic_frame_rate
            logger.warning(
                "the units' durations come to %d frames, more than the text's cap of %d (an undertrained duration "
                "predictor?): the speech is cut at %.1f s",
                len(frames),
                max_frames,
                max_frames / rate,
            )
            frames = frames[:max_frames]
        codes = self.speech_parts["acoustic_lm"].generate(
            torch.tensor([frames]),
            prompt_codes=None if prompt_codes is None else prompt_codes[None],
            temperature=kwargs.get("acoustic_temperature", ACOUSTIC_TEMPERATURE),
            top_k=kwargs.get("acoustic_top_k", ACOUSTIC_TOP_K),
            do_sample=kwargs.get("acoustic_do_sample", True),
        )
        return self.speech_parts["codec"].decode(codes)[0].float().clamp(-1, 1)


MoLELlamaForTextToWaveform.register_for_auto_class("AutoModelForTextToWaveform")

__all__ = ["MoLELlamaForTextToWaveform", "NoSpeechUnitsError", "check_speaking_kwargs", "split_text"]
