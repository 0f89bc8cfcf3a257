"""Stage `tune`: Optuna study of the L1 strength (and optionally the learning rate) against sparsity.

    python -m stages.tune <experiment>                      # the DVC stage: one worker, then export
    python -m stages.tune <experiment> --worker             # an extra worker (more shells / machines)
    python -m stages.tune <experiment> --export-only        # wait for running trials, export the front
    python -m stages.tune <experiment> --reclaim 7          # fail trial 7 of a dead worker, rerun its params
    python -m stages.tune <experiment> --reclaim-stale      # the same for every trial that missed 3 heartbeats
    python -m stages.tune <experiment> --storage postgresql://user@host:5432/optuna --worker

Storage: --storage > $TTFS_OPTUNA_STORAGE > <repo>/optuna/<experiment>.journal (see docs/tuning.md).
Outputs: plots/<exp>/pareto.{json,png,html}, plots/<exp>/tune_trials.csv, metrics/<exp>/tune.json.
Exit status: 0 done, 1 failed, 2 invalid params, 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pipeline import tuning
from pipeline.runner import Context, stage


def _arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--storage", default=None,
                    help=f"journal file path or RDB URL (default: ${tuning.ENV_STORAGE}, else "
                         "<repo>/optuna/<experiment>.journal)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--worker", action="store_true", help="only run trials (no waiting, no export)")
    mode.add_argument("--export-only", action="store_true", help="run no trials: wait for running ones, export")
    mode.add_argument("--reclaim", type=int, action="append", metavar="N",
                      help="fail running trial N (its worker died), close its MLflow run, enqueue its params "
                           "again; repeatable")
    mode.add_argument("--reclaim-stale", action="store_true",
                      help="--reclaim every running trial without a heartbeat for 3 heartbeat intervals")
    ap.add_argument("--study-name", default=None, help="override the study name (default: <exp>-<params hash>)")
    ap.add_argument("--parent-run-id", default=None,
                    help=f"MLflow parent run for the trials (default: ${tuning.ENV_PARENT_RUN}, else the "
                         "one recorded in the study, else found by tag or created)")
    ap.add_argument("--seed", type=int, default=None,
                    help="sampler seed of this process (default: tune.seed; workers add a random offset)")


def reclaim_hint(args: argparse.Namespace) -> str:
    """The command that reclaims a trial of this session (printed by a waiting process)."""
    words = ["python", "-m", "stages.tune", args.name]
    for flag, value in (("--params", args.params if args.params != "params.yaml" else None),
                        ("--storage", args.storage and tuning.resolve_storage(args.storage, args.name).display()),
                        ("--study-name", args.study_name)):
        if value:
            words += [flag, value]
    return shlex.join(words) + " --reclaim"


@stage("tune", arguments=_arguments,
       on_interrupt="the study keeps every finished trial and the interrupted one's params; rerun to continue")
def main(ctx: Context) -> None:
    """Optuna study of the L1 strength (and optionally the learning rate) against sparsity (docs/tuning.md)."""
    args, name = ctx.args, ctx.name
    if args.reclaim or args.reclaim_stale:
        done = tuning.reclaim(name, ctx.params, args.reclaim, storage=args.storage, study_name=args.study_name)
        print(f"tune {name}: reclaimed trial(s) {done or 'none'}; a worker or the stage runs their "
              "params again", file=sys.stderr)
        return
    tuning.tune(name, ctx.params, storage=args.storage, worker=args.worker, export_only=args.export_only,
                study_name=args.study_name, parent_run_id=args.parent_run_id, seed=args.seed,
                reclaim_hint=reclaim_hint(args))


if __name__ == "__main__":
    sys.exit(main())
