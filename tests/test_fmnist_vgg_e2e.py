"""The fmnist_vgg profile (issue 14, docs/beyond_paper.md) end to end at toy scale: the real `dvc repro`.

The params are params.fmnist_vgg.yaml itself with only the scale changed (synthetic images, tiny widths,
one epoch, two tune trials, a tiny dynamics study): the recipe keys of the profile (SGD with Nesterov
momentum, cosine schedule, 2-pixel shifts, L1 on the activations in pretraining and fine-tuning, batch norm
folded at conversion, the report's beyond_paper section) run as written.
"""

from __future__ import annotations

import copy

import pytest
import test_pipeline_e2e as e2e
import yaml

pytestmark = e2e.pytestmark
PROFILE = yaml.safe_load((e2e.ROOT / "params.fmnist_vgg.yaml").read_text())
(NAME,) = PROFILE["experiments"]


def toy(profile: dict) -> dict:
    """The profile at toy scale: what it computes unchanged, only sizes, epochs and the data."""
    p = copy.deepcopy(profile)
    p["data"] = {"datasets": {"synthetic": {"train_size": 384, "val_size": 64, "test_size": 128,
                                            "shape": [1, 12, 12], "classes": 4}}}
    exp = p["experiments"][NAME]
    exp |= {"dataset": "synthetic", "device": "cpu", "threads": 1}
    exp["model"] |= {"widths": [4, 4, "P", 8, "P"], "dense": [16]}
    exp["pretrain"] |= {"epochs": 1, "batch_size": 16, "lr": 0.02, "eval_batch_size": 128}
    exp["finetune"] |= {"epochs": 1, "batch_size": 16, "eval_batch_size": 128}
    exp["evaluate"] |= {"batch_size": 128}
    p["tune"][NAME] |= {"n_trials": 2, "train_subset": 128, "n_startup_trials": 2}
    p["dynamics"] = {"dataset": "synthetic", "depth": 2, "width": 8, "train_size": 64, "val_size": 32,
                     "test_size": 64, "epochs": 1, "batch_size": 16, "lr_grid": [1e-3], "selection_epochs": 1,
                     "records": 1, "calibration_samples": 32, "spectra_samples": 2, "device": "cpu"}
    return p


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> e2e.Repo:
    base = tmp_path_factory.mktemp("vgg")
    r = e2e.Repo(e2e.copy_repo(base / "repo"), base / "tracking" / "mlflow.db")
    r.set_params(toy(PROFILE))
    r.run("git", "init", "-q")
    r.run("dvc", "init", "-q")
    r.run("git", "add", "-A")
    r.run("git", "commit", "-qm", "pipeline")
    r.run("dvc", "repro", timeout=600)
    return r


def test_the_profile_converts_exactly_and_fine_tunes_a_sparse_snn(repo):
    from pipeline.artifacts import load_relu, load_snn

    relu, _ = load_relu(repo.path / f"models/{NAME}/relu.pt")
    assert any(type(m).__name__ == "BatchNorm2d" for m in relu)  # folded by convert, not trained away
    convert = repo.json(f"metrics/{NAME}/convert.json")
    assert convert["agreement"] == 1.0 and convert["max_rel_logit_diff"] <= 1e-9
    assert convert["causality_violations"] == 0 and convert["snn_accuracy"] == convert["relu_accuracy"]
    finetune = repo.json(f"metrics/{NAME}/finetune.json")
    assert finetune["mode"] == "converted" and 0 < finetune["spikes_per_neuron"] < 1
    assert finetune["equivalent_relu_agreement"] == 1.0  # checked in float64, though it trains in float32
    assert finetune["equivalent_relu_max_rel_logit_diff"] <= 1e-9
    snn, _ = load_snn(repo.path / f"models/{NAME}/snn.pt")
    if PROFILE["experiments"][NAME]["finetune"].get("nonpositive_bias"):
        assert all(float(layer.bias.detach().max()) <= 0.0 for layer in snn.neuron_layers[:-1])
    curve = (repo.path / f"plots/{NAME}/pretrain_curve.csv").read_text().splitlines()
    assert float(curve[-1].split(",")[-1]) == pytest.approx(0.0, abs=1e-12)  # cosine: lr 0 after the last step
    evaluate = repo.json(f"metrics/{NAME}/evaluate.json")
    model = toy(PROFILE)["experiments"][NAME]["model"]
    hidden = sum(w != "P" for w in model["widths"]) + len(model["dense"])  # conv and dense layers, not pools
    assert 0 < evaluate["spikes_per_neuron"] < 1 and len(evaluate["spikes_per_neuron_per_layer"]) == hidden


def test_the_report_has_the_beyond_the_paper_section(repo):
    report = (repo.path / "reports/report.md").read_text()
    assert "## Beyond the paper" in report and f"### {NAME} beside the paper" in report
    section = report.split("## Beyond the paper", 1)[1].split("\n## ", 1)[0]
    assert f"`{NAME}` (vgg_fmnist)" in section and "| trial | L1 λ |" in section
