"""The report's figures as a reader sees them: every layer of the spike-time histogram visible, Pareto
labels that do not overlap, and one meaning per training-metric name (real matplotlib, no mocks)."""

from __future__ import annotations

import itertools

from matplotlib.text import Text

from pipeline import plots, training
from pipeline.tuning.export import MAX_LABELS, pareto_figure


def test_spike_time_histogram_is_log_scale_so_deep_layers_show():
    edges = [i / 10 for i in range(11)]
    layer1 = [0, 5000, 20000, 9000, 3000, 800, 200, 40, 0, 0]  # the first layer fires ~1000x the deepest
    deep = [[0, 0, 12, 30, 9, 2, 0, 0, 0, 0], [0, 0, 0, 6, 14, 3, 1, 0, 0, 0], [0, 0, 0, 0, 2, 7, 3, 1, 0, 0]]
    fig = plots.spike_time_figure(edges, [layer1, *deep], "toy")
    try:
        (ax,) = fig.axes
        assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()
        low, high = ax.get_ylim()
        assert low <= 1 and high >= 20000  # layer 4's single spikes are inside the axis, not flattened to 0
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["layer 1", "layer 2", "layer 3", "layer 4"]
        for line, counts in zip(lines[1:], deep, strict=True):
            shown = [y for y in line.get_ydata() if y == y]  # empty bins are gaps (NaN), not zeros
            assert sorted(shown) == sorted(c for c in counts if c > 0)
    finally:
        plots.plt.close(fig)
    empty = plots.spike_time_figure(edges, [[0] * 10], "silent")  # no spike at all: a linear axis, no warning
    assert empty.axes[0].get_yscale() == "linear"
    plots.plt.close(empty)


def _summary(n: int) -> dict:
    """A Pareto summary with ``n`` front trials crowded into a tiny corner of the plot."""
    front = [{"l1": 1e-5 * (i + 1), "val_accuracy": 0.90 - 0.0001 * i, "val_spikes_per_neuron": 0.30 - 0.0005 * i,
              "baseline": False} for i in range(n)]
    baseline = {"l1": 0.0, "val_accuracy": 0.901, "val_spikes_per_neuron": 0.45, "baseline": True}
    return {"all_trials": [baseline, *front], "front": [baseline, *front], "baseline": baseline,
            "target": {"spikes_per_neuron": 0.2, "accuracy_drop": 0.01, "val": {"best_accuracy": 0.901}}}


def test_pareto_labels_never_overlap_and_stay_in_the_figure():
    for n in (1, 5, 20, MAX_LABELS + 6):
        fig = pareto_figure(_summary(n), f"{n} front trials")
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            (ax,) = fig.axes
            labels = [t for t in ax.texts if t.get_text().startswith("L1 ")]
            assert len(labels) == min(n, MAX_LABELS)
            boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, without its leader line
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), (n, a, b)
            page = fig.bbox
            assert all(page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1 for b in boxes)
            # each label names its own trial, most accurate at the top
            texts = [t.get_text() for t in labels]
            assert texts[0] == "L1 1.0e-05" and len(set(texts)) == len(texts)
        finally:
            plots.plt.close(fig)


def test_per_epoch_training_numbers_are_logged_as_running_means():
    row = {"epoch": 3, "train_loss": 0.4, "train_accuracy": 0.85, "val_loss": 0.5, "val_accuracy": 0.8, "lr": 1e-3}
    assert training._metrics(row) == {"running_train_loss": 0.4, "running_train_accuracy": 0.85,
                                      "val_loss": 0.5, "val_accuracy": 0.8, "lr": 1e-3}
