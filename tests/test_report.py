"""The report stage: paper-vs-ours table, per-experiment sections, missing parts, HTML, MLflow run ids.

Most tests build a fake results tree whose JSON files come from the real writers' schemas (the sweep
and tune documents through pipeline.sweeps.assemble and pipeline.tuning's summary functions); one runs
the real tiny pipeline in-process and checks that the report names exactly the runs that produced it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from pipeline import params as P
from pipeline import report, sweeps, tuning
from pipeline.runner import Experiment

# -- a fake results tree ------------------------------------------------------------------------------

EXP = {"seed": 0, "device": "cpu", "dtype": "float32", "pretrain": {}, "convert": {}, "finetune": {},
       "evaluate": {}, "sweep": {}}
PARAMS = {
    "data": {"datasets": {"fashion_mnist": {}, "cifar10": {}}},
    "experiments": {
        "fmnist_fc2": {**EXP, "dataset": "fashion_mnist", "model": {"name": "fc2"}, "sweep": {},
                       "pretrain": {"nonpositive_bias": True}},
        "c10_l1_s0": {**EXP, "dataset": "cifar10", "model": {"name": "vgg16"}, "finetune": {"l1": 1e-6}},
        "c10_l1_s1": {**EXP, "dataset": "cifar10", "seed": 1, "model": {"name": "vgg16"},
                      "finetune": {"l1": "1e-06"}},  # as `dvc exp run -S` writes it
    },
    "tune": {"fmnist_fc2": {}},
    "dynamics": {"dataset": "fashion_mnist", "depth": 4, "width": 16},
}


def _write(root: Path, rel: str, data: dict) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _png(root: Path, rel: str) -> None:
    from pipeline import plots

    fig, ax = plots.plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    plots._save(fig, root / rel)


def evaluate_json(relu: float, snn: float, spikes: float) -> dict:
    """As stages/evaluate.py writes it."""
    return {
        "relu_accuracy": relu, "snn_accuracy": snn, "delta_accuracy": snn - relu, "agreement_with_reference": 0.9981,
        "equivalent_relu": {"agreement": 1.0, "max_rel_logit_diff": 4.2e-7},
        "spikes_per_neuron": spikes, "spikes_per_neuron_per_layer": {"layer1": spikes},
        "hidden_neurons": 340, "causality_violations": 0, "clipped_inputs": 0,
        "synops_per_sample": 693.6, "synops_per_layer": {"layer1": 693.6}, "macs_per_sample": 269920,
        "energy_pj": {"snn_pj": 361281.44, "ann_pj": 1241632.0, "ratio": 0.29097, "saving": 3.4367},
        "energy_assumptions": {"e_synop_pj": 0.9, "e_mac_pj": 4.6, "first_layer_spiking": False},
        "latency": 159.92, "test_samples": 10000,
    }


CONVERT = {  # as stages/convert.py writes it
    "agreement": 1.0, "max_abs_logit_diff": 1.7763568394002505e-14, "max_rel_logit_diff": 3.46e-16,
    "causality_violations": 0, "relu_accuracy": 0.8809, "snn_accuracy": 0.8809, "spikes_per_neuron": 0.1751,
    "latency": 25.01, "clipped_inputs": 0, "windows": [1.0, 24.0],
    "float32": {"agreement": 1.0, "max_abs_logit_diff": 9.5367e-06, "max_rel_logit_diff": 1.86e-07,
                "snn_accuracy": 0.8809},
}
PRETRAIN = {"test_accuracy": 0.8809, "test_loss": 0.33, "train_accuracy": 0.909, "train_loss": 0.25, "epochs": 6,
            "parameters": 270310}
FINETUNE = {"test_accuracy": 0.8905, "test_loss": 0.31, "epochs": 1, "mode": "converted",
            "equivalent_relu_agreement": 1.0, "equivalent_relu_max_rel_logit_diff": 1.0e-6,
            "causality_violations": 0, "spikes_per_neuron": 0.2026, "latency": 159.92, "windows": [1.0, 158.9]}


def sweep_json() -> dict:
    """Through the real assembly of pipeline.sweeps (the shape of metrics/<exp>/sweep.json)."""
    sp = sweeps.SweepParams(jitter=(0.0, 0.1), time_steps=(4, 16), weight_bits=(2, 4), latency_factor=(1.0, 4.0))
    ref = {"accuracy": 0.8905, "loss": 0.31, "spikes_per_neuron": 0.2026, "causality_violations": 0,
           "latency": 159.92}
    tight = ref | {"latency": 11.69, "quantile": 0.999, "samples": 10000, "windows": [1.0, 10.69]}
    results = []
    accuracy = {("jitter", 0.0): (0.8905, 0.8915), ("jitter", 0.1): (0.8880, 0.8879),
                ("time_steps", 4): (0.8768, 0.8778), ("time_steps", 16): (0.8901, 0.8907),
                ("weight_bits", 2): (0.0690, 0.5135), ("weight_bits", 4): (0.8642, 0.8885),
                ("latency_factor", 1.0): (0.8905, 0.8911), ("latency_factor", 4.0): (0.8885, 0.8917)}
    for (kind, value), (before, after) in accuracy.items():
        def m(a, kind=kind):
            out = {"accuracy": a, "loss": 0.3, "spikes_per_neuron": 0.2, "causality_violations": 0, "latency": 10.0}
            if kind == "jitter":
                out |= {"accuracy_std": 0.0012, "spikes_per_neuron_std": 0.0, "accuracy_per_seed": [a] * 3}
            return out
        latency = 159.92 if kind in ("jitter", "weight_bits") else 11.69 / (value if kind == "latency_factor" else 1)
        results.append({"kind": kind, "value": value, "finetune_epochs": 1, "before": m(before), "finetuned": m(after),
                        "finetune_train_accuracy": 0.92, "latency": latency,
                        "latency_reduction_vs_snn": 159.92 / latency, "windows": [1.0, latency - 1],
                        "delta_snn": {"before_accuracy": before - 0.8905, "finetuned_accuracy": after - 0.8905},
                        "causality_violations": 0})
    return sweeps.assemble(sp, ref, tight, results)


def tune_docs() -> tuple[dict, dict]:
    """(pareto.json, tune.json) through pipeline.tuning's summary functions."""
    def rec(n, l1, va, vs, ta, ts):
        return {"number": n, "baseline": l1 == 0.0, "params": {"l1_enabled": l1 > 0} | ({"l1": l1} if l1 else {}),
                "l1": l1, "lr": 5e-5, "val_accuracy": va, "val_spikes_per_neuron": vs, "test_accuracy": ta,
                "test_spikes_per_neuron": ts}
    records = [rec(0, 0.0, 0.9251, 0.2873, 0.8949, 0.2871), rec(1, 3.18e-3, 0.9175, 0.1325, 0.8916, 0.1323),
               rec(2, 9.47e-3, 0.9086, 0.0800, 0.8832, 0.0797), rec(3, 1e-5, 0.9100, 0.2900, 0.8800, 0.2900)]
    front = [records[2], records[1], records[0]]
    summary = {"study_name": "fmnist_fc2-39634949a751c6b2",
               "objectives": [{"name": n, "direction": d} for n, d in zip(tuning.OBJECTIVES, tuning.DIRECTIONS,
                                                                         strict=True)],
               "search_space": {"l1": {"low": 1e-6, "high": 1e-2, "log": True, "switch": "l1_enabled"}, "lr": "fixed"},
               "trials": {"budget": 4, "total": 4, "complete": 4, "failed": 0, "excluded": 0, "running": 0},
               "baseline": records[0] | {"on_front": True}, "front": front}
    summary["target"] = tuning.target_check(front, records, tuning.TuneParams())
    summary["all_trials"] = records
    pareto = {k: v for k, v in summary.items() if k != "all_trials"} | {"experiment": "fmnist_fc2"}
    return pareto, tuning.metrics_from(summary)


DYNAMICS = {  # as pipeline.dynamics.run_dynamics writes it (two of the six networks)
    "config": {"depth": 4, "width": 16, "train_size": 512, "test_size": 128, "epochs": 2, "batch_size": 32,
               "lr": 5e-4, "evals_per_epoch": 4, "calibration_samples": 100, "spectra_samples": 8, "seed": 0,
               "device": "cpu", "widths": [784, 16, 16, 16, 10], "train_samples": 512, "test_samples": 128,
               "steps_per_epoch": 16, "dtype": "float64", "optimizer": "adam"},
    "networks": {
        "relu": {"test_accuracy": 0.759, "test_loss": 0.68, "train_loss": 0.45, "initial_test_accuracy": 0.078,
                 "best_test_accuracy": 0.8245, "diverged": False, "diverged_at_step": None, "diverged_at_epoch": None,
                 "last_epoch": 2.0},
        "b1": {"test_accuracy": 0.759, "test_loss": 0.68, "train_loss": 0.45, "initial_test_accuracy": 0.078,
               "best_test_accuracy": 0.8245, "diverged": False, "diverged_at_step": None, "diverged_at_epoch": None,
               "last_epoch": 2.0, "partner": "relu", "cosine": 1.0000000000000007, "min_cosine": 0.9999999999999969,
               "max_train_loss_gap_to_partner": 1.6e-14},
        "alpha1_standard": {"test_accuracy": 0.104, "test_loss": 148.4, "train_loss": 115.2,
                            "initial_test_accuracy": 0.0875, "best_test_accuracy": 0.1085, "diverged": True,
                            "diverged_at_step": 24, "diverged_at_epoch": 1.5, "last_epoch": 1.5,
                            "partner": "relu_alpha1_standard", "cosine": 0.0031, "min_cosine": 0.0031,
                            "max_train_loss_gap_to_partner": 3427.7, "nonpositive_slopes_init": 111,
                            "nonpositive_slopes": 172},
    },
    "init_spectra": {"b1": {"product_top_singular_value": 0.00442, "square_product_spectral_radius": 0.1377,
                            "eigenvalues_outside_unit_circle": 0.0, "max_abs_eigenvalue": 0.9159},
                     "alpha1_standard": {"product_top_singular_value": 86700.0,
                                         "square_product_spectral_radius": 11600.0,
                                         "eigenvalues_outside_unit_circle": 0.049, "max_abs_eigenvalue": 208.0}},
    "init_check": {"max_rel_logit_diff_to_partner": {"b1": 3.6e-17, "alpha1_standard": 4.7e-10},
                   "b1_max_abs_weight_diff_to_relu": 0.0},
    "partners": {"b1": "relu", "alpha1_standard": "relu_alpha1_standard"},
}
EVALUATE_PNGS = ("spikes_per_layer.png", "spike_times.png", "raster.png")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    e = "fmnist_fc2"
    for stage, data in (("pretrain", PRETRAIN), ("convert", CONVERT), ("finetune", FINETUNE),
                        ("evaluate", evaluate_json(0.8809, 0.8950, 0.2026)), ("sweep", sweep_json())):
        _write(root, f"metrics/{e}/{stage}.json", data)
    pareto, tune = tune_docs()
    _write(root, f"plots/{e}/pareto.json", pareto)
    _write(root, f"metrics/{e}/tune.json", tune)
    (root / f"plots/{e}/pareto.html").write_text("<html>interactive</html>")
    for png in ("pretrain_curve.png", "finetune_curve.png", *EVALUATE_PNGS, "pareto.png",
                *(report.SWEEP_PLOT[k] for k in report.KINDS)):
        _png(root, f"plots/{e}/{png}")
    _write(root, "metrics/c10_l1_s0/evaluate.json", evaluate_json(0.9359, 0.9310, 0.21))
    _write(root, "metrics/c10_l1_s1/evaluate.json", evaluate_json(0.9361, 0.9340, 0.19))
    _write(root, "metrics/dynamics.json", DYNAMICS)
    for png in report.DYNAMICS_PLOTS:
        _png(root, f"plots/dynamics/{png}")
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


def rows(md: str, *first: str) -> list[list[str]]:
    """Cells of the Markdown table rows whose first cells are ``first``."""
    out = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cells[: len(first)] == list(first):
                out.append(cells)
    return out


def table(md: str, *header: str) -> list[list[str]]:
    """Body rows of the first Markdown table whose header starts with ``header``."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and rows(line, *header):
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("| "):
                    break
                body.append(rows(row)[0])
            return body
    raise AssertionError(f"no table with header {header}")


def build(params, root, **kw) -> tuple[str, str]:
    kw.setdefault("tracking_uri", f"sqlite:///{root / 'absent.db'}")
    return report.build_report(params, root, **kw)


# -- the tables ---------------------------------------------------------------------------------------


def test_paper_table_puts_our_numbers_beside_the_papers(tree):
    md, _ = build(PARAMS, tree)
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
    # paper experiments that are not in params.yaml are listed, ours "not run"
    (plain,) = rows(md, "CIFAR10", "VGG16", "no")
    assert plain[col["SNN paper"]] == "93.69 ± 0.02" and plain[col["spikes/neuron paper"]] == "0.38"
    assert plain[col["SNN ours"]] == "not run" and plain[col["experiments"]] == "none in params.yaml"
    for dataset, model in (("MNIST", "FC2"), ("MNIST", "FC16"), ("MNIST", "VGG16"), ("fMNIST", "LeNet5"),
                           ("CIFAR100", "VGG16"), ("PLACES365", "VGG16")):
        assert all(r[col["SNN ours"]] == "not run" for r in rows(md, dataset, model)), (dataset, model)
    assert rows(md, "PLACES365", "VGG16", "yes")[0][col["SNN paper"]] == "48.88 ± 0.06"
    assert "fMNIST 93.14" in md  # the best published single-spike results


def test_experiment_sections_carry_conversion_evaluation_energy_and_constraints(tree):
    md, _ = build(PARAMS, tree)
    assert rows(md, "`fmnist_fc2`", "fMNIST", "FC2", "no")[0][4:10] == ["88.09", "89.50", "+1.41", "99.81", "exact",
                                                                       "0.203"]
    # conversion exactness, float64 and the working dtype
    assert rows(md, "argmax agreement with the ReLU network (%)")[0][1:3] == ["100.0000", "100.0000"]
    assert rows(md, "max \\|logit SNN − logit ReLU\\|")[0][1:3] == ["1.78e-14", "9.54e-06"]
    assert rows(md, "max relative \\|Δ logit\\| (of the logit scale)")[0][1:3] == ["3.46e-16", "1.86e-07"]
    assert rows(md, "causality violations (spikes before their window)")[0][1] == "0"
    assert "**Conversion: exact**" in md
    # evaluation: spikes, SynOps, energy, latency
    assert rows(md, "spikes per neuron (hidden layers)")[0][1] == "0.2026"
    assert rows(md, "SynOps per sample")[0][1] == "694"
    assert rows(md, "SNN")[0][1] == "361,281" and rows(md, "ANN (ReLU network)")[0][1] == "1,241,632"
    assert rows(md, "SNN / ANN")[0][1] == "0.2910" and rows(md, "saving (ANN / SNN)")[0][1] == "3.44×"
    assert rows(md, "latency to the output (τ_c)")[0][1] == "159.9"
    assert "0.9 pJ per synaptic operation" in md
    assert rows(md, "1", "0.2026", "694")  # per layer
    # constraints: value, accuracy before and after fine-tuning, delta to the unconstrained SNN
    assert rows(md, "16", "89.01", "89.07", "-0.04", "+0.02")
    assert rows(md, "0.1", "88.80 ± 0.12", "88.79 ± 0.12", "-0.25", "-0.26")
    assert rows(md, "2", "6.90", "51.35", "-82.15", "-37.70")
    assert rows(md, "4", "88.85", "89.17", "-0.20", "+0.12", "0.200", "2.922", "54.7×")
    assert "fewest bits within 1.00 pt of the exact SNN after fine-tuning: 4" in md
    assert "> 90 % with 4-bit weights" in md
    assert md.count("hidden biases kept <= 0") == 1  # the training settings behind fmnist_fc2's numbers
    # Pareto front: baseline, then the front sparsest first; the target check; the interactive page
    assert [r[0] for r in table(md, "trial", "L1 λ")] == ["0 (baseline)", "2", "1"]
    assert rows(md, "1", "3.18e-03", "5e-05", "91.75", "0.133", "89.16", "0.132")
    assert "validation: trial 1 (λ = 3.18e-03) reaches 91.75 % at 0.133 spikes/neuron" in md
    assert "(../plots/fmnist_fc2/pareto.html)" in md
    # dynamics
    assert rows(md, "B1 (converted ReLU init)", "7.80", "75.90", "82.45", "1.000000")
    assert rows(md, "α1, standard init")[0][-2:] == ["111 → 172", "yes, epoch 1.5"]
    assert rows(md, "α1 standard", "8.67e+04")
    for png in ("raster.png", "sweep_weight_bits.png", "pareto.png", "pretrain_curve.png"):
        assert f"(../plots/fmnist_fc2/{png})" in md
    assert "(../plots/dynamics/jacobian_spectra.png)" in md
    assert "Could not render" not in md and "Not run" not in md.split("## Experiment c10_l1_s0")[0]


def test_missing_parts_say_what_is_missing_and_which_command_produces_it(tree):
    params = copy.deepcopy(PARAMS)
    del params["tune"], params["dynamics"]
    params["experiments"]["half_done"] = {**EXP, "dataset": "fashion_mnist", "model": {"name": "lenet5"}}
    del params["experiments"]["half_done"]["sweep"]
    params["experiments"]["never_run"] = {**EXP, "dataset": "fashion_mnist", "model": {"name": "lenet5"}, "seed": 1}
    _write(tree, "metrics/half_done/pretrain.json", PRETRAIN)
    (tree / "metrics" / "half_done" / "convert.json").write_text("{not json")
    (tree / "metrics" / "dynamics.json").unlink()
    md, html = build(params, tree)
    section = md.split("## Experiment half_done")[1].split("## Learning dynamics")[0]
    assert ("Not readable: `metrics/half_done/convert.json` is unreadable (JSONDecodeError" in section
            and "`dvc repro convert@half_done`" in section)
    for stage in ("finetune", "evaluate"):
        assert (f"Not run: `metrics/half_done/{stage}.json` is missing. Produce it with `dvc repro {stage}@half_done` "
                f"(or `python -m stages.{stage} half_done`).") in section
    assert "no `experiments.half_done.sweep` section" in section
    assert "params.yaml has no tune section for this experiment" in section
    assert "params.yaml has no `dynamics` section" in md and "`dvc repro dynamics`" in md
    # the tune outputs of fmnist_fc2 exist: they are shown although the section went away
    assert "Optuna study `fmnist_fc2-39634949a751c6b2`" in md
    (row,) = rows(md, "fMNIST", "LeNet5", "no")
    assert row[4] == "not run" and row[-1] == "`half_done`, `never_run` (2 not evaluated)"
    # an experiment without any results is one line, and has no rows in the MLflow table
    never = md.split("## Experiment never_run")[1].split("\n## ")[0]
    assert "Not run: nothing under `metrics/never_run/` yet. Produce it with `dvc repro evaluate@never_run`" in never
    assert "###" not in never and not rows(md, "`never_run`", "pretrain")
    assert rows(md, "`half_done`")[0][-1] == "finetune, evaluate, sweep"  # convert.json exists, if broken
    assert "Could not render" not in md and "<!DOCTYPE html>" in html
    # a sweep section without outputs, a missing plot
    params["experiments"]["half_done"]["sweep"] = {}
    params["tune"] = {"half_done": {}}
    (tree / "plots" / "fmnist_fc2" / "raster.png").unlink()
    md, _ = build(params, tree)
    assert "Not run: `metrics/half_done/sweep.json` is missing. Produce it with `dvc repro sweep@half_done`" in md
    assert "Not run: `metrics/half_done/tune.json` is missing. Produce it with `dvc repro tune@half_done`" in md
    assert "Plot missing: `plots/fmnist_fc2/raster.png` (written by `dvc repro evaluate@fmnist_fc2`" in md


def test_nothing_at_all_still_gives_a_report(tmp_path):
    md, html = build({}, tmp_path)
    assert "No experiments in params.yaml." in md and "Could not render" not in md
    assert rows(md, "MNIST", "FC2", "no")[0][4] == "not run"
    assert html.startswith("<!DOCTYPE html>")
    md, _ = build({"experiments": {"x": "nonsense"}, "tune": [1], "dynamics": 3}, tmp_path)
    assert "## Experiment x" in md and "Could not render" not in md


# -- HTML ---------------------------------------------------------------------------------------------


class _Checker(HTMLParser):
    """Counts tags and checks that the block-level ones nest properly."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_html_is_one_standalone_well_formed_page(tree):
    md, page = build(PARAMS, tree)
    assert page.startswith("<!DOCTYPE html>\n<html") and page.rstrip().endswith("</html>")
    checker = _Checker()
    checker.feed(page)
    assert not checker.errors and not checker.stack
    assert checker.counts["table"] == md.count("\n|---") + md.count("\n|--:")  # one per Markdown table
    assert checker.counts["img"] == md.count("![") == 3 + 2 + 4 + 1 + 4
    assert all(src.startswith("data:image/png;base64,") for src in checker.srcs)
    assert "<style>" in page and "<td class=\"n\">89.50</td>" in page
    assert '<a href="../plots/fmnist_fc2/pareto.html">' in page
    assert '<h2 id="experiment-fmnist_fc2">' in page and 'href="#experiment-fmnist_fc2"' in page
    # over the inline budget, figures are linked relative to the output directory instead
    _, linked = build(PARAMS, tree, max_inline_bytes=0)
    assert 'src="../plots/fmnist_fc2/raster.png"' in linked and "data:image" not in linked
    _, elsewhere = build(PARAMS, tree, out_dir="deep/er", max_inline_bytes=0)
    assert 'src="../../plots/fmnist_fc2/raster.png"' in elsewhere


def test_same_inputs_give_the_same_bytes(tree):
    assert build(PARAMS, tree) == build(PARAMS, tree)
    assert build(PARAMS, tree, lookup_runs=False) == build(PARAMS, tree, lookup_runs=False)


# -- MLflow -------------------------------------------------------------------------------------------


def _hash(name: str, stage: str) -> str:
    """The params_hash tag a stage puts on its run (as stages/<stage>.py computes it)."""
    params = P.parse(PARAMS)
    return P.params_hash(Experiment(name, params.experiments[name]).stage_params(stage))


def test_run_ids_come_from_the_tracking_store_by_stage_and_params_hash(tree, empty_store):
    from mlflow import MlflowClient

    uri = store(empty_store, tree)
    client = MlflowClient(uri)
    exp_id = client.create_experiment("fmnist_fc2")

    def run(stage: str, role: str, params_hash: str, status: str = "FINISHED", **extra) -> str:
        tags = {"dvc_stage": f"{stage}@fmnist_fc2", "role": role, "params_hash": params_hash,
                "mlflow.runName": stage, **extra}
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        client.set_terminated(run_id, status)
        return run_id

    older = run("evaluate", "snn", _hash("fmnist_fc2", "evaluate"))
    wanted = run("evaluate", "snn", _hash("fmnist_fc2", "evaluate"))
    run("evaluate", "snn", "0123456789abcdef")  # newer, other params
    run("evaluate", "snn", _hash("fmnist_fc2", "evaluate"), status="FAILED")  # newer, failed
    stale = run("pretrain", "reference", "fedcba9876543210")  # only a run with other params
    sweep = run("sweep", "sweep", "whatever")
    run("sweep", "sweep_setting", "whatever", **{"mlflow.parentRunId": sweep})  # nested: never picked
    study = run("tune", "tune_study", "", optuna_study="fmnist_fc2-39634949a751c6b2")
    run("tune", "tune_study", "", optuna_study="fmnist_fc2-otherstudy")
    crashed = run("convert", "snn", _hash("fmnist_fc2", "convert"), status="FAILED")
    dyn_exp = client.create_experiment("dynamics")
    dyn = client.create_run(dyn_exp, tags={"dvc_stage": "dynamics", "role": "analysis"}).info.run_id
    client.set_terminated(dyn, "FINISHED")

    md, page = build(PARAMS, tree, tracking_uri=uri)
    assert older != wanted
    assert rows(md, "`fmnist_fc2`", "evaluate") == [["`fmnist_fc2`", "evaluate", f"`{wanted}`"]]
    assert f"MLflow run (evaluate): `{wanted}`" in md and wanted in page
    assert rows(md, "`fmnist_fc2`", "pretrain")[0][2] == (
        f"`{stale}` (latest finished run; its params hash differs from params.yaml's)")
    assert rows(md, "`fmnist_fc2`", "sweep")[0][2].startswith(f"`{sweep}` (latest finished run")
    assert rows(md, "`fmnist_fc2`", "tune")[0][2] == f"`{study}`"
    assert rows(md, "`fmnist_fc2`", "convert")[0][2] == f"`{crashed}` (latest run, FAILED)"
    assert rows(md, "`fmnist_fc2`", "finetune")[0][2] == "n/a"
    assert rows(md, "dynamics", "dynamics")[0][2].startswith(f"`{dyn}`")
    assert rows(md, "`c10_l1_s0`", "evaluate")[0][2] == "n/a"  # no MLflow experiment of that name
    # everything but the run ids is what the report says without a tracking store
    blank, _ = build(PARAMS, tree)
    strip = re.compile(r"`[0-9a-f]{32}`( \([^)]*\))?|n/a( \([^)]*\))?")
    assert [strip.sub("ID", line) for line in md.splitlines() if line and "Run ids: n/a" not in line] == \
           [strip.sub("ID", line) for line in blank.splitlines() if line and "Run ids: n/a" not in line]


def test_no_tracking_store_reads_n_a_and_creates_nothing(tree):
    md, _ = build(PARAMS, tree, tracking_uri=f"sqlite:///{tree / 'nope' / 'mlflow.db'}")
    assert "Run ids: n/a — no MLflow tracking database at nope/mlflow.db." in md
    assert rows(md, "`fmnist_fc2`", "evaluate")[0][2] == "n/a"
    assert not (tree / "nope").exists()
    md, _ = build(PARAMS, tree, lookup_runs=False)
    assert "MLflow run (convert): n/a" in md


# -- the real stages ----------------------------------------------------------------------------------


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
    assert report_stage.main([]) == 0
    md = (tmp_path / "reports" / "report.md").read_text()
    page = (tmp_path / "reports" / "report.html").read_text()
    ev = json.loads((tmp_path / "metrics" / "tiny_fc2" / "evaluate.json").read_text())
    (row,) = rows(md, "`tiny_fc2`")[:1]
    assert row[4:6] == [f"{100 * ev['relu_accuracy']:.2f}", f"{100 * ev['snn_accuracy']:.2f}"]
    assert row[9] == f"{ev['spikes_per_neuron']:.3f}" and row[8] == "exact"
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tiny_fc2").experiment_id
    for stage in ("pretrain", "convert", "finetune", "evaluate"):
        (run,) = client.search_runs([exp_id], f"tags.dvc_stage = '{stage}@tiny_fc2'")
        assert rows(md, "`tiny_fc2`", stage)[0][2] == f"`{run.info.run_id}`"  # matched by params hash, no note
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 5
    assert "Could not render" not in md
    before = (md, page)
    assert report_stage.main([]) == 0  # an identical rerun writes identical bytes: dvc.lock stays put
    assert ((tmp_path / "reports" / "report.md").read_text(), (tmp_path / "reports" / "report.html").read_text()) \
        == before
