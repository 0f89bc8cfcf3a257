"""Code dependencies: dvc.yaml's code deps, checkpoint names and study keys all come from each stage's
import closure (pipeline/deps.py), so that editing any code a stage runs reruns it and never resumes
a checkpoint written by other code."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_e2e import BIN, COPIED, TINY, Repo, copy_repo

from pipeline import checkpoint, deps

ROOT = Path(__file__).resolve().parents[1]
needs_dvc = pytest.mark.skipif(not (BIN / "dvc").exists() or shutil.which("git") is None,
                               reason="needs dvc in the interpreter's environment and git")


def _toy_params() -> dict:
    """The e2e toy pipeline cut to one FC2 experiment with one epoch per training stage."""
    params = copy.deepcopy(TINY)
    params["experiments"] = {"tiny_fc2": params["experiments"]["tiny_fc2"]}
    params["experiments"]["tiny_fc2"]["pretrain"]["epochs"] = 1
    return params


def _tasks_copy(tmp_path: Path, extra: tuple[str, ...], tools: tuple[str, ...]) -> Repo:
    """A plain copy (no .git) for running ./tasks.sh: its .venv forwards to this interpreter's, and PATH
    holds only ``tools``, so nothing gets installed."""
    path = copy_repo(tmp_path / "copy", (*COPIED, "tasks.sh", "pyproject.toml", "constraints.txt", ".dvc", *extra))
    (path / ".venv/bin").mkdir(parents=True)
    for tool in ("python", "dvc"):
        (path / ".venv/bin" / tool).write_text(f'#!/bin/sh\nexec "{BIN / tool}" "$@"\n')
        (path / ".venv/bin" / tool).chmod(0o755)
    (path / ".venv/.installed").touch()
    bin_dir = tmp_path / "tools"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    repo = Repo(path, tmp_path / "tracking" / "mlflow.db")
    repo.env["PATH"] = str(bin_dir)
    return repo


def _stage(name: str) -> str:
    return name.split("@", 1)[0]


# -- the closure -------------------------------------------------------------------------------------


def test_closure_follows_every_import_form(tmp_path):
    """Absolute, relative, ``from . import``, function-level imports, parent packages and templates;
    third-party modules and unimported project files stay out."""
    files = {
        "stages/__init__.py": "",
        "stages/foo.py": "import os\nimport torch\n\ndef main():\n    from pipeline import a\n",
        "pipeline/__init__.py": "",
        "pipeline/a.py": "from .b import thing\nfrom . import c\n",
        "pipeline/b.py": "import ttfs.sub.d\nthing = 1\n",
        "pipeline/c.py": "",
        "pipeline/unused.py": "",
        "pipeline/templates/report.md.j2": "{{ x }}",
        "ttfs/__init__.py": "",
        "ttfs/sub/__init__.py": "from ..e import y\n",
        "ttfs/sub/d.py": "",
        "ttfs/e.py": "y = 2\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert deps.closure("foo", tmp_path) == sorted(set(files) - {"pipeline/unused.py"})
    before = deps.code_hash("foo", tmp_path)
    (tmp_path / "pipeline/unused.py").write_text("# not imported\n")
    assert deps.code_hash("foo", tmp_path) == before
    (tmp_path / "pipeline/templates/report.md.j2").write_text("{{ y }}")
    assert deps.code_hash("foo", tmp_path) != before


def test_dvc_yaml_code_deps_are_one_stamp_per_stage_written_by_the_code_stage(tmp_path):
    """(a) Every stage depends on its stamp code/<stage>.sha256, which the `code` stage writes from the
    stage's closure; `code` depends on the code directories and outputs every stamp."""
    declared = deps._declared(ROOT / "dvc.yaml")
    assert set(declared) == {"code", "prepare", "pretrain", "convert", "finetune", "evaluate", "sweep", "tune",
                             "dynamics", "summary", "tune_summary", "report"}
    for stage, entries in declared.items():
        code = [d for d in entries if deps.is_code(d)]
        assert code == (["ttfs", "pipeline", "stages"] if stage == "code" else [f"code/{stage}.sha256"]), stage
    out = subprocess.run([sys.executable, "-m", "pipeline.deps", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # a stamp is the closure, a hash per file: it changes with a file of the closure and with nothing else
    code = copy_repo(tmp_path / "code", ("pipeline", "stages", "ttfs"))
    (path,) = deps.write_stamps(["convert"], code)
    listed = [line.split("  ", 1)[1] for line in path.read_text().splitlines()[2:]]
    assert listed == deps.closure("convert", code) and "ttfs/metrics.py" in listed
    before = path.read_text()
    (code / "stages/report.py").write_text((code / "stages/report.py").read_text() + "# not convert's\n")
    assert deps.write_stamps(["convert"], code)[0].read_text() == before
    (code / "ttfs/metrics.py").write_text((code / "ttfs/metrics.py").read_text() + "# convert's\n")
    after = deps.write_stamps(["convert"], code)[0].read_text()
    diff = [b for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(diff) == 2 and diff[0].startswith("code_hash ") and diff[1].endswith("  ttfs/metrics.py")
    # what dvc.yaml lists wrongly is named
    bad = tmp_path / "dvc.yaml"
    bad.write_text("stages:\n  code:\n    cmd: x\n    deps: [ttfs, pipeline, stages]\n    outs: [code/report.sha256]\n"
                   "  report:\n    cmd: y\n    deps: [stages/report.py]\n  convert:\n    cmd: z\n"
                   "    deps: [code/convert.sha256]\n")
    assert deps.problems(bad) == ["report: missing code/report.sha256",
                                  "report: not a code dep of this layout (stale) stages/report.py",
                                  "code: outs miss code/convert.sha256"]


def test_write_keeps_data_deps_comments_and_layout():
    text = ("stages:\n  report:  # the last\n    cmd: python -m stages.report\n    deps:\n"
            "      - stages/report.py\n      - ttfs/gone.py\n      # directories below\n"
            "      - metrics   # ordering\n    outs:\n      - reports/report.md\n")
    out = deps.rewrite(text)
    lines = out.splitlines()
    want = ["      - code/report.sha256", "      # directories below", "      - metrics   # ordering"]
    assert lines[4: 4 + len(want)] == want
    assert lines[:4] == text.splitlines()[:4] and lines[-2:] == ["    outs:", "      - reports/report.md"]
    assert deps.rewrite(out) == out


# -- dvc status after a code edit --------------------------------------------------------------------


@needs_dvc
def test_editing_a_library_file_makes_dvc_rerun_every_stage_that_imports_it(tmp_path):
    """(b) The real judge: after a toy `dvc repro`, appending a comment to ttfs/metrics.py makes the
    `code` stage rerun, and then `dvc status` reports convert, and every other reproduced stage whose
    closure holds the file, changed (through its stamp)."""
    repo = Repo(copy_repo(tmp_path / "repo"), tmp_path / "tracking" / "mlflow.db")
    repo.set_params(_toy_params())
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q"), ("git", "add", "-A"), ("git", "commit", "-qm", "toy")):
        repo.run(*cmd)
    target = "convert@tiny_fc2"
    repo.run("dvc", "repro", target, timeout=600)
    ran = {"prepare@synthetic", "pretrain@tiny_fc2", target}
    assert not set(json.loads(repo.run("dvc", "status", "--json", *ran).stdout))
    assert not set(json.loads(repo.run("dvc", "status", "--json", "code").stdout))  # __pycache__ is ignored
    with open(repo.path / "ttfs/metrics.py", "a") as f:
        f.write("# an edit that changes nothing but the file\n")
    status = json.loads(repo.run("dvc", "status", "--json", "code").stdout)
    assert {"changed deps": {"ttfs": "modified"}} in status["code"]  # the stamps are written anew...
    repo.run("dvc", "repro", "code")
    status = json.loads(repo.run("dvc", "status", "--json", *ran).stdout)
    expected = {s for s in ran if "ttfs/metrics.py" in deps.closure(_stage(s))}  # ...and change with the closure
    assert target in expected
    assert set(status) == expected, f"dvc status reports {sorted(status)}; the closures say {sorted(expected)}"
    assert {"changed deps": {"code/convert.sha256": "modified"}} in status[target]


# -- checkpoints and study keys ----------------------------------------------------------------------


def test_checkpoint_name_changes_with_the_code_and_old_ones_are_dropped(tmp_path, monkeypatch, capsys):
    """(c) A checkpoint written before ttfs/train.py changed is not resumed: the name differs, and the
    stage says why it starts over."""
    code = copy_repo(tmp_path / "code", ("pipeline", "stages", "ttfs"))
    monkeypatch.setattr(deps, "ROOT", code)
    before = deps.code_hash("finetune")
    old = checkpoint.path_for(tmp_path, "x", "finetune", "k")
    checkpoint.save(old, {"epoch": 1})
    setting = old.with_name(f"{old.stem}-jitter-0.05.pt")  # how a sweep names its settings' checkpoints
    checkpoint.save(setting, {"epoch": 1})
    assert checkpoint.path_for(tmp_path, "x", "finetune", "k") == old and old.exists() and setting.exists()
    assert capsys.readouterr().err == ""  # same code: resumed, silently
    assert "ttfs/train.py" in deps.closure("finetune")
    with open(code / "ttfs/train.py", "a") as f:
        f.write("# edited\n")
    assert deps.code_hash("finetune") != before
    new = checkpoint.path_for(tmp_path, "x", "finetune", "k")
    assert new != old and not old.exists() and not setting.exists() and checkpoint.load(new) is None
    err = capsys.readouterr().err
    assert f"checkpoint {old.relative_to(tmp_path)} was written by other code" in err and "starting over" in err
    assert new.name.startswith("finetune-k-")


def test_sweep_and_tune_identities_are_their_stage_code_hashes():
    from pipeline import tuning

    assert not hasattr(tuning, "CODE_FILES")
    assert tuning.code_hash() == deps.code_hash("tune")


# -- without git -------------------------------------------------------------------------------------


@needs_dvc
def test_tasks_repro_runs_in_a_copy_without_git(tmp_path):
    """(d) `./tasks.sh repro` in a plain copy (no .git) configures DVC without SCM and reproduces.
    The copy's .venv forwards to this interpreter's; PATH has no apt-get, so nothing gets installed."""
    repo = _tasks_copy(tmp_path, (), ("bash", "dirname"))
    path = repo.path
    repo.set_params(_toy_params())
    assert not (path / ".git").exists()
    out = repo.run("./tasks.sh", "repro", "prepare", timeout=300)
    assert (path / "data/prepared/synthetic/meta.json").is_file(), out.stderr
    assert repo.run(str(BIN / "dvc"), "config", "--local", "core.no_scm").stdout.strip() == "true"
    again = repo.run("./tasks.sh", "repro", "prepare")  # idempotent: nothing to do the second time
    assert "Running stage" not in again.stdout + again.stderr
    assert (path / ".dvc/config.local").read_text().count("no_scm") == 1


@needs_dvc
def test_a_profile_runs_in_its_own_workspace_and_leaves_params_yaml_alone(tmp_path):
    """`./tasks.sh profile NAME` reproduces params.NAME.yaml in profiles/NAME; the committed params.yaml and
    the project's own outputs are untouched, and its MLflow runs carry the profile's name."""
    repo = _tasks_copy(tmp_path, (".dvcignore", "params.schema.json"), ("bash", "dirname", "cp", "mkdir", "rm", "ls"))
    path = repo.path
    repo.set_params(TINY)
    committed = (path / "params.yaml").read_bytes()
    (path / "params.toy.yaml").write_text(json.dumps(_toy_params()))  # JSON is YAML
    out = repo.run("./tasks.sh", "profile", "toy", "prepare", timeout=300)
    assert (path / "profiles/toy/data/prepared/synthetic/meta.json").is_file(), out.stderr
    assert (path / "params.yaml").read_bytes() == committed and not (path / "data").exists()
    runs = repo.client().search_runs([repo.client().get_experiment_by_name("datasets").experiment_id])
    assert [r.data.tags.get("profile") for r in runs] == ["toy"]
    bad = repo.run("./tasks.sh", "profile", "nope", check=False)
    assert bad.returncode == 2 and "no params.nope.yaml" in bad.stderr
