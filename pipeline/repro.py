"""``dvc repro`` with several stages at a time.

DVC runs a pipeline's stages one after another, and the training stages of FC2- and LeNet5-sized
networks use one core each (pipeline/threads.py), so one `dvc repro` leaves the other cores idle.
This runs ``dvc --wait-for-lock repro --single-item STAGE`` in up to ``--jobs`` processes at once.
Each stage starts as soon as every stage it depends on has finished, and the one with the longest
chain of work still behind it goes first. DVC supports this: it releases its repository lock while a
stage's command runs and guards each output with a read/write lock. Every stage still decides for
itself whether it changed, so the outputs and dvc.lock are what a plain `dvc repro` gives.

    python -m pipeline.repro                    # the whole pipeline, one stage per core
    python -m pipeline.repro report -j 1        # what `report` needs, one stage at a time
    python -m pipeline.repro -f sweep@fmnist_fc2
    python -m pipeline.repro --gpus 0,1,2,3     # (the default on a 4-GPU machine) one GPU per stage

On a machine with several GPUs each running stage gets one of them (``CUDA_VISIBLE_DEVICES``), so the
paper profile's independent experiments (its 16 trials per row are experiments of their own) train
side by side, one per GPU; under ``device: auto`` a stage uses the GPU it was given.

Each stage's output goes to logs/repro/<stage>.log, and a progress bar shows the stages that are
running. A failed stage stops new launches. The stages already running finish, every finished stage
stays committed, and a rerun starts where this one stopped: interrupted training resumes from its
checkpoint. Each stage's wall time when it last ran is kept in logs/repro/times.json. The next run reads it to
order the stages; the first run counts stages instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import EXIT_INTERRUPTED, raise_interrupt
from .threads import available_cores

LOGS = Path("logs") / "repro"
TIMES = LOGS / "times.json"
_NODE = re.compile(r'^\s*"([^"]+)";\s*$')
_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)";\s*$')


def stage_graph(targets: Iterable[str] = ()) -> dict[str, set[str]]:
    """{stage: the stages it depends on} for ``targets`` and everything upstream (all stages if none),
    in dvc.yaml order, read from ``dvc dag --dot``."""
    graph: dict[str, set[str]] = {}
    for target in list(targets) or [None]:
        dot = subprocess.run(["dvc", "dag", "--dot", *([target] if target else [])], check=True,
                             capture_output=True, text=True).stdout
        for line in dot.splitlines():
            if m := _NODE.match(line):
                graph.setdefault(m[1], set())
            elif m := _EDGE.match(line):
                graph.setdefault(m[2], set()).add(m[1])
    return graph


def remaining_work(graph: dict[str, set[str]], seconds: dict[str, float]) -> dict[str, float]:
    """Per stage: its expected seconds plus the longest such chain downstream of it (critical path).
    A stage with no recorded time counts as one second, so the first run orders by chain length."""
    downstream: dict[str, set[str]] = {s: set() for s in graph}
    for stage, upstream in graph.items():
        for u in upstream:
            downstream[u].add(stage)
    work: dict[str, float] = {}

    def visit(stage: str) -> float:
        if stage not in work:
            work[stage] = seconds.get(stage, 1.0) + max((visit(d) for d in downstream[stage]), default=0.0)
        return work[stage]

    for stage in graph:
        visit(stage)
    return work


@dataclass
class Job:
    stage: str
    proc: subprocess.Popen
    log: Path
    gpu: str | None
    started: float = field(default_factory=time.perf_counter)


def _log_name(stage: str) -> str:
    return re.sub(r"[^\w@.-]", "_", stage) + ".log"


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run(targets: list[str], jobs: int, dvc_args: list[str], gpus: list[str] = ()) -> int:
    """Reproduce ``targets`` (all stages if empty) with up to ``jobs`` stages at once; the exit status.

    ``gpus``: device ids; each running stage gets one of its own (``CUDA_VISIBLE_DEVICES``), so at most
    ``len(gpus)`` stages run at once."""
    if gpus:
        jobs = min(jobs, len(gpus))
    free_gpus = list(gpus)
    graph = stage_graph(targets)
    previous = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    priority = remaining_work(graph, {s: r["seconds"] for s, r in previous.items() if r.get("ran")})
    LOGS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TTFS_JOBS=os.environ.get("TTFS_JOBS", str(jobs)))  # threads: pipeline/threads.py
    pending, running, done = dict(graph), [], {}
    failed: list[str] = []
    t0 = time.perf_counter()
    # disable=None: no bar off a terminal (CI logs get the one line per stage)
    bar = tqdm(total=len(graph), unit="stage", desc="dvc repro", dynamic_ncols=True, disable=None)

    def launch(stage: str) -> None:
        log = LOGS / _log_name(stage)
        gpu = free_gpus.pop(0) if free_gpus else None
        with log.open("w") as out:
            # a session of its own: an interruption reaches dvc and the stage's command (see below)
            proc = subprocess.Popen(["dvc", "--wait-for-lock", "repro", "--single-item", *dvc_args, stage],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        running.append(Job(stage, proc, log, gpu))

    def finish(job: Job) -> None:
        if job.gpu is not None:
            free_gpus.append(job.gpu)
        seconds = time.perf_counter() - job.started
        ran = "Running stage '" in job.log.read_text(errors="replace")
        done[job.stage] = {"seconds": round(seconds, 1), "started": round(job.started - t0, 1), "ran": ran,
                           "exit_status": job.proc.returncode}
        if job.proc.returncode != 0:
            failed.append(job.stage)
            bar.write(f"✗ {job.stage} failed after {seconds:.0f} s (exit {job.proc.returncode}); log: {job.log}")
        else:
            bar.write(f"✓ {job.stage}: {f'{seconds:.0f} s' if ran else 'up to date'}")
        bar.update()

    interrupted = False
    try:
        while pending or running:
            ready = sorted((s for s, up in pending.items() if up <= done.keys() and not failed),
                           key=lambda s: -priority[s])
            for stage in ready[:max(0, jobs - len(running))]:
                del pending[stage]
                launch(stage)
            bar.set_postfix_str(", ".join(j.stage for j in running))
            if not running:
                break  # a failure left stages that can no longer start
            time.sleep(0.2)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                finish(job)
    except KeyboardInterrupt:
        interrupted = True
        for job in running:  # the whole group: dvc does not pass SIGTERM on to the stage's command, whose
            with contextlib.suppress(ProcessLookupError):  # runner marks its MLflow run KILLED, keeps checkpoints
                os.killpg(job.proc.pid, signal.SIGTERM)
        for job in running:
            job.proc.wait()
            finish(job)
    finally:
        bar.close()
        ran = {s: r for s, r in done.items() if r["ran"] or s not in previous}  # up to date: keep its last time
        TIMES.write_text(json.dumps({**previous, **ran}, indent=2) + "\n")
    if interrupted:
        print(f"interrupted; finished stages are kept, rerun to go on (logs: {LOGS}/)", file=sys.stderr)
        return EXIT_INTERRUPTED
    for stage in failed:
        log = LOGS / _log_name(stage)
        print(f"\n--- {stage} failed; last lines of {log}:\n{_tail(log)}", file=sys.stderr)
    if failed:
        skipped = ", ".join(pending) or "none"
        print(f"\n{len(failed)} stage(s) failed: {', '.join(failed)}. Not started: {skipped}. Finished stages "
              "are kept: fix the cause and rerun (training resumes from its checkpoint).", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.repro", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages to reproduce with what they need (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=available_cores(),
                        help="stages at once (default: the cores this process may use)")
    parser.add_argument("-f", "--force", action="store_true", help="rerun stages even if nothing changed")
    parser.add_argument("--gpus", default=None,
                        help="comma-separated GPU ids, one per running stage (default: every GPU when there are "
                             "several, none with one or none; 'none': never set CUDA_VISIBLE_DEVICES)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: need at least 1")
    gpus = _gpus(args.gpus)
    signal.signal(signal.SIGTERM, raise_interrupt)
    return run(args.targets, args.jobs, ["--force"] if args.force else [], gpus)


def _gpus(spec: str | None) -> list[str]:
    """GPU ids to hand out: the given list, or (default) every visible GPU when there are several."""
    if spec is not None:
        return [] if spec.strip() == "none" else [g.strip() for g in spec.split(",") if g.strip()]
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    ids = [g.strip() for g in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
    return ids if len(ids) > 1 else []


if __name__ == "__main__":
    sys.exit(main())
