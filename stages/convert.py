"""Stage 3: fuse batch norm, convert exactly to a B1 SNN and verify it (SPEC 3.4) -> models/<exp>/snn_converted.pt.

Verification runs in float64, where the SNN must agree with the ReLU network on every test sample
(argmax) and its logits must match to ``rel_tolerance`` of the logit scale; otherwise the stage fails.
The same report in the experiment's dtype (float32: rounding may flip near-ties) is recorded too.
"""

from __future__ import annotations

import copy
import sys

import torch

from pipeline.artifacts import load_relu, save_snn
from pipeline.errors import ConversionError
from pipeline.results import ConvertResult
from pipeline.runner import Context, link_reference, stage
from ttfs.metrics import compare_to_relu


@stage("convert")
def main(ctx: Context) -> None:
    """Convert the pretrained ReLU network and fail unless the SNN is exactly equivalent."""
    exp, name = ctx.experiment, ctx.name
    p = exp.params.convert
    paths = exp.paths
    relu, lineage = load_relu(paths.relu)
    snn64 = exp.calibrated_snn(relu, p.calibration_samples, p.zeta, p.batch_size)
    exact = compare_to_relu(copy.deepcopy(relu).to(exp.device, torch.float64), snn64,
                            exp.batches("test", p.batch_size, shuffle=False, dtype=torch.float64), split="test")
    snn = copy.deepcopy(snn64).to(exp.dtype)
    working = compare_to_relu(relu.to(exp.device, exp.dtype), snn,
                              exp.batches("test", p.batch_size, shuffle=False), split="test")
    result = ConvertResult(
        params_hash=exp.params_hash("convert"), lineage=lineage,
        **{k: exact[k] for k in ("agreement", "max_abs_logit_diff", "max_rel_logit_diff", "causality_violations",
                                 "relu_accuracy", "snn_accuracy", "spikes_per_neuron", "latency", "clipped_inputs")},
        windows=snn64.deltas.tolist(),
        **{exp.params.dtype: {k: working[k] for k in ("agreement", "max_abs_logit_diff", "max_rel_logit_diff",
                                                      "snn_accuracy")}})
    result.write(paths.metrics("convert"))
    with exp.track("convert", "snn") as mlrun:
        reference = exp.reference(lineage["pretrain_params_hash"])
        mlrun.log_metrics(result.metrics())
        mlrun.log_headline(result.metrics() | {"test_accuracy": exact["snn_accuracy"]})
        link_reference(mlrun, reference, {"test_accuracy": exact["snn_accuracy"]})
        rel = exact["max_rel_logit_diff"]
        if exact["agreement"] < 1.0 or rel is None or rel > p.rel_tolerance:
            raise ConversionError(
                f"the float64 SNN is not equivalent to its ReLU network: agreement {exact['agreement']:.6f} "
                f"(must be 1), max relative logit difference {rel} (tolerance {p.rel_tolerance}); "
                f"see {paths.metrics('convert')}"
            )
        if exact["causality_violations"]:
            print(f"warning: {exact['causality_violations']} test spikes came before their window "
                  f"(windows calibrated on training data; raise convert.zeta)", file=sys.stderr)
        save_snn(paths.converted, snn, lineage)
        mlrun.log_artifact(paths.converted, "model")
    print(f"convert {name}: agreement {exact['agreement']:.4f}, max |dlogit| {exact['max_abs_logit_diff']:.3g}, "
          f"spikes/neuron {exact['spikes_per_neuron']:.3f}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
