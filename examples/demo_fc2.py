"""Demo: train FC2 on Fashion-MNIST for a few epochs, convert it exactly, compare ReLU and SNN.

    .venv/bin/python examples/demo_fc2.py [--epochs 3]

Prints test accuracy of both networks, their argmax agreement, the largest logit difference,
causality violations and spikes per neuron. Runs in about a minute on two CPU cores.
"""

import argparse

import torch

import ttfs
from pipeline.data import load_or_prepare
from ttfs.metrics import compare_to_relu
from ttfs.train import TensorBatches, train_epoch
from ttfs.zoo import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_or_prepare("fashion_mnist")
    relu = create_model("fc2")
    optimiser = torch.optim.Adam(relu.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        stats = train_epoch(relu, TensorBatches(data.train_x, data.train_y, 32, seed=epoch), optimiser)
        print(f"epoch {epoch + 1}: train loss {stats['loss']:.4f}, train accuracy {stats['accuracy']:.4f}")

    snn = ttfs.convert(relu, data.train_x[:10_000], in_range=data.in_range, dtype=torch.float64)
    report = compare_to_relu(relu.double(), snn, TensorBatches(data.test_x, data.test_y, 1000, shuffle=False))
    print(f"ReLU test accuracy        {report['relu_accuracy']:.4f}")
    print(f"SNN test accuracy         {report['snn_accuracy']:.4f}")
    print(f"argmax agreement          {report['agreement']:.4f}")
    print(f"max |logit SNN - ReLU|    {report['max_abs_logit_diff']:.2e} (relative {report['max_rel_logit_diff']:.2e})")
    print(f"causality violations      {report['causality_violations']}")
    print(f"spikes per neuron         {report['spikes_per_neuron']:.3f}")


if __name__ == "__main__":
    main()
