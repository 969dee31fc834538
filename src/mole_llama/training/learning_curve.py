"""The speech expert's learning curve: held-out greedy unit error rate against CPU minutes, logged while it trains.

A `TrainerCallback`, so it works with any trainer and lands in `state.log_history` beside the losses: in every
checkpoint's `trainer_state.json` and in the final one a stage saves, where reports and the model card read it.
"""

import time

from transformers import TrainerCallback

from ..chat import greedy_speech_units, unit_error_rate


class UnitErrorRateCallback(TrainerCallback):
    """Every `every_steps` optimizer steps (and at the end), decode `texts` greedily and log `unit_error_rate`
    against `reference_units` (both run-length collapsed), with the CPU minutes and the wall minutes spent training.
    With `collapsed` (the expert speaks collapsed units), each hypothesis is cut at the speaking model's cap for its
    text, so the curve measures what the model would say. A run resumed from a checkpoint counts on from the minutes
    its restored `log_history` last logged."""

    def __init__(
        self, tokenizer, texts: list, reference_units: list, num_units: int, every_steps: int = 100,
        collapsed: bool = False,
    ):  # fmt: skip
        if len(texts) != len(reference_units) or not texts:
            raise ValueError(f"give one reference per text, and some: {len(texts)} vs {len(reference_units)}")
        if every_steps < 1:
            raise ValueError(f"every_steps={every_steps}: give a positive number of steps")
        self.tokenizer, self.texts, self.references = tokenizer, list(texts), list(reference_units)
        self.num_units, self.every_steps, self.collapsed = num_units, every_steps, collapsed
        self.max_new_tokens = 2 * max(len(units) for units in self.references) + 8  # room for a model that runs on
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()
        self.cpu_before = self.wall_before = 0.0

    def measure(self, model) -> float:
        hypotheses = greedy_speech_units(
            model, self.tokenizer, self.texts, self.num_units, self.max_new_tokens, collapsed=self.collapsed
        )
        return unit_error_rate(self.references, hypotheses)

    def _log(self, state, model) -> None:
        entry = {
            "step": state.global_step,
            "unit_error_rate": self.measure(model),
            "cpu_minutes": self.cpu_before + (time.process_time() - self.cpu_start) / 60,
            "wall_minutes": self.wall_before + (time.perf_counter() - self.wall_start) / 60,
        }
        state.log_history.append(entry)
        print(f"[learning curve] {entry}", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        earlier = [entry for entry in state.log_history if "cpu_minutes" in entry]
        if earlier:
            self.cpu_before, self.wall_before = earlier[-1]["cpu_minutes"], earlier[-1]["wall_minutes"]
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0 and state.is_world_process_zero:
            self._log(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps and state.is_world_process_zero:
            self._log(state, model)


__all__ = ["UnitErrorRateCallback"]
