"""Wall time of the default profile from a fresh clone, stage by stage.

Clones this repository (its committed HEAD) into a new directory and runs what ``./tasks.sh repro``
runs there (``python -m pipeline.repro``: ``dvc repro``, one stage per core at a time) with this
checkout's virtual environment (``.venv/bin`` first on PATH: the venv is "already installed"). Each
stage's wall time and start come from the driver's logs/repro/times.json; each stage's MLflow runs go
to the clone's own store. Prints a table and writes benchmarks/results/repro_time.{json,md}.

    .venv/bin/python benchmarks/repro_time.py                     # about 14 minutes on 2 cores
    .venv/bin/python benchmarks/repro_time.py --workdir /tmp/fresh --keep --jobs 1  # dvc's one at a time

The machine's load (1-minute average) before and after is recorded: a busy machine is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def timed_repro(workdir: Path, log: Path, jobs: int) -> tuple[list[dict], float, int]:
    """Reproduce the default profile in ``workdir``; (stages with seconds, total seconds, exit status)."""
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's own store
    started = time.perf_counter()
    with log.open("w") as out, subprocess.Popen(["python", "-m", "pipeline.repro", "--jobs", str(jobs)], cwd=workdir,
                                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True, bufsize=1) as proc:
        for line in proc.stdout:
            out.write(line)
            print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {line.rstrip()}", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    times = json.loads((workdir / "logs" / "repro" / "times.json").read_text())
    stages = sorted(({"stage": s, "start": r["started"], "seconds": r["seconds"]} for s, r in times.items()),
                    key=lambda s: s["start"])
    return stages, total, proc.returncode


def table(result: dict) -> str:
    lines = ["# Default profile from a fresh clone", "",
             f"{result['machine']}, {result['cores']} cores, commit {result['commit']}; command: "
             f"`benchmarks/repro_time.py`. Load {result['load_before']:.1f} -> {result['load_after']:.1f}.", "",
             f"Stages at a time: {result['jobs']}.", "",
             "| stage | started (s) | seconds |", "|---|---:|---:|"]
    lines += [f"| {s['stage']} | {s['start']:.0f} | {s['seconds']:.0f} |" for s in result["stages"]]
    total = result["total_seconds"]
    lines += [f"| **total (wall time)** | | **{total:.0f}** ({total / 60:.1f} min) |",
              f"| sum of stage times | | {sum(s['seconds'] for s in result['stages']):.0f} |"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to clone (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (default: removed after a success)")
    parser.add_argument("--out", type=Path, default=RESULTS / "repro_time.json")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="stages at a time (default: the cores, as ./tasks.sh repro)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ttfs-repro-")) / "clone"
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"{workdir} is not empty: name a new directory with --workdir")
    git("clone", "--quiet", str(ROOT), str(workdir))
    load_before = os.getloadavg()[0]
    stages, total, status = timed_repro(workdir, workdir.parent / "repro.log", args.jobs)
    result = {"machine": platform.machine(), "cores": len(os.sched_getaffinity(0)), "commit": git("rev-parse",
              "--short", "HEAD", cwd=workdir), "load_before": load_before, "load_after": os.getloadavg()[0],
              "exit_status": status, "jobs": args.jobs, "total_seconds": total, "stages": stages}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))
    if status != 0:
        print(f"the reproduction failed (exit {status}); log: {workdir.parent / 'repro.log'}", file=sys.stderr)
        return status
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
