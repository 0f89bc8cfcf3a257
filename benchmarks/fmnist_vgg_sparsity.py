"""Issue 14: which training recipe brings the fmnist_vgg SNN to <= 0.25 spikes per neuron, and at what
validation accuracy?

Each recipe is the profile's whole path on the prepared split (55,000 training, 5,000 validation images;
the test split is not read):

1. pretrain the profile's ``vgg_fmnist`` ReLU network with the profile's recipe (SGD, Nesterov, lr 0.05,
   cosine, weight decay 5e-4, random 2-pixel shifts and flips, batch 128) *plus an L1 activation penalty
   from the first step*; a recipe without batch norm also keeps its hidden biases <= 0;
2. convert it exactly (float64, windows from all training images, zeta 0.5);
3. fine-tune the B1 SNN as the profile does (Adam 1e-4, cosine, same L1, float32);
4. measure the SNN on validation: accuracy, spikes per neuron, per layer.

A recipe is ``bn:L1`` or ``nobn:L1`` (optionally ``:LR``, the pretraining rate). Recipes run as
separate processes (``--jobs``, so several share one GPU); the JSON is rewritten as each one ends, and
a recipe still running at ``--deadline`` minutes reports the epochs it finished.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/fmnist_vgg_sparsity.py --jobs 2 \\
        --recipes bn:0 bn:1e-5 nobn:1e-5

``--export FILE.npz`` writes the prepared split (uint8) for a machine without the pipeline's
dependencies, which then runs with ``--data FILE.npz`` (only torch and ttfs are imported).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import ttfs  # noqa: E402
from ttfs.metrics import spike_statistics  # noqa: E402
from ttfs.train import (  # noqa: E402
    TensorBatches,
    cosine_decay,
    crop_flip,
    evaluate,
    forward_with_activations,
    train_epoch,
)

RESULTS = ROOT / "benchmarks" / "results"
SPLITS = ("train", "val")


def parse_recipe(token: str) -> dict:
    """``bn:1e-5`` / ``nobn:1e-5:0.02`` -> {batch_norm, l1, lr}."""
    parts = token.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("bn", "nobn"):
        raise argparse.ArgumentTypeError(f"a recipe is bn:L1 or nobn:L1[:LR], got {token!r}")
    return {"name": token, "batch_norm": parts[0] == "bn", "l1": float(parts[1]),
            "lr": float(parts[2]) if len(parts) == 3 else 0.05}


def export(path: Path) -> None:
    from pipeline.data import load_or_prepare  # the pipeline's split, so the recipes see what the stages see

    data = load_or_prepare("fashion_mnist")
    arrays = {}
    for split in SPLITS:
        x, y = data.split(split)
        arrays[f"{split}_x"] = (x * 255).round().to(torch.uint8).numpy()
        arrays[f"{split}_y"] = y.numpy()
        assert torch.equal(torch.from_numpy(arrays[f"{split}_x"]).float() / 255, x), "pixels are not k/255"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}", file=sys.stderr)


def load(path: Path | None) -> dict[str, torch.Tensor]:
    if path is None:
        from pipeline.data import load_or_prepare

        data = load_or_prepare("fashion_mnist")
        return {f"{s}_{k}": t for s in SPLITS for k, t in zip("xy", data.split(s), strict=True)}
    arrays = np.load(path)
    return {k: torch.from_numpy(arrays[k]).float() / 255 if k.endswith("_x") else torch.from_numpy(arrays[k])
            for k in arrays.files}


def relu_density(model: nn.Module, batches) -> tuple[float, list[float]]:
    """Fraction of positive ReLU outputs, over all and per ReLU (the exact SNN's spikes per neuron)."""
    positive: list[float] = []
    total: list[int] = []
    model.eval()
    with torch.no_grad():
        for z, _ in batches:
            activations = forward_with_activations(model, z).activations
            positive = [p + float((x > 0).sum()) for p, x in zip(positive or [0.0] * len(activations),
                                                                 activations, strict=True)]
            total = [t + x.numel() for t, x in zip(total or [0] * len(activations), activations, strict=True)]
    return sum(positive) / sum(total), [p / t for p, t in zip(positive, total, strict=True)]


def run_recipe(recipe: dict, args: argparse.Namespace, deadline: float) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    data = {k: v.to(device) for k, v in load(args.data).items()}
    train_x, train_y = data["train_x"][: args.train_subset], data["train_y"][: args.train_subset]
    val = TensorBatches(data["val_x"], data["val_y"], 1000, shuffle=False, device=device)
    row: dict = {"recipe": recipe["name"], **recipe, "seed": args.seed, "epochs": args.epochs,
                 "device": str(device), "pretrain_epochs_done": 0, "finetune_epochs_done": 0}
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    model = ttfs.create_model("vgg_fmnist", batch_norm=recipe["batch_norm"]).to(device)
    steps = math.ceil(len(train_y) / args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = cosine_decay(opt, args.epochs * steps)
    augment = torch.Generator().manual_seed(args.seed)

    def augmented(seed: int):
        for x, y in TensorBatches(train_x, train_y, args.batch_size, seed=seed, device=device):
            yield crop_flip(x, augment, 2), y

    for epoch in range(1, args.epochs + 1):
        if time.time() > deadline:
            row["stopped"] = "deadline during pretraining"
            return row
        stats = train_epoch(model, augmented(args.seed * 1000 + epoch), opt, l1=recipe["l1"],
                            nonpositive_bias=not recipe["batch_norm"], scheduler=schedule)
        row["pretrain_epochs_done"] = epoch
        overall, density = relu_density(model, val)
        row.setdefault("relu_val_curve", []).append(
            {"epoch": epoch, "loss": stats["loss"], "val_accuracy": evaluate(model, val)["accuracy"],
             "val_density": overall})
        print(f"{recipe['name']} pretrain {epoch}/{args.epochs}: {row['relu_val_curve'][-1]}", file=sys.stderr,
              flush=True)
    row["relu_val_accuracy"] = row["relu_val_curve"][-1]["val_accuracy"]
    row["relu_val_density_per_layer"] = density
    row["pretrain_s"] = time.perf_counter() - started

    calibration = train_x.to(torch.float64).split(1000)
    snn64 = ttfs.convert(copy.deepcopy(model).to(torch.float64).eval(), calibration, in_range=(0.0, 1.0),
                         zeta=0.5, dtype=torch.float64)
    snn = copy.deepcopy(snn64).to(torch.float32)
    converted = spike_statistics(snn, val)
    row["converted_val_accuracy"] = evaluate(snn, val)["accuracy"]
    row["converted_val_spikes_per_neuron"] = converted["spikes_per_neuron"]
    ft = torch.optim.Adam(snn.parameters(), lr=1e-4)
    ft_schedule = cosine_decay(ft, args.finetune_epochs * steps)
    for epoch in range(1, args.finetune_epochs + 1):
        if time.time() > deadline:
            row["stopped"] = "deadline during fine-tuning"
            break
        stats = train_epoch(snn, augmented(args.seed * 1000 + 500 + epoch), ft, l1=recipe["l1"],
                            nonpositive_bias=not recipe["batch_norm"], scheduler=ft_schedule)
        row["finetune_epochs_done"] = epoch
        print(f"{recipe['name']} finetune {epoch}/{args.finetune_epochs}: loss {stats['loss']:.4f}",
              file=sys.stderr, flush=True)
    final = spike_statistics(snn, val)
    row["snn_val_accuracy"] = evaluate(snn, val)["accuracy"]
    row["snn_val_spikes_per_neuron"] = final["spikes_per_neuron"]
    row["snn_val_spikes_per_layer"] = final["spikes_per_neuron_per_layer"]
    row["snn_causality_violations"] = final["causality_violations"]
    row["seconds"] = time.perf_counter() - started
    return row


def table(rows: list[dict]) -> str:
    lines = ["| recipe | epochs | seed | ReLU val % | SNN val % | spikes/neuron | per layer | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["epochs"], r.get("snn_val_spikes_per_neuron", 9), r["seed"])):
        layers = ", ".join(f"{v:.2f}" for v in r.get("snn_val_spikes_per_layer", []))
        lines.append(f"| {r['recipe']} | {r['epochs']} | {r['seed']} | "
                     f"{100 * r.get('relu_val_accuracy', float('nan')):.2f} | "
                     f"{100 * r.get('snn_val_accuracy', float('nan')):.2f} | "
                     f"{r.get('snn_val_spikes_per_neuron', float('nan')):.3f} | {layers} | "
                     f"{r.get('seconds', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", type=parse_recipe, default=[parse_recipe("bn:0")])
    ap.add_argument("--epochs", type=int, default=20, help="pretraining epochs (the profile's 20)")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="SNN fine-tuning epochs (the profile's 3)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-subset", type=int, help="first N training images only (toy runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="recipes at a time (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--deadline", type=float, default=math.inf, help="minutes; later epochs are not started")
    ap.add_argument("--data", type=Path, help="an --export file (else the pipeline's prepared split)")
    ap.add_argument("--export", type=Path, help="write the prepared split to this .npz and exit")
    ap.add_argument("--out", type=Path, default=RESULTS / "fmnist_vgg_sparsity.json")
    args = ap.parse_args(argv)
    if args.export:
        export(args.export)
        return 0
    deadline = time.time() + 60 * args.deadline if math.isfinite(args.deadline) else math.inf
    rows: list[dict] = []
    meta = {"split": "val", "finetune_epochs": args.finetune_epochs,
            "batch_size": args.batch_size, "train_subset": args.train_subset, "seed": args.seed,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(run_recipe, r, args, deadline): r for r in args.recipes}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                recipe = pending.pop(future)
                try:
                    rows.append(future.result())
                except Exception as exc:  # one recipe failing (diverging, say) must not lose the others
                    rows.append({"recipe": recipe["name"], **recipe, "error": f"{type(exc).__name__}: {exc}"})
                print(json.dumps(rows[-1]), flush=True)
                args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
