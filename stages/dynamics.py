"""Analysis stage: learning dynamics of ReLU, B1 and alpha1 networks (paper Fig. 3) -> metrics/dynamics.json,
plots/dynamics/.

Reads the top-level ``dynamics`` section of params.yaml (``dataset`` plus the fields of
:class:`pipeline.params.DynamicsConfig`), loads ``data/prepared/<dataset>`` (written by the prepare
stage, so the dataset must also be listed under ``data.datasets``), runs
:func:`pipeline.dynamics.run_dynamics` on its train, val and test splits (learning rates are chosen on
val; test is read only after every network has trained) and records one MLflow run (experiment
``dynamics``): the params, every record of the curves as metrics with the epoch as step, the final
metrics and the PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import params as P
from pipeline.artifacts import prepared_dir
from pipeline.data import load_prepared
from pipeline.dynamics import PLOTS, run_dynamics
from pipeline.errors import ParamsError
from pipeline.results import DynamicsResult, lineage_digest
from pipeline.runner import Context, stage
from pipeline.tracking import Tracker

SECTION = "dynamics"
METRICS = Path("metrics") / "dynamics.json"
PLOT_DIR = Path("plots") / "dynamics"


@stage("dynamics", target=None)
def main(ctx: Context) -> dict:
    """Train ReLU, B1, alpha1-smart and alpha1-standard, each at its validation-chosen learning rate."""
    section = ctx.params.dynamics
    if section is None:
        raise ParamsError("dynamics: section missing (needs at least 'dataset')")
    dataset, config = section.dataset, section.config()
    data = load_prepared(prepared_dir(dataset))
    stage_params = {SECTION: P.as_dict(section)}
    tags = {"role": "analysis", "dataset": dataset, "params_hash": P.params_hash(stage_params)}
    with Tracker(SECTION).run(SECTION, stage_params, tags) as mlrun:
        metrics = run_dynamics(config, data.split("train"), data.split("val"), data.split("test"), PLOT_DIR,
                               log=mlrun.log_metrics, in_range=data.in_range)
        (PLOT_DIR / "metrics.json").unlink()
        lineage = {"dataset": dataset, "data_sha256": lineage_digest(data.meta["sha256"])}
        result = DynamicsResult.model_validate({**metrics, "params_hash": tags["params_hash"], "lineage": lineage})
        result.write(METRICS)
        mlrun.log_metrics({"final": metrics["networks"], "init_spectra": metrics["init_spectra"],
                           "final_spectra": metrics["final_spectra"],
                           "chosen_lr": {k: v["chosen_lr"] for k, v in metrics["selection"].items()}},
                          step=config.epochs)
        mlrun.set_tags({f"stop.{k}": v["stop"] for k, v in metrics["networks"].items()})
        for name in PLOTS:
            mlrun.log_artifact(PLOT_DIR / name, "plots")
        mlrun.log_artifact(PLOT_DIR / "curves.csv", "plots")
        mlrun.log_artifact(METRICS)
    for name, n in metrics["networks"].items():
        print(f"dynamics: {name}: lr {n['lr']}, {n['stop']} after {n['epochs']} epochs, train accuracy "
              f"{n['train_accuracy']}, test accuracy {n['test_accuracy']}"
              + (f", {n['projections']} slope projections" if "projections" in n else ""), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
