"""Training speed of a B1 SNN against its ReLU network, measured in the same run.

One epoch on Fashion-MNIST's 60,000 training images: FC2 at batch size 8 and LeNet5 at batch size 128.
ReLU and SNN epochs alternate (so both see the same machine load) and the median over ``--repeats``
is reported, with samples per second and the ratio SNN time / ReLU time (target <= 1.3). Also the
spike-time forward throughput of the converted LeNet5 (inference, batch 1000).

    .venv/bin/python benchmarks/training_speed.py            # writes benchmarks/results/training_speed.json

The fuller suite (float64, VGG16, a competing process, thread counts, finer alternation) is
benchmarks/speed.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's ttfs, not whichever one is installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ttfs  # noqa: E402
from pipeline.data import load_or_prepare  # noqa: E402
from ttfs.train import TensorBatches, train_epoch  # noqa: E402
from ttfs.zoo import create_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def timed_epochs(model_name: str, batch_size: int, inputs, labels, repeats: int) -> dict:
    torch.manual_seed(0)
    relu = create_model(model_name)
    snn = ttfs.convert(create_model(model_name), inputs[:10_000])
    models = {"relu": relu, "snn": snn}
    optimisers = {k: torch.optim.Adam(m.parameters(), lr=5e-4) for k, m in models.items()}
    seconds: dict[str, list[float]] = {"relu": [], "snn": []}
    for repeat in range(repeats):
        for kind, model in models.items():
            batches = TensorBatches(inputs, labels, batch_size, seed=repeat)
            start = time.perf_counter()
            train_epoch(model, batches, optimisers[kind])
            seconds[kind].append(time.perf_counter() - start)
            print(f"  {model_name} {kind} epoch {repeat + 1}/{repeats}: {seconds[kind][-1]:.1f} s", flush=True)
    relu_s, snn_s = statistics.median(seconds["relu"]), statistics.median(seconds["snn"])
    return {
        "model": model_name, "batch_size": batch_size, "samples": len(inputs),
        "relu_epoch_s": relu_s, "snn_epoch_s": snn_s,
        "relu_samples_per_s": len(inputs) / relu_s, "snn_samples_per_s": len(inputs) / snn_s,
        "ratio_snn_over_relu": snn_s / relu_s, "all_epoch_s": seconds,
    }, snn


@torch.no_grad()
def inference_throughput(snn: ttfs.SNN, relu: torch.nn.Module, inputs, batch_size: int = 1000) -> dict:
    snn.eval()
    relu.eval()
    result = {}
    for kind, model in (("snn_spike_times", snn.run), ("relu", relu)):
        start = time.perf_counter()
        for z in inputs.split(batch_size):
            model(z)
        result[f"{kind}_samples_per_s"] = len(inputs) / (time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "training_speed.json")
    args = parser.parse_args()

    data = load_or_prepare("fashion_mnist")
    inputs, labels = data.train_x[: args.samples], data.train_y[: args.samples]
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "runs": []}
    for model_name, batch_size in (("fc2", 8), ("lenet5", 128)):
        result, snn = timed_epochs(model_name, batch_size, inputs, labels, args.repeats)
        if model_name == "lenet5":
            result["inference"] = inference_throughput(snn, ttfs.to_relu(snn), inputs[:10_000])
        report["runs"].append(result)
        print(f"{model_name} b={batch_size}: ReLU {result['relu_samples_per_s']:.0f}/s, "
              f"SNN {result['snn_samples_per_s']:.0f}/s, ratio {result['ratio_snn_over_relu']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
