"""Stage 4: B1 exact-gradient training of the SNN -> models/<exp>/snn.pt.

``converted`` fine-tunes the verified SNN of the convert stage; ``scratch`` trains a B1 SNN from the
freshly initialised zoo model (the paper's MNIST/fMNIST setting: with the pretrain seed and settings it
follows the ReLU network's trajectory). Windows adapt after every step (SPEC 2.8). The trained SNN is
checked against the ReLU network it maps back to (``ttfs.to_relu``) in float64, whatever it trained in.
"""

from __future__ import annotations

import copy
import sys

import torch

from pipeline import checkpoint, plots
from pipeline import params as P
from pipeline.artifacts import load_snn, save_snn, write_csv
from pipeline.data import sha256_file
from pipeline.results import FinetuneResult
from pipeline.runner import Context, link_reference, stage
from pipeline.tracking import project_root, registered_model_name
from pipeline.training import CURVE_COLUMNS, fit
from ttfs import to_relu
from ttfs.metrics import compare_to_relu
from ttfs.train import evaluate


@stage("finetune", distributed_ok=True)
def main(ctx: Context) -> None:
    """Train the SNN with exact spike-time gradients, adaptive windows and optional L1."""
    exp, name = ctx.experiment, ctx.name
    p = exp.params.finetune
    paths = exp.paths
    converted, lineage = load_snn(paths.converted)
    if p.mode == "converted":
        snn, start = converted, sha256_file(paths.converted)
    else:
        snn = exp.calibrated_snn(exp.fresh_model(), p.calibration_samples, p.zeta, p.eval_batch_size)
        start = "scratch"
    snn = snn.to(exp.device, exp.dtype)
    ckpt = checkpoint.path_for(project_root(), name, "finetune",
                               P.params_hash(exp.stage_params("finetune"), lineage, start))
    state = checkpoint.load(ckpt)
    train = exp.batches("train", p.batch_size, shuffle=True)
    val = exp.batches("val", p.eval_batch_size, shuffle=False)
    test = exp.batches("test", p.eval_batch_size, shuffle=False)
    with exp.track("finetune", "snn", resume=state and state["run_id"], finetune_mode=p.mode) as mlrun:
        reference = exp.reference(lineage["pretrain_params_hash"]) if exp.main else None
        history = fit(snn, train, val, p, ckpt, state, mlrun, f"finetune {name}", exp.params.seed)
        if not exp.main:  # torchrun: rank 0 evaluates and writes
            return
        final = evaluate(snn, test)
        val_final = evaluate(snn, val) if len(val.labels) else {"accuracy": None, "loss": None}
        snn64 = copy.deepcopy(snn).to(exp.device, torch.float64)
        exactness = compare_to_relu(to_relu(snn64), snn64, exp.batches("test", p.eval_batch_size, shuffle=False,
                                                                        dtype=torch.float64), split="test")
        result = FinetuneResult(
            params_hash=exp.params_hash("finetune"), lineage=lineage,
            test_accuracy=final["accuracy"], test_loss=final["loss"], val_accuracy=val_final["accuracy"],
            val_loss=val_final["loss"], epochs=len(history), mode=p.mode,
            equivalent_relu_agreement=exactness["agreement"],
            equivalent_relu_max_rel_logit_diff=exactness["max_rel_logit_diff"],
            causality_violations=exactness["causality_violations"], spikes_per_neuron=exactness["spikes_per_neuron"],
            latency=exactness["latency"], windows=snn.deltas.tolist())
        save_snn(paths.snn, snn, lineage)
        result.write(paths.metrics("finetune"))
        write_csv(paths.plot("finetune_curve.csv"), history, CURVE_COLUMNS)
        plots.training_curve(paths.plot("finetune_curve.png"), history, f"{name} SNN ({p.mode})")
        mlrun.log_metrics({f"final.{k}": v for k, v in result.metrics().items()}, step=len(history))
        link_reference(mlrun, reference, {"test_accuracy": final["accuracy"], "test_loss": final["loss"]})
        mlrun.log_headline(result.metrics(), step=len(history))
        mlrun.log_artifact(paths.snn, "model")
        mlrun.register_model(registered_model_name(name), f"model/{paths.snn.name}", f"the final SNN of {name}")
        print(f"finetune {name}: test accuracy {final['accuracy']:.4f}", file=sys.stderr)
    checkpoint.remove(ckpt)


if __name__ == "__main__":
    sys.exit(main())
