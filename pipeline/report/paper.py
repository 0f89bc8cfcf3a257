"""The paper's numbers (SPEC 9), as data: Stanojevic et al., Nat. Commun. 15, 6793 (2024).

Accuracies are in percent, spikes per hidden neuron per sample. A row's ``*_l1`` values are the same
network fine-tuned with an L1 penalty on the activations; None is a number the paper does not give.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Value:
    """A published number: mean, optional std, optional remark."""

    mean: float
    std: float | None = None
    note: str | None = None

    def text(self, digits: int = 2) -> str:
        s = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")
        return s + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class PaperResult:
    dataset: str
    model: str
    relu: Value
    snn: Value
    snn_l1: Value | None = None
    spikes: Value | None = None
    spikes_l1: Value | None = None


PAPER: tuple[PaperResult, ...] = (
    PaperResult("mnist", "fc2", Value(98.30), Value(98.30)),
    PaperResult("mnist", "fc16", Value(98.43, 0.07), Value(98.43, 0.07)),
    PaperResult("mnist", "vgg16", Value(99.57, 0.01), Value(99.58, 0.01)),
    PaperResult("fashion_mnist", "fc2", Value(90.14), Value(90.14)),
    PaperResult("fashion_mnist", "lenet5", Value(90.91, 0.17), Value(90.94, 0.25)),
    PaperResult("cifar10", "vgg16", Value(93.59, note="converted"), Value(93.69, 0.02), Value(93.28, 0.02),
                Value(0.38), Value(0.20)),
    PaperResult("cifar100", "vgg16", Value(70.48, note="converted"), Value(72.23, 0.06), Value(72.20, 0.04),
                Value(0.38), Value(0.24)),
    PaperResult("places365", "vgg16", Value(52.69, note="converted"), Value(53.86, 0.02), Value(48.88, 0.06),
                Value(0.54), Value(0.27)),
)
#: Who the numbers are from: this module's paper, and the best published single-spike results below.
PAPER_SOURCE = "Stanojevic et al., Nat. Commun. 2024"
BEST_SINGLE_SPIKE_SOURCE = "Che et al., AAAI 2026, PTTFS"
#: Best published single-spike accuracies (at most one spike per neuron): BEST_SINGLE_SPIKE_SOURCE.
BEST_SINGLE_SPIKE = {"mnist": 99.51, "fashion_mnist": 93.14, "cifar10": 95.06, "cifar100": 74.07}
#: What the paper reports under each hardware constraint (SPEC 5), for CIFAR10 VGG16.
PAPER_CONSTRAINTS = {
    "jitter": "the paper fine-tunes and evaluates under jitter (no single headline number)",
    "time_steps": "paper (CIFAR10 VGG16): > 90 % with K = 16 time steps per window after fine-tuning",
    "weight_bits": "paper (CIFAR10 VGG16): > 90 % with 4-bit weights after quantisation-aware fine-tuning",
    "latency_factor": "paper (CIFAR10 VGG16): > 90 % at up to 4× lower latency after fine-tuning",
}

DATASET_LABEL = {"mnist": "MNIST", "fashion_mnist": "fMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100",
                 "places365": "PLACES365", "synthetic": "synthetic"}
MODEL_LABEL = {"fc2": "FC2", "fc16": "FC16", "lenet5": "LeNet5", "vgg16": "VGG16"}
#: zoo variants that are the paper's VGG16 on other inputs
MODEL_FAMILY = {"vgg16_mnist": "vgg16", "vgg16_places365": "vgg16"}


def dataset_label(name: str) -> str:
    return DATASET_LABEL[name] if name in DATASET_LABEL else name


def family(model: str) -> str:
    return MODEL_FAMILY[model] if model in MODEL_FAMILY else model


def model_label(model: str) -> str:
    return MODEL_LABEL[family(model)] if family(model) in MODEL_LABEL else model
