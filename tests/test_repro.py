"""pipeline.repro: `dvc repro` with several stages at a time, on a real DVC project of four stages
(a -> b, c -> d) whose commands record when they ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline_e2e import BIN

from pipeline.repro import remaining_work

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (BIN / "dvc").exists(), reason="needs dvc in the interpreter's environment")

# a stage command: sleep, then write "<start> <end>" to its output (and fail if told to)
STEP = ("import os, sys, time; t = time.time(); open(sys.argv[1] + '.pid', 'w').write(str(os.getpid())); "
        "time.sleep(float(sys.argv[2])); "
        "gpu = os.environ.get('CUDA_VISIBLE_DEVICES', '-'); "
        "open(sys.argv[1], 'w').write(f'{t} {time.time()} {gpu}'); sys.exit(int(sys.argv[3]))")


def _project(path: Path, failing: str | None = None) -> dict[str, str]:
    path.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=path, env=env, check=True)

    def stage(name: str, deps: list[str], seconds: float) -> dict:
        code = 3 if name == failing else 0
        return {"cmd": f'{sys.executable} -c "{STEP}" {name}.txt {seconds} {code}',
                **({"deps": deps} if deps else {}), "outs": [f"{name}.txt"]}

    dvc = {"stages": {"a": stage("a", [], 0), "b": stage("b", ["a.txt"], 2), "c": stage("c", ["a.txt"], 2),
                      "d": stage("d", ["b.txt", "c.txt"], 0)}}
    (path / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    return env


def _repro(path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.repro", *args], cwd=path, env=env, capture_output=True,
                          text=True, timeout=300)


def _committed(lock_file: Path) -> set[str]:
    """Stages in dvc.lock (none while it is missing or being rewritten)."""
    try:
        return set((yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}))
    except (OSError, yaml.YAMLError):
        return set()


def _interval(path: Path) -> tuple[float, float]:
    start, end = map(float, path.read_text().split()[:2])
    return start, end


def test_independent_stages_run_at_once_and_the_result_is_a_plain_dvc_repro(tmp_path):
    env = _project(tmp_path / "p")
    out = _repro(tmp_path / "p", env, "--jobs", "2")
    assert out.returncode == 0, out.stderr
    (b0, b1), (c0, c1) = _interval(tmp_path / "p/b.txt"), _interval(tmp_path / "p/c.txt")
    assert b0 < c1 and c0 < b1, "b and c did not overlap"
    assert _interval(tmp_path / "p/d.txt")[0] >= max(b1, c1) > min(b0, c0) >= _interval(tmp_path / "p/a.txt")[1]
    assert set(yaml.safe_load((tmp_path / "p/dvc.lock").read_text())["stages"]) == {"a", "b", "c", "d"}
    status = subprocess.run(["dvc", "status"], cwd=tmp_path / "p", env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    times = json.loads((tmp_path / "p/logs/repro/times.json").read_text())
    assert all(times[s]["ran"] and times[s]["exit_status"] == 0 for s in "abcd") and times["b"]["seconds"] >= 2
    assert "Running stage 'b'" in (tmp_path / "p/logs/repro/b.log").read_text()

    again = _repro(tmp_path / "p", env)
    assert again.returncode == 0 and again.stdout.count("up to date") == 4, again.stdout
    assert json.loads((tmp_path / "p/logs/repro/times.json").read_text())["b"] == times["b"]  # kept for ordering


def test_each_running_stage_gets_a_gpu_of_its_own(tmp_path):
    env = _project(tmp_path / "p")
    assert _repro(tmp_path / "p", env, "-j", "4", "--gpus", "3,5").returncode == 0
    gpu = {s: (tmp_path / f"p/{s}.txt").read_text().split()[2] for s in "abcd"}
    assert {gpu["b"], gpu["c"]} == {"3", "5"} and {gpu["a"], gpu["d"]} <= {"3", "5"}  # b, c ran at once
    assert _repro(tmp_path / "p", env, "-f", "--gpus", "none", "a").returncode == 0
    assert (tmp_path / "p/a.txt").read_text().split()[2] == env.get("CUDA_VISIBLE_DEVICES", "-")


def test_one_job_runs_stages_one_at_a_time(tmp_path):
    env = _project(tmp_path / "p")
    assert _repro(tmp_path / "p", env, "-j", "1", "d").returncode == 0
    (b0, b1), (c0, c1) = _interval(tmp_path / "p/b.txt"), _interval(tmp_path / "p/c.txt")
    assert b1 <= c0 or c1 <= b0


def test_a_failed_stage_stops_what_needs_it_and_keeps_what_finished(tmp_path):
    env = _project(tmp_path / "p", failing="c")
    out = _repro(tmp_path / "p", env, "-j", "2")
    assert out.returncode == 1
    assert "c failed" in out.stderr and "logs/repro/c.log" in out.stderr and "Not started: d" in out.stderr
    lock = yaml.safe_load((tmp_path / "p/dvc.lock").read_text())["stages"]
    assert set(lock) == {"a", "b"} and not (tmp_path / "p/d.txt").exists()


def test_targets_and_force(tmp_path):
    env = _project(tmp_path / "p")
    assert _repro(tmp_path / "p", env, "b").returncode == 0
    assert not (tmp_path / "p/c.txt").exists()  # only what b needs
    first = _interval(tmp_path / "p/b.txt")
    assert _repro(tmp_path / "p", env, "-f", "b").returncode == 0
    assert _interval(tmp_path / "p/b.txt")[0] > first[1]


def test_the_longest_chain_of_work_goes_first():
    graph = {"a": set(), "short": {"a"}, "long1": {"a"}, "long2": {"long1"}, "end": {"short", "long2"}}
    by_count = remaining_work(graph, {})
    assert by_count["long1"] > by_count["short"] and by_count["a"] == 4
    timed = remaining_work(graph, {"short": 100.0, "long1": 5.0, "long2": 5.0})
    assert timed["short"] > timed["long1"] and timed["a"] == 1 + 100 + 1


def test_sigterm_stops_the_running_stages_and_keeps_the_finished_ones(tmp_path):
    import signal
    import time

    env = _project(tmp_path / "p")
    dvc = yaml.safe_load((tmp_path / "p/dvc.yaml").read_text())
    dvc["stages"]["b"]["cmd"] = dvc["stages"]["b"]["cmd"].replace(" 2 0", " 120 0")  # b would take 2 minutes
    (tmp_path / "p/dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.repro", "-j", "2"], cwd=tmp_path / "p", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock_file, deadline = tmp_path / "p/dvc.lock", time.time() + 60
    while "c" not in _committed(lock_file):
        assert time.time() < deadline and proc.poll() is None, "c was not committed within 60 s"
        time.sleep(0.2)  # then b is still sleeping
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    lock = yaml.safe_load(lock_file.read_text())["stages"]
    assert {"a", "c"} <= set(lock) and "b" not in lock and not (tmp_path / "p/d.txt").exists()
    b_command = int((tmp_path / "p/b.txt.pid").read_text())  # stopped too, not left running on its own
    for _ in range(50):
        try:
            os.kill(b_command, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the interrupted stage's command is still running")
