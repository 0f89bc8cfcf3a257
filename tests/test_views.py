"""What a researcher reads in DVC and MLflow: the declarations in dvc.yaml and the MLflow vocabulary.

The toy `dvc repro` (tests/test_pipeline_e2e.py) measures the widths of `dvc metrics show` and
`dvc exp show` and checks the runs of a real pipeline; these tests need neither DVC nor a pipeline run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.tracking import HEADLINE, Tracker, registered_model_name, run_params
from stages.summary import HEADLINE as SUMMARY_KEYS
from stages.summary import TUNE_HEADLINE, val_curves

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _entries(spec: dict, kind: str) -> dict[str, dict]:
    body = spec.get("do", spec)
    out = {}
    for item in body.get(kind) or []:
        (path, props), = (item.items() if isinstance(item, dict) else [(item, {})])
        out[path] = props or {}
    return out


def test_only_the_headline_files_are_metrics():
    metrics = {stage: _entries(spec, "metrics") for stage, spec in DVC["stages"].items()}
    assert {stage for stage, m in metrics.items() if m} == {"summary", "tune_summary"}
    assert list(metrics["summary"]) == ["metrics/${key}/summary.json"]
    assert list(metrics["tune_summary"]) == ["metrics/${key}/tune_summary.json"]
    # the other result files are plain outputs, kept in git (not in the DVC cache)
    for stage, spec in DVC["stages"].items():
        for path, props in _entries(spec, "outs").items():
            if path.endswith(".json") and path.startswith(("metrics/", "plots/")):
                assert props.get("cache") is False, (stage, path)
    assert "metrics" not in DVC  # no top-level metrics: they would widen every table again


def test_every_plot_has_a_title_and_axis_labels():
    plots = [(stage, path, props) for stage, spec in DVC["stages"].items()
             for path, props in _entries(spec, "plots").items()]
    plots += [("top-level", path, props) for item in DVC["plots"] for path, props in item.items()]
    assert plots
    for stage, path, props in plots:
        assert path.endswith(".csv"), (stage, path)  # images are outputs; the report shows them
        assert {"title", "x_label", "y_label", "x", "y"} <= set(props), (stage, path)
        if template := props.get("template"):
            assert "/" not in template or (ROOT / template).is_file(), template


def test_overlay_template_and_offline_page():
    template = json.loads((ROOT / "pipeline/vega/overlay.json").read_text())
    assert template["encoding"]["color"]["field"] == "network"
    page = (ROOT / "pipeline/vega/offline.html").read_text()
    assert "{plot_divs}" in page and "http" not in page.replace("http-equiv", "")
    for js in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        assert f'src="../pipeline/vega/{js}"' in page
        assert 10_000 < (ROOT / "pipeline/vega" / js).stat().st_size < 1_000_000


def test_headline_keys_are_few_and_short():
    keys = [*SUMMARY_KEYS, *TUNE_HEADLINE]
    assert len(keys) == len(set(keys)) <= 16 and max(map(len, keys)) <= 9


def test_val_curves_overlay_both_networks(tmp_path):
    header = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr\n"
    (tmp_path / "p.csv").write_text(header + "1,0.5,0.8,0.4,0.85,0.001\n2,0.3,0.9,0.3,0.9,0.001\n")
    (tmp_path / "f.csv").write_text(header + "1,0.2,0.9,0.2,0.88,0.0001\n")
    rows = val_curves(tmp_path / "p.csv", tmp_path / "f.csv")
    assert rows == [{"epoch": 1, "val_accuracy": 0.85, "network": "ReLU"},
                    {"epoch": 2, "val_accuracy": 0.9, "network": "ReLU"},
                    {"epoch": 1, "val_accuracy": 0.88, "network": "SNN"}]


def test_run_params_drop_the_stage_prefix():
    params = {"dataset": "d", "seed": 0, "model": {"name": "fc2"}, "finetune": {"lr": 0.1, "seed": 3}}
    assert run_params(params, "finetune") == {"dataset": "d", "seed": 0, "model": {"name": "fc2"}, "lr": 0.1,
                                              "finetune.seed": 3}  # a clash keeps its prefix


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return Tracker("views")


def test_headline_dataset_input_and_registered_model(tracker, tmp_path):
    model = tmp_path / "snn.pt"
    model.write_bytes(b"weights")
    with tracker.run("finetune@views", run_params({"seed": 0, "finetune": {"lr": 0.1}}, "finetune"),
                     {"role": "snn"}) as mlrun:
        mlrun.log_dataset("synthetic", "ab" * 32, str(tmp_path / "data/prepared/synthetic"))
        logged = mlrun.log_headline({"test_accuracy": 0.9, "latency": 3, "energy_ratio": None, "epochs": 4})
        mlrun.log_artifact(model, "model")
        first = mlrun.register_model(registered_model_name("views"), "model/snn.pt")
    assert logged == {"test_accuracy": 0.9, "latency": 3.0} and set(logged) <= set(HEADLINE)
    client = tracker.client
    run = client.get_run(mlrun.run_id)
    assert run.data.params == {"seed": "0", "lr": "0.1"}
    assert run.data.metrics == {"test_accuracy": 0.9, "latency": 3.0}
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("synthetic", "ab" * 18)
    assert dataset.tags[0].value == "train"
    with tracker.run("finetune@views", {}, {"role": "snn"}) as again:
        again.log_artifact(model, "model")
        second = again.register_model(registered_model_name("views"), "model/snn.pt")
    versions = {v.version: v for v in client.search_model_versions("name = 'views-snn'")}
    assert (int(first), int(second)) == (1, 2) and set(map(int, versions)) == {1, 2}
    assert versions[first].run_id == mlrun.run_id and versions[first].source.endswith(
        f"{mlrun.run_id}/artifacts/model/snn.pt")
