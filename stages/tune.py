"""Stage `tune`: Optuna study of the L1 strength (and optionally the learning rate) against sparsity.

    python -m stages.tune <experiment>                      # the DVC stage: one worker, then export
    python -m stages.tune <experiment> --worker             # an extra worker (more shells / machines)
    python -m stages.tune <experiment> --export-only        # wait for running trials, export the front
    python -m stages.tune <experiment> --storage postgresql://user@host:5432/optuna --worker

Storage: --storage > $TTFS_OPTUNA_STORAGE > <repo>/optuna/<experiment>.journal (see docs/tuning.md).
Outputs: plots/<exp>/pareto.{json,png,html}, plots/<exp>/tune_trials.csv, metrics/<exp>/tune.json.
"""

from __future__ import annotations

import argparse
import signal
import sys

from pipeline import params as P
from pipeline import tuning
from pipeline.data import ChecksumError, DataNotFoundError
from pipeline.runner import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PARAMS
from ttfs.train import DivergenceError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages.tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="experiment with a tune.<name> section in params.yaml")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--storage", default=None,
                    help=f"journal file path or RDB URL (default: ${tuning.ENV_STORAGE}, else "
                         "<repo>/optuna/<experiment>.journal)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--worker", action="store_true", help="only run trials (no waiting, no export)")
    mode.add_argument("--export-only", action="store_true", help="run no trials: wait for running ones, export")
    ap.add_argument("--study-name", default=None, help="override the study name (default: <exp>-<params hash>)")
    ap.add_argument("--parent-run-id", default=None,
                    help=f"MLflow parent run for the trials (default: ${tuning.ENV_PARENT_RUN}, else the "
                         "one recorded in the study, else found by tag or created)")
    ap.add_argument("--seed", type=int, default=None,
                    help="sampler seed of this process (default: tune.seed; workers add a random offset)")
    return ap


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` gives the running trial back like Ctrl-C
    try:
        params, tunes = tuning.load_params(args.params)
        tuning.tune(args.name, params, tunes, storage=args.storage, worker=args.worker,
                    export_only=args.export_only, study_name=args.study_name, parent_run_id=args.parent_run_id,
                    seed=args.seed)
    except P.ParamsError as e:
        print(f"invalid params: {e}", file=sys.stderr)
        return EXIT_PARAMS
    except (DataNotFoundError, ChecksumError, DivergenceError, FileNotFoundError, tuning.StudyNotFoundError) as e:
        print(f"tune {args.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"tune {args.name} interrupted; the study keeps every finished trial, rerun to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
