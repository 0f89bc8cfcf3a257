"""Stage 2: train the ReLU reference network (or load given weights) -> models/<exp>/relu.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline import checkpoint, plots
from pipeline import params as P
from pipeline.artifacts import save_relu, write_csv
from pipeline.data import sha256_file
from pipeline.errors import ChecksumError, ParamsError
from pipeline.results import PretrainResult
from pipeline.runner import Context, stage
from pipeline.tracking import REFERENCE, project_root
from pipeline.training import CURVE_COLUMNS, fit
from ttfs.train import evaluate


def load_given(model: torch.nn.Module, p: P.PretrainParams, name: str) -> None:
    path = Path(p.checkpoint)
    if not path.is_file():
        raise ParamsError(f"experiments.{name}.pretrain.checkpoint: no file {path}")
    if p.checkpoint_sha256 and sha256_file(path) != p.checkpoint_sha256:
        raise ChecksumError(f"{path}: sha256 differs from experiments.{name}.pretrain.checkpoint_sha256")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state))


@stage("pretrain", distributed_ok=True)
def main(ctx: Context) -> None:
    """Train the ReLU network with optional L1 and batch norm; its MLflow run is the reference."""
    exp, name = ctx.experiment, ctx.name
    p = exp.params.pretrain
    params_hash = exp.params_hash("pretrain")
    model = exp.fresh_model().to(exp.device, exp.dtype)
    val = exp.batches("val", p.eval_batch_size, shuffle=False)
    test = exp.batches("test", p.eval_batch_size, shuffle=False)
    ckpt = checkpoint.path_for(project_root(), name, "pretrain",
                               P.params_hash(exp.stage_params("pretrain"), exp.lineage()))
    state = checkpoint.load(ckpt)
    with exp.track("pretrain", REFERENCE, resume=state and state["run_id"]) as mlrun:
        if p.checkpoint:
            load_given(model, p, name)
            history = []
        else:
            train = exp.batches("train", p.batch_size, shuffle=True)
            history = fit(model, train, val, p, ckpt, state, mlrun, f"pretrain {name}", exp.params.seed)
        if not exp.main:  # torchrun: rank 0 evaluates and writes
            return
        final = evaluate(model, test)
        train_final = evaluate(model, exp.batches("train", p.eval_batch_size, shuffle=False))
        val_final = evaluate(model, val) if len(val.labels) else {"accuracy": None, "loss": None}
        result = PretrainResult(
            params_hash=params_hash, lineage=exp.lineage(), test_accuracy=final["accuracy"], test_loss=final["loss"],
            train_accuracy=train_final["accuracy"], train_loss=train_final["loss"],
            val_accuracy=val_final["accuracy"], val_loss=val_final["loss"], epochs=len(history),
            parameters=sum(t.numel() for t in model.parameters()))
        paths = exp.paths
        save_relu(paths.relu, model, exp.lineage() | {"pretrain_params_hash": params_hash})
        result.write(paths.metrics("pretrain"))
        write_csv(paths.plot("pretrain_curve.csv"), history, CURVE_COLUMNS)
        plots.training_curve(paths.plot("pretrain_curve.png"), history, f"{name} ReLU")
        mlrun.log_metrics({f"final.{k}": v for k, v in result.metrics().items()}, step=len(history))
        mlrun.log_headline(result.metrics(), step=len(history))
        mlrun.log_artifact(paths.relu, "model")
        print(f"pretrain {name}: test accuracy {final['accuracy']:.4f}", file=sys.stderr)
    checkpoint.remove(ckpt)


if __name__ == "__main__":
    sys.exit(main())
