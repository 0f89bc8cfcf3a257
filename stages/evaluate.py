"""Stage 5: ReLU reference vs fine-tuned SNN on the test set: accuracy, agreement, spikes, SynOps, energy.

SynOps are those of SPEC 6 (every spike times its neuron's fan-out) and price the energy estimate; the
count of pool winners alone is reported beside them as ``routed_synops_*`` (ttfs.metrics).
"""

from __future__ import annotations

import math
import sys

import torch

from pipeline import plots
from pipeline.artifacts import load_relu, load_snn, write_csv
from pipeline.results import EvaluateResult
from pipeline.runner import Context, link_reference, stage
from ttfs import SNN, to_relu
from ttfs.metrics import compare_to_relu, energy_estimate, macs, spike_statistics

RASTER_NEURONS = 400  # per layer: enough to see the pattern, few enough to draw


def _per_layer(values: list) -> dict[str, float]:
    return {f"layer{n}": v for n, v in enumerate(values, start=1)}


@torch.no_grad()
def spike_time_distribution(snn: SNN, batches, bins: int, raster_samples: int):
    """Histogram of (t - t_min) / window width of every hidden spike, per layer, and a raster of the
    first ``raster_samples`` samples (each layer subsampled to at most RASTER_NEURONS neurons)."""
    counts = None
    raster: list[tuple[list[float], list[int], int]] = []
    boundaries: list[float] = []
    for z, _ in batches:
        record = snn.run(z)
        if counts is None:
            counts = [torch.zeros(bins, dtype=torch.long) for _ in record.times]
            boundaries = [float(b) for b in record.boundaries.tolist()]
            for n, t in enumerate(record.times, start=1):
                flat = t[:raster_samples].flatten(1)
                step = max(1, math.ceil(flat.shape[1] / RASTER_NEURONS))
                picked = flat[:, ::step]
                spiking = picked < record.t_max(n)
                times = picked[spiking].tolist()
                ids = spiking.nonzero()[:, 1].tolist()
                raster.append((times, ids, picked.shape[1]))
        for n, t in enumerate(record.times, start=1):
            width = record.t_max(n) - record.t_min(n)
            phase = ((t[t < record.t_max(n)] - record.t_min(n)) / width).to(torch.float64).cpu()
            counts[n - 1] += torch.histc(phase.clamp(0, 1 - 1e-12), bins, 0, 1).to(torch.long)
    edges = [i / bins for i in range(bins + 1)]
    return edges, [c.tolist() for c in counts or []], raster, boundaries


@stage("evaluate")
def main(ctx: Context) -> None:
    """Measure the fine-tuned SNN against the ReLU reference and its own equivalent ReLU network."""
    exp, name = ctx.experiment, ctx.name
    p = exp.params.evaluate
    paths = exp.paths
    relu, lineage = load_relu(paths.relu)
    relu = relu.to(exp.device, exp.dtype)
    snn = load_snn(paths.snn)[0].to(exp.device, exp.dtype)
    test = exp.batches("test", p.batch_size, shuffle=False)
    vs_reference = compare_to_relu(relu, snn, test, split="test")
    vs_equivalent = compare_to_relu(to_relu(snn), snn, test, split="test")
    stats = spike_statistics(snn, test, split="test")
    cost = macs(snn)
    energy = energy_estimate(stats, cost, first_layer_spiking=p.first_layer_spiking)
    edges, counts, raster, boundaries = spike_time_distribution(snn, test, p.histogram_bins, p.raster_samples)
    metrics = {
        "params_hash": exp.params_hash("evaluate"),
        "lineage": lineage,
        "relu_accuracy": vs_reference["relu_accuracy"],
        "snn_accuracy": vs_reference["snn_accuracy"],
        "delta_accuracy": vs_reference["snn_accuracy"] - vs_reference["relu_accuracy"],
        "agreement_with_reference": vs_reference["agreement"],
        "equivalent_relu": {"agreement": vs_equivalent["agreement"],
                            "max_rel_logit_diff": vs_equivalent["max_rel_logit_diff"]},
        "spikes_per_neuron": stats["spikes_per_neuron"],
        "spikes_per_neuron_per_layer": _per_layer(stats["spikes_per_neuron_per_layer"]),
        "hidden_neurons": stats["hidden_neurons"],
        "causality_violations": stats["causality_violations"],
        "clipped_inputs": stats["clipped_inputs"],
        "synops_per_sample": stats["synops_per_sample"],
        "synops_per_layer": _per_layer(stats["synops_per_layer"]),
        "routed_synops_per_sample": stats["routed_synops_per_sample"],
        "routed_synops_per_layer": _per_layer(stats["routed_synops_per_layer"]),
        "macs_per_sample": cost["total"],
        "energy_pj": {k: energy[k] for k in ("snn_pj", "ann_pj", "ratio", "saving")},
        "energy_assumptions": {k: energy[k] for k in ("e_synop_pj", "e_mac_pj", "first_layer_spiking")},
        "latency": stats["latency"],
        "test_samples": stats["samples"],
    }
    result = EvaluateResult.model_validate(metrics)
    result.write(paths.metrics("evaluate"))
    layer_rows = [{"layer": n, "spikes_per_neuron": v, "synops_per_sample": s, "routed_synops_per_sample": r}
                  for n, (v, s, r) in enumerate(zip(stats["spikes_per_neuron_per_layer"], stats["synops_per_layer"],
                                                    stats["routed_synops_per_layer"], strict=True), start=1)]
    write_csv(paths.plot("spikes_per_layer.csv"), layer_rows,
              ("layer", "spikes_per_neuron", "synops_per_sample", "routed_synops_per_sample"))
    hist_rows = [{"phase": (a + b) / 2, "spikes": sum(c[i] for c in counts),
                  **{f"layer{n}": c[i] for n, c in enumerate(counts, start=1)}}
                 for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]
    write_csv(paths.plot("spike_times.csv"), hist_rows, ["phase", "spikes", *[f"layer{n}" for n in
                                                                             range(1, len(counts) + 1)]])
    plots.spikes_per_layer(paths.plot("spikes_per_layer.png"), stats["spikes_per_neuron_per_layer"],
                           f"{name}: spikes per neuron (test)")
    plots.spike_time_histogram(paths.plot("spike_times.png"), edges, counts, f"{name}: spike times (test)")
    plots.raster(paths.plot("raster.png"), raster, boundaries, f"{name}: spike raster, first test sample(s)")
    with exp.track("evaluate", "snn") as mlrun:
        reference = exp.reference(lineage["pretrain_params_hash"])
        mlrun.log_metrics(result.metrics())
        mlrun.log_headline({"test_accuracy": result.snn_accuracy, "agreement": result.agreement_with_reference,
                            "spikes_per_neuron": result.spikes_per_neuron, "energy_ratio": result.energy_pj.ratio,
                            "latency": result.latency})
        link_reference(mlrun, reference, {"test_accuracy": metrics["snn_accuracy"]})
        for png in ("spikes_per_layer.png", "spike_times.png", "raster.png"):
            mlrun.log_artifact(paths.plot(png), "plots")
    print(f"evaluate {name}: ReLU {metrics['relu_accuracy']:.4f} | SNN {metrics['snn_accuracy']:.4f} | "
          f"agreement {metrics['agreement_with_reference']:.4f} | spikes/neuron {metrics['spikes_per_neuron']:.3f}",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
