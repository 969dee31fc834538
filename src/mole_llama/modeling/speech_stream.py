"""One piece of speech made while the LLM is still saying its units: units -> durations -> acoustic codes -> audio.

Each stage passes on only what is final: a unit's duration once the duration predictor's lookahead past it is
known, a frame's codes once the acoustic LM's unit context past it is known, a sample once the codec's decoder and
Griffin-Lim block have what they reach. So the streamed audio is the audio of the whole piece, sample for sample,
and the first of it is heard a few units after the LLM starts instead of after the last.

Self-contained (torch and sibling files) for `trust_remote_code=True`.
"""

import logging

import torch

from .speech_units import expand_units

MIN_DECODE_FRAMES = 2
"""A vocoder's frames overlap into sound from two frames on: a piece of a single frame is held for a second."""
logger = logging.getLogger(__name__)


def warn_frames_cut(frames: int, max_frames: int, frame_rate: float) -> None:
    logger.warning(
        "the units' durations come to %d frames, more than the text's cap of %d (an undertrained duration "
        "predictor?): the speech is cut at %.1f s",
        frames,
        max_frames,
        max_frames / frame_rate,
    )


def hold_short_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes `[batch, num_codebooks, frames]` (or their distributions, `[batch, num_codebooks, frames, size]`) of
    fewer than `MIN_DECODE_FRAMES` frames, their last frame held."""
    if codes.shape[2] >= MIN_DECODE_FRAMES:
        return codes
    logger.warning("the piece is %d acoustic frame(s) long: held to %d", codes.shape[2], MIN_DECODE_FRAMES)
    return torch.cat([codes] + [codes[:, :, -1:]] * (MIN_DECODE_FRAMES - codes.shape[2]), dim=2)


class DurationStream:
    """Durations for collapsed units that arrive a few at a time: a unit is timed once `predictor.lookahead` later
    units are known (or the units are finished), from a window reaching `predictor.lookbehind` back, with the noise
    drawn in the same order as `predict` on the whole sequence. Gives frame-level units."""

    def __init__(self, predictor, temperature: float, speed: float, generator=None):
        self.predictor, self.temperature, self.speed, self.generator = predictor, temperature, speed, generator
        self.units = []
        self.timed = 0

    def push(self, units: list) -> list:
        self.units += units
        return self._time(len(self.units) - self.predictor.lookahead)

    def finish(self) -> list:
        return self._time(len(self.units))

    def _time(self, end: int) -> list:
        if end <= self.timed:
            return []
        start = max(0, self.timed - self.predictor.lookbehind)
        window = self.units[start : end + self.predictor.lookahead]
        durations = self.predictor.predict(
            window, self.temperature, self.speed, self.generator, start=self.timed - start, end=end - start
        )
        frames = expand_units(self.units[self.timed : end], durations)
        self.timed = end
        return frames


class PieceSpeechStream:
    """Semantic units of one piece, as the LLM says them (`push`, then `finish`) -> its waveform in chunks
    (1-D float tensors on the CPU, empty while nothing new is final). `model` is a `MoLELlamaForTextToWaveform`;
    the seed, cap and settings are the ones `speak_batch` uses for the same piece."""

    def __init__(self, model, prompt_codes, seed: int, max_frames: int, settings: dict):
        self.max_frames = max_frames
        self.frame_rate = model.acoustic_lm.config.acoustic_frame_rate
        self.durations = None
        if model.duration_predictor is not None:
            self.durations = DurationStream(
                model.duration_predictor,
                settings["duration_temperature"],
                settings["speed"],
                torch.Generator().manual_seed(seed),
            )
        self.acoustic = model.acoustic_lm.stream(
            prompt_codes=None if prompt_codes is None else prompt_codes.to(model.device),
            max_frames=max_frames,
            temperature=settings["acoustic_temperature"],
            top_k=settings["acoustic_top_k"],
            do_sample=settings["acoustic_do_sample"],
            seed=seed,
            output_code_probabilities=settings["acoustic_expected_decoding"],
        )
        decode_stream = getattr(model.codec, "decode_stream", None)  # EnCodec has none: its piece comes at the end
        self.decoder = decode_stream() if callable(decode_stream) else None
        self.codec = model.codec
        self.expected = settings["acoustic_expected_decoding"]  # decode code distributions (`decode_expected`)
        self.codes = []  # all codes (or distributions) so far: a codec without a streaming decoder decodes them last
        self.frames = 0

    def push(self, units: list) -> torch.Tensor:
        frames = self.durations.push(units) if self.durations is not None else units
        return self._decode(self.acoustic.push(self._count(frames)))

    def finish(self) -> torch.Tensor:
        """The rest of the waveform; warns if the durations ran past the piece's frame cap, as `speak` does."""
        frames = self.durations.finish() if self.durations is not None else []
        chunks = [self._decode(self.acoustic.push(self._count(frames))), self._decode(self.acoustic.finish())]
        if self.frames > self.max_frames:
            warn_frames_cut(self.frames, self.max_frames, self.frame_rate)
        made = sum(codes.shape[1] for codes in self.codes)
        if made < MIN_DECODE_FRAMES:
            chunks.append(self._decode_new(hold_short_codes(torch.cat(self.codes, dim=1)[None])[0, :, made:]))
        if self.decoder is None:
            decode = self.codec.decode_expected if self.expected else self.codec.decode
            return decode(torch.cat(self.codes, dim=1)[None])[0].float().clamp(-1, 1).cpu()
        return torch.cat(chunks + [self.decoder.finish()[0].float().clamp(-1, 1).cpu()])

    def _count(self, frames: list) -> list:
        self.frames += len(frames)
        return frames

    def _decode(self, made) -> torch.Tensor:
        """What the acoustic stream made (codes, or `(codes, distributions)` when decoding expected vectors) -> the
        samples it makes final."""
        return self._decode_new(made[1] if self.expected else made)

    def _decode_new(self, codes: torch.Tensor) -> torch.Tensor:
        """New codes `[num_codebooks, frames]` (or distributions `[num_codebooks, frames, size]`) -> the samples
        they make final (all at the end without a streaming decoder)."""
        if codes.shape[1] == 0:
            return torch.zeros(0)
        self.codes.append(codes)
        if self.decoder is None:
            return torch.zeros(0)
        push = self.decoder.push_expected if self.expected else self.decoder.push
        return push(codes[None])[0].float().clamp(-1, 1).cpu()
