"""Stage `summary`: one small headline file per experiment, what DVC shows as metrics.

    python -m stages.summary tiny_fc2        # metrics/<exp>/summary.json (evaluate, sweep) and
                                             # plots/<exp>/val_curves.csv (ReLU and SNN curves, one table)
    python -m stages.tune_summary tiny_fc2   # metrics/<exp>/tune_summary.json (the tune stage's front)

Every other result file (pretrain.json, evaluate.json, sweep.json, tune.json, ...) is a plain DVC output
(``cache: false``), so ``dvc metrics show``, ``dvc metrics diff`` and ``dvc exp show`` list only these
headline numbers and fit in a terminal. The keys are short on purpose (they are column headers); their
meaning is :data:`HEADLINE` below and docs/pipeline.md "Looking at results". The numbers are read from the
typed results (:mod:`pipeline.results`), so a malformed result file stops the stage with its field.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from pipeline.artifacts import write_csv, write_json
from pipeline.results import EvaluateResult, SweepResult, TuneResult
from pipeline.runner import Context, stage

#: key in summary.json -> what it is (all on the test split).
HEADLINE = {
    "relu_acc": "ReLU reference test accuracy (evaluate.json relu_accuracy)",
    "snn_acc": "fine-tuned SNN test accuracy (evaluate.json snn_accuracy)",
    "agree": "fraction of test samples where SNN and ReLU predict the same class",
    "spikes": "spikes per hidden neuron per sample",
    "msynops": "synaptic operations per sample (SPEC 6), in millions",
    "energy": "SNN / ANN energy estimate ratio (energy_pj.ratio)",
    "latency": "SNN latency t_min^(N) - t_min^(0), in units of tau_c (ttfs.metrics.latency)",
    "jitter": "sweep: largest spike-time jitter sigma within the sweep's tolerance (null: none is)",
    "steps": "sweep: fewest time steps per window within tolerance",
    "bits": "sweep: fewest weight bits within tolerance",
    "lat_x": "sweep: largest latency reduction factor within tolerance",
}
#: key in tune_summary.json -> what it is.
TUNE_HEADLINE = {
    "front": "size of the Pareto front (accuracy vs spikes) of the L1 study",
    "tune_acc": "validation accuracy of the sparsest front trial within the allowed accuracy drop",
    "tune_spk": "that trial's validation spikes per neuron (tune.json val_target says if it meets the target)",
}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def headline(evaluate: EvaluateResult, sweep: SweepResult) -> dict:
    """summary.json from the experiment's typed results (evaluate.json measures the ReLU reference and
    the SNN on the same test batches)."""
    ok = sweep.within_tolerance
    return {
        "relu_acc": _round(evaluate.relu_accuracy),
        "snn_acc": _round(evaluate.snn_accuracy),
        "agree": _round(evaluate.agreement_with_reference),
        "spikes": _round(evaluate.spikes_per_neuron),
        "msynops": float(f"{evaluate.synops_per_sample / 1e6:.4g}"),  # 4 significant digits
        "energy": _round(evaluate.energy_pj.ratio),
        "latency": _round(evaluate.latency, 3),
        "jitter": ok.jitter,
        "steps": ok.time_steps,
        "bits": ok.weight_bits,
        "lat_x": ok.latency_factor,
    }


def tune_headline(tune: TuneResult) -> dict:
    """tune_summary.json from the experiment's tune.json."""
    target = tune.val_target
    return {
        "front": tune.front_size,
        "tune_acc": None if target is None else _round(target.accuracy),
        "tune_spk": None if target is None else _round(target.spikes_per_neuron),
    }


def val_curves(pretrain_csv: Path, finetune_csv: Path) -> list[dict]:
    """The ReLU pre-training and SNN fine-tuning validation curves as one long table (epoch,
    val_accuracy, network), which pipeline/vega/overlay.json draws as two coloured lines."""
    rows = []
    for network, path in (("ReLU", pretrain_csv), ("SNN", finetune_csv)):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("val_accuracy") not in (None, ""):
                    rows.append({"epoch": int(float(row["epoch"])), "val_accuracy": float(row["val_accuracy"]),
                                 "network": network})
    return rows


@stage("summary")
def main(ctx: Context) -> None:
    """Write the experiment's headline metrics file (what `dvc metrics show` lists) and its curves table."""
    name = ctx.name
    paths = ctx.experiment.paths
    data = headline(EvaluateResult.read(paths.metrics("evaluate"), name),
                    SweepResult.read(paths.metrics("sweep"), name))
    write_json(paths.metrics("summary"), data)
    write_csv(paths.plot("val_curves.csv"),
              val_curves(paths.plot("pretrain_curve.csv"), paths.plot("finetune_curve.csv")),
              ("epoch", "val_accuracy", "network"))
    print(f"summary {name}: {paths.metrics('summary')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
