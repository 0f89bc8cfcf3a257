"""Training speed of B1 SNNs against their ReLU networks, alone and next to a competing process.

Every case trains a ReLU network and the SNN converted from it (same initial weights, Adam, lr 5e-4)
in ONE process, alternating ReLU and SNN (A B A B ...) so that both see the same machine load, and
reports median epoch times over the repeats, the ratio SNN / ReLU, and the thread count. By default
the alternation is every few steps inside the epochs (``--interleave``; each model still trains whole
epochs, its time summed over its chunks), which keeps the ratio stable on a machine whose load changes
from second to second; ``--interleave 0`` alternates whole epochs. Cases:

    fc2_f32    FC2, batch 8, float32, Fashion-MNIST training epoch
    fc2_f64    FC2, batch 8, float64, Fashion-MNIST training epoch
    lenet5     LeNet5, batch 128, float32, Fashion-MNIST training epoch
    vgg16      VGG16-CIFAR without batch norm (dropout off), batch 32, float32, --vgg-steps steps on
               random 3x32x32 data
    vgg16_bn   VGG16-CIFAR with batch norm: the ReLU network trains its batch norm, the SNN has it
               folded into its weights and per-region thresholds (SPEC 3.2)

Each case runs alone, then again while a second process (spawned here) trains the same case; the
competing/alone time ratio shows how two trainings share the machine. Threads per process come
from ``pipeline.threads`` (1 for FC2/LeNet5 and for everything while competing, all cores for VGG16
alone) unless ``--threads`` is given. The machine load (1-minute load average) before and after each
measurement is recorded: other users' work shows there.

    .venv/bin/python -m benchmarks.speed --quick            # about two minutes
    .venv/bin/python -m benchmarks.speed                    # full epochs, three repeats (about 20 minutes)
    .venv/bin/python -m benchmarks.speed --cases fc2_f64 --samples 16000 --repeats 5

(``python benchmarks/speed.py`` works as well.)

Writes benchmarks/results/speed.json and benchmarks/results/speed.md (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's ttfs, not whichever one is installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ttfs  # noqa: E402
from pipeline.threads import available_cores, threads_for  # noqa: E402
from ttfs.train import TensorBatches, train_epoch  # noqa: E402
from ttfs.zoo import create_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    batch_size: int
    dtype: str
    data: str  # "fashion_mnist" (epochs) or "random" (fixed steps)
    kwargs: tuple = ()
    interleave: int = 1  # steps per ReLU/SNN alternation (about 50-100 ms of work)

    @property
    def label(self) -> str:
        what = "epoch" if self.data == "fashion_mnist" else "steps"
        bn = " +BN" if dict(self.kwargs).get("batch_norm") else ""
        return f"{self.model}{bn} b{self.batch_size} {self.dtype} ({what})"


CASES = {
    "fc2_f32": Case("fc2_f32", "fc2", 8, "float32", "fashion_mnist", interleave=50),
    "fc2_f64": Case("fc2_f64", "fc2", 8, "float64", "fashion_mnist", interleave=25),
    "lenet5": Case("lenet5", "lenet5", 128, "float32", "fashion_mnist", interleave=5),
    "vgg16": Case("vgg16", "vgg16", 32, "float32", "random", (("batch_norm", False), ("dropout", 0.0))),
    "vgg16_bn": Case("vgg16_bn", "vgg16", 32, "float32", "random", (("batch_norm", True), ("dropout", 0.0))),
}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def case_data(case: Case, samples: int, vgg_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = DTYPES[case.dtype]
    if case.data == "random":
        g = torch.Generator().manual_seed(0)
        n = case.batch_size * vgg_steps
        return torch.rand(n, 3, 32, 32, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g)
    from pipeline.data import load_or_prepare

    cwd = os.getcwd()
    os.chdir(ROOT)  # data/prepared of this checkout, prepared there on first use
    try:
        data = load_or_prepare("fashion_mnist")
    finally:
        os.chdir(cwd)
    return data.train_x[:samples].to(dtype), data.train_y[:samples]


def build(case: Case, inputs: torch.Tensor) -> dict[str, torch.nn.Module]:
    """The ReLU network and the SNN converted from a copy of it (same initial function)."""
    torch.manual_seed(0)
    relu = create_model(case.model, **dict(case.kwargs)).to(DTYPES[case.dtype])
    snn = ttfs.convert(copy.deepcopy(relu), inputs[:256])
    return {"relu": relu, "snn": snn}


def epoch(case: Case, model: torch.nn.Module, optimiser, inputs, labels, seed: int) -> None:
    train_epoch(model, TensorBatches(inputs, labels, case.batch_size, seed=seed), optimiser)


def measure(case: Case, inputs, labels, repeats: int, interleave: int) -> dict:
    """ReLU and SNN passes over (inputs, labels), alternating: medians, ratio, all times.

    ``interleave`` > 0 alternates every that many steps inside the epoch (each model still trains
    whole epochs over the same batches, its time summed over its chunks): both see the same machine
    load on a time scale of milliseconds, not of whole epochs. 0 alternates whole epochs.
    """
    models = build(case, inputs)
    optimisers = {k: torch.optim.Adam(m.parameters(), lr=5e-4) for k, m in models.items()}
    warm = min(len(inputs), 4 * case.batch_size)
    for kind, model in models.items():  # first-call costs (allocator, kernels) out of the timings
        epoch(case, model, optimisers[kind], inputs[:warm], labels[:warm], seed=0)
    wall: dict[str, list[float]] = {"relu": [], "snn": []}
    cpu: dict[str, list[float]] = {"relu": [], "snn": []}
    load_before = load_average()
    for repeat in range(repeats):
        if not interleave:
            for kind, model in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                epoch(case, model, optimisers[kind], inputs, labels, seed=repeat + 1)
                wall[kind].append(time.perf_counter() - start)
                cpu[kind].append(time.process_time() - start_cpu)
            continue
        streams = {k: iter(TensorBatches(inputs, labels, case.batch_size, seed=repeat + 1)) for k in models}
        spent = {k: [0.0, 0.0] for k in models}
        for _ in range(-(-len(inputs) // (case.batch_size * interleave))):
            for kind, model in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                train_epoch(model, itertools.islice(streams[kind], interleave), optimisers[kind])
                spent[kind][0] += time.perf_counter() - start
                spent[kind][1] += time.process_time() - start_cpu
        for kind in models:
            wall[kind].append(spent[kind][0])
            cpu[kind].append(spent[kind][1])
    steps = -(-len(inputs) // case.batch_size)
    relu_s, snn_s = statistics.median(wall["relu"]), statistics.median(wall["snn"])
    relu_cpu, snn_cpu = statistics.median(cpu["relu"]), statistics.median(cpu["snn"])
    return {
        "samples": len(inputs), "steps": steps, "repeats": repeats,
        "relu_s": relu_s, "snn_s": snn_s, "ratio": snn_s / relu_s,
        "relu_ms_per_step": 1e3 * relu_s / steps, "snn_ms_per_step": 1e3 * snn_s / steps,
        "relu_cpu_s": relu_cpu, "snn_cpu_s": snn_cpu, "cpu_ratio": snn_cpu / relu_cpu,
        "all_wall_s": wall, "all_cpu_s": cpu, "load_before": load_before, "load_after": load_average(),
    }


def worker(case: Case, samples: int, vgg_steps: int) -> None:
    """The competing process: trains the same case (ReLU and SNN alternating) until it is terminated."""
    inputs, labels = case_data(case, samples, vgg_steps)
    models = build(case, inputs)
    optimisers = {k: torch.optim.Adam(m.parameters(), lr=5e-4) for k, m in models.items()}
    first = True
    seed = 0
    while True:
        for kind, model in models.items():
            n = 4 * case.batch_size if first else len(inputs)
            epoch(case, model, optimisers[kind], inputs[:n], labels[:n], seed=seed)
            seed += 1
        if first:
            print("ready", flush=True)
            first = False


def start_competitor(case: Case, threads: int, samples: int, vgg_steps: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TTFS_THREADS=str(threads))
    script = Path(sys.argv[0])  # this file, or the name it was started under
    launch = [str(script.absolute())] if script.suffix == ".py" and script.exists() else ["-m", "benchmarks.speed"]
    cmd = [sys.executable, *launch, "--worker", case.name, "--threads", str(threads),
           "--samples", str(samples), "--vgg-steps", str(vgg_steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()  # blocks until it trains at full speed
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the competing process did not start (exit code {proc.wait()})")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_case(case: Case, args) -> dict:
    samples = args.samples if case.model != "lenet5" else args.lenet_samples
    inputs, labels = case_data(case, samples, args.vgg_steps)
    result = {"case": case.name, "label": case.label, "model": case.model, "batch_size": case.batch_size,
              "dtype": case.dtype, "data": case.data, "model_kwargs": dict(case.kwargs)}
    for mode in (["alone"] if args.no_compete else ["alone", "competing"]):
        workers = 1 if mode == "alone" else 2
        threads = args.threads or threads_for(case.model, case.batch_size, workers)[0]
        torch.set_num_threads(threads)
        proc = start_competitor(case, threads, samples, args.vgg_steps) if mode == "competing" else None
        try:
            interleave = case.interleave if args.interleave is None else args.interleave
            r = measure(case, inputs, labels, args.repeats, interleave)
            r["interleave_steps"] = interleave
        finally:
            if proc is not None:
                stop(proc)
        r["threads"] = threads
        result[mode] = r
        print(f"  {case.label} {mode:9s} threads {threads}: ReLU {r['relu_s']:.2f} s, SNN {r['snn_s']:.2f} s, "
              f"ratio {r['ratio']:.3f} (cpu {r['cpu_ratio']:.3f}), load {r['load_before']:.2f}->{r['load_after']:.2f}",
              flush=True)
    if "competing" in result:
        for kind in ("relu", "snn"):
            result[f"{kind}_competing_over_alone"] = result["competing"][f"{kind}_s"] / result["alone"][f"{kind}_s"]
    return result


def markdown(report: dict) -> str:
    lines = [
        "# Training speed: SNN vs ReLU",
        "",
        f"{report['machine']}, {report['cores']} cores, torch {report['torch']}, commit {report.get('git_commit')}; "
        f"command: `{report['command']}`.",
        "ReLU and SNN alternate in one process (A B A B ...); times are medians over the repeats "
        "(wall clock); ratio = SNN / ReLU. *competing*: a second process trains the same case at the same "
        "time; slowdown = competing / alone. Load = 1-minute load average before -> after.",
        "",
        "| case | mode | threads | steps | ReLU s | SNN s | ReLU ms/step | SNN ms/step | SNN/ReLU | CPU-time ratio "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in report["cases"]:
        for mode in ("alone", "competing"):
            if mode not in res:
                continue
            r = res[mode]
            lines.append(
                f"| {res['label']} | {mode} | {r['threads']} | {r['steps']} x {r['repeats']} | {r['relu_s']:.2f} | "
                f"{r['snn_s']:.2f} | {r['relu_ms_per_step']:.2f} | {r['snn_ms_per_step']:.2f} | **{r['ratio']:.3f}** | "
                f"{r['cpu_ratio']:.3f} | {r['load_before']:.1f} -> {r['load_after']:.1f} |")
    slow = [res for res in report["cases"] if "competing" in res]
    if slow:
        lines += ["", "| case | ReLU competing / alone | SNN competing / alone |", "|---|---|---|"]
        for res in slow:
            lines.append(f"| {res['label']} | {res['relu_competing_over_alone']:.2f} | "
                         f"{res['snn_competing_over_alone']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--quick", action="store_true",
                        help="small epochs and few VGG steps (about two minutes in all)")
    parser.add_argument("--repeats", type=int, help="ReLU/SNN pairs per measurement (default 3)")
    parser.add_argument("--samples", type=int, help="FC2 epoch size (default: the whole training split)")
    parser.add_argument("--lenet-samples", type=int, help="LeNet5 epoch size (default: the whole training split)")
    parser.add_argument("--vgg-steps", type=int, help="VGG16 steps per measurement (default 10)")
    parser.add_argument("--threads", type=int, help="threads per process (default: pipeline.threads policy)")
    parser.add_argument("--interleave", type=int,
                        help="alternate ReLU and SNN every N steps (default per case, 50 for FC2 f32); 0: whole epochs")
    parser.add_argument("--no-compete", action="store_true", help="skip the runs with a competing process")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    parser.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = {"repeats": 3, "samples": 4000, "lenet_samples": 6400, "vgg_steps": 2}
    full = {"repeats": 3, "samples": 1 << 30, "lenet_samples": 1 << 30, "vgg_steps": 10}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        torch.set_num_threads(args.threads or 1)
        worker(CASES[args.worker], args.samples, args.vgg_steps)
        return
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    report = {"machine": platform.processor() or platform.machine(), "cores": available_cores(),
              "torch": torch.__version__, "python": platform.python_version(),
              "command": " ".join(["python -m benchmarks.speed", *sys.argv[1:]]), "git_commit": git_commit(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": load_average(), "cases": []}
    for name in args.cases:
        report["cases"].append(run_case(CASES[name], args))
    report["load_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
