"""The report stage: paper-vs-ours table, per-experiment sections, absent and malformed parts, HTML, run ids.

The results tree is written through the result models (pipeline/results.py) from the toy results of
tests/test_results.py; one test runs the real tiny pipeline in-process and checks that the report
names exactly the MLflow runs that produced it.
"""

from __future__ import annotations

import copy
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from test_results import evaluate_doc, sample

from pipeline import params as P
from pipeline import report
from pipeline import results as R
from pipeline.errors import ArtifactError
from pipeline.report.builder import DYNAMICS_PLOTS, EVALUATE_PLOTS, SWEEP_PLOT

EXP = {"seed": 0, "device": "cpu", "dtype": "float32", "pretrain": {}, "convert": {}, "finetune": {},
       "evaluate": {}, "sweep": {}}
PARAMS = {
    "data": {"datasets": {"fashion_mnist": {}, "cifar10": {}}},
    "experiments": {
        "fmnist_fc2": {**EXP, "dataset": "fashion_mnist", "model": {"name": "fc2"},
                       "pretrain": {"nonpositive_bias": True}},
        "c10_l1_s0": {**EXP, "dataset": "cifar10", "model": {"name": "vgg16"}, "finetune": {"l1": 1e-6}},
        "c10_l1_s1": {**EXP, "dataset": "cifar10", "seed": 1, "model": {"name": "vgg16"},
                      "finetune": {"l1": "1e-06"}},  # as `dvc exp run -S` writes it
    },
    "tune": {"fmnist_fc2": {}},
    "dynamics": {"dataset": "fashion_mnist", "depth": 4, "width": 16},
}
#: a distinct params hash per result, as the stages write them
HASHES = {name: f"{i + 1:x}" * 16 for i, name in enumerate(R.ARTIFACTS)}
HASHES["pareto"] = HASHES["tune"]


def params(raw: dict | None = None) -> P.Params:
    return P.parse(copy.deepcopy(PARAMS if raw is None else raw))


def put(root: Path, name: str, experiment: str = "fmnist_fc2", **changes) -> R.StageResult:
    result = sample(name, experiment, params_hash=HASHES[name], **changes)
    result.write(root / type(result).path(experiment))
    return result


def _png(root: Path, rel: str) -> None:
    from pipeline import plots

    fig, ax = plots.plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    plots.save_png(fig, root / rel)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    for name in R.ARTIFACTS:
        put(root, name)
    (root / "plots/fmnist_fc2/pareto.html").write_text("<html>interactive</html>")
    for png in ("pretrain_curve.png", "finetune_curve.png", *(p for p, _ in EVALUATE_PLOTS), "pareto.png",
                *SWEEP_PLOT.values()):
        _png(root, f"plots/fmnist_fc2/{png}")
    for png in DYNAMICS_PLOTS:
        _png(root, f"plots/dynamics/{png}")
    put(root, "evaluate", "c10_l1_s0", dataset="cifar10", **evaluate_doc(0.9359, 0.9310, 0.21))
    put(root, "evaluate", "c10_l1_s1", dataset="cifar10", **evaluate_doc(0.9361, 0.9340, 0.19))
    return root


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite database to copy (creating one costs seconds of migrations)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def store(template: Path, where: Path) -> str:
    shutil.copy(template, where / "mlflow.db")
    return f"sqlite:///{where / 'mlflow.db'}"


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row ('\\|' stays inside its cell)."""
    parts = line.strip().replace("\\|", "\0").split("|")[1:-1]
    return [p.strip().replace("\0", "\\|") for p in parts]


def rows(md: str, *first: str) -> list[list[str]]:
    """Cells of the Markdown table rows whose first cells are ``first``."""
    return [cells(line) for line in md.splitlines()
            if line.startswith("| ") and cells(line)[: len(first)] == list(first)]


def table(md: str, *header: str) -> list[list[str]]:
    """Body rows of the first Markdown table whose header starts with ``header``."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and cells(line)[: len(header)] == list(header):
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                body.append(cells(row))
            return body
    raise AssertionError(f"no table with header {header}")


def build(p: P.Params, root: Path, **kw) -> tuple[str, str]:
    kw.setdefault("tracking_uri", f"sqlite:///{root / 'absent.db'}")
    return report.build_report(p, root, **kw)


# -- the tables ---------------------------------------------------------------------------------------


def test_paper_table_puts_our_numbers_beside_the_papers(tree):
    md, _ = build(params(), tree)
    header = rows(md, "dataset", "model", "L1")[0]
    col = {name: i for i, name in enumerate(header)}
    (fc2,) = rows(md, "fMNIST", "FC2", "no")
    assert fc2[col["ReLU paper"]] == "90.14" and fc2[col["ReLU ours"]] == "88.09"
    assert fc2[col["SNN paper"]] == "90.14" and fc2[col["SNN ours"]] == "89.50"
    assert fc2[col["SNN ours − paper (pt)"]] == "-0.64"
    assert fc2[col["spikes/neuron ours"]] == "0.203" and fc2[col["experiments"]] == "`fmnist_fc2`"
    # two seeds of the L1 variant: mean ± sample std beside the paper's L1 numbers
    (l1,) = rows(md, "CIFAR10", "VGG16", "yes")
    assert l1[col["SNN paper"]] == "93.28 ± 0.02" and l1[col["SNN ours"]] == "93.25 ± 0.21 (n = 2)"
    assert l1[col["ReLU paper"]] == "93.59 (converted)" and l1[col["ReLU ours"]] == "93.60 ± 0.01 (n = 2)"
    assert l1[col["spikes/neuron paper"]] == "0.20" and l1[col["spikes/neuron ours"]] == "0.200 ± 0.014 (n = 2)"
    assert l1[col["experiments"]] == "`c10_l1_s0`, `c10_l1_s1`"
    # paper results no experiment of this profile reproduces: no rows, one line naming them all
    for dataset, model in (("MNIST", "FC2"), ("MNIST", "FC16"), ("MNIST", "VGG16"), ("fMNIST", "LeNet5"),
                           ("CIFAR10", "VGG16"), ("CIFAR100", "VGG16"), ("PLACES365", "VGG16")):
        assert all(r[col["SNN ours"]] != "not run" for r in rows(md, dataset, model)), (dataset, model)
    assert not rows(md, "CIFAR10", "VGG16", "no") and not rows(md, "PLACES365", "VGG16")
    (line,) = [x for x in md.splitlines() if x.startswith("Paper results no experiment")]
    assert line == ("Paper results no experiment of this profile (`default`) reproduces: MNIST FC2, MNIST FC16, "
                    "MNIST VGG16, fMNIST LeNet5, CIFAR10 VGG16, CIFAR100 VGG16, CIFAR100 VGG16 + L1, "
                    "PLACES365 VGG16, PLACES365 VGG16 + L1. "
                    "The paper profile defines every row: `./tasks.sh profile paper` (`params.paper.yaml`).")
    assert "fMNIST 93.14" in md  # the best published single-spike results


def test_beyond_the_paper_sets_a_marked_experiment_beside_the_paper_and_pttfs(tree):
    raw = copy.deepcopy(PARAMS)
    md, _ = build(params(raw), tree)
    assert "## Beyond the paper" not in md and "#beyond-the-paper" not in md  # nothing marked: no section
    raw["experiments"]["fmnist_fc2"]["beyond_paper"] = True
    md, page = build(params(raw), tree)
    assert "- [Beyond the paper](#beyond-the-paper)" in md and 'id="beyond-the-paper"' in page
    section = md.split("## Beyond the paper", 1)[1].split("\n## ", 1)[0]
    body = table(section, "network", "source", "SNN (%)")
    assert body[0] == ["`fmnist_fc2` (fc2)", "this profile (evaluate, test)", "89.50", "88.09", "0.203", "694",
                       "0.2910"]
    assert [r[0] for r in body[1:]] == ["fMNIST FC2", "fMNIST LeNet5", "best published single-spike"]
    assert body[2][1:4] == ["Stanojevic et al., Nat. Commun. 2024", "90.94 ± 0.25", "90.91 ± 0.17"]
    assert body[3][1:3] == ["Che et al., AAAI 2026, PTTFS", "93.14"]
    assert ("SNN test accuracy 89.50 %: -1.44 pt against the paper's best (fMNIST LeNet5) (90.94 %); -3.64 pt "
            "against the best published single-spike result (Che et al., AAAI 2026, PTTFS) (93.14 %).") in section
    assert table(section, "layer", "spikes per neuron") == [["1", "0.2026", "694"]]
    assert table(section, "trial", "L1 λ")  # the tune front, as in the experiment's own section
    assert "Target check:" in section


def test_experiment_sections_carry_conversion_evaluation_energy_and_constraints(tree):
    md, _ = build(params(), tree)
    assert rows(md, "`fmnist_fc2`", "fMNIST", "FC2", "no")[0][4:10] == ["88.09", "89.50", "+1.41", "99.81", "exact",
                                                                       "0.203"]
    # conversion exactness, float64 and the working dtype
    assert rows(md, "argmax agreement with the ReLU network (%)")[0][1:3] == ["100.0000", "100.0000"]
    assert rows(md, "max \\|logit SNN − logit ReLU\\|")[0][1:3] == ["1.78e-14", "9.54e-06"]
    assert rows(md, "max relative \\|Δ logit\\| (of the logit scale)")[0][1:3] == ["3.46e-16", "1.86e-07"]
    assert rows(md, "causality violations (spikes before their window)")[0][1] == "0"
    assert "**Conversion: exact**" in md and "Windows Δ per layer (τ_c): 1, 24." in md
    # evaluation: spikes, SynOps, energy, latency
    assert rows(md, "spikes per neuron (hidden layers)")[0][1] == "0.2026"
    assert rows(md, "SynOps per sample (every spike × its fan-out, SPEC 6)")[0][1] == "694"
    assert rows(md, "routed SynOps per sample (pool winners only)")[0][1] == "694"
    assert rows(md, "SNN")[0][1] == "361,281" and rows(md, "ANN (ReLU network)")[0][1] == "1,241,632"
    assert rows(md, "SNN / ANN")[0][1] == "0.2910" and rows(md, "saving (ANN / SNN)")[0][1] == "3.44×"
    assert rows(md, "latency to the output (τ_c)")[0][1] == "159.9"
    assert "0.9 pJ per synaptic operation" in md
    assert rows(md, "1", "0.2026", "694", "694")  # per layer
    # constraints: value, accuracy before and after fine-tuning, delta to the unconstrained SNN
    assert rows(md, "16", "89.01", "89.07", "-0.04", "+0.02")
    assert rows(md, "0.1", "0.000629", "88.80 ± 0.12", "88.79 ± 0.12", "-0.25", "-0.26")
    assert rows(md, "2", "6.90", "51.35", "-82.15", "-37.70")
    assert rows(md, "4", "88.85", "89.17", "-0.20", "+0.12", "0.200", "2.922", "8.55×", "54.7×")
    assert rows(md, "converted SNN's windows (1 + ζ)·X_n: the latency baseline")[0][-1] == "25"
    assert rows(md, "0.1", "0.000629", "88.80 ± 0.12")  # jitter: σ / Δ of the hidden window
    assert "on the spikes of the hidden layers (not the input" in md
    assert "fewest bits within 1.00 pt of the exact SNN after fine-tuning: 4" in md
    assert "> 90 % with 4-bit weights" in md
    assert md.count("hidden biases kept <= 0") == 1  # the training settings behind fmnist_fc2's numbers
    # Pareto front: baseline, then the front sparsest first; the target check; the interactive page
    assert [r[0] for r in table(md, "trial", "L1 λ")] == ["0 (baseline)", "2", "1"]
    assert rows(md, "1", "3.18e-03", "5e-05", "91.75", "0.133", "89.16", "0.132")
    assert "validation: trial 1 (λ = 3.18e-03) reaches 91.75 % at 0.133 spikes/neuron" in md
    assert "(../plots/fmnist_fc2/pareto.html)" in md
    # dynamics
    assert rows(md, "B1 (converted ReLU init)", "0.001", "converged", "40", "7.80", "100.00", "78.00", "75.90")
    assert rows(md, "α1, standard init", "1e-05", "stalled")[0][-3:] == ["172 (111)", "111 → 0", "0"]
    assert rows(md, "α1 standard, init", "0.3–1.4", "8.67e+04")
    search = rows(md, "α1, standard init", "diverged")  # the learning-rate search: loss (accuracy) per lr
    assert search[0][2].endswith("(10.40 %)") and search[0][-1] == "1e-05"
    assert "chosen: the lowest validation loss" in md and "(the lowest validation loss after" in md
    assert "B1's training loss equals ReLU's to within 1.6e-15 (≤ 1e-12) at all 9 records" in md
    assert "1.48e+05× B1's: exploding" in md
    for png in ("raster.png", "sweep_weight_bits.png", "pareto.png", "pretrain_curve.png"):
        assert f"(../plots/fmnist_fc2/{png})" in md
    assert "(../plots/dynamics/jacobian_spectra.png)" in md
    complete = md.split("## Experiment c10_l1_s0")[0]
    assert "Not run" not in complete and "missing:" not in complete


# -- absent and malformed parts -----------------------------------------------------------------------


def test_absent_stages_are_shown_as_absent_with_the_command_that_produces_them(tree):
    raw = copy.deepcopy(PARAMS)
    del raw["tune"], raw["dynamics"]
    raw["experiments"]["half_done"] = {**EXP, "dataset": "fashion_mnist", "model": {"name": "lenet5"}}
    raw["experiments"]["never_run"] = {**EXP, "dataset": "fashion_mnist", "model": {"name": "lenet5"}, "seed": 1}
    put(tree, "pretrain", "half_done")
    (tree / "metrics" / "dynamics.json").unlink()
    md, html = build(params(raw), tree)
    section = md.split("## Experiment half_done")[1].split("## Experiment never_run")[0]
    for stage in ("convert", "finetune", "evaluate", "sweep"):
        assert (f"> Not run: `metrics/half_done/{stage}.json` is missing. Produce it with "
                f"`dvc repro {stage}@half_done` (or `python -m stages.{stage} half_done`).") in section
    assert "params.yaml has no tune section for this experiment" in section
    assert "params.yaml has no `dynamics` section" in md and "`dvc repro dynamics`" in md
    assert "Plot missing: `plots/half_done/pretrain_curve.png` (written by `dvc repro pretrain@half_done`" in section
    # the tune outputs of fmnist_fc2 exist: they are shown although the section went away
    assert "Optuna study `fmnist_fc2-39634949a751c6b2`" in md
    (row,) = rows(md, "fMNIST", "LeNet5", "no")
    assert row[4] == "not run" and row[-1] == "`half_done`, `never_run` (2 not evaluated)"
    # an experiment without any results is one line, and has no rows in the MLflow table
    never = md.split("## Experiment never_run")[1].split("\n## ")[0]
    assert "> Not run: nothing under `metrics/never_run/` yet. Produce it with `dvc repro evaluate@never_run`" in never
    assert "###" not in never and not rows(md, "`never_run`", "pretrain")
    assert rows(md, "`half_done`")[0][-1] == "convert, finetune, evaluate, sweep"
    assert "<!DOCTYPE html>" in html and "<blockquote>" in html
    # a tune section without outputs, a missing plot, a missing dynamics result
    raw["tune"] = {"half_done": {}}
    raw["dynamics"] = PARAMS["dynamics"]
    (tree / "plots" / "fmnist_fc2" / "raster.png").unlink()
    md, _ = build(params(raw), tree)
    assert "> Not run: `plots/half_done/pareto.json` is missing. Produce it with `dvc repro tune@half_done`" in md
    assert "Plot missing: `plots/fmnist_fc2/raster.png` (written by `dvc repro evaluate@fmnist_fc2`" in md
    assert "> Not run: `metrics/dynamics.json` is missing. Produce it with `dvc repro dynamics`" in md
    assert rows(md, "`half_done`")[0][-1] == "convert, finetune, evaluate, sweep, tune"


@pytest.mark.parametrize(("rel", "field", "value", "message"), [
    ("metrics/fmnist_fc2/convert.json", "agreement", "1.0", "field agreement: input should be a valid number"),
    ("metrics/fmnist_fc2/evaluate.json", "energy_pj", {"snn_pj": 1.0}, "field energy_pj.ann_pj: required field"),
    ("plots/fmnist_fc2/pareto.json", "params_hash", None, "field params_hash: input should be a valid string"),
    ("metrics/dynamics.json", "networks", {"relu": {}}, "field networks.relu.lr: required field"),
])
def test_a_malformed_result_stops_the_report_naming_the_file_and_the_field(tree, rel, field, value, message):
    data = json.loads((tree / rel).read_text())
    (tree / rel).write_text(json.dumps(data | {field: value}))
    command = "dvc repro dynamics" if "dynamics" in rel else f"dvc repro {Path(rel).stem}@fmnist_fc2".replace(
        "pareto@", "tune@")
    with pytest.raises(ArtifactError) as err:
        build(params(), tree)
    assert str(err.value).startswith(f"{rel}: {message}") and str(err.value).endswith(f"rerun `{command}`")


def test_the_stage_exits_non_zero_on_a_malformed_result_and_writes_nothing(tree, monkeypatch, capsys):
    from stages import report as stage

    monkeypatch.chdir(tree)
    (tree / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tree / "metrics/fmnist_fc2/sweep.json").write_text("{not json")
    assert stage.main(["--no-mlflow"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("report failed: metrics/fmnist_fc2/sweep.json: not valid JSON (")
    assert "rerun `dvc repro sweep@fmnist_fc2`" in err
    assert not (tree / "reports").exists()
    (tree / "params.yaml").write_text("experiments: {x: {dataset: nope}}\n")
    assert stage.main(["--no-mlflow"]) == 2 and "invalid params: experiments.x" in capsys.readouterr().err


def test_nothing_at_all_still_gives_a_report(tmp_path):
    md, html = build(P.parse({}), tmp_path)
    assert "> No experiments in params.yaml." in md
    assert not rows(md, "MNIST", "FC2") and "reproduces: MNIST FC2, MNIST FC16," in md  # one line, no table
    assert html.startswith("<!DOCTYPE html>")


def test_the_report_code_has_no_broad_except_no_regex_markdown_and_no_raw_dict_lookups():
    package = Path(report.__file__).parent
    sources = [*package.rglob("*.py"), *package.rglob("*.j2"), Path(report.__file__).parents[2] / "stages/report.py"]
    assert len(sources) >= 9
    for path in sources:
        text = path.read_text()
        for pattern in ("except Exception", "except BaseException", "except:", "import re\n", "from re ", "re.sub",
                        "re.compile", ".get("):
            assert pattern not in text, f"{path}: {pattern}"
    assert not (package.parent / "report.py").exists()


# -- HTML ---------------------------------------------------------------------------------------------


class _Checker(HTMLParser):
    """Counts tags, collects every URL the page would load, and checks that tags nest properly."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        a = dict(attrs)
        self.srcs += [a["src"]] if "src" in a else []
        self.hrefs += [a["href"]] if "href" in a else []
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_html_is_one_standalone_page_that_requests_nothing(tree):
    md, page = build(params(), tree)
    assert page.startswith("<!DOCTYPE html>\n<html") and page.rstrip().endswith("</html>")
    checker = _Checker()
    checker.feed(page)
    assert not checker.errors and not checker.stack
    assert checker.counts["table"] == md.count("\n|---")  # one per Markdown table
    assert checker.counts["img"] == md.count("![") == 2 + 3 + 4 + 1 + 4
    assert all(src.startswith("data:image/png;base64,") for src in checker.srcs)  # no request for any figure
    assert "script" not in checker.counts and "link" not in checker.counts and "url(" not in page
    assert all(h.startswith("#") or h == "../plots/fmnist_fc2/pareto.html" for h in checker.hrefs)
    assert '<td style="text-align:right">89.50</td>' in page and "<style>" in page
    assert '<h2 id="experiment-fmnist_fc2">' in page and 'href="#experiment-fmnist_fc2"' in page
    # over the inline budget, figures are linked relative to the output directory instead
    _, linked = build(params(), tree, max_inline_bytes=0)
    assert 'src="../plots/fmnist_fc2/raster.png"' in linked and "data:image" not in linked
    assert "14 figure(s) beyond the first 0 MB are linked" in linked
    _, elsewhere = build(params(), tree, out_dir="deep/er", max_inline_bytes=0)
    assert 'src="../../plots/fmnist_fc2/raster.png"' in elsewhere


def test_same_inputs_give_the_same_bytes(tree):
    assert build(params(), tree) == build(params(), tree)
    assert build(params(), tree, lookup_runs=False) == build(params(), tree, lookup_runs=False)


# -- MLflow -------------------------------------------------------------------------------------------


def test_run_ids_come_from_the_tracking_store_by_the_params_hash_of_each_result(tree, empty_store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv(report.runs.ENV_UI, raising=False)

    uri = store(empty_store, tree)
    client = MlflowClient(uri)
    exp_id = client.create_experiment("fmnist_fc2")

    def run(stage: str, params_hash: str, status: str = "FINISHED", experiment: str = exp_id,
            dvc_stage: str | None = None, **extra) -> str:
        tags = {"dvc_stage": dvc_stage or f"{stage}@fmnist_fc2", "params_hash": params_hash,
                "mlflow.runName": stage, **extra}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.set_terminated(run_id, status)
        return run_id

    older = run("evaluate", HASHES["evaluate"])
    wanted = run("evaluate", HASHES["evaluate"])
    run("evaluate", "0123456789abcdef")  # newer, other params
    run("evaluate", HASHES["evaluate"], status="FAILED")  # newer, failed
    run("pretrain", "fedcba9876543210")  # only a run with other params: not the one behind the numbers
    sweep = run("sweep", HASHES["sweep"])
    run("sweep", HASHES["sweep"], **{"mlflow.parentRunId": sweep})  # nested: never picked
    study = run("tune", HASHES["tune"])
    crashed = run("convert", HASHES["convert"], status="FAILED")
    dyn = run("dynamics", HASHES["dynamics"], experiment=client.create_experiment("dynamics"), dvc_stage="dynamics")

    dyn_exp = client.get_experiment_by_name("dynamics").experiment_id

    def link(run_id: str, experiment: str = exp_id, ui: str = "http://127.0.0.1:5000") -> str:
        """A run id as the report writes it: a link to the run's page in the MLflow UI."""
        return f"[`{run_id}`]({ui}/#/experiments/{experiment}/runs/{run_id})"

    md, page = build(params(), tree, tracking_uri=uri)
    assert older != wanted
    assert rows(md, "`fmnist_fc2`", "evaluate") == [["`fmnist_fc2`", "evaluate", link(wanted)]]
    assert f"MLflow run (evaluate): {link(wanted)}" in md
    assert f'<a href="http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{wanted}"><code>{wanted}</code></a>' in page
    assert rows(md, "`fmnist_fc2`", "pretrain")[0][2] == "n/a"
    assert rows(md, "`fmnist_fc2`", "sweep")[0][2] == link(sweep)
    assert rows(md, "`fmnist_fc2`", "tune")[0][2] == link(study)
    assert rows(md, "`fmnist_fc2`", "convert")[0][2] == f"{link(crashed)} (latest run, FAILED)"
    assert rows(md, "`fmnist_fc2`", "finetune")[0][2] == "n/a"
    assert rows(md, "dynamics", "dynamics")[0][2] == link(dyn, dyn_exp)
    assert rows(md, "`c10_l1_s0`", "evaluate")[0][2] == "n/a"  # no MLflow experiment of that name
    # another UI: $TTFS_MLFLOW_UI; a tracking server is its own UI
    monkeypatch.setenv(report.runs.ENV_UI, "http://mlflow.lab:8080/")
    assert link(wanted, ui="http://mlflow.lab:8080") in build(params(), tree, tracking_uri=uri)[0]
    monkeypatch.delenv(report.runs.ENV_UI)
    assert report.runs.ui_base("https://tracking.example/") == "https://tracking.example"
    assert report.runs.ui_base(uri) == report.runs.DEFAULT_UI
    # everything but the run ids is what the report says without a tracking store
    blank, _ = build(params(), tree)
    md = md.replace(f"{link(crashed)} (latest run, FAILED)", "n/a").replace(link(dyn, dyn_exp), "n/a")
    for run_id in (wanted, sweep, study):
        md = md.replace(link(run_id), "n/a")
    assert [line for line in md.splitlines() if line and "Run ids: n/a" not in line] == \
           [line for line in blank.splitlines() if line and "Run ids: n/a" not in line]


def test_no_tracking_store_reads_n_a_and_creates_nothing(tree):
    md, _ = build(params(), tree, tracking_uri=f"sqlite:///{tree / 'nope' / 'mlflow.db'}")
    assert "> Run ids: n/a — no MLflow tracking database at nope/mlflow.db." in md
    assert rows(md, "`fmnist_fc2`", "evaluate")[0][2] == "n/a"
    assert not (tree / "nope").exists()
    md, _ = build(params(), tree, lookup_runs=False)
    assert "MLflow run (convert): n/a" in md and "run ids not looked up (--no-mlflow)" in md


# -- the real stages ----------------------------------------------------------------------------------


def _typed(root: Path, client, exp_id: str, stage: str) -> None:
    """Until the stages write through pipeline.results: add params_hash (their MLflow tag) and lineage."""
    from pipeline.artifacts import load_relu

    path = root / "metrics" / "tiny_fc2" / f"{stage}.json"
    data = json.loads(path.read_text())
    if "params_hash" not in data:
        (run,) = client.search_runs([exp_id], f"tags.dvc_stage = '{stage}@tiny_fc2'")
        lineage = load_relu(root / "models" / "tiny_fc2" / "relu.pt")[1]
        data |= {"params_hash": run.data.tags["params_hash"],
                 "lineage": {k: lineage[k] for k in R.RESULTS[stage].lineage_keys}}
    result = R.RESULTS[stage].model_validate(data)  # today's stage output fits the model, unchanged
    new = ("params_hash", "lineage")
    assert {k: v for k, v in json.loads(result.to_json()).items() if k not in new} == {
        k: v for k, v in data.items() if k not in new}
    result.write(path)


def test_report_of_a_real_tiny_pipeline_names_the_runs_that_produced_it(tiny_params, tmp_path, monkeypatch,
                                                                        empty_store):
    from mlflow import MlflowClient

    from stages import convert, evaluate, finetune, prepare, pretrain
    from stages import report as report_stage

    monkeypatch.chdir(tmp_path)
    uri = store(empty_store, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny_params["data"]["datasets"]["synthetic"] |= {"train_size": 64, "test_size": 32, "shape": [1, 8, 8]}
    tiny_params["experiments"]["tiny_fc2"]["pretrain"]["epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    assert prepare.main(["synthetic"]) == 0
    for stage in (pretrain, convert, finetune, evaluate):
        assert stage.main(["tiny_fc2"]) == 0
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tiny_fc2").experiment_id
    for stage in ("pretrain", "convert", "finetune", "evaluate"):
        _typed(tmp_path, client, exp_id, stage)
    assert report_stage.main([]) == 0
    md = (tmp_path / "reports" / "report.md").read_text()
    page = (tmp_path / "reports" / "report.html").read_text()
    ev = R.EvaluateResult.read("metrics/tiny_fc2/evaluate.json")
    (row,) = rows(md, "`tiny_fc2`")[:1]
    assert row[4:6] == [f"{100 * ev.relu_accuracy:.2f}", f"{100 * ev.snn_accuracy:.2f}"]
    assert row[9] == f"{ev.spikes_per_neuron:.3f}" and row[8] == "exact"
    for stage in ("pretrain", "convert", "finetune", "evaluate"):
        (run,) = client.search_runs([exp_id], f"tags.dvc_stage = '{stage}@tiny_fc2'")
        # matched by params hash, no note; a link to the run's page in the MLflow UI
        assert rows(md, "`tiny_fc2`", stage)[0][2] == \
            f"[`{run.info.run_id}`](http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run.info.run_id})"
    # one meaning per name: the report's train accuracy is MLflow's final.train_accuracy (the trained network
    # on the training split); the per-epoch running mean is running_train_accuracy, and no train_accuracy
    (reference,) = client.search_runs([exp_id], "tags.dvc_stage = 'pretrain@tiny_fc2'")
    pre = R.PretrainResult.read("metrics/tiny_fc2/pretrain.json")
    assert reference.data.metrics["final.train_accuracy"] == pytest.approx(pre.train_accuracy)
    assert rows(md, "ReLU pretraining")[0][2] == f"{100 * pre.train_accuracy:.2f}"
    assert "running_train_accuracy" in reference.data.metrics and "train_accuracy" not in reference.data.metrics
    assert "Train accuracy: the trained network on the whole training split (MLflow: `final.train_accuracy`)" in md
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 5
    before = (md, page)
    assert report_stage.main([]) == 0  # an identical rerun writes identical bytes: dvc.lock stays put
    assert ((tmp_path / "reports" / "report.md").read_text(), (tmp_path / "reports" / "report.html").read_text()) \
        == before
