"""Analysis stage: learning dynamics of ReLU, B1 and alpha1 networks -> metrics/dynamics.json, plots/dynamics/.

Reads the top-level ``dynamics`` section of params.yaml (``dataset`` plus the fields of
:class:`pipeline.dynamics.DynamicsConfig`), loads ``data/prepared/<dataset>`` (written by the prepare
stage, so the dataset must also be listed under ``data.datasets``), runs
:func:`pipeline.dynamics.run_dynamics` and records one MLflow run (experiment ``dynamics``): the params,
every record of the training curves as metrics with their step, the final metrics and the PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import yaml

from pipeline import params as P
from pipeline.artifacts import prepared_dir
from pipeline.data import ChecksumError, DataNotFoundError, load_prepared
from pipeline.dynamics import PLOTS, DynamicsConfig, run_dynamics
from pipeline.tracking import Tracker

SECTION = "dynamics"
METRICS = Path("metrics") / "dynamics.json"
PLOT_DIR = Path("plots") / "dynamics"


def read_section(raw: dict) -> tuple[str, DynamicsConfig]:
    """(dataset, config) from a loaded params mapping; ParamsError names the offending key."""
    if not isinstance(raw, dict) or not isinstance(raw.get(SECTION), dict):
        raise P.ParamsError(f"{SECTION}: section missing or not a mapping (needs at least 'dataset')")
    section = dict(raw[SECTION])
    if "dataset" not in section:
        raise P.ParamsError(f"{SECTION}.dataset: required key is missing; one of {', '.join(P.DATASETS)}")
    dataset = section.pop("dataset")
    if dataset not in P.DATASETS:
        raise P.ParamsError(f"{SECTION}.dataset: unknown dataset {dataset!r}; one of {', '.join(P.DATASETS)}")
    listed = P.parse({"data": raw.get("data") or {}}).datasets
    if dataset not in listed:
        raise P.ParamsError(f"{SECTION}.dataset: {dataset!r} is not listed under data.datasets "
                            f"(listed: {', '.join(listed) or 'none'}); add it there so it is prepared")
    config = P._build(DynamicsConfig, section, SECTION)
    P.resolve_device(config.device, f"{SECTION}.device")
    return dataset, config


def load_params(path: str | Path) -> tuple[str, DynamicsConfig]:
    path = Path(path)
    if not path.is_file():
        raise P.ParamsError(f"{path}: no params file (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise P.ParamsError(f"{path}: not valid YAML: {e}") from e
    return read_section(raw or {})


def dynamics(params_file: str | Path) -> dict:
    """Train ReLU, B1, alpha1-smart and alpha1-standard in lockstep and record the learning dynamics."""
    dataset, config = load_params(params_file)
    data = load_prepared(prepared_dir(dataset))
    stage_params = {SECTION: {"dataset": dataset, **dataclasses.asdict(config)}}
    tags = {"role": "analysis", "dataset": dataset, "params_hash": P.params_hash(stage_params)}
    with Tracker(SECTION).run(SECTION, stage_params, tags) as mlrun:
        metrics = run_dynamics(config, data.train_x, data.train_y, data.test_x, data.test_y, PLOT_DIR,
                               log=mlrun.log_metrics, in_range=data.in_range)
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        os.replace(PLOT_DIR / "metrics.json", METRICS)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.dynamics", description=dynamics.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        dynamics(args.params)
    except P.ParamsError as e:
        print(f"invalid params: {e}", file=sys.stderr)
        return 2
    except (DataNotFoundError, ChecksumError) as e:
        print(f"dynamics failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dynamics interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
