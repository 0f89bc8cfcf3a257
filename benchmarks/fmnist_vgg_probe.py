"""Groundwork for issue 14: how fast, and how far on validation, does a small VGG train on Fashion-MNIST here?

A ReLU network of 3x3 conv + batch norm + ReLU stacks with max-pools (``--widths``, default 32 32 M 64
64 M 128 128 M) and a 256-unit dense layer, trained on the prepared training split (55,000 images) with
random 2-pixel shifts and horizontal flips, SGD with Nesterov momentum, cosine learning rate and weight
decay, in float32. After every epoch it records the time and the *validation* accuracy (5,000 held-out
images); the test split is not read. The JSON is rewritten after every epoch.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python benchmarks/fmnist_vgg_probe.py --epochs 25
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.data import load_or_prepare
from ttfs.train import TensorBatches, cosine_decay, crop_flip, evaluate

RESULTS = Path(__file__).parent / "results"


def vgg(widths: list[str], classes: int = 10, dense: int = 256) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels, side = 1, 28
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            side //= 2
            continue
        layers += [nn.Conv2d(channels, int(w), 3, padding=1), nn.BatchNorm2d(int(w)), nn.ReLU()]
        channels = int(w)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, dense), nn.ReLU(),
                         nn.Linear(dense, classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default="32 32 M 64 64 M 128 128 M".split())
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--pad", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fmnist_vgg_probe.json")
    args = parser.parse_args()
    data = load_or_prepare("fashion_mnist")
    torch.manual_seed(args.seed)
    model = vgg(args.widths)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    steps = args.epochs * math.ceil(len(data.train_y) / args.batch_size)
    schedule = cosine_decay(opt, steps)
    generator = torch.Generator().manual_seed(args.seed)
    val = TensorBatches(data.val_x, data.val_y, 1000, shuffle=False)
    rows, started = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, y in TensorBatches(data.train_x, data.train_y, args.batch_size, seed=args.seed * 1000 + epoch):
            loss = nn.functional.cross_entropy(model(crop_flip(x, generator, args.pad)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        result = evaluate(model, val)
        rows.append({"epoch": epoch, "seconds": time.perf_counter() - started, "val_accuracy": result["accuracy"],
                     "val_loss": result["loss"]})
        print(rows[-1], flush=True)
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(args).items()},
                                        "threads": torch.get_num_threads(), "split": "val", "epochs": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
