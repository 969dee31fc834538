"""TTS-Llama / MoLE-Llama that speaks: text -> semantic units (the LLM) -> acoustic codes (acoustic LM) -> waveform.

`MoLELlamaForTextToWaveform` is the LLM itself (same weights and keys as `MoLELlamaForCausalLM`) with its speech
parts as child modules, each saved in a subfolder of the model (`acoustic_lm/`, `codec/`, `duration_predictor/` when
the LLM speaks run-length-collapsed units, `semantic_tokenizer/` when present). Registered under
`AutoModelForTextToWaveform`, it is what the "text-to-speech" pipeline loads: a `TTSLlamaPipeline` (which calls
`speak_texts`) where mole_llama is imported, else transformers' stock pipeline, which calls `generate(input_ids)`
and takes `output["audio"]`, the Bark pattern.

Self-contained (torch, transformers, huggingface_hub and sibling files) for `trust_remote_code=True`.
"""

import contextvars
import functools
import inspect
import logging
import math
import re
import threading
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CompileConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

try:  # streaming's own need; in a try block, which transformers' remote-code import check skips
    import greenlet
except ImportError:
    greenlet = None

from .acoustic_codec import decodes_expected_vectors, load_acoustic_codec
from .float16_weights import allow_compiled_steps, check_finite_step
from .modeling_acoustic_lm import AcousticLMForConditionalGeneration
from .modeling_duration_predictor import DurationPredictorModel
from .modeling_mole_llama import INT8_ATTRIBUTE, MoLELlamaForCausalLM
from .speech_stream import PieceSpeechStream, hold_short_codes, warn_frames_cut
from .speech_units import (
    SPEECH_END,
    TTS_INSTRUCTION,
    SpeechTokenIds,
    SpeechUnitsLogitsProcessor,
    check_tts_text,
    collapsed_units_cap,
    expand_units,
    pad_token_ids,
    tts_prompt_ids,
)
from .spoken_form import spoken_form

TEXT_TO_WAVEFORM_AUTO_MAP = {"AutoModelForTextToWaveform": "modeling_tts_llama.MoLELlamaForTextToWaveform"}
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
CLAUSE_END = re.compile(r"(?<=,)\s+")
MAX_PIECE_WORDS = 12
"""The most words spoken in one piece: the longest sentences the speech expert read in training (fortunes of 5-12
words). Longer pieces drift (benchmarks/piece_length_intelligibility.py measures it)."""
FRAMES_PER_CHARACTER_CAP, FRAMES_CAP_MARGIN = 8.0, 50
"""Acoustic frames a text may last (at speed 1): measured 3.4 per character (median), 5.7 at most, on the same
sentences; it stops an untrained duration predictor from asking the acoustic LM for minutes of speech."""
SPEECH_PART_NAMES = ("acoustic_lm", "codec", "duration_predictor", "semantic_tokenizer")
SPEAKING_BATCH_SIZE = 8
"""Pieces spoken at once: one left-padded LLM generation and one acoustic LM pass per batch."""
PROGRESS_MIN_PIECES = 4
PAUSE_SECONDS = 0.15
MIN_VOICE_SECONDS = 1.0
SPEECH_GENERATION_DEFAULTS = {"acoustic_temperature": 0.4, "acoustic_top_k": 10, "acoustic_do_sample": True,
                              "acoustic_expected_decoding": False, "duration_temperature": 0.0,
                              "speed": 1.0}  # fmt: skip
"""The speech parts' sampling settings a saved model writes into its generation_config.json (the acoustic LM's were
measured best in benchmarks/); a call's own settings override them, and a folder saved without them gets these.
`acoustic_expected_decoding`: the codec decodes each frame's expected codebook vectors under the acoustic LM's
distributions instead of the drawn codes (the draws still feed the acoustic LM's next frame); `save_tts_model` turns
it on for a codec that can (`decode_expected`: the mel codec), where it was measured more intelligible."""
LLM_GENERATE_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
SPEECH_KEYS = ("speed", "duration_temperature", "acoustic_temperature", "acoustic_top_k", "acoustic_do_sample",
               "acoustic_expected_decoding")  # fmt: skip
COMPILED_CACHE_TOKENS = 256
"""The static KV cache a compiled LLM decodes into (`compile_decoding`): room for a piece's prompt (~50 tokens) and
its units cap (`MAX_PIECE_WORDS` words: ~160), so pieces reuse one cache and its compiled graph; transformers grows
it (and compiles again) only for a longer piece, and keeps the longer length for later calls."""
PIPELINE_KEYS = ("return_dict_in_generate", "pad_token_id")
"""What the stock pipeline adds to every call: the output is always a dict, and one text is decoded at a time with the
tokenizer's own pad token, so both are taken and need nothing."""
logger = logging.getLogger(__name__)


def _ordinary_tensors(value):
    """`value` with its inference tensors copied to ordinary ones, once no inference mode is on: a caller may scale
    the audio in place or feed it to autograd, which PyTorch refuses for tensors made in inference mode."""
    if torch.is_inference_mode_enabled():
        return value  # an outer speaking call copies them on its way out
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_ordinary_tensors(item) for item in value)
    if isinstance(value, dict):
        return {key: _ordinary_tensors(item) for key, item in value.items()}
    return value


def speaks_in_inference_mode(method):
    """Run a speaking method (or generator) under `torch.inference_mode`, which skips autograd's bookkeeping on
    every op: ~8% less time to speak a sentence than under `no_grad` (same audio, probe of 12 sentences), as a
    decoding step is mostly many small ops; the results come back as ordinary tensors."""
    if inspect.isgeneratorfunction(method):
        in_mode = torch.inference_mode()(method)

        @functools.wraps(method)
        def chunks(*args, **kwargs):
            inner = in_mode(*args, **kwargs)
            try:
                for chunk in inner:
                    yield _ordinary_tensors(chunk)
            finally:
                inner.close()  # a consumer that stops early ends the inner generation here, not at garbage collection

        return chunks

    @functools.wraps(method)
    def spoken(*args, **kwargs):
        with torch.inference_mode():
            result = method(*args, **kwargs)
        return _ordinary_tensors(result)

    return spoken


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
    for name in ("do_sample", "acoustic_do_sample", "acoustic_expected_decoding"):
        if name in kwargs and not isinstance(kwargs[name], bool):
            raise ValueError(f"{name}={kwargs[name]!r}: give True or False")


def split_text(text: str, max_words: int = MAX_PIECE_WORDS) -> list:
    """Sentences of `text`; one of more than `max_words` words is cut at its commas into pieces of whole clauses,
    and a clause still longer into near-equal parts, so each piece is as long as what the speech expert read."""
    pieces = []
    for sentence in SENTENCE_END.split(text.strip()):
        piece = []
        for clause in CLAUSE_END.split(sentence) if len(sentence.split()) > max_words else [sentence]:
            words = clause.split()
            if piece and len(piece) + len(words) > max_words:
                pieces.append(" ".join(piece))
                piece = []
            parts = math.ceil(len(words) / max_words)
            size = math.ceil(len(words) / max(parts, 1))
            while len(words) > max_words:
                pieces.append(" ".join(words[:size]))
                words = words[size:]
            piece += words
        if piece:
            pieces.append(" ".join(piece))
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

    A composite, as transformers' Bark and CSM are: the LLM is this model itself (same weights and keys as
    `MoLELlamaForCausalLM`), and the speech parts are child modules (`acoustic_lm`, `codec`, `duration_predictor`
    and `semantic_tokenizer` when present), so `to(device)`, a dtype or a pipeline's `device=` reach them all. Each
    part is saved in, and loaded from, its own subfolder; the LLM's weights file holds the LLM only.

    `input_ids` are the plain tokenized text (as the pipeline gives them); the TTS prompt (chat template + start
    marker) is built here, long text is split into sentences joined with short pauses, all pieces of all texts are
    spoken in batches (left-padded LLM generation, then one acoustic LM pass per batch), and `voice` (a waveform
    at the codec's rate, `(waveform, rate)` or a file path) conditions the acoustic LM on a reference speaker.
    Each piece samples from its own seed (`seed` + its index in its text), so a text comes out the same alone, in
    a batch, or streamed (with `compile_decoding`, to the rounding of its graphs' float16 rows: a piece alone or
    streamed steps compiled, a batch of pieces eagerly).
    """

    def __init__(self, config):
        super().__init__(config)
        self.tokenizer = None  # the LLM's tokenizer with the speech tokens (not a module)
        self.speech_ids = None
        self.decoding_compiled = False  # `compile_decoding`
        for name in SPEECH_PART_NAMES:
            setattr(self, name, None)  # child modules once `attach_speech_parts` runs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, compile_decoding: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the speech parts from their subfolders; `compile_decoding=True`
        (also as a pipeline's `model_kwargs`) calls `compile_decoding` on the loaded model."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.load_speech_parts(pretrained_model_name_or_path)
        if compile_decoding:
            model.compile_decoding()
        return model

    def compile_decoding(self) -> "MoLELlamaForTextToWaveform":
        """Speak with compiled decoding steps: the LLM's (transformers' `generate` with a static cache and a
        `CompileConfig`) and the acoustic LM's (`AcousticLMForConditionalGeneration.compile_decoding`).

        On a CPU a decoding step of these small models is mostly the overhead of many small ops, which inductor
        fuses (benchmarks/bench_tts.py measures it); the first speaking call pays the compiles (~20-50 s here;
        inductor keeps them on disk, so the next process pays less). The compiled steps speak one piece at a time
        (a one-sentence text, a stream); a batch of pieces decodes eagerly, its float16 products FBGEMM's, which a
        graph cannot hold (`float16_weights.py`). Prefills and each generation's first acoustic frame stay eager.
        The compiled graphs round differently from eager steps, so they speak the same text a little differently
        (greedy units stay the same where no two scores nearly tie). Needs one fixed routing (a TTS-Llama,
        `config.routing`): a MoLE-Llama's router picks each token's expert on the host, which a compiled graph
        cannot follow."""
        self._check_loaded()
        if any(layer.routing is None for layer in self.model.layers):
            raise ValueError(
                "compile_decoding needs one fixed routing (a TTS-Llama: config.routing set); this model routes each "
                "token by its routers, which a compiled step cannot follow: speak without compile_decoding"
            )
        if getattr(self, INT8_ATTRIBUTE, False):
            raise ValueError(
                "compile_decoding needs float weights; this LLM is int8-quantized: compile the float model"
            )
        allow_compiled_steps(self.model)  # the LLM's projections; the acoustic LM marks its own
        self.acoustic_lm.compile_decoding()
        self.decoding_compiled = True
        return self

    def load_speech_parts(self, name_or_path) -> None:
        """The tokenizer and the speech parts saved beside the LLM, in its dtype and on its device."""
        from .modeling_semantic_units import SemanticUnitsModel

        folder = _resolve_folder(name_or_path)
        for part in ("acoustic_lm", "codec"):
            if not (folder / part / "config.json").is_file():
                raise ValueError(f"{folder} has no {part}/ subfolder: it is not a complete TTS model folder")
        optional = {
            name: loader(folder / name).eval()
            for name, loader in (("duration_predictor", DurationPredictorModel.from_pretrained),
                                 ("semantic_tokenizer", SemanticUnitsModel.from_pretrained))
            if (folder / name / "config.json").is_file()
        }  # fmt: skip
        self.attach_speech_parts(
            AutoTokenizer.from_pretrained(folder),
            AcousticLMForConditionalGeneration.from_pretrained(folder / "acoustic_lm").eval(),
            load_acoustic_codec(folder / "codec"),
            **optional,
        )

    def attach_speech_parts(self, tokenizer, acoustic_lm, codec, duration_predictor=None, semantic_tokenizer=None):
        """Make the speech parts children of this model (moved to its device and dtype)."""
        self.tokenizer = tokenizer
        self.speech_ids = SpeechTokenIds.from_tokenizer(tokenizer, self.config.num_speech_units)
        parts = {"acoustic_lm": acoustic_lm, "codec": codec, "duration_predictor": duration_predictor,
                 "semantic_tokenizer": semantic_tokenizer}  # fmt: skip
        for name, part in parts.items():
            setattr(self, name, None if part is None else part.to(device=self.device, dtype=self.dtype).eval())
        if self.decoding_compiled:  # a new acoustic LM steps as the one it replaces
            self.acoustic_lm.compile_decoding()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the LLM (its weights only) with every entry point (causal LM and text-to-waveform), then the
        tokenizer and each speech part in its subfolder."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **TEXT_TO_WAVEFORM_AUTO_MAP}
        for name, value in SPEECH_GENERATION_DEFAULTS.items():  # the speech settings travel with the folder
            if getattr(self.generation_config, name, None) is None:
                setattr(self.generation_config, name, value)
        self.generation_config._from_model_config = False  # transformers drops custom keys of a derived config
        kwargs.setdefault("state_dict", self.llm_state_dict())
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        for name in SPEECH_PART_NAMES:
            part = getattr(self, name)
            if part is not None:
                part.save_pretrained(Path(save_directory) / name)

    def llm_state_dict(self) -> dict:
        """The LLM's weights alone (what `MoLELlamaForCausalLM` holds), without the speech parts'."""
        return {key: value for key, value in self.state_dict().items() if key.split(".")[0] not in SPEECH_PART_NAMES}

    def speech_setting(self, name: str, kwargs: dict):
        """A speech part's setting: the call's (`kwargs`), else the generation config's, else the default."""
        if name in kwargs:
            return kwargs[name]
        return getattr(self.generation_config, name, SPEECH_GENERATION_DEFAULTS[name])

    @property
    def sampling_rate(self) -> int:
        return self.codec.sampling_rate

    def _check_loaded(self) -> None:
        if self.codec is None:
            raise ValueError("the speech parts are not loaded: load the model with from_pretrained(folder)")

    @speaks_in_inference_mode
    def generate(self, input_ids=None, attention_mask=None, voice=None, seed=None, batch_size=None, **kwargs):
        self._check_loaded()
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
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        audio = self.speak_texts(texts, voice=voice, seed=seed, batch_size=batch_size, **kwargs)
        return {"audio": audio if len(audio) > 1 else audio[0][None], "sampling_rate": self.sampling_rate}

    @speaks_in_inference_mode
    def speak_texts(self, texts, voice=None, seed=None, batch_size=None, **kwargs) -> list:
        """Each text's waveform (1-D float tensors), in the voice of the reference `voice`."""
        prompt_codes = self.voice_prompt(voice) if voice is not None else None
        plans = [self.plan_pieces(text, prompt_codes, **kwargs) for text in texts]
        return self._speak_plans(plans, prompt_codes, seed, batch_size, **kwargs)

    @speaks_in_inference_mode
    def speak(self, text: str, prompt_codes=None, seed=None, batch_size=None, **kwargs) -> torch.Tensor:
        """One text to one waveform (1-D float tensor), in the voice of `prompt_codes` (from `voice_prompt`)."""
        return self._speak_plans([self.plan_pieces(text, prompt_codes, **kwargs)], prompt_codes, seed, batch_size,
                                 **kwargs)[0]  # fmt: skip

    def _speak_plans(self, plans: list, prompt_codes, seed, batch_size, **kwargs) -> list:
        """Checked pieces of every text (all checked before any model runs), spoken `batch_size` at a time (default
        `SPEAKING_BATCH_SIZE`) with a progress bar for many pieces, then joined per text with short pauses."""
        batch_size = SPEAKING_BATCH_SIZE if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give a whole number of at least 1")
        first_seed = piece_seed_base(seed, reseed_llm=True)
        jobs = [(index, piece) for pieces in plans for index, piece in enumerate(pieces)]
        waves = []
        progress = tqdm(total=len(jobs), desc="speaking", unit="piece", disable=len(jobs) < PROGRESS_MIN_PIECES)
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            seeds = [first_seed + index for index, _ in batch]
            waves += self.speak_batch([piece for _, piece in batch], seeds, prompt_codes, **kwargs)
            progress.update(len(batch))
        progress.close()
        audio, start = [], 0
        for pieces in plans:
            audio.append(self._join(waves[start : start + len(pieces)]))
            start += len(pieces)
        return audio

    def _pause(self, dtype) -> torch.Tensor:
        return torch.zeros(int(PAUSE_SECONDS * self.sampling_rate), dtype=dtype)

    def _join(self, waves: list) -> torch.Tensor:
        pause = self._pause(waves[0].dtype)
        return torch.cat([part for wave in waves[:-1] for part in (wave, pause)] + [waves[-1]])

    @speaks_in_inference_mode
    def voice_prompt(self, voice) -> torch.LongTensor:
        """Acoustic codes of reference audio: a waveform at the codec's rate, `(waveform, rate)` or a file path."""
        self._check_loaded()
        codec = self.codec
        if isinstance(voice, (str, Path)):
            import soundfile

            if not Path(voice).is_file():
                raise ValueError(f"no voice file at {voice}: give a recording of a few seconds (WAV, FLAC or OGG)")
            try:
                waveform, rate = soundfile.read(str(voice), dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                raise ValueError(
                    f"cannot read the voice file {voice} as audio ({error}): give a WAV, FLAC or OGG"
                ) from error
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

    @speaks_in_inference_mode
    def stream(self, text: str, voice=None, seed=None, **kwargs):
        """Speak `text`, yielding its audio in chunks (1-D float tensors) as soon as they are final: within a piece
        a few units after the LLM says them (`PieceSpeechStream`), and a pause between pieces. Joined, the chunks
        equal `generate`'s audio for the same seed (with `compile_decoding`, a text of several pieces to the
        rounding of the compiled steps, which `generate` skips for a batch of pieces). The LLM runs in a greenlet on
        this thread that also makes the audio, so the work is the same as `speak`'s, only ordered for an early
        start; read the stream on this thread."""
        prompt_codes = self.voice_prompt(voice) if voice is not None else None
        pieces = self.plan_pieces(text, prompt_codes, **kwargs)
        first_seed = piece_seed_base(seed, reseed_llm=True)
        for index, piece in enumerate(pieces):
            yield from self._stream_piece(piece, first_seed + index, prompt_codes, **kwargs)
            if index < len(pieces) - 1:
                yield self._pause(torch.float32)

    def _stream_piece(self, piece: str, seed: int, prompt_codes, **kwargs):
        settings = {key: self.speech_setting(key, kwargs) for key in SPEECH_KEYS}
        speech = PieceSpeechStream(self, prompt_codes, seed, self.frame_cap(piece, **kwargs), settings)
        streamer = _UnitStreamer(self.speech_ids, speech)
        producer = streamer.start(self.speech_token_rows, [piece], **kwargs)
        try:
            while (chunk := streamer.resume(producer)) is not _UnitStreamer.DONE:
                if len(chunk):
                    yield chunk
        finally:
            streamer.stop(producer)  # a consumer that stops early ends the generation where it waits

    def plan_pieces(self, text: str, prompt_codes=None, **kwargs) -> list:
        """The short pieces `text` is spoken in, after checking, before any model runs, that every piece's caps
        (LLM units, acoustic frames) fit the models' positions."""
        self._check_loaded()
        check_speaking_kwargs(kwargs)
        if self.duration_predictor is None:
            timed = sorted({"speed", "duration_temperature"} & set(kwargs))
            if timed:
                raise ValueError(f"{timed} need a model that times its units with a duration predictor; this one "
                                 "speaks frame-level units")  # fmt: skip
        if self.speech_setting("acoustic_expected_decoding", kwargs) and not decodes_expected_vectors(self.codec):
            raise ValueError(
                f"acoustic_expected_decoding=True needs a codec that decodes code distributions; this model's "
                f"{type(self.codec).__name__} decodes codes only: pass acoustic_expected_decoding=False"
            )
        pieces = split_text(spoken_form(check_tts_text(text)))  # numbers as words, before the caps are counted
        specials = sorted(token for token in self.tokenizer.all_special_tokens if token in text)
        if specials:  # the tokenizer would read them as control tokens (a turn's end, a new turn), not as words
            raise ValueError(
                f"the text contains the tokenizer's special token(s) {specials}: remove them from the text"
            )
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
        acoustic = self.acoustic_lm.config
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
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

    def _prompt_ids(self, text: str) -> list:
        instruction = getattr(self.config, "tts_instruction", None) or TTS_INSTRUCTION
        return tts_prompt_ids(self.tokenizer, text, self.speech_ids, instruction)

    def prompt_length(self, text: str) -> int:
        return len(self._prompt_ids(text))

    def units_cap(self, text: str, **kwargs) -> int:
        """The most units the LLM may speak for `text`: `max_new_tokens` when given, else (collapsed units) the
        text-length cap, or the generation config's `max_new_tokens` (frame-level units)."""
        if kwargs.get("max_new_tokens") is not None:
            return kwargs["max_new_tokens"]
        default = self.generation_config.max_new_tokens
        if self.duration_predictor is None:
            return default
        cap = collapsed_units_cap(text)
        return min(cap, default or cap)

    def frame_cap(self, text: str, **kwargs) -> int:
        """The most acoustic frames `text` may last: from its length (timed units; `speed` divides it), or its
        units cap at the acoustic LM's frame rate (frame-level units)."""
        acoustic = self.acoustic_lm.config
        if self.duration_predictor is None:
            return math.ceil(
                self.units_cap(text, **kwargs) * acoustic.acoustic_frame_rate / acoustic.semantic_unit_rate
            )
        speed = self.speech_setting("speed", kwargs)  # checked by check_speaking_kwargs (and the predictor)
        return math.ceil((FRAMES_PER_CHARACTER_CAP * len(spoken_form(text)) + FRAMES_CAP_MARGIN) / speed)

    @speaks_in_inference_mode
    def speak_batch(self, pieces: list, seeds: list, prompt_codes=None, **kwargs) -> list:
        """Checked pieces (`plan_pieces`) to their waveforms: one batched LLM generation, then one batched
        acoustic LM pass, each piece sampling from its own seed."""
        units = self.speech_units_batch(pieces, **kwargs)
        for piece, piece_units in zip(pieces, units):
            if not piece_units:
                raise NoSpeechUnitsError(f"the model produced no speech units for {piece!r}")
        frames = [
            self.units_to_frames(piece_units, seed=seed, max_frames=self.frame_cap(piece, **kwargs), **kwargs)
            for piece, piece_units, seed in zip(pieces, units, seeds)
        ]
        return self.frames_to_waveforms(frames, prompt_codes, seeds, **kwargs)

    def speech_units(self, text: str, **kwargs) -> list:
        """The LLM's semantic units for one short text (generation settings from `LLM_GENERATE_KEYS`)."""
        units = self.speech_units_batch([text], **kwargs)[0]
        if not units:
            raise NoSpeechUnitsError(f"the model produced no speech units for {text!r}")
        return units

    @speaks_in_inference_mode
    def speech_units_batch(self, texts: list, **kwargs) -> list:
        """The LLM's units for short texts in one left-padded generation, each cut at its own cap (`units_cap`),
        so each list equals what the text gets alone (greedy decoding; sampling draws from one stream)."""
        return [self.speech_ids.token_ids_to_units(row) for row in self.speech_token_rows(texts, **kwargs)]

    def speech_token_rows(self, texts: list, streamer=None, **kwargs) -> list:
        """The tokens the LLM generates after each text's start marker (constrained to units and the end marker),
        cut at the text's units cap; `streamer` (transformers' streamer interface) sees them as they come."""
        prompts = [self._prompt_ids(text) for text in texts]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.speech_ids.end
        input_ids, attention_mask = pad_token_ids(prompts, pad_id, side="left")
        caps = [self.units_cap(text, **kwargs) for text in texts]
        llm_kwargs = {key: kwargs[key] for key in LLM_GENERATE_KEYS if key in kwargs}
        llm_kwargs["max_new_tokens"] = max(caps)
        speakable = self.speech_ids.speakable(self.device)
        processors = [SpeechUnitsLogitsProcessor(self.speech_ids)]
        if self.decoding_compiled and len(texts) == 1:  # a batch's FBGEMM products cannot be in a graph
            compile_config = CompileConfig(mode="default")
            compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told
            llm_kwargs.update(cache_implementation="static", max_cache_len=COMPILED_CACHE_TOKENS,
                              compile_config=compile_config)  # fmt: skip
            processors.insert(0, _FiniteStepCheck(speakable))
        generated = super().generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            logits_processor=LogitsProcessorList(processors),
            eos_token_id=self.speech_ids.end,
            pad_token_id=pad_id,
            streamer=streamer,
            logits_vocabulary=speakable,  # the processor allows no other token
            **llm_kwargs,
        )
        return [row[:cap] for row, cap in zip(generated[:, input_ids.shape[1] :], caps)]

    def units_to_frames(self, units, seed=None, max_frames=None, **kwargs) -> list:
        """Frame-level units for the acoustic LM: with a duration predictor, each spoken (collapsed) unit repeated
        for its predicted frames (`duration_temperature`, default 0 = median durations; `speed`, default 1.0).
        Frames past `max_frames` (`frame_cap` of the text) are cut, with a warning."""
        frames = list(units)
        if self.duration_predictor is not None:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            durations = self.duration_predictor.predict(
                units,
                temperature=self.speech_setting("duration_temperature", kwargs),
                speed=self.speech_setting("speed", kwargs),
                generator=generator,
            )
            frames = expand_units(units, durations)
        if max_frames is not None and len(frames) > max_frames:
            warn_frames_cut(len(frames), max_frames, self.acoustic_lm.config.acoustic_frame_rate)
            frames = frames[:max_frames]
        return frames

    def frames_to_waveforms(self, frames: list, prompt_codes, seeds: list, **kwargs) -> list:
        """Frame-level units of several pieces -> acoustic codes in one batched acoustic LM pass (in the voice of
        `prompt_codes`: one prompt for all, or a list with one per piece) -> each piece's waveform. Each piece
        samples from its own seed; sampling settings as `speech_setting` finds them."""
        if isinstance(prompt_codes, (list, tuple)):
            prompts = [None if codes is None else codes.to(self.device) for codes in prompt_codes]
        else:
            prompts = None if prompt_codes is None else prompt_codes[None].to(self.device)
        expected = self.speech_setting("acoustic_expected_decoding", kwargs)
        output = self.acoustic_lm.generate(
            [torch.tensor(piece, device=self.device) for piece in frames],
            prompt_codes=prompts,
            temperature=self.speech_setting("acoustic_temperature", kwargs),
            top_k=self.speech_setting("acoustic_top_k", kwargs),
            do_sample=self.speech_setting("acoustic_do_sample", kwargs),
            seed=list(seeds),
            return_dict_in_generate=True,
            output_code_probabilities=expected,
        )
        made = output.code_probabilities if expected else output.codes
        return [self._decode(made[index : index + 1, :, : int(length)], expected) for index, length in
                enumerate(output.lengths)]  # fmt: skip

    def _decode(self, codes: torch.Tensor, expected: bool = False) -> torch.Tensor:
        """One piece's codes (with `expected`, their distributions, decoded as the expected codebook vectors) -> its
        waveform (a piece of a single frame held for a second, `hold_short_codes`)."""
        decode = self.codec.decode_expected if expected else self.codec.decode
        return decode(hold_short_codes(codes))[0].float().clamp(-1, 1).cpu()


class _FiniteStepCheck(LogitsProcessor):
    """With compiled decoding, every step's scores of the speakable tokens (the eager prefill's too) must be finite
    (`check_finite_step`); the other tokens are -inf by design (`logits_vocabulary`)."""

    def __init__(self, vocabulary: torch.LongTensor):
        self.vocabulary = vocabulary

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_finite_step(scores[:, self.vocabulary])
        return scores


class _UnitStreamer(BaseStreamer):
    """Receives the LLM's tokens during `generate` and turns each unit into audio at once, handing each chunk to
    the stream's consumer.

    `generate` runs in a greenlet on the consumer's own thread, which it leaves at each chunk and resumes at the
    consumer's next request: PyTorch's float16 matrix-vector products ran ~1.7x slower from a second thread here
    (its OpenMP team), and a worker thread had made a streamed sentence take ~1.9x as long as `speak`. So a stream
    is read on the thread that began it. Grad mode belongs to the thread, not to a greenlet: each side keeps its own
    across the switches (`generate` runs without gradients, the consumer as it chose)."""

    DONE = object()

    def __init__(self, speech_ids: SpeechTokenIds, speech: PieceSpeechStream):
        self.speech_ids, self.speech = speech_ids, speech
        self.thread = None
        self.prompt_seen = self.ended = False
        self.said = 0

    def start(self, generate_rows, texts: list, **kwargs):
        """The greenlet that runs `generate_rows(texts, streamer=self, **kwargs)`, with the caller's context
        variables; `resume` runs it to its next chunk."""
        if greenlet is None:
            raise ImportError("streaming needs the greenlet package: pip install greenlet")
        self.thread = threading.get_ident()

        def produce():
            generate_rows(texts, streamer=self, **kwargs)
            if self.said == 0:
                raise NoSpeechUnitsError(f"the model produced no speech units for {texts[0]!r}")
            self._hand_over(self.speech.finish())
            return self.DONE

        producer = greenlet.greenlet(produce)
        producer.gr_context = contextvars.copy_context()
        return producer

    def resume(self, producer):
        """Run the generation until its next chunk (then `DONE`); its errors are raised here."""
        if threading.get_ident() != self.thread:
            raise RuntimeError(
                "this stream is read on another thread than the one that began it: its generation runs on that "
                "thread (in a greenlet), so read a stream on one thread (e.g. collect its chunks there and hand "
                "them on through a queue)"
            )
        return self._enter(producer, producer.switch)

    def stop(self, producer) -> None:
        """End a generation its consumer left, where it waits (`greenlet.GreenletExit`: it ends quietly); one
        left on another thread ends when it is collected."""
        if not producer.dead and threading.get_ident() == self.thread:
            self._enter(producer, producer.throw)

    @staticmethod
    def _enter(producer, go):
        """`go()` into the generation (switch, or throw) from this greenlet, which it comes back to, in this
        greenlet's grad mode afterwards."""
        grad = torch.is_grad_enabled()
        producer.parent = greenlet.getcurrent()
        try:
            return go()
        finally:
            torch.set_grad_enabled(grad)

    def _hand_over(self, chunk: torch.Tensor) -> None:
        """Give `chunk` to the consumer and wait for its next request, in the grad mode `generate` left."""
        grad = torch.is_grad_enabled()
        greenlet.getcurrent().parent.switch(chunk)
        torch.set_grad_enabled(grad)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call carries the prompt
            self.prompt_seen = True
            return
        if self.ended:
            return
        tokens = value.reshape(-1).tolist()
        self.ended = self.speech_ids.end in tokens
        units = self.speech_ids.token_ids_to_units(tokens)  # those before the end marker
        if units:
            self.said += len(units)
            self._hand_over(self.speech.push(units))

    def end(self) -> None:
        pass


def piece_seed_base(seed, reseed_llm: bool = False) -> int:
    """The seed of a text's first piece: `seed` itself, or (None) a draw from torch's global RNG, so
    `torch.manual_seed` still fixes the result. With `reseed_llm`, a given seed also seeds torch's global RNG,
    which the LLM samples from (`do_sample=True`)."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r}: give a whole number (or None)")
    if reseed_llm:
        torch.manual_seed(int(seed))
    return int(seed)


MoLELlamaForTextToWaveform.register_for_auto_class("AutoModelForTextToWaveform")

__all__ = ["MoLELlamaForTextToWaveform", "NoSpeechUnitsError", "check_speaking_kwargs", "piece_seed_base", "split_text"]
