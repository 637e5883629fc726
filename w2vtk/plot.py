"""Training curves: EXP_DIR/log.jsonl of `w2vtk pretrain` / `w2vtk finetune` rendered to a PNG.

The trainer writes one JSON object per logged update (`{"step": ..., "loss": ..., "lr": ...}`) and one
per validation (`{"valid": true, "step": ..., ...}`). Pretraining and fine-tuning log different
quantities, so each panel is drawn only when one of its keys was logged. Several runs (e.g. fine-tuning
from scratch and from a pretrained model) can share one figure, one colour per run. Where the run's
config.yaml gives a quantity a healthy range (w2vtk.training.health), the panel shades it green; the
log's `health` records are findings, not curve points.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_open

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
DEFAULT_PNG = "training_curves.png"

# (panel title, logged keys drawn in it); a panel without any of its keys in the logs is left out.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("loss terms", ("contrastive", "diversity", "penalty")),
    ("accuracy of the positive", ("accuracy",)),
    ("codebook perplexity", ("prob_perplexity", "code_perplexity")),
    ("Gumbel temperature", ("temperature",)),
    ("learning rate", ("lr",)),
    ("gradient norm", ("grad_norm",)),
    ("validation error rate (%)", ("wer", "per", "cer", "uer")),
)


class PlotError(W2vtkError):
    """A training log is missing, empty or unreadable."""


@dataclass
class Curves:
    """One split's logged values: key -> (steps, values), in step order."""

    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def add(self, step: int, key: str, value: float) -> None:
        steps, values = self.series.setdefault(key, ([], []))
        steps.append(step)
        values.append(value)


@dataclass
class TrainingLog:
    """The train and validation curves of one experiment folder; `name` labels it in legends; `healthy`
    holds the healthy ranges of its quantities (from its config.yaml, see w2vtk.training.health)."""

    name: str
    train: Curves
    valid: Curves
    healthy: dict = field(default_factory=dict)

    def keys(self) -> set[str]:
        return set(self.train.series) | set(self.valid.series)


def read_training_log(exp_dir: str | os.PathLike, name: str | None = None) -> TrainingLog:
    """Parse EXP_DIR/log.jsonl. A record logged again for the same step (a resumed run) replaces the
    earlier one; a torn last line (a run killed while writing) is skipped with a warning."""
    exp_dir = Path(exp_dir)
    path = exp_dir / LOG_FILE
    if not path.is_file():
        raise PlotError(f"{path}: no such file; pass the --exp-dir of a `w2vtk pretrain` or `w2vtk finetune` run")
    records: dict[tuple[bool, int], dict] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
            if "health" in rec:  # a finding of the health rules, not a curve point
                continue
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if lineno == len(lines):
                log.warning("%s:%d: skipping a torn last line", path, lineno)
                continue
            raise PlotError(f"{path}:{lineno}: not a JSON record with a 'step'; is this a w2vtk training log?") from None
        records[(bool(rec.get("valid")), step)] = rec
    if not records:
        raise PlotError(f"{path}: no logged updates yet; train for at least trainer.log_interval updates")
    train, valid = Curves(), Curves()
    for (is_valid, step), rec in sorted(records.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        curves = valid if is_valid else train
        for key, value in rec.items():
            if key in ("step", "valid", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                curves.add(step, key, float(value))
    from w2vtk.training.health import healthy_ranges
    from w2vtk.training.health_check import run_facts

    facts = run_facts(exp_dir)
    return TrainingLog(name or exp_dir.resolve().name, train, valid, healthy_ranges(facts) if facts else {})


def shade_healthy(ax, runs: Sequence[TrainingLog], keys: Sequence[str]) -> None:
    """Shade the healthy range of the panel's quantities, where all runs that logged one agree on it."""
    for key in keys:
        ranges = {run.healthy[key] for run in runs if key in run.healthy}
        if len(ranges) != 1:
            continue
        r = ranges.pop()
        bottom, top = ax.get_ylim()
        left, right = ax.get_xlim()
        low = bottom if r.low is None else max(r.low, bottom)
        high = top if r.high is None else min(r.high, top)
        if low < high and r.start < right:
            ax.fill_between([max(r.start, left), right], low, high, color="tab:green", alpha=0.08, linewidth=0,
                            label=f"healthy {key}" if len(keys) > 1 else "healthy")
        ax.set_ylim(bottom, top)
        ax.set_xlim(left, right)


def panels_for(runs: Sequence[TrainingLog]) -> list[tuple[str, list[str]]]:
    """(title, keys present) of the PANELS that at least one of `runs` logged, in PANELS order."""
    present = set().union(*(r.keys() for r in runs))
    return [(title, [k for k in keys if k in present]) for title, keys in PANELS if present & set(keys)]


def plot_training(runs: Sequence[TrainingLog], out: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the curves of `runs` into the PNG `out`: one panel per quantity, training as solid lines,
    validation as dashed lines with markers. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not runs:
        raise PlotError("no training logs to plot")
    panels = panels_for(runs)
    if not panels:
        raise PlotError(f"{runs[0].name}: the log holds none of the plotted quantities "
                        f"({', '.join(k for _, keys in PANELS for k in keys)})")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.5 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    several = len(runs) > 1
    for ax, (panel, keys) in zip(axes.flat, panels):
        for r, run in enumerate(runs):
            for k, key in enumerate(keys):
                colour = colours[(r * len(keys) + k) % len(colours)]
                label = f"{run.name}: {key}" if several else key
                if key in run.train.series:
                    steps, values = run.train.series[key]
                    # A lone point draws no line: give it a marker so that it shows.
                    ax.plot(steps, values, color=colour, linewidth=1.2, marker="o" if len(steps) == 1 else None,
                            markersize=3, label=label)
                if key in run.valid.series:
                    steps, values = run.valid.series[key]
                    ax.plot(steps, values, color=colour, linestyle="--", marker="o", markersize=3,
                            linewidth=1.0, label=f"{label} (valid)")
        shade_healthy(ax, runs, keys)
        ax.set_title(panel)
        ax.set_xlabel("update")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:  # a single line needs no legend: the title names it
            ax.legend(fontsize="small")
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save_png(fig, out)


def plot_experiments(exp_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                     names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Read each EXP_DIR's log and draw them into one PNG (default: EXP_DIR/training_curves.png for a
    single folder)."""
    if not exp_dirs:
        raise PlotError("no experiment folder given")
    if names is not None and len(names) != len(exp_dirs):
        raise PlotError(f"{len(names)} names for {len(exp_dirs)} experiment folders; give one name per folder")
    if out is None:
        if len(exp_dirs) > 1:
            raise PlotError("several experiment folders share one figure: say where with --out FILE.png")
        out = Path(exp_dirs[0]) / DEFAULT_PNG
    runs = [read_training_log(d, names[i] if names else None) for i, d in enumerate(exp_dirs)]
    return plot_training(runs, out, title)


def plot_alignment(audio: str | os.PathLike, ctm: str | os.PathLike, out: str | os.PathLike,
                   utterance: str | None = None, title: str | None = None) -> Path:
    """Draw the waveform of `audio` with the words of one recording of `ctm` (its file id `utterance`;
    default: the CTM's only recording, or the one named like the audio file) as shaded, labelled spans,
    the picture one checks an alignment by. Returns the PNG written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from w2vtk.audio import SAMPLE_RATE, read_audio
    from w2vtk.transcripts import read_ctm

    recordings = read_ctm(ctm)
    if utterance is None:
        stem = Path(audio).stem
        names = [u for u in recordings if u in (stem, str(audio))] or list(recordings)
        if len(names) != 1:
            raise PlotError(f"{ctm}: holds {len(recordings)} recordings and none is named {stem}; choose one "
                            "with --utterance")
        utterance = names[0]
    if utterance not in recordings:
        raise PlotError(f"{ctm}: no words of {utterance!r}; choose one of its recordings, e.g. "
                        f"{next(iter(recordings), '(none)')}")
    wav = read_audio(audio)
    t = np.arange(len(wav)) / SAMPLE_RATE
    fig, ax = plt.subplots(figsize=(max(8.0, min(40.0, len(wav) / SAMPLE_RATE * 3)), 3.0))
    ax.plot(t, wav, color="0.35", linewidth=0.5)
    top = float(np.abs(wav).max()) or 1.0
    colours = ("tab:blue", "tab:orange")
    for i, w in enumerate(recordings[utterance]):
        ax.axvspan(w.start, w.end, color=colours[i % 2], alpha=0.25, linewidth=0)
        ax.text((w.start + w.end) / 2, top * (1.05 if i % 2 == 0 else 0.85), w.word, ha="center", va="bottom",
                fontsize=8, rotation=0 if w.end - w.start > 0.15 else 90)
    ax.set_xlim(0, len(wav) / SAMPLE_RATE)
    ax.set_ylim(-top * 1.1, top * 1.35)
    ax.set_xlabel("seconds")
    ax.set_yticks([])
    ax.set_title(title or f"{utterance}: {len(recordings[utterance])} words")
    return _save_png(fig, out)


def _save_png(fig, out: str | os.PathLike) -> Path:
    """Lay out `fig`, write it to `out` as a PNG atomically, close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return out
