"""pipeline/results.py: every result file through its typed model (round trip, refusals, the real writers).

The toy results here (:func:`sample`) are also the report tests' results tree. The sweep and tune
documents come from the real assembly functions of pipeline.sweeps and pipeline.tuning, the dynamics
document once from pipeline.dynamics.run_dynamics, so a model that drifts from its writer fails here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline import results as R
from pipeline import sweeps, tuning
from pipeline.errors import ArtifactError

HASH = "39634949a751c6b2"
PRETRAIN_HASH = "0f1e2d3c4b5a6978"
SHA = "5" * 64


def lineage(model: type[R.StageResult], experiment: str = "fmnist_fc2", dataset: str = "fashion_mnist") -> dict:
    full = {"experiment": experiment, "dataset": dataset, "data_sha256": SHA, "pretrain_params_hash": PRETRAIN_HASH}
    return {k: full[k] for k in model.lineage_keys}


# -- the toy documents (as the stages write them, without params_hash and lineage) ---------------

PRETRAIN = {"test_accuracy": 0.8809, "test_loss": 0.33, "train_accuracy": 0.909, "train_loss": 0.25,
            "val_accuracy": 0.8912, "val_loss": 0.31, "epochs": 6, "parameters": 270310}
CONVERT = {
    "agreement": 1.0, "max_abs_logit_diff": 1.7763568394002505e-14, "max_rel_logit_diff": 3.46e-16,
    "causality_violations": 0, "relu_accuracy": 0.8809, "snn_accuracy": 0.8809, "spikes_per_neuron": 0.1751,
    "latency": 25.01, "clipped_inputs": 0, "windows": [1.0, 24.0],
    "float32": {"agreement": 1.0, "max_abs_logit_diff": 9.5367e-06, "max_rel_logit_diff": 1.86e-07,
                "snn_accuracy": 0.8809},
}
FINETUNE = {"test_accuracy": 0.8905, "test_loss": 0.31, "val_accuracy": 0.8987, "val_loss": 0.29, "epochs": 1,
            "mode": "converted",
            "equivalent_relu_agreement": 1.0, "equivalent_relu_max_rel_logit_diff": 1.0e-6,
            "causality_violations": 0, "spikes_per_neuron": 0.2026, "latency": 159.92, "windows": [1.0, 158.9]}


def evaluate_doc(relu: float = 0.8809, snn: float = 0.8950, spikes: float = 0.2026) -> dict:
    return {
        "relu_accuracy": relu, "snn_accuracy": snn, "delta_accuracy": snn - relu, "agreement_with_reference": 0.9981,
        "equivalent_relu": {"agreement": 1.0, "max_rel_logit_diff": 4.2e-7},
        "spikes_per_neuron": spikes, "spikes_per_neuron_per_layer": {"layer1": spikes},
        "hidden_neurons": 340, "causality_violations": 0, "clipped_inputs": 0,
        "synops_per_sample": 693.6, "synops_per_layer": {"layer1": 693.6},
        "routed_synops_per_sample": 693.6, "routed_synops_per_layer": {"layer1": 693.6}, "macs_per_sample": 269920,
        "energy_pj": {"snn_pj": 361281.44, "ann_pj": 1241632.0, "ratio": 0.29097, "saving": 3.4367},
        "energy_assumptions": {"e_synop_pj": 0.9, "e_mac_pj": 4.6, "first_layer_spiking": False},
        "latency": 159.92, "test_samples": 10000,
    }


def sweep_doc() -> dict:
    """Through the real assembly of pipeline.sweeps."""
    sp = sweeps.SweepParams(jitter=(0.0, 0.1), time_steps=(4, 16), weight_bits=(2, 4), latency_factor=(1.0, 4.0))
    setting = SimpleNamespace(sp=sp)  # what Sweep.setting_details reads
    ref = {"accuracy": 0.8905, "loss": 0.31, "spikes_per_neuron": 0.2026, "causality_violations": 0,
           "latency": 159.92}
    tight = ref | {"latency": 11.69, "quantile": 0.999, "samples": 10000, "windows": [1.0, 10.69]}
    accuracy = {("jitter", 0.0): (0.8905, 0.8915), ("jitter", 0.1): (0.8880, 0.8879),
                ("time_steps", 4): (0.8768, 0.8778), ("time_steps", 16): (0.8901, 0.8907),
                ("weight_bits", 2): (0.0690, 0.5135), ("weight_bits", 4): (0.8642, 0.8885),
                ("latency_factor", 1.0): (0.8905, 0.8911), ("latency_factor", 4.0): (0.8885, 0.8917)}
    rows = []
    for (kind, value), (before, after) in accuracy.items():
        def m(a, kind=kind):
            out = {"accuracy": a, "loss": 0.3, "spikes_per_neuron": 0.2, "causality_violations": 0, "latency": 10.0}
            if kind == "jitter":
                out |= {"accuracy_std": 0.0012, "spikes_per_neuron_std": 0.0, "accuracy_per_seed": [a] * 3}
            return out
        latency = 159.92 if kind in ("jitter", "weight_bits") else 11.69 / (value if kind == "latency_factor" else 1)
        windows = [1.0, latency - 1]
        rows.append({"kind": kind, "value": value, "finetune_epochs": 1, "finetune_lr": 1e-4, "before": m(before),
                     "finetuned": m(after), "finetune_train_accuracy": 0.92, "latency": latency,
                     "latency_reduction_vs_conversion": 25.0 / latency,
                     "latency_reduction_vs_finetuned": 159.92 / latency,
                     "windows": windows, "causality_violations": 0,
                     "delta_snn": {"before_accuracy": before - 0.8905, "finetuned_accuracy": after - 0.8905}}
                    | sweeps.Sweep.setting_details(setting, kind, value, windows))
    return sweeps.assemble(sp, ref, tight, rows, sweeps.conversion_reference(CONVERT["windows"]))


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


def _spectra(top: float, radius: float | None, outside: float, largest: float, dead: int = 0) -> dict:
    return {"product_top_singular_value": top, "product_median_singular_value": top / 2,
            "square_product_spectral_radius": radius, "layer_top_singular_value": [1.2, 1.4, 0.3],
            "layer_spectral_radius": [None, radius, None], "eigenvalues_outside_unit_circle": outside,
            "max_abs_eigenvalue": largest, "cumulative_top_singular_value": [1.2, 0.9, top],
            "active_fraction": [0.4, 0.5, 0.5], "nonpositive_slopes": [dead, 0, 0],
            "min_positive_slope": [None, None, None] if not dead else [0.004, 0.02, 0.1],
            "phase1_spikes": [0, 0, 0], "samples": 8}


def _net(lr: float | None, stop: str, train: float | None, **extra: Any) -> dict:
    return {"lr": lr, "stop": stop, "epochs": 40, "steps": 640, "records": 9, "train_accuracy": train,
            "train_loss": 0.45, "val_accuracy": 0.78, "val_loss": 0.68, "test_accuracy": 0.759, "test_loss": 0.68,
            "initial_train_accuracy": 0.078, "best_train_accuracy": train, "best_test_accuracy": 0.8245,
            "first_epoch_train_accuracy_90": None, "first_epoch_train_accuracy_99": None} | extra


def _selection(chosen: float | None, accuracies: list[float | None]) -> dict:
    return {"chosen_lr": chosen, "split": "val",
            "runs": [{"lr": lr, "diverged": acc is None, "val_accuracy": acc, "val_loss": None if acc is None else 0.7,
                      "projections": 0} for lr, acc in zip((1e-3, 1e-5), accuracies, strict=True)]}


DYNAMICS = {  # as pipeline.dynamics.run_dynamics writes it (three of the four networks)
    "config": {"depth": 4, "width": 16, "train_size": 512, "val_size": 128, "test_size": 128, "epochs": 40,
               "batch_size": 32, "optimizer": "adam", "momentum": 0.0, "lr_grid": [1e-3, 1e-5],
               "selection_metric": "val_loss", "selection_epochs": 5, "target_train_accuracy": 1.0,
               "patience": 20, "records": 8, "kappa_b1": 10.0, "kappa_alpha1": 1.1, "slope_floor": 1e-3,
               "alpha1_recentre": True, "alpha1_row_sum_min": -10.0, "alpha1_row_sum_max": 0.99, "zeta": 0.5,
               "calibration_samples": 100, "spectra_samples": 8, "seed": 0, "device": "cpu", "threads": 1,
               "widths": [784, 16, 16, 16, 10], "train_samples": 512, "val_samples": 128, "classes": 10,
               "steps_per_epoch": 16, "dtype": "float64",
               "record_epochs": [0, 1, 2, 3, 5, 8, 13, 24, 40]},
    "selection": {"relu": _selection(1e-3, [0.7825, 0.5]), "b1": _selection(1e-3, [0.7825, 0.5]),
                  "alpha1_standard": _selection(1e-5, [None, 0.104])},
    "gap_tolerance": 1e-12,
    "networks": {
        "relu": _net(1e-3, "converged", 1.0, first_epoch_train_accuracy_90=13, first_epoch_train_accuracy_99=24),
        "b1": _net(1e-3, "converged", 1.0, first_epoch_train_accuracy_90=13, first_epoch_train_accuracy_99=24,
                   common_records_with_relu=9, records_within_gap_tolerance=9, first_epoch_over_gap_tolerance=None,
                   max_train_loss_gap_to_relu=1.6e-15, max_test_loss_gap_to_relu=2e-15,
                   max_train_accuracy_gap_to_relu=0.0, cosine_to_relu=1.0000000000000007,
                   min_cosine_to_relu=0.9999999999999969, causality_violations=0),
        "alpha1_standard": _net(1e-5, "stalled", 0.104, test_loss=None, train_loss=115.2, test_accuracy=0.1,
                                common_records_with_relu=9, records_within_gap_tolerance=1,
                                first_epoch_over_gap_tolerance=1, max_train_loss_gap_to_relu=3427.7,
                                max_test_loss_gap_to_relu=None, max_train_accuracy_gap_to_relu=0.9,
                                cosine_to_relu=0.0031, min_cosine_to_relu=0.0031, projections=172,
                                projected_neurons=111, nonpositive_slopes_init=111, nonpositive_slopes=0,
                                min_slope=0.001, causality_violations=0),
    },
    "init_spectra": {"b1": _spectra(0.587, 0.1377, 0.0, 0.9159),
                     "alpha1_standard": _spectra(86700.0, 11600.0, 0.049, 208.0, dead=12)},
    "final_spectra": {"b1": _spectra(2.1, 0.5, 0.01, 1.3)},
    "init_check": {"b1_max_log_softmax_diff_to_relu": 3.6e-17, "alpha1_smart_max_log_softmax_diff_to_relu": 0.02},
    "smart_init": {"recentred": True, "row_sum_bounds": [-10.0, 0.99], "row_sum_min": [-1e-15, -2e-15, 0.0, -0.3],
                   "row_sum_max": [1e-15, 2e-15, 0.0, 0.4]},
}


def document(name: str) -> dict:
    """The toy document of a result (today's stage output, without the new fields)."""
    return {"pretrain": lambda: PRETRAIN, "convert": lambda: CONVERT, "finetune": lambda: FINETUNE,
            "evaluate": evaluate_doc, "sweep": sweep_doc, "tune": lambda: tune_docs()[1],
            "pareto": lambda: tune_docs()[0], "dynamics": lambda: DYNAMICS}[name]()


def sample(name: str, experiment: str = "fmnist_fc2", dataset: str = "fashion_mnist",
           params_hash: str = HASH, **changes: Any) -> R.StageResult:
    """The toy result ``name`` (a key of R.ARTIFACTS) as its model, with ``changes`` to top-level fields."""
    model = R.ARTIFACTS[name]
    data = document(name) | {"params_hash": params_hash, "lineage": lineage(model, experiment, dataset)}
    return model.model_validate(data | changes)


def _first_number(data: Any, path: tuple = ()) -> tuple | None:
    """Path of the first float leaf (depth first, in file order)."""
    if isinstance(data, float):
        return path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _first_number(value, (*path, key))
        if found is not None:
            return found
    return None


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) or "." in p else f".{p}" for p in path).lstrip(".")


NAMES = list(R.ARTIFACTS)


# -- every model -------------------------------------------------------------------------------------


def test_the_registry_names_every_stage_result():
    assert list(R.RESULTS) == ["pretrain", "convert", "finetune", "evaluate", "sweep", "tune", "dynamics"]
    assert all(model.stage == name for name, model in R.RESULTS.items())
    assert R.ARTIFACTS["pareto"] is R.ParetoResult and R.ParetoResult.stage == "tune"
    assert R.ConvertResult.path("fc2") == Path("metrics/fc2/convert.json")
    assert R.ParetoResult.path("fc2") == Path("plots/fc2/pareto.json")
    assert R.DynamicsResult.path() == Path("metrics/dynamics.json")
    assert R.SweepResult.command("fc2") == "dvc repro sweep@fc2" and R.DynamicsResult.command() == "dvc repro dynamics"


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_the_metrics_as_the_stages_write_them(name, tmp_path):
    result = sample(name)
    path = tmp_path / "metrics" / "fmnist_fc2" / f"{name}.json"
    result.write(path)
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith("{\n  \"") and "NaN" not in text
    data = json.loads(text)
    assert data.pop("params_hash") == HASH and data.pop("lineage") == lineage(type(result))
    assert data == document(name)  # same names, same nesting, same values: dvc metrics compare like with like
    assert list(json.loads(text))[-2:] == ["params_hash", "lineage"]
    assert type(result).read(path) == result
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    with pytest.raises(ValidationError):
        result.params_hash = "0" * 16  # frozen


@pytest.mark.parametrize("name", NAMES)
def test_a_malformed_number_names_the_file_the_field_and_the_command(name, tmp_path):
    model = R.ARTIFACTS[name]
    data = json.loads(sample(name).to_json())
    path = _first_number(data)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = "0.9x"
    file = tmp_path / "metrics" / "fc2" / model.path("fc2").name
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as err:
        model.read(file)
    command = "dvc repro dynamics" if name == "dynamics" else f"dvc repro {model.stage}@fc2"
    assert str(err.value) == (f"{file.as_posix()}: field {_dotted(path)}: input should be a valid number; "
                              f"rerun `{command}`")


@pytest.mark.parametrize("name", NAMES)
def test_an_incomplete_file_names_the_missing_field(name, tmp_path):
    model = R.ARTIFACTS[name]
    data = json.loads(sample(name).to_json())
    first = next(iter(data))
    del data[first]
    file = tmp_path / "result.json"
    file.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=rf"^{file.as_posix()}: field {first}: required field is missing; rerun "):
        model.read(file, experiment="fc2")


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_field_is_refused(name, tmp_path):
    model = R.ARTIFACTS[name]
    data = json.loads(sample(name).to_json()) | {"accuracy_typo": 0.9}
    file = tmp_path / "result.json"
    file.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="field accuracy_typo: unknown field"):
        model.read(file)
    with pytest.raises(ValidationError, match="accuracy_typo"):
        model.model_validate(data)


@pytest.mark.parametrize("name", NAMES)
def test_lineage_and_params_hash_are_required(name):
    model = R.ARTIFACTS[name]
    data = json.loads(sample(name).to_json())
    with pytest.raises(ValidationError, match="lineage"):
        model.model_validate(data | {"lineage": {"experiment": "fmnist_fc2"}})
    with pytest.raises(ValidationError, match="params_hash"):
        model.model_validate(data | {"params_hash": "not-a-hash"})
    with pytest.raises(ValidationError, match="params_hash"):
        model.model_validate({k: v for k, v in data.items() if k != "params_hash"})


def test_downstream_results_name_their_reference():
    assert "pretrain_params_hash" not in R.PretrainResult.lineage_keys
    for name in ("convert", "finetune", "evaluate", "sweep", "tune"):
        assert "pretrain_params_hash" in R.RESULTS[name].lineage_keys
    data = json.loads(sample("convert").to_json())
    del data["lineage"]["pretrain_params_hash"]
    with pytest.raises(ValidationError, match="missing pretrain_params_hash"):
        R.ConvertResult.model_validate(data)


# -- reading -------------------------------------------------------------------------------------------


def test_absent_is_none_broken_json_is_an_error(tmp_path):
    assert R.EvaluateResult.read_optional(tmp_path / "metrics" / "x" / "evaluate.json") is None
    path = tmp_path / "metrics" / "x" / "evaluate.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"evaluate.json: not valid JSON \(.*\); rerun `dvc repro evaluate@x`$"):
        R.EvaluateResult.read_optional(path)
    path.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match=r"field \(top level\): input should be an object"):
        R.EvaluateResult.read(path)
    with pytest.raises(ArtifactError, match="cannot read it"):
        R.EvaluateResult.read(path.parent)  # a directory


def test_types_are_strict_when_read(tmp_path):
    data = json.loads(sample("pretrain").to_json())
    for field, value, message in (("epochs", 2.5, "valid integer"), ("test_accuracy", True, "valid number"),
                                  ("test_accuracy", "0.9", "valid number"), ("test_accuracy", 1.5, "less than or"),
                                  ("parameters", -1, "greater than or equal")):
        path = tmp_path / "metrics" / "e" / "pretrain.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data | {field: value}))
        with pytest.raises(ArtifactError, match=f"field {field}: .*{message}"):
            R.PretrainResult.read(path)


# -- values ---------------------------------------------------------------------------------------------


def test_undefined_numbers_are_null_and_required_ones_finite(tmp_path):
    conv = sample("convert", max_rel_logit_diff=math.nan, max_abs_logit_diff=math.inf)
    assert conv.max_rel_logit_diff is None
    conv.write(tmp_path / "convert.json")
    data = json.loads((tmp_path / "convert.json").read_text())
    assert data["max_rel_logit_diff"] is None and data["max_abs_logit_diff"] is None
    for bad in (math.nan, math.inf):
        with pytest.raises(ValidationError, match="finite number"):
            sample("convert", latency=bad)


def test_keys_written_only_in_some_configurations_stay_out_when_absent():
    conv64 = {k: v for k, v in CONVERT.items() if k != "float32"} | {"float64": CONVERT["float32"]}
    result = R.ConvertResult.model_validate(conv64 | {"params_hash": HASH, "lineage": lineage(R.ConvertResult)})
    assert "float32" not in json.loads(result.to_json()) and result.in_dtype("float64").agreement == 1.0
    sweep = sample("sweep")
    data = json.loads(sweep.to_json())
    assert "train_accuracy" not in data["snn"] and "accuracy_std" not in data["snn"]
    assert data["settings"]["jitter"]["0.1"]["before"]["accuracy_per_seed"] == [0.888] * 3
    assert data["within_tolerance"]["time_steps"] == 16 and isinstance(data["settings"]["time_steps"]["4"]["value"],
                                                                       int)
    assert [s.value for s in sweep.settings.rows("weight_bits")] == [2, 4]
    nets = json.loads(sample("dynamics").to_json())["networks"]
    assert "max_train_loss_gap_to_relu" not in nets["relu"] and "nonpositive_slopes" not in nets["b1"]
    assert nets["alpha1_standard"]["test_loss"] is None and nets["alpha1_standard"]["max_test_loss_gap_to_relu"] is None


def test_deltas_against_the_reference_come_from_pretrain_json():
    ref = sample("pretrain")
    assert ref.deltas({"test_accuracy": 0.8909, "test_loss": None, "spikes": 1.0}) == {
        "delta.test_accuracy": pytest.approx(0.01)}


# -- the real writers --------------------------------------------------------------------------------


def test_the_dynamics_study_output_is_a_dynamics_result(tmp_path):
    import torch

    from pipeline import dynamics as D

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(150, 16, generator=g), torch.randint(3, (150,), generator=g)
    cfg = D.DynamicsConfig(depth=3, width=8, train_size=80, val_size=40, test_size=30, epochs=2, batch_size=16,
                           lr_grid=[1e-3], selection_epochs=1, records=2, calibration_samples=40, spectra_samples=4,
                           seed=3)
    D.run_dynamics(cfg, (x[:80], y[:80]), (x[80:120], y[80:120]), (x[120:], y[120:]), tmp_path, plots=False)
    data = json.loads((tmp_path / "metrics.json").read_text())
    result = R.DynamicsResult.model_validate(data | {"params_hash": HASH, "lineage": lineage(R.DynamicsResult)})
    back = json.loads(result.to_json())
    assert {k: v for k, v in back.items() if k not in ("params_hash", "lineage")} == data


def test_a_per_file_checksum_mapping_is_recorded_as_one_digest():
    files = {"train.pt": "a" * 64, "test.pt": "b" * 64}
    data = json.loads(sample("pretrain").to_json())
    result = R.PretrainResult.model_validate(data | {"lineage": data["lineage"] | {"data_sha256": files}})
    assert result.lineage["data_sha256"] == R.lineage_digest(dict(reversed(files.items()))) != R.lineage_digest(
        {"train.pt": "a" * 64})
    assert len(result.lineage["data_sha256"]) == 64
