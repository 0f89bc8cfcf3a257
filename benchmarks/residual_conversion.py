"""Residual networks: which torchvision models convert exactly, and ResNet-18's spikes and SynOps per layer.

Numbers quoted in docs/residual.md. Random weights; batch-norm weights U(0.5, 1.5), biases and running
means N(0, 0.3^2), running variances U(0.5, 2) (so that batch norm is no identity); float64; seed 0.

* ``--models``: for each torchvision model, ``ttfs.convert`` on 2 uniform random inputs (64x64; 224x224 for
  VGG and AlexNet, 299x299 for Inception v3) and the max relative logit difference, agreement, causality
  violations and early arrivals against the ReLU network, or the refusal (the fx node and why).
* ``--resnet18``: torchvision's ResNet-18 (10 classes) on 16 inputs of 3x32x32: ``compare_to_relu``,
  ``spike_statistics`` (spikes per neuron and SynOps per layer), MACs, and the float32 conversion.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/residual_conversion.py --resnet18 --models
"""

from __future__ import annotations

import argparse
import time

import torch

import ttfs

MODELS = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf",
          "regnet_y_400mf", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "vgg11_bn", "alexnet", "densenet121",
          "googlenet", "inception_v3", "squeezenet1_0", "shufflenet_v2_x0_5", "efficientnet_b0", "convnext_tiny",
          "vit_b_16", "swin_t", "maxvit_t"]
SIZES = {"vgg11_bn": 224, "alexnet": 224, "vit_b_16": 224, "swin_t": 224, "maxvit_t": 224, "inception_v3": 299}


def random_bn(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)
    return model.double().eval()


def models() -> None:
    import torchvision

    for name in MODELS:
        torch.manual_seed(0)
        start = time.time()
        kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        model = random_bn(torchvision.models.get_model(name, num_classes=10, **kw))
        size = SIZES.get(name, 64)
        x = torch.rand(2, 3, size, size, dtype=torch.float64)
        try:
            snn = ttfs.convert(model, x)
        except ttfs.UnsupportedLayerError as e:
            print(f"{name}: refused: {e}", flush=True)
            continue
        report = ttfs.metrics.compare_to_relu(model, snn, x)
        print(f"{name}: converts, {len(snn.neuron_layers)} neuron layers, input {size}x{size}: max relative logit "
              f"difference {report['max_rel_logit_diff']:.2e}, agreement {report['agreement']:.0%}, causality "
              f"violations {report['causality_violations']}, early arrivals {report['early_arrivals']} "
              f"({time.time() - start:.0f} s)", flush=True)


def resnet18() -> None:
    import torchvision

    torch.manual_seed(0)
    model = random_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.rand(16, 3, 32, 32, dtype=torch.float64)
    snn = ttfs.convert(model, x)
    report = ttfs.metrics.compare_to_relu(model, snn, x)
    stats = ttfs.metrics.spike_statistics(snn, x)
    groups = [g.kind for layer in snn.neuron_layers for g in layer.input_groups]
    print(f"ResNet-18 float64: agreement {report['agreement']:.0%}, max |dlogit| {report['max_abs_logit_diff']:.2e}, "
          f"relative {report['max_rel_logit_diff']:.2e}, causality violations {report['causality_violations']}, "
          f"early arrivals {report['early_arrivals']}")
    print(f"{len(snn.neuron_layers)} neuron layers; input groups: {groups.count('scale')} identity, "
          f"{groups.count('conv2d')} projection; latency {stats['latency']:.1f}")
    print(f"spikes per neuron {stats['spikes_per_neuron']:.3f}; per layer "
          f"{', '.join(f'{v:.3f}' for v in stats['spikes_per_neuron_per_layer'])}")
    print(f"SynOps per sample {stats['synops_per_sample']:,.0f}; per source layer "
          f"{', '.join(f'{v:,.0f}' for v in stats['synops_per_layer'])}; input {stats['input_synops_per_sample']:,.0f}")
    print(f"MACs per sample {ttfs.metrics.macs(snn)['total']:,} (torchvision Linear/Conv2d: "
          f"{ttfs.metrics.relu_macs(model, (3, 32, 32))['total']:,})")
    single = ttfs.convert(model.float(), x.float())
    with torch.no_grad():
        out, ref = single(x.float()), model.float()(x.float())
    print(f"float32: relative {float((out - ref).abs().max() / ref.abs().max()):.1e}, agreement "
          f"{float((out.argmax(1) == ref.argmax(1)).float().mean()):.0%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet18", action="store_true")
    parser.add_argument("--models", action="store_true")
    args = parser.parse_args()
    if args.resnet18:
        resnet18()
    if args.models:
        models()
