"""REPORT.md from `mole-llama evaluate`'s metrics: the tables, the paper's claims checked against the numbers, and
PNG plots (mel spectrograms of generated vs ground-truth speech, the router's expert weights along a mixed
text/speech sequence, loss curves of the training stages)."""

import json
from pathlib import Path

import numpy as np
import soundfile
import torch

WER_TARGET_RATIO = 1.5
"""The demo's target: a model's WER at most this many times the ground truth's on the same sentences."""
CLOSE_WER_RATIO = 1.25
"""'Close' in the claims: within this ratio of the other model's WER."""


CLOSE_AGREEMENT = 0.9
"""'Close to the base' in the claims: at least this share of answer tokens picked as the base picks them."""


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def training_losses(folder) -> list:
    """`[(step, loss)]` logged by a `Trainer` run in `folder` (a stage folder: its `checkpoints/`): the
    `trainer_state.json` with the most steps found under it (the final state every stage saves there, or the
    latest checkpoint's)."""
    states = [json.loads(path.read_text()) for path in Path(folder).rglob("trainer_state.json")]
    if not states:
        return []
    state = max(states, key=lambda s: s.get("global_step", 0))
    return [(entry["step"], entry["loss"]) for entry in state.get("log_history", []) if "loss" in entry]


def plot_losses(runs: dict, path) -> Path | None:
    """One panel per training stage (`{name: folder}`); None when no stage logged a loss."""
    curves = {name: training_losses(folder) for name, folder in runs.items()}
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    plt = _matplotlib()
    figure, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
    for axis, (name, points) in zip(axes[0], curves.items()):
        steps, losses = zip(*points)
        axis.plot(steps, losses, marker=".")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def _log_mel(path) -> np.ndarray:
    from ..data.audio import resample
    from ..modeling.audio_features import LogMelSpectrogram

    waveform, rate = soundfile.read(path, dtype="float32", always_2d=True)
    waveform = resample(waveform.mean(axis=1), rate, 16000)
    with torch.no_grad():
        return LogMelSpectrogram(16000)(torch.from_numpy(waveform)[None])[0].numpy()


def plot_mel_spectrograms(clips: dict, path, sentence_index: int = 0) -> Path:
    """Rows: voices; columns: the clip sets in `clips` (`{name: rows with voice/text/path}`), one sentence."""
    names = list(clips)
    first = clips[names[0]]
    text = list(dict.fromkeys(row["text"] for row in first))[sentence_index]
    voices = sorted({row["voice"] for row in first})
    plt = _matplotlib()
    figure, axes = plt.subplots(len(voices), len(names), figsize=(3.6 * len(names), 1.9 * len(voices)), squeeze=False)
    for i, voice in enumerate(voices):
        for j, name in enumerate(names):
            row = next(r for r in clips[name] if r["voice"] == voice and r["text"] == text)
            mel = _log_mel(row["path"])
            axes[i][j].imshow(mel.T, origin="lower", aspect="auto", cmap="magma")
            axes[i][j].set_title(f"{name} - {voice}", fontsize=8)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
    figure.suptitle(f'"{text}" (log-mel, 50 frames/s)', fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def plot_routing_trace(trace: dict, path) -> Path:
    """Each expert's mean router weight per token along a mixed text/speech conversation."""
    weights = np.asarray(trace["weights"])
    is_speech = np.array([token.startswith("<|speech_") for token in trace["tokens"]])
    plt = _matplotlib()
    figure, axis = plt.subplots(figsize=(9, 2.6))
    axis.fill_between(np.arange(len(is_speech)), 0, 1, where=is_speech, color="0.88", step="mid",
                      label="speech tokens")  # fmt: skip
    for index, name in enumerate(trace["experts"]):
        axis.plot(weights[:, index], label=f"{name} expert", linewidth=1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("token position (text question + answer, then a read-aloud request + speech units)")
    axis.set_ylabel("router weight")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def table_cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.2f}x" if ceiling > 0 else "n/a"


def intelligibility_table(intelligibility: dict) -> str:
    """Whisper tiny.en WER / CER per voice and model, its ratio to the ground truth, the mean of sentence WERs capped
    at 1 (where a clip Whisper looped on inflates the WER, this shows it), and pocketsphinx's WER."""
    ceiling, names = intelligibility["ground truth"], " / ".join(intelligibility)
    lines = ["| voice | " + " | ".join(f"{name} WER / CER" for name in intelligibility) + " | WER vs ground truth | "
             f"sentence WER capped at 1 ({names}) | pocketsphinx WER ({names}) |",
             "|---|" + "---:|" * (len(intelligibility) + 3)]  # fmt: skip
    for voice in ceiling:
        cells = [f"{rates[voice]['wer']:.3f} / {rates[voice]['cer']:.3f}" for rates in intelligibility.values()]
        ratios = ", ".join(
            f"{name} {_ratio(rates[voice]['wer'], ceiling[voice]['wer'])}"
            for name, rates in intelligibility.items()
            if name != "ground truth"
        )
        clipped, second = (
            " / ".join(f"{rates[voice][key]:.3f}" for rates in intelligibility.values())
            for key in ("wer_clipped", "wer_pocketsphinx")
        )
        lines.append(f"| {voice} | " + " | ".join(cells) + f" | {ratios} | {clipped} | {second} |")
    return "\n".join(lines)


def retention_table(retention: dict) -> str:
    lines = ["| model | greedy answers identical to the base's | per-token greedy agreement | mean per-token KL "
             "from base | known-answer accuracy |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in retention.items():
        lines.append(f"| {name} | {row['agreement']:.3f} | {row['token_agreement']:.3f} | {row['kl']:.4f} | "
                     f"{row['accuracy']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def plot_routing_by_layer(per_layer: dict, path) -> Path:
    """Per layer and task: the share of answer tokens routed to the task's expert, and the routing entropy."""
    plt = _matplotlib()
    figure, (share_axis, entropy_axis) = plt.subplots(1, 2, figsize=(9, 2.8))
    for task, layers in per_layer.items():
        share_axis.plot(layers["share"], marker=".", label=task)
        entropy_axis.plot(layers["entropy"], marker=".", label=task)
    share_axis.set_ylim(0, 1.02)
    share_axis.set_ylabel("routed to its expert")
    entropy_axis.set_ylim(bottom=0)
    entropy_axis.set_ylabel("routing entropy (nats)")
    for axis in (share_axis, entropy_axis):
        axis.set_xlabel("decoder layer")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def routing_table(routing: dict) -> str:
    lines = [
        "| task | tokens | routed to its expert | mean weights | least sure layer (its share) | mean entropy (nats) |",
        "|---|---:|---:|---|---|---:|",
    ]
    for task, count in routing["tokens"].items():
        weights = ", ".join(f"{e} {w:.2f}" for e, w in routing["mean_weights"][task].items())
        layers = routing["per_layer"][task]
        worst = min(range(len(layers["share"])), key=layers["share"].__getitem__)
        detail = f"{worst} ({layers['share'][worst]:.3f}) | {np.mean(layers['entropy']):.3f}"
        lines.append(f"| {task} | {count} | {routing[task]:.3f} | {weights} | {detail} |")
    return "\n".join(lines)


def claims(metrics: dict) -> list:
    """The paper's claims as `(claim, holds, evidence)`, judged from the numbers."""
    wer = {name: rates["all"]["wer"] for name, rates in metrics["intelligibility"].items()}
    ret = metrics["retention"]
    tts, mole, ceiling = wer["TTS-Llama"], wer["MoLE-Llama"], wer["ground truth"]
    return [
        ("TTS-Llama speaks (WER within the target of the ground truth)", tts <= WER_TARGET_RATIO * ceiling,
         f"WER {tts:.3f} vs ground truth {ceiling:.3f} ({_ratio(tts, ceiling)}; target {WER_TARGET_RATIO}x)"),
        ("TTS-Llama's text retention drops below the base", ret["TTS-Llama"]["token_agreement"] < 1.0,
         f"per-token greedy agreement {ret['TTS-Llama']['token_agreement']:.3f}, KL {ret['TTS-Llama']['kl']:.4f}"),
        ("MoLE-Llama's retention is close to the base (and above TTS-Llama's)",
         ret["MoLE-Llama"]["token_agreement"] >= CLOSE_AGREEMENT and ret["MoLE-Llama"]["kl"] < ret["TTS-Llama"]["kl"],
         f"per-token agreement {ret['MoLE-Llama']['token_agreement']:.3f} vs TTS-Llama "
         f"{ret['TTS-Llama']['token_agreement']:.3f} (close = at least {CLOSE_AGREEMENT}); "
         f"KL {ret['MoLE-Llama']['kl']:.4f} vs {ret['TTS-Llama']['kl']:.4f}"),
        ("MoLE-Llama's TTS WER is close to TTS-Llama's", mole <= CLOSE_WER_RATIO * tts,
         f"WER {mole:.3f} vs {tts:.3f} ({_ratio(mole, tts)}; close = within {CLOSE_WER_RATIO}x)"),
    ]  # fmt: skip


def relative_to(path, out_dir) -> str:
    """A clip's path as the report in `out_dir` links it."""
    path, out_dir = Path(path), Path(out_dir)
    return str(path.relative_to(out_dir)) if path.is_relative_to(out_dir) else str(path)


def spoken_answers_table(rows: list, out_dir) -> str:
    """The spoken answers (`evaluation.speech.spoken_answers`) as a Markdown table, clips relative to `out_dir`."""
    header = "| question | text answer | heard (Whisper tiny.en) | WER | pocketsphinx WER | audio |\n"
    header += "|---|---|---|---:|---:|---|"
    return header + "".join(
        f"\n| {table_cell(r['question'])} | {table_cell(r['answer'])} | {table_cell(r['transcript'])} | "
        f"{r['wer']:.2f} | {r['wer_pocketsphinx']:.2f} | [wav]({relative_to(r['path'], out_dir)}) |"
        for r in rows
    )


def write_report(metrics: dict, out_dir, training_runs: dict | None = None, header: str = "") -> Path:
    """Write `out_dir/REPORT.md` and its plots (`out_dir/plots/`); clip paths in it are relative to `out_dir`."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figures = [
        (
            "Mel spectrograms: ground truth vs generated",
            plot_mel_spectrograms(metrics["clips"], plots / "mel_spectrograms.png"),
        )
    ]
    if metrics.get("routing_trace"):
        figures.append(
            (
                "Router weights along a mixed text/speech sequence (MoLE-Llama)",
                plot_routing_trace(metrics["routing_trace"], plots / "router_weights.png"),
            )
        )
    if metrics.get("routing", {}).get("per_layer"):
        figures.append(
            (
                "Routing per layer: share of answer tokens sent to their task's expert, and entropy (MoLE-Llama)",
                plot_routing_by_layer(metrics["routing"]["per_layer"], plots / "routing_by_layer.png"),
            )
        )
    losses = plot_losses(training_runs or {}, plots / "loss_curves.png")
    if losses:
        figures.append(("Training loss curves", losses))  # fmt: skip

    settings = metrics["settings"]
    parts = [
        "# mole-llama report",
        header,
        f"{settings['sentences']} held-out sentences x voices {', '.join(settings['voices'])}; "
        f"{settings['prompts']} held-out text prompts; seed {settings['seed']}.",
        "## Claims of the paper, at this scale",
        "| claim | holds | evidence |\n|---|---|---|"
        + "".join(f"\n| {claim} | {'yes' if ok else '**no**'} | {why} |" for claim, ok, why in claims(metrics)),
        "## Intelligibility (Whisper tiny.en, held-out sentences; pocketsphinx as a second opinion)",
        intelligibility_table(metrics["intelligibility"]),
        "## Text retention",
        retention_table(metrics["retention"]),
        "## Router accuracy (MoLE-Llama, learned routing)",
        routing_table(metrics["routing"]),
        "## Text in, speech out (MoLE-Llama)",
        spoken_answers_table(metrics["spoken_answers"], out_dir),
        "## Samples",
        "\n".join(
            f"- {name}: " + ", ".join(f"[{row['voice']} {i // len(settings['voices'])}]"
                                      f"({relative_to(row['path'], out_dir)})"
                                      for i, row in enumerate(rows[: 2 * len(settings["voices"])]))
            for name, rows in metrics["clips"].items()
        ),
        "## Plots",
        "\n\n".join(f"### {title}\n![{title}]({relative_to(path, out_dir)})" for title, path in figures),
    ]  # fmt: skip
    report = out_dir / "REPORT.md"
    report.write_text("\n\n".join(part for part in parts if part) + "\n")
    return report


__all__ = ["claims", "plot_losses", "spoken_answers_table", "training_losses", "write_report"]
