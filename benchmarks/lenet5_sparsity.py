"""Which training settings make LeNet5 on Fashion-MNIST fire <= 0.3 spikes per neuron without L1?

Trains the ReLU LeNet5 under four settings (learning rate and step decay x hidden biases free or kept
<= 0), converts each to a B1 SNN (float64, exact) and measures test accuracy and spikes per neuron on
the SNN. Training a B1 SNN from scratch follows the ReLU trajectory, so these are also the numbers of
SNNs trained directly. Runs in parallel worker processes (one thread each); float32 training.

    .venv/bin/python benchmarks/lenet5_sparsity.py --seeds 0 1   # writes benchmarks/results/lenet5_sparsity.{json,png}
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from tqdm import tqdm

import ttfs
from pipeline.data import load_or_prepare
from ttfs.metrics import spike_statistics
from ttfs.train import TensorBatches, evaluate, exponential_decay, train_epoch
from ttfs.zoo import create_model

RESULTS = Path(__file__).parent / "results"
SETTINGS = {  # name -> (lr, lr_decay per 1250 steps, nonpositive_bias)
    "lr 1e-3, decay 0.9 (the FC2 settings)": (1e-3, 0.9, False),
    "lr 1e-3, decay 0.9 + biases <= 0": (1e-3, 0.9, True),
    "lr 3e-3, decay 0.8": (3e-3, 0.8, False),
    "lr 3e-3, decay 0.8 + biases <= 0 (default profile)": (3e-3, 0.8, True),
}


@torch.no_grad()
def first_layer_background(model: torch.nn.Sequential, x: torch.Tensor) -> tuple[float, float, float]:
    """Share of first-layer positions whose receptive field is all background (zero pixels), and the
    first layer's spikes per neuron there and elsewhere (a B1 neuron spikes iff its activation > 0)."""
    conv = model[0]
    fires = conv(x) > 0
    size = conv.kernel_size[0]
    background = F.max_pool2d((x != 0).double(), size, 1, size // 2) == 0
    background = background.expand_as(fires)
    return (float(background.double().mean()), float(fires[background].double().mean()),
            float(fires[~background].double().mean()))


def train_and_measure(name: str, seed: int, epochs: int, batch_size: int) -> dict:
    torch.set_num_threads(1)
    lr, decay, nonpositive_bias = SETTINGS[name]
    data = load_or_prepare("fashion_mnist")
    torch.manual_seed(seed)
    model = create_model("lenet5")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = exponential_decay(opt, decay, 1250)
    started = time.perf_counter()
    for epoch in range(epochs):
        train_epoch(model, TensorBatches(data.train_x, data.train_y, batch_size, seed=seed * 1000 + epoch), opt,
                    nonpositive_bias=nonpositive_bias, scheduler=scheduler)
    snn = ttfs.convert(model.double(), data.train_x[:10_000].double())
    background, on_background, elsewhere = first_layer_background(model, data.test_x.double())
    test = TensorBatches(data.test_x.double(), data.test_y, 1000, shuffle=False)
    stats = spike_statistics(snn, test, split="test")
    return {
        "setting": name, "seed": seed, "lr": lr, "lr_decay": decay, "nonpositive_bias": nonpositive_bias,
        "epochs": epochs, "batch_size": batch_size, "test_accuracy": evaluate(snn, test)["accuracy"],
        "relu_test_accuracy": evaluate(model, test)["accuracy"],
        "spikes_per_neuron": stats["spikes_per_neuron"],
        "spikes_per_neuron_per_layer": stats["spikes_per_neuron_per_layer"],
        "conv1_background_positions": background, "conv1_spikes_per_neuron_background": on_background,
        "conv1_spikes_per_neuron_elsewhere": elsewhere,
        "train_seconds": time.perf_counter() - started,
    }


def plot(rows: list[dict], path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(SETTINGS):
        runs = [r for r in rows if r["setting"] == name]
        ax.scatter([r["spikes_per_neuron"] for r in runs], [100 * r["test_accuracy"] for r in runs],
                   color=f"C{i}", label=name, s=40)
    ax.axvline(0.3, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="spikes per neuron (test set)", ylabel="SNN test accuracy (%)",
           title="LeNet5 on Fashion-MNIST, no L1 (one point per seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_or_prepare("fashion_mnist")  # prepare once, before the workers read it
    jobs = [(name, seed) for seed in args.seeds for name in SETTINGS]
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(train_and_measure, n, s, args.epochs, args.batch_size) for n, s in jobs]
        for future in tqdm(as_completed(futures), total=len(futures), desc="LeNet5 settings", unit="run"):
            row = future.result()
            rows.append(row)
            tqdm.write(f"{row['setting']} seed {row['seed']}: SNN accuracy {row['test_accuracy']:.4f}, "
                       f"{row['spikes_per_neuron']:.3f} spikes/neuron "
                       f"(per layer {', '.join(f'{v:.3f}' for v in row['spikes_per_neuron_per_layer'])}); "
                       f"conv1 {row['conv1_spikes_per_neuron_background']:.3f} on background positions "
                       f"({row['conv1_background_positions']:.0%} of them), "
                       f"{row['conv1_spikes_per_neuron_elsewhere']:.3f} elsewhere")
    rows.sort(key=lambda r: (list(SETTINGS).index(r["setting"]), r["seed"]))
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "runs": rows}
    (RESULTS / "lenet5_sparsity.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, RESULTS / "lenet5_sparsity.png")
    print(f"wrote {RESULTS / 'lenet5_sparsity.json'} and {RESULTS / 'lenet5_sparsity.png'}")


if __name__ == "__main__":
    main()
