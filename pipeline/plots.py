"""PNG figures for `dvc plots` next to the CSV data (Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .artifacts import atomic_write  # noqa: E402

_META = {"Software": None}  # PNG metadata would otherwise carry the matplotlib version only; keep bytes stable


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata=_META)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def training_curve(path: Path, history: list[dict], title: str) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in history]
    for split, label in (("train", "training (running mean)"), ("val", "validation")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=label)
        ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    ax_acc.legend()
    fig.tight_layout()
    save_png(fig, path)


def spikes_per_layer(path: Path, values: list[float], title: str) -> None:
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(values) + 2), 3.5))
    ax.bar(range(1, len(values) + 1), values)
    ax.set(xlabel="hidden layer", ylabel="spikes per neuron", title=title)
    ax.set_xticks(range(1, len(values) + 1))
    fig.tight_layout()
    save_png(fig, path)


def spike_time_histogram(path: Path, edges: list[float], counts: list[list[int]], title: str) -> None:
    save_png(spike_time_figure(edges, counts, title), path)


def spike_time_figure(edges: list[float], counts: list[list[int]], title: str):
    """Spike counts per time bin, one step line per hidden layer, on a log axis (open Figure)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    width = edges[1] - edges[0]
    for n, layer_counts in enumerate(counts, start=1):  # empty bins are gaps on the log axis
        ax.step(centres, [c if c > 0 else float("nan") for c in layer_counts], where="mid", label=f"layer {n}")
    # log scale: the first hidden layer fires orders of magnitude more spikes than the deeper ones
    log = any(c > 0 for layer_counts in counts for c in layer_counts)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="(t - t_min) / window width", ylabel="spikes (log scale)" if log else "spikes", title=title,
           xlim=(edges[0] - width, edges[-1] + width))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def raster(path: Path, layers: list[tuple[list[float], list[int], int]], boundaries: list[float],
           title: str) -> None:
    """Spike raster: each hidden layer's (times, neuron ids, neurons shown), stacked; window edges drawn."""
    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for n, (times, ids, size) in enumerate(layers, start=1):
        ax.scatter(times, [offset + i for i in ids], s=2, label=f"layer {n}")
        offset += size
    for b in boundaries:
        ax.axvline(b, color="grey", lw=0.5)
    ax.set(xlabel="time (tau_c)", ylabel="neuron (stacked by layer)", title=title)
    ax.legend(fontsize="small", markerscale=4)
    fig.tight_layout()
    save_png(fig, path)
