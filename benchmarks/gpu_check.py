"""The check a GPU owner runs once: exactness on CUDA, VGG16-CIFAR epoch throughput, a two-GPU DDP step.

    .venv/bin/python benchmarks/gpu_check.py              # writes benchmarks/results/gpu_check.json

1. **Conversion exactness on CUDA (float64)**: a VGG16-CIFAR with batch norm after every ReLU (random
   weights and random BN statistics, so every fold is exercised) is converted to its B1 SNN on the GPU;
   SPEC 3.4: argmax agreement 1.0, max |logit difference| <= 1e-9 of the logit scale, 0 causality
   violations.
2. **One VGG16-CIFAR training epoch** (``--samples`` synthetic 3x32x32 images, default 50,000 as CIFAR's
   training set, batch ``--batch``, float32) for the ReLU network and its B1 SNN: seconds, samples/s and
   the ratio SNN / ReLU.
3. **A DDP step on two GPUs** (only with >= 2 GPUs): two NCCL processes train the SNN data-parallel
   (:mod:`ttfs.distributed`) for a few steps; their parameters and windows are compared with one GPU
   training on the same global batches, and the step time is reported.

On a machine without CUDA it prints why it skips and writes ``{"skipped": true, ...}`` (exit status 0).
``--cpu`` runs every part on the CPU at toy scale instead (the test suite does so, parts 1-3 with a
narrow VGG16 and gloo), which checks the script, not the hardware; ``--cpu --width 1 --samples 96
--batch 32`` times full VGG16 steps on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's ttfs, not whichever one is installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

import ttfs  # noqa: E402
from ttfs.distributed import Replicas, shard  # noqa: E402
from ttfs.metrics import compare_to_relu  # noqa: E402
from ttfs.train import TensorBatches, train_epoch  # noqa: E402
from ttfs.zoo import create_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CIFAR = (3, 32, 32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(n: int, classes: int = 10, seed: int = 0, shape=CIFAR) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] with class structure (a per-class prototype plus noise)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, *shape, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    x = (0.7 * prototypes[y] + 0.3 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
    return x, y


def vgg(width: float, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """VGG16-CIFAR with batch norm after the ReLUs, random BN statistics (so conversion folds them)."""
    torch.manual_seed(seed)
    model = create_model("vgg16", width_multiplier=width, dropout=dropout)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(torch.randn(c, generator=g))  # negative scales flip max-pools
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def conversion_exactness(device: torch.device, width: float = 1.0, samples: int = 512, batch: int = 128) -> dict:
    """SPEC 3.4 on ``device`` in float64."""
    x, y = synthetic(samples, seed=1)
    relu = vgg(width).to(device, torch.float64)
    start = time.perf_counter()
    snn = ttfs.convert(relu, [c.to(device, torch.float64) for c in x.split(batch)], in_range=(0.0, 1.0),
                       dtype=torch.float64)
    _sync(device)
    seconds = time.perf_counter() - start
    report = compare_to_relu(relu, snn, TensorBatches(x, y, batch, shuffle=False, device=device,
                                                      dtype=torch.float64))
    ok = (report["agreement"] == 1.0 and report["causality_violations"] == 0
          and report["max_rel_logit_diff"] is not None and report["max_rel_logit_diff"] <= 1e-9)
    return {"width_multiplier": width, "samples": samples, "convert_s": seconds, "exact": ok,
            **{k: report[k] for k in ("agreement", "max_abs_logit_diff", "relu_logit_scale", "max_rel_logit_diff",
                                      "causality_violations", "spikes_per_neuron")}}


def epoch_throughput(device: torch.device, width: float = 1.0, samples: int = 50_000, batch: int = 128) -> dict:
    """One training epoch of VGG16-CIFAR (float32, Adam) for the ReLU network and its B1 SNN."""
    x, y = synthetic(samples, seed=2)
    x, y = x.to(device), y.to(device)
    relu = vgg(width, dropout=0.0).to(device)
    snn = ttfs.convert(vgg(width).to(device, torch.float64), [x[:256].double()], in_range=(0.0, 1.0),
                       dtype=torch.float32)
    snn = snn.to(device, torch.float32)
    out: dict = {"width_multiplier": width, "samples": samples, "batch_size": batch}
    for kind, model in (("relu", relu), ("snn", snn)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        warm = TensorBatches(x[: 4 * batch], y[: 4 * batch], batch, seed=0, device=device)
        train_epoch(model, warm, opt)  # kernels chosen, memory allocated
        _sync(device)
        start = time.perf_counter()
        stats = train_epoch(model, TensorBatches(x, y, batch, seed=1, device=device), opt)
        _sync(device)
        seconds = time.perf_counter() - start
        out[kind] = {"epoch_s": seconds, "samples_per_s": samples / seconds, "train_loss": stats["loss"]}
    out["ratio_snn_over_relu"] = out["snn"]["epoch_s"] / out["relu"]["epoch_s"]
    return out


def _ddp_setup(width: float, samples: int, dtype: torch.dtype):
    x, y = synthetic(samples, seed=3)
    snn = ttfs.convert(vgg(width).double(), [x[:64].double()], in_range=(0.0, 1.0), zeta=0.0, dtype=torch.float64)
    return snn.to(dtype), x.to(dtype), y


def _train_steps(model, x, y, batch: int, device, replicas=None) -> float:
    """Seconds per step of one epoch over (x, y), after the first step (warm-up)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = TensorBatches(x, y, batch, seed=4, device=device)
    first = TensorBatches(x[:batch], y[:batch], batch, seed=5, device=device)
    train_epoch(model, shard(first, replicas) if replicas else first, opt, replicas=replicas)
    _sync(device)
    start = time.perf_counter()
    train_epoch(model, shard(batches, replicas) if replicas else batches, opt, replicas=replicas)
    _sync(device)
    return (time.perf_counter() - start) / len(batches)


def _ddp_worker(rank: int, world: int, backend: str, rendezvous: str, out: str, width: float, samples: int,
                batch: int, dtype: torch.dtype) -> None:
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        snn, x, y = _ddp_setup(width, samples, dtype)
        snn = snn.to(device)
        replicas = Replicas(snn)
        step_s = _train_steps(snn, x, y, batch, device, replicas)
        replicas.close()
        if rank == 0:
            torch.save({"state": {k: v.cpu() for k, v in snn.state_dict().items()}, "step_s": step_s}, out)
    finally:
        dist.destroy_process_group()


def ddp_step(world: int = 2, backend: str = "nccl", width: float = 1.0, samples: int = 1024, batch: int = 128,
             dtype: torch.dtype = torch.float64) -> dict:
    """``world`` processes train the SNN data-parallel; compared with one process on the same global batches."""
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rank0.pt"
        mp.spawn(_ddp_worker, args=(world, backend, f"{tmp}/rendezvous", out, width, samples, batch, dtype),
                 nprocs=world, join=True)
        got = torch.load(out)
    device = torch.device("cuda:0") if backend == "nccl" else torch.device("cpu")
    snn, x, y = _ddp_setup(width, samples, dtype)
    initial = {k: v.clone() for k, v in snn.state_dict().items()}
    snn = snn.to(device)
    one_step_s = _train_steps(snn, x, y, batch, device)
    expected = {k: v.cpu() for k, v in snn.state_dict().items()}
    diff = max(float((got["state"][k] - v).abs().max()) for k, v in expected.items())
    return {"world_size": world, "backend": backend, "dtype": str(dtype).removeprefix("torch."),
            "width_multiplier": width, "samples": samples, "global_batch": batch,
            "step_s": got["step_s"], "one_process_step_s": one_step_s,
            "max_diff_vs_one_process": diff,
            "windows_moved": float((expected["deltas"] - initial["deltas"]).abs().max())}


def environment() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    ap.add_argument("--samples", type=int, help="images in the timed epoch (default 50,000; --cpu: 64)")
    ap.add_argument("--batch", type=int, help="(global) batch size (default 128; --cpu: 16)")
    ap.add_argument("--width", type=float, help="VGG16 width multiplier (default 1; --cpu: 1/16)")
    ap.add_argument("--cpu", action="store_true", help="run every part on the CPU at toy scale (checks the script)")
    args = ap.parse_args(argv)
    result: dict = {"environment": environment()}
    if args.cpu:
        device, width, samples, batch = torch.device("cpu"), args.width or 1 / 16, args.samples or 64, args.batch or 16
        backend, gpus = "gloo", 2
    elif not torch.cuda.is_available():
        msg = "no CUDA device: the GPU check is skipped, nothing measured (run it on a GPU machine, or --cpu)"
        print(msg, file=sys.stderr)
        result |= {"skipped": True, "reason": msg}
        _write(args.out, result)
        return 0
    else:
        device, width, samples, batch = torch.device("cuda:0"), args.width or 1.0, args.samples or 50_000, \
            args.batch or 128
        backend, gpus = "nccl", torch.cuda.device_count()
    result["skipped"] = False
    result["toy_scale_on_cpu"] = args.cpu
    print("1/3 conversion exactness (float64) ...", file=sys.stderr, flush=True)
    result["conversion"] = conversion_exactness(device, width, samples=min(512, 4 * samples), batch=batch)
    print(f"    {result['conversion']}", file=sys.stderr, flush=True)
    print(f"2/3 one VGG16-CIFAR epoch of {samples} images, ReLU and SNN ...", file=sys.stderr, flush=True)
    result["epoch"] = epoch_throughput(device, width, samples, batch)
    print(f"    SNN/ReLU {result['epoch']['ratio_snn_over_relu']:.3f}", file=sys.stderr, flush=True)
    if gpus >= 2:
        print("3/3 two-process DDP step ...", file=sys.stderr, flush=True)
        result["ddp"] = ddp_step(2, backend, width, samples=min(8 * batch, samples), batch=batch)
        print(f"    {result['ddp']}", file=sys.stderr, flush=True)
    else:
        result["ddp"] = {"skipped": True, "reason": f"{gpus} GPU: the DDP step needs 2"}
        print("3/3 DDP step skipped: fewer than 2 GPUs", file=sys.stderr)
    _write(args.out, result)
    return 0 if result["conversion"]["exact"] else 1


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
