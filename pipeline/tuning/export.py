"""The study's results as DVC outputs: the Pareto front, the target check, the trials CSV, the plots.

``plots/<exp>/pareto.json``, ``pareto.png``, ``pareto.html``, ``tune_trials.csv`` and
``metrics/<exp>/tune.json``: plain data with no timestamps, run ids or host names (see docs/tuning.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..artifacts import atomic_write, write_csv
from ..params import TuneParams
from ..results import ParetoResult, TuneResult
from .objective import EXCLUDED
from .space import BASELINE
from .storage import DIRECTIONS, OBJECTIVES

TRIAL_COLUMNS = ("number", "baseline", "on_front", "l1", "lr", "val_accuracy", "val_spikes_per_neuron",
                 "test_accuracy", "test_spikes_per_neuron")


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a dominates b for (accuracy: max, spikes: min)."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def trial_record(t: FrozenTrial) -> dict:
    """A trial as plain data (no timestamps, run ids or host names: a DVC output)."""
    ua = t.user_attrs
    return {
        "number": t.number,
        "baseline": bool(ua.get(BASELINE)),
        "params": dict(sorted(t.params.items())),
        "l1": ua.get("l1", t.params.get("l1", 0.0)),
        "lr": ua.get("lr", t.params.get("lr")),
        "val_accuracy": t.values[0] if t.values else None,
        "val_spikes_per_neuron": t.values[1] if t.values else None,
        "test_accuracy": ua.get("test_accuracy"),
        "test_spikes_per_neuron": ua.get("test_spikes_per_neuron"),
    }


def summarise(study: optuna.Study, tp: TuneParams, budget: int) -> dict:
    """The Pareto front (``study.best_trials``) and the target check, as plain data."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = sorted(study.best_trials if complete else [], key=lambda t: (t.values[1], -t.values[0], t.number))
    front_numbers = {t.number for t in front}
    records = [trial_record(t) | {"on_front": t.number in front_numbers} for t in complete]
    records.sort(key=lambda r: r["number"])
    baselines = [r for r in records if r["baseline"]]
    out: dict[str, Any] = {
        "study_name": study.study_name,
        "objectives": [{"name": n, "direction": d} for n, d in zip(OBJECTIVES, DIRECTIONS, strict=True)],
        "search_space": {"l1": {"low": tp.l1_min, "high": tp.l1_max, "log": True},
                         "lr": ({"low": tp.lr_min, "high": tp.lr_max, "log": True} if tp.tune_lr else "fixed")},
        "trials": {"budget": budget, "total": len(trials), "complete": len(complete),
                   "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get(EXCLUDED) for t in trials),
                   "excluded": sum(bool(t.user_attrs.get(EXCLUDED)) for t in trials),
                   "running": sum(t.state == TrialState.RUNNING for t in trials)},
        "baseline": baselines[0] if baselines else None,
        "front": [trial_record(t) for t in front],
    }
    out["target"] = target_check(out["front"], records, tp)
    out["all_trials"] = records
    return out


def target_check(front: list[dict], records: list[dict], tp: TuneParams) -> dict:
    """Does the front reach ``target_spikes`` within ``target_accuracy_drop`` of the best accuracy?

    The trial is picked on validation (what was tuned): the sparsest front trial whose validation
    accuracy is within the drop of the best validation accuracy over all trials. Its test numbers are
    then checked the same way against the best test accuracy on the front, without choosing on test.
    """
    out: dict[str, Any] = {"spikes_per_neuron": tp.target_spikes, "accuracy_drop": tp.target_accuracy_drop,
                           "val": None, "test": None}
    done = [r for r in records if r.get("val_accuracy") is not None]
    if not done or not front:
        return out
    best = max(r["val_accuracy"] for r in done)
    within = [r for r in front if r["val_accuracy"] >= best - tp.target_accuracy_drop - 1e-12]
    pick = min(within, key=lambda r: (r["val_spikes_per_neuron"], r["number"]))
    chosen = {"trial": pick["number"], "l1": pick["l1"], "lr": pick["lr"]}
    out["val"] = {"best_accuracy": best, "sparsest_within_drop": chosen | {
        "accuracy": pick["val_accuracy"], "spikes_per_neuron": pick["val_spikes_per_neuron"]},
        "met": bool(pick["val_spikes_per_neuron"] <= tp.target_spikes)}
    tested = [r["test_accuracy"] for r in front if r.get("test_accuracy") is not None]
    if tested and pick.get("test_accuracy") is not None:
        best_test = max(tested)
        out["test"] = {"best_accuracy": best_test, "sparsest_within_drop": chosen | {
            "accuracy": pick["test_accuracy"], "spikes_per_neuron": pick["test_spikes_per_neuron"]},
            "met": bool(pick["test_spikes_per_neuron"] <= tp.target_spikes
                        and pick["test_accuracy"] >= best_test - tp.target_accuracy_drop - 1e-12)}
    return out


#: At most this many front trials are labelled (evenly chosen); beyond it labels would be under 7 pt apart.
MAX_LABELS = 24


def pareto_figure(summary: dict, title: str):
    """The Pareto figure (matplotlib Figure, open): trials, the front, the baseline and the targets. Each
    front trial is labelled with its L1 strength in a column right of the axes, most accurate at the top,
    evenly spaced and joined to its point by a thin line, so that labels never overlap however close
    the points are."""
    from .. import plots

    plt = plots.plt
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    trials = summary["all_trials"]
    front = summary["front"]
    if trials:
        ax.scatter([r["val_spikes_per_neuron"] for r in trials], [100 * r["val_accuracy"] for r in trials],
                   s=18, color="0.65", label="trials", zorder=2)
    if front:
        xs = [r["val_spikes_per_neuron"] for r in front]
        ys = [100 * r["val_accuracy"] for r in front]
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, zorder=3)
        ax.scatter(xs, ys, s=30, color="tab:red", label="Pareto front", zorder=4)
        labelled = sorted((r for r in front if not r["baseline"]),
                          key=lambda r: (-r["val_accuracy"], r["val_spikes_per_neuron"]))
        if len(labelled) > MAX_LABELS:
            step = len(labelled) / MAX_LABELS
            labelled = [labelled[int(i * step)] for i in range(MAX_LABELS)]
        for i, r in enumerate(labelled):
            y = 0.5 if len(labelled) == 1 else 0.97 - i * 0.94 / (len(labelled) - 1)
            ax.annotate(f"L1 {r['l1']:.1e}", (r["val_spikes_per_neuron"], 100 * r["val_accuracy"]),
                        xytext=(1.02, y), textcoords="axes fraction", fontsize=7, color="tab:red", va="center",
                        annotation_clip=False,
                        arrowprops={"arrowstyle": "-", "color": "tab:red", "lw": 0.4, "alpha": 0.5,
                                    "shrinkA": 0, "shrinkB": 3})
    if summary["baseline"]:
        b = summary["baseline"]
        ax.scatter([b["val_spikes_per_neuron"]], [100 * b["val_accuracy"]], marker="*", s=160, color="black",
                   label="baseline (L1 = 0)", zorder=5)
    target = summary["target"]
    if target.get("val"):
        ax.axhline(100 * (target["val"]["best_accuracy"] - target["accuracy_drop"]), color="tab:blue",
                   linestyle="--", linewidth=1, label=f"best - {100 * target['accuracy_drop']:g} pt")
    ax.axvline(target["spikes_per_neuron"], color="tab:green", linestyle=":", linewidth=1,
               label=f"{target['spikes_per_neuron']:g} spikes/neuron")
    ax.set(xlabel="spikes per neuron (validation)", ylabel="accuracy % (validation)", title=title)
    ax.legend(fontsize=8, loc="lower left")  # the leader lines run to the right
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.82, bottom=0.11, top=0.92)  # the label column right of the axes
    return fig


def plot_png(path: Path, summary: dict, title: str) -> None:
    from .. import plots

    plots.save_png(pareto_figure(summary, title), path)


def plot_html(path: Path, study: optuna.Study, title: str) -> None:
    """Interactive front (optuna.visualization); plotly.js is embedded so the file works offline."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        fig = optuna.visualization.plot_pareto_front(
            study, target_names=["validation accuracy", "spikes per neuron (validation)"])
    else:
        import plotly.graph_objects as go

        fig = go.Figure()
    fig.update_layout(title=title)
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id="pareto-front")
    atomic_write(path, html.encode())


def export(study: optuna.Study, tp: TuneParams, budget: int, experiment: str, out_dir: Path,
           metrics_path: Path, params_hash: str, lineage: dict[str, str]) -> dict:
    """pareto.json, pareto.png, pareto.html, tune_trials.csv in ``out_dir``; tune.json (typed results)."""
    summary = summarise(study, tp, budget)
    stamp = {"params_hash": params_hash, "lineage": lineage}
    front_doc = {k: v for k, v in summary.items() if k != "all_trials"} | {"experiment": experiment}
    ParetoResult.model_validate(front_doc | stamp).write(out_dir / "pareto.json")
    write_csv(out_dir / "tune_trials.csv", summary["all_trials"], TRIAL_COLUMNS)
    title = f"{experiment}: accuracy vs spikes per neuron"
    plot_png(out_dir / "pareto.png", summary, title)
    plot_html(out_dir / "pareto.html", study, title)
    metrics = metrics_from(summary)
    TuneResult.model_validate(metrics | stamp).write(metrics_path)
    return metrics


def metrics_from(summary: dict) -> dict:
    """The flat numbers of `dvc metrics show` (and the parent MLflow run)."""
    m: dict[str, Any] = {"trials": summary["trials"], "front_size": len(summary["front"])}
    if summary["baseline"]:
        b = summary["baseline"]
        m["baseline"] = {k: b[k] for k in ("val_accuracy", "val_spikes_per_neuron", "test_accuracy",
                                           "test_spikes_per_neuron")}
    for split in ("val", "test"):
        t = summary["target"].get(split)
        if t:
            pick = t["sparsest_within_drop"] or {}
            m[f"{split}_target"] = {"best_accuracy": t["best_accuracy"], "met": t["met"],
                                    "accuracy": pick.get("accuracy"),
                                    "spikes_per_neuron": pick.get("spikes_per_neuron"),
                                    "l1": pick.get("l1"), "trial": pick.get("trial")}
    return m
