"""Analysis stage: learning dynamics of ReLU, B1 and alpha1 networks -> metrics/dynamics.json, plots/dynamics/.

Reads the top-level ``dynamics`` section of params.yaml (``dataset`` plus the fields of
:class:`pipeline.dynamics.DynamicsConfig`), loads ``data/prepared/<dataset>`` (written by the prepare
stage, so the dataset must also be listed under ``data.datasets``), runs
:func:`pipeline.dynamics.run_dynamics` and records one MLflow run (experiment ``dynamics``): the params,
every record of the training curves as metrics with their step, the final metrics and the PNGs.
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
    """Train ReLU, B1, alpha1-smart and alpha1-standard in lockstep and record the learning dynamics."""
    section = ctx.params.dynamics
    if section is None:
        raise ParamsError("dynamics: section missing (needs at least 'dataset')")
    dataset, config = section.dataset, section.config()
    data = load_prepared(prepared_dir(dataset))
    stage_params = {SECTION: P.as_dict(section)}
    tags = {"role": "analysis", "dataset": dataset, "params_hash": P.params_hash(stage_params)}
    with Tracker(SECTION).run(SECTION, stage_params, tags) as mlrun:
        metrics = run_dynamics(config, data.train_x, data.train_y, data.test_x, data.test_y, PLOT_DIR,
                               log=mlrun.log_metrics, in_range=data.in_range)
        (PLOT_DIR / "metrics.json").unlink()
        lineage = {"dataset": dataset, "data_sha256": lineage_digest(data.meta["sha256"])}
        DynamicsResult.model_validate({**metrics, "params_hash": tags["params_hash"], "lineage": lineage}).write(
            METRICS)
        mlrun.log_metrics({"final": metrics["networks"], "init_spectra": metrics["init_spectra"]},
                          step=config.epochs * metrics["config"]["steps_per_epoch"])
        mlrun.set_tags({f"diverged.{k}": v["diverged"] for k, v in metrics["networks"].items()})
        for name in PLOTS:
            mlrun.log_artifact(PLOT_DIR / name, "plots")
        mlrun.log_artifact(PLOT_DIR / "curves.csv", "plots")
        mlrun.log_artifact(METRICS)
    nets = metrics["networks"]
    print("dynamics: test accuracy " + ", ".join(
        f"{k} {v['test_accuracy']:.4f}" + (" (diverged)" if v["diverged"] else "") for k, v in nets.items()),
        file=sys.stderr)
    print("dynamics: cosine to ReLU twin " + ", ".join(
        f"{k} {nets[k]['cosine']:.6f}" for k in ("b1", "alpha1_smart", "alpha1_standard")
        if nets[k]["cosine"] is not None), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
