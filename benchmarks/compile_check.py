"""Does ``torch.compile`` make training steps cheaper here, and does it keep the SNN's numbers?

For FC2 (batch 8, float64, the default profile's case) and LeNet5 (batch 128, float32) it trains the
ReLU network and its converted B1 SNN for ``--steps`` Adam steps, eager and with the loss computation
(forward and cross-entropy; the backward pass follows through AOTAutograd) compiled by
``torch.compile`` (inductor), from the same initial weights over the same batches. It reports the
median time of a step after warm-up (compilation excluded, its one-off cost reported apart) and the
largest difference between the eager and the compiled loss over all steps. One thread.

    .venv/bin/python benchmarks/compile_check.py            # about 5 minutes on 2 cores

Writes benchmarks/results/compile_check.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ttfs  # noqa: E402
from pipeline.data import load_or_prepare  # noqa: E402
from ttfs.zoo import create_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CASES = {"fc2": (8, torch.float64), "lenet5": (128, torch.float32)}
WARMUP = 20


def loss_fn(model):
    if isinstance(model, ttfs.SNN):
        return lambda z, y: F.cross_entropy(model.forward_train(z, kappa=10.0).logits, y)
    return lambda z, y: F.cross_entropy(model(z), y)


def train(model, batches, compiled: bool) -> tuple[list[float], list[float], float]:
    """(losses, step seconds after warm-up, seconds of the first step: compilation included)."""
    step_loss = torch.compile(loss_fn(model)) if compiled else loss_fn(model)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    losses, times, first = [], [], 0.0
    for i, (z, y) in enumerate(batches):
        start = time.perf_counter()
        loss = step_loss(z, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        seconds = time.perf_counter() - start
        if i == 0:
            first = seconds
        elif i >= WARMUP:
            times.append(seconds)
    return losses, times, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_or_prepare("fashion_mnist")
    rows = []
    for case in args.cases:
        batch, dtype = CASES[case]
        n = batch * args.steps
        batches = list(zip(data.train_x[:n].to(dtype).split(batch), data.train_y[:n].split(batch), strict=True))
        torch.manual_seed(0)
        relu = create_model(case).to(dtype)
        nets = {"relu": relu, "snn": ttfs.convert(copy.deepcopy(relu), data.train_x[:256].to(dtype))}
        for kind, net in nets.items():
            result = {}
            for compiled in (False, True):
                torch._dynamo.reset()
                losses, times, first = train(copy.deepcopy(net), batches, compiled)
                result[compiled] = {"losses": losses, "median_ms": 1e3 * statistics.median(times), "first_s": first}
            diff = max(abs(a - b) for a, b in zip(result[False]["losses"], result[True]["losses"], strict=True))
            rows.append({"case": case, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "network": kind,
                         "eager_ms": result[False]["median_ms"], "compiled_ms": result[True]["median_ms"],
                         "speedup": result[False]["median_ms"] / result[True]["median_ms"],
                         "compile_s": result[True]["first_s"], "max_loss_difference": diff})
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": platform.machine(), "torch": torch.__version__, "threads": 1, "steps": args.steps, "rows": rows}
    (RESULTS / "compile_check.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# torch.compile: training-step time and loss agreement", "",
             f"{out['machine']}, torch {out['torch']}, 1 thread, {args.steps} steps (median after {WARMUP}); "
             "command: `benchmarks/compile_check.py`.", "",
             "| case | network | eager ms/step | compiled ms/step | speed-up | first compiled step (s) "
             "| max loss difference |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} b{r['batch']} {r['dtype']} | {r['network']} | {r['eager_ms']:.2f} | "
              f"{r['compiled_ms']:.2f} | {r['speedup']:.2f} | {r['compile_s']:.1f} | {r['max_loss_difference']:.1e} |"
              for r in rows]
    (RESULTS / "compile_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
