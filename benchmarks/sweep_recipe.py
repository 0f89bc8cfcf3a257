"""Which fine-tuning recipe (epochs, learning rate) for one hardware-constraint setting? Chosen on validation.

Runs one setting of the sweep stage (``pipeline.sweeps.run_sweep`` with every other grid empty) on the
fine-tuned SNN of a reproduced repository, for every (epochs, lr) pair of the grid and every seed, with
the sweep's measuring split set to the *validation* split: every number that decides is a validation
number, and fine-tuning reads the training split only.

Rule (fixed before the numbers were seen): the pair with the best mean validation accuracy after
fine-tuning over the seeds; ties go to fewer epochs, then the smaller rate. Only the chosen pair is then
run again per seed and measured on the test set.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_recipe.py --repo /path/to/reproduced/clone \\
        --experiment fmnist_lenet5 --kind weight_bits --value 4 --epochs 1 2 --lrs 1e-4 3e-4 1e-3 --seeds 0 1
"""

from __future__ import annotations

import itertools
import json
import statistics

from sweep_seeds import load, run_setting, setting_parser  # puts the project root on sys.path


def main() -> None:
    parser = setting_parser(__doc__, [0, 1], "sweep_recipe.json")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    args = parser.parse_args()
    repo = load(args)
    grid = []
    for epochs, lr in itertools.product(args.epochs, args.lrs):
        runs = [run_setting(repo, args.kind, args.value, seed, measure_on="val", finetune_epochs=epochs, finetune_lr=lr)
                for seed in args.seeds]
        first_val_reference = runs[0]["reference"]
        accuracies = [r["after"] for r in runs]
        grid.append({"epochs": epochs, "lr": lr, "val_after": accuracies, "val_mean": statistics.fmean(accuracies)})
        print(f"epochs {epochs}, lr {lr:g}: validation {[f'{a:.4f}' for a in accuracies]}", flush=True)
    chosen = min(grid, key=lambda g: (-g["val_mean"], g["epochs"], g["lr"]))
    test = [run_setting(repo, args.kind, args.value, seed, measure_on="test", finetune_epochs=chosen["epochs"],
                        finetune_lr=chosen["lr"]) for seed in args.seeds]
    after = [t["after"] for t in test]
    out = {"experiment": args.experiment, "kind": args.kind, "value": args.value, "seeds": args.seeds,
           "rule": "best mean validation accuracy after fine-tuning (ties: fewer epochs, then smaller lr)",
           "splits": {"fine-tuning": "train", "selection": "val", "reported": "test, chosen recipe only"},
           "reference": {"val": first_val_reference, "test": test[0]["reference"]},
           "grid": grid, "chosen": {"epochs": chosen["epochs"], "lr": chosen["lr"]}, "test": test,
           "test_after_mean": statistics.fmean(after)}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("reference", "chosen", "test", "test_after_mean")}, indent=2))


if __name__ == "__main__":
    main()
