"""Which range for LeNet5's 4-bit weights? The percentile of |W| per layer, chosen on validation.

Takes the ReLU LeNet5 of the recipe chosen by ``benchmarks/lenet5_sparsity.py`` (trained on the training
split only; its state_dict is named in benchmarks/results/lenet5_sparsity.json), converts it exactly to a
B1 SNN and, for every percentile in ``--percentiles``, runs the sweep stage's ``weight_bits`` setting
through the sweep's own code: ``pipeline.sweeps.Sweep.run_setting("weight_bits", 4)`` quantises a fresh
copy of the SNN to 4 bits with the range at that percentile of |W| per layer
(``ttfs.constraints.quantise_weights``), measures it, fine-tunes it under the constraint with
``pipeline.training.fit`` and ``SweepParams.finetune_params("weight_bits")`` (1 epoch, Adam at lr 1e-4, batch 32, fixed
windows, hidden biases kept <= 0 when the recipe does) and measures it again. Here the sweep's measuring
split is the *validation* split (5,000 images), so every number that decides is a validation number.

Rule (docs/sweeps.md, fixed before the numbers were seen): the percentile with the best validation
accuracy after fine-tuning is chosen (ties: the larger percentile). Only that network is then measured
on the test set (10,000 images).

The SNN's windows are set to 10 times each layer's largest activation on 10,000 training images
(``zeta = 9``): the finetune stage's SNN, which the sweep stage reads, has windows from the adaptive rule
(kappa = 10 times the largest activation seen), and Adam's steps in the SNN's weights scale with them.
One process, one thread.

    PYTHONPATH=. .venv/bin/python benchmarks/weight_percentile.py   # writes results/weight_percentile.{json,png}
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import tempfile
import time
from pathlib import Path

import matplotlib
import torch

import ttfs
from pipeline.data import load_or_prepare
from pipeline.params import SweepParams
from pipeline.sweeps import Sweep, SweepData, measure
from ttfs.train import TensorBatches
from ttfs.zoo import create_model

RESULTS = Path(__file__).parent / "results"
CALIBRATION = 10_000
KAPPA = 10.0


class KeepingSweep(Sweep):
    """The sweep, keeping the network it measured last (after fine-tuning: the fine-tuned one)."""

    last = None

    def evaluate(self, snn, kind, value):
        self.last = snn
        return super().evaluate(snn, kind, value)


def chosen_model(benchmark: Path, seed: int) -> tuple[str, dict, Path]:
    """(setting, its run, state_dict file) of the recipe chosen on validation by lenet5_sparsity.py."""
    out = json.loads(benchmark.read_text())
    if not out.get("selection"):
        raise SystemExit(f"{benchmark} has no selection yet: run benchmarks/lenet5_sparsity.py first")
    name = out["selection"]["chosen"]
    run = next((r for r in out["runs"] if r["setting"] == name and r["seed"] == seed), None)
    if run is None or not Path(run["model_file"]).exists():
        raise SystemExit(f"no trained network for '{name}' seed {seed}: rerun benchmarks/lenet5_sparsity.py")
    return name, run, Path(run["model_file"])


def plot(rows: list[dict], chosen: float, reference: dict, path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = list(range(len(rows)))
    ax.plot(xs, [100 * r["before"]["accuracy"] for r in rows], marker="o", label="4 bits, without fine-tuning")
    ax.plot(xs, [100 * r["finetuned"]["accuracy"] for r in rows], marker="s", label="after 1 epoch of fine-tuning")
    ax.axhline(100 * reference["accuracy"], color="black", ls="--", lw=1, label="exact SNN (full precision)")
    i = [r["percentile"] for r in rows].index(chosen)
    ax.scatter([i], [100 * rows[i]["finetuned"]["accuracy"]], s=150, facecolors="none", edgecolors="red",
               label="chosen")
    ax.set_xticks(xs, [f"{r['percentile']:g}" for r in rows])
    ax.set(xlabel="weight range: percentile of |W| per layer", ylabel="validation accuracy (%)",
           title="LeNet5, 4-bit weights (validation split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--percentiles", type=float, nargs="+", default=[100.0, 99.9, 99.5, 99.0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="which trained network, and the fine-tuning seed")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="the SNN's dtype (params.yaml's fmnist_lenet5 runs float64)")
    parser.add_argument("--benchmark", type=Path, default=RESULTS / "lenet5_sparsity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    setting, run, model_file = chosen_model(args.benchmark, args.seed)
    data = load_or_prepare("fashion_mnist")
    model = create_model("lenet5")
    model.load_state_dict(torch.load(model_file, weights_only=True))
    snn = ttfs.convert(model.double(), data.train_x[:CALIBRATION].double(), in_range=data.in_range,
                       zeta=KAPPA - 1)
    # the sweep measures on its "test" batches: here they are the validation split
    selection_data = SweepData(*data.split("train"), *data.split("val"), *data.split("val"))
    rows, kept = [], {}
    # newer sweeps take the conversion windows (a latency reference only; weight_bits does not use them)
    extra = ({"conversion_windows": snn.deltas.detach().clone()}
             if "conversion_windows" in inspect.signature(Sweep.__init__).parameters else {})
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.percentiles:
            sp = SweepParams(jitter=[], time_steps=[], latency_factor=[], weight_bits=[args.bits],
                             weight_percentile=p, finetune_epochs=1, finetune_lr=1e-4, batch_size=32,
                             nonpositive_bias=run["nonpositive_bias"])
            sweep = KeepingSweep(snn, selection_data, sp, seed=args.seed, device="cpu", dtype=dtype,
                                 state_path=Path(tmp) / f"sweep-{p:g}.pt", desc=f"{args.bits} bits, percentile {p:g}",
                                 **extra)
            if reference is None:
                reference = sweep._measure_once(sweep.base)  # the exact SNN on validation
            started = time.perf_counter()
            result, _ = sweep.run_setting("weight_bits", args.bits, reference)
            kept[p] = sweep.last
            rows.append({"percentile": p, "before": result["before"], "finetuned": result["finetuned"],
                         "finetune_train_accuracy": result["finetune_train_accuracy"],
                         "seconds": time.perf_counter() - started})
            print(f"percentile {p:g}: val accuracy {result['before']['accuracy']:.4f} without fine-tuning, "
                  f"{result['finetuned']['accuracy']:.4f} after 1 epoch; spikes/neuron "
                  f"{result['finetuned']['spikes_per_neuron']:.3f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    best = max(r["finetuned"]["accuracy"] for r in rows)
    chosen = max(r["percentile"] for r in rows if r["finetuned"]["accuracy"] == best)
    test_batches = TensorBatches(data.test_x, data.test_y, 1000, shuffle=False, dtype=dtype)
    test = measure(kept[chosen], test_batches)
    print(f"chosen percentile {chosen:g} (validation); on TEST: accuracy {test['accuracy']:.4f}, "
          f"{test['spikes_per_neuron']:.3f} spikes/neuron")
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "dtype": args.dtype, "setting": setting, "seed": args.seed,
           "model_file": str(model_file), "bits": args.bits, "windows": f"{KAPPA:g} x largest activation on "
           f"{CALIBRATION} training images", "finetune": {"epochs": 1, "lr": 1e-4, "batch_size": 32,
                                                            "nonpositive_bias": run["nonpositive_bias"]},
           "splits": {"fine-tuning": "train (55,000)", "selection": "val (5,000)",
                      "reported": "test (10,000), chosen percentile only"},
           "rule": "best validation accuracy after fine-tuning (ties: the larger percentile)",
           "reference_val": reference, "val": rows, "chosen": chosen, "test": test}
    (RESULTS / "weight_percentile.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, chosen, reference, RESULTS / "weight_percentile.png")
    print(f"wrote {RESULTS / 'weight_percentile.json'} and {RESULTS / 'weight_percentile.png'}")


if __name__ == "__main__":
    main()
