"""How much does one hardware-constraint setting vary with the fine-tuning seed?

Runs one setting of the sweep stage (``pipeline.sweeps.run_sweep`` with every other grid empty) on the
fine-tuned SNN of a reproduced repository, once per fine-tuning seed (the seed draws the batch order),
and reports the test accuracy before and after fine-tuning. Nothing is chosen here: it measures the
spread that a single sweep run samples from (seed 0 is what the sweep stage runs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_seeds.py --repo /path/to/reproduced/clone \\
        --experiment fmnist_lenet5 --kind weight_bits --value 4 --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline import params as P  # noqa: E402
from pipeline.artifacts import Paths, load_snn, prepared_dir  # noqa: E402
from pipeline.data import load_prepared  # noqa: E402
from pipeline.runner import torch_dtype  # noqa: E402
from pipeline.sweeps import KINDS, SweepData, run_sweep  # noqa: E402


class Reproduced:
    """The fine-tuned SNN of a reproduced repository, with its sweep params, conversion windows and data."""

    def __init__(self, repo: Path, experiment: str):
        os.chdir(repo)  # the stages' paths are relative to the repository
        self.exp = P.load("params.yaml").experiment(experiment)
        paths = Paths(experiment)
        self.snn, _ = load_snn(paths.snn)
        self.conversion_windows = load_snn(paths.converted)[0].deltas.tolist()
        self.data = load_prepared(prepared_dir(self.exp.dataset))


def setting_parser(description: str, seeds: list[int], out: str) -> argparse.ArgumentParser:
    """The command line both sweep benchmarks share: which reproduced setting, which seeds, where to write."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="a repository where `dvc repro` has run")
    parser.add_argument("--experiment", default="fmnist_lenet5")
    parser.add_argument("--kind", choices=KINDS, default="weight_bits")
    parser.add_argument("--value", type=float, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results" / out)
    return parser


def load(args: argparse.Namespace) -> Reproduced:
    """One thread, ``args.out`` made absolute (the repository becomes the working directory), the setting's data."""
    torch.set_num_threads(1)
    args.out = args.out.resolve()
    return Reproduced(args.repo, args.experiment)


def run_setting(repo: Reproduced, kind: str, value: float, seed: int, measure_on: str = "test",
                **finetune) -> dict:
    """One sweep setting (every other grid empty) fine-tuned with ``seed`` (the batch order) and measured on
    ``measure_on``; ``finetune`` overrides sweep params such as finetune_epochs and finetune_lr."""
    value = int(value) if kind in ("time_steps", "weight_bits") else value
    sp = repo.exp.sweep.model_copy(update={**{k: ((value,) if k == kind else ()) for k in KINDS}, **finetune})
    split = SweepData(*repo.data.split("train"), *repo.data.split("val"), *repo.data.split(measure_on))
    with tempfile.TemporaryDirectory() as tmp:
        result = run_sweep(repo.snn, split, sp, conversion_windows=repo.conversion_windows, seed=seed,
                           dtype=torch_dtype(repo.exp.dtype), state_path=Path(tmp) / "state.pt")
    setting = next(iter(result["settings"][kind].values()))
    return {"seed": seed, "split": measure_on, "reference": result["snn"]["accuracy"],
            "before": setting["before"]["accuracy"], "after": setting["finetuned"]["accuracy"]}


def main() -> None:
    args = setting_parser(__doc__, [0, 1, 2, 3], "sweep_seeds.json").parse_args()
    repo = load(args)
    rows = []
    for seed in args.seeds:
        rows.append(run_setting(repo, args.kind, args.value, seed))
        print(rows[-1], flush=True)
    after = [r["after"] for r in rows]
    out = {"experiment": args.experiment, "kind": args.kind, "value": args.value, "split": "test", "runs": rows,
           "after_mean": statistics.fmean(after), "after_std": statistics.stdev(after) if len(after) > 1 else 0.0,
           "after_min": min(after), "after_max": max(after)}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
