"""Hardware-constraint sweeps: per-setting metrics, fine-tuning under constraints, resume, plots, MLflow, params."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
import yaml
from torch import nn

import ttfs
from pipeline import params as P
from pipeline import sweeps
from pipeline.artifacts import Paths
from pipeline.data import hold_out, synthetic
from pipeline.results import SweepResult
from pipeline.sweeps import KINDS, PLOT_NAME, X_COLUMN, SweepData, run_sweep, setting_key
from ttfs.train import TensorBatches, train_epoch

GRID = {"jitter": [0, 0.2], "jitter_seeds": 3, "time_steps": [2, 16], "weight_bits": [2, 8],
        "latency_factor": [1, 8], "finetune_epochs": 2, "finetune_lr": 3e-3, "batch_size": 16,
        "train_metrics": True}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is several times faster than two fighting over a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    """A small FC network trained on synthetic images, converted to an exact B1 SNN."""
    splits = synthetic(P.SyntheticParams(train_size=256, test_size=256, shape=(1, 6, 6), classes=4, noise=0.3))
    splits["train"], splits["val"] = hold_out(splits["train"], 64, 0)
    data = SweepData(*(t for s in ("train", "val", "test")
                       for t in (splits[s].pixels.float() / 255, splits[s].labels)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for epoch in range(10):
        train_epoch(model, TensorBatches(data.train_x, data.train_y, 32, seed=epoch), opt)
    return ttfs.convert(model, data.train_x), data


@pytest.fixture(scope="module")
def swept(toy, tmp_path_factory):
    snn, data = toy
    sp = parse_sweep(GRID, "experiments.toy.sweep")
    state = tmp_path_factory.mktemp("ckpt") / "sweep.pt"
    return run_sweep(snn, data, sp, conversion_windows=snn.deltas, seed=0, state_path=state), sp


def test_every_grid_value_has_metrics_before_and_after_finetuning(swept):
    result, sp = swept
    for kind in KINDS:
        settings = result["settings"][kind]
        assert sorted(settings) == sorted(sweeps.fmt(v) for v in sp.grid(kind))
        for r in settings.values():
            for phase in ("before", "finetuned"):
                m = r[phase]
                assert 0 <= m["accuracy"] <= 1 and m["spikes_per_neuron"] > 0 and m["latency"] > 0
                assert m["causality_violations"] == 0  # every constrained network saturates
            assert r["finetune_epochs"] == 2
    exact = result["snn"]
    assert result["settings"]["jitter"]["0"]["before"]["accuracy"] == exact["accuracy"]
    assert result["settings"]["weight_bits"]["8"]["before"]["accuracy"] == pytest.approx(exact["accuracy"], abs=0.01)
    json.dumps(result, allow_nan=False)  # plain numbers, no tensors


def test_constraints_do_what_they_say(swept):
    result, _ = swept
    exact, tight = result["snn"], result["tight_windows"]
    assert tight["latency"] < exact["latency"]  # windows tightened to the activation quantile
    steps = result["settings"]["time_steps"]
    assert steps["2"]["latency"] == steps["16"]["latency"] == tight["latency"]
    assert steps["2"]["before"]["accuracy"] < steps["16"]["before"]["accuracy"]
    latency = result["settings"]["latency_factor"]
    assert latency["1"]["latency"] == pytest.approx(tight["latency"])
    assert latency["8"]["latency"] == pytest.approx(tight["latency"] / 8)
    assert latency["8"]["latency_reduction_vs_finetuned"] == pytest.approx(exact["latency"] / latency["8"]["latency"])
    # the SNN here is the converted one: both baselines are its windows
    assert result["conversion"]["latency"] == pytest.approx(exact["latency"])
    assert latency["8"]["latency_reduction_vs_conversion"] == pytest.approx(
        latency["8"]["latency_reduction_vs_finetuned"])
    assert result["time_levels"] == "steps" and steps["16"]["time_steps_per_window"] == 16
    assert latency["8"]["before"]["accuracy"] < latency["1"]["before"]["accuracy"]


def test_finetuning_under_2bit_weights_recovers_training_accuracy(swept):
    r = swept[0]["settings"]["weight_bits"]["2"]
    assert r["before"]["train_accuracy"] < swept[0]["snn"]["train_accuracy"]  # 2 bits do hurt
    assert r["finetuned"]["train_accuracy"] >= r["before"]["train_accuracy"]
    assert r["finetuned"]["accuracy"] >= r["before"]["accuracy"]


def test_jitter_is_reported_over_seeds(swept):
    jitter = swept[0]["settings"]["jitter"]
    noisy = jitter["0.2"]
    for phase in ("before", "finetuned"):
        assert len(noisy[phase]["accuracy_per_seed"]) == 3
        assert noisy[phase]["accuracy_std"] > 0
        assert noisy[phase]["accuracy"] == pytest.approx(sum(noisy[phase]["accuracy_per_seed"]) / 3)
    assert jitter["0"]["before"]["accuracy_std"] == 0


def test_sigma_is_also_reported_per_window_width(swept):
    result, _ = swept
    noisy = result["settings"]["jitter"]["0.2"]
    windows = noisy["windows"]
    assert result["jitter_inputs"] is False
    # hidden windows only: the input spikes are not jittered by default
    assert noisy["sigma_relative_per_layer"] == pytest.approx(
        {f"layer{n}": 0.2 / windows[n] for n in range(1, len(windows))})
    assert sweeps.relative_sigma(0.1, [1.0, 4.0], jitter_inputs=True) == {"input": 0.1, "layer1": 0.025}
    assert "sigma_relative_per_layer" not in result["settings"]["weight_bits"]["2"]


def test_latency_reduction_is_measured_against_the_conversion_windows(toy, tmp_path):
    snn, data = toy
    finetuned = copy.deepcopy(snn)
    with torch.no_grad():
        finetuned.deltas[1:] *= 10.0  # as the adaptive rule (kappa) leaves them: same function, later readout
    sp = parse_sweep({"jitter": [], "time_steps": [], "weight_bits": [], "latency_factor": [1, 4],
                      "latency_base": "model", "finetune_epochs": 0}, "s")
    result = run_sweep(finetuned, data, sp, conversion_windows=snn.deltas, seed=0, state_path=tmp_path / "s.pt")
    conversion = float(snn.latency())
    assert result["conversion"]["windows"] == pytest.approx(snn.deltas.tolist())
    assert result["conversion"]["latency"] == pytest.approx(conversion)
    for factor, r in ((1, result["settings"]["latency_factor"]["1"]), (4, result["settings"]["latency_factor"]["4"])):
        assert r["latency"] == pytest.approx(float(finetuned.latency()) / factor, rel=1e-6)
        assert r["latency_reduction_vs_finetuned"] == pytest.approx(factor, rel=1e-6)
        assert r["latency_reduction_vs_conversion"] == pytest.approx(conversion / r["latency"], rel=1e-6)
    # "4x shorter" than the inflated windows is still longer than the conversion's windows
    assert result["settings"]["latency_factor"]["4"]["latency_reduction_vs_conversion"] < 1
    with pytest.raises(ValueError, match="not the same network"):
        run_sweep(finetuned, data, sp, conversion_windows=snn.deltas[:1], seed=0, state_path=tmp_path / "t.pt")


def test_time_levels_bits_use_2b_minus_1_steps_and_inputs_can_be_jittered(toy, tmp_path):
    snn, data = toy
    sp = parse_sweep({"time_levels": "bits", "time_steps": [3], "jitter_inputs": True}, "s")
    sweep = sweeps.Sweep(snn, data, sp, conversion_windows=snn.deltas, seed=0, device="cpu", dtype=torch.float32,
                         state_path=tmp_path / "s.pt")
    assert sweep.constrained("time_steps", 3).spike_constraints.levels == 7
    assert sweep.setting_details("time_steps", 3, [1.0, 2.0]) == {"time_steps_per_window": 7}
    jittered = sweep.constrained("jitter", 0.05)
    assert jittered.spike_constraints.input_start is None  # input spikes jittered too
    z = data.test_x[:8]
    assert not torch.equal(jittered.run(z).input_times, snn.run(z).input_times)
    assert sweep.setting_details("jitter", 0.05, [1.0, 2.0])["sigma_relative_per_layer"] == pytest.approx(
        {"input": 0.05, "layer1": 0.025})


def test_a_sweep_in_time_bits_reports_the_steps_it_used(toy, tmp_path):
    from pipeline.report import builder

    snn, data = toy
    sp = parse_sweep({"time_levels": "bits", "time_steps": [2, 3], "jitter": [0.05], "jitter_seeds": 1,
                      "jitter_inputs": True, "weight_bits": [], "latency_factor": [], "finetune_epochs": 0}, "s")
    result = run_sweep(snn, data, sp, conversion_windows=snn.deltas, seed=0, state_path=tmp_path / "s.pt")
    lineage = {"experiment": "toy", "dataset": "synthetic", "data_sha256": "d" * 64, "pretrain_params_hash": "p" * 16}
    typed = SweepResult.model_validate({**result, "params_hash": "0123456789abcdef", "lineage": lineage})
    assert typed.time_levels == "bits" and typed.jitter_inputs
    rows = typed.settings.rows("time_steps")
    assert [r.time_steps_per_window for r in rows] == [3, 7]
    assert builder.sweep_details("time_steps", rows, True, bits=True) == ("steps per window", ["3", "7"])
    label, cells = builder.sweep_details("jitter", typed.settings.rows("jitter"), True, bits=True)
    assert label == "σ / Δ (input and hidden windows)" and "–" in cells[0]  # input and hidden widths differ
    assert sweeps.rows_for(result, "time_steps")[1]["time_steps_per_window"] == 7
    assert sweeps.xlabel("time_steps", result).startswith("time bits b")


def test_outputs_plots_and_csv(swept, tmp_path, monkeypatch):
    result, _ = swept
    monkeypatch.chdir(tmp_path)
    paths = Paths("toy")
    lineage = {"experiment": "toy", "dataset": "synthetic", "data_sha256": "d" * 64, "pretrain_params_hash": "p" * 16}
    sweeps.write_outputs(paths, "toy", result, "0123456789abcdef", lineage)
    assert SweepResult.read(paths.metrics("sweep")).lineage == lineage
    assert json.loads(paths.metrics("sweep").read_text())["settings"].keys() == set(KINDS)
    for kind in KINDS:
        rows = list(csv.DictReader(paths.plot(f"{PLOT_NAME[kind]}.csv").open()))
        assert [float(r[X_COLUMN[kind]]) for r in rows] == sorted(float(v) for v in result["settings"][kind])
        assert all(r["accuracy_before"] and r["accuracy_finetuned"] for r in rows)
        assert paths.plot(f"{PLOT_NAME[kind]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths.metrics("sweep").read_text()
    assert "run_id" not in text and "seconds" not in text  # DVC output: a pure function of the inputs


def test_interrupted_sweep_resumes_without_redoing_finished_settings(toy, swept, tmp_path, monkeypatch):
    snn, data = toy
    sp = parse_sweep({**GRID, "jitter": [0.2], "time_steps": [], "weight_bits": [2], "latency_factor": [8]},
                     "experiments.toy.sweep")
    calls = []
    original = sweeps.Sweep.run_setting

    def counting(self, kind, value, reference):
        calls.append(setting_key(kind, value))
        if len(calls) == 2 and not getattr(counting, "interrupted", False):
            counting.interrupted = True
            raise KeyboardInterrupt
        return original(self, kind, value, reference)

    monkeypatch.setattr(sweeps.Sweep, "run_setting", counting)
    state_path = tmp_path / "sweep.pt"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(snn, data, sp, conversion_windows=snn.deltas, seed=0, state_path=state_path)
    assert calls == ["jitter=0.2", "weight_bits=2"]
    state = sweeps.checkpoint.load(state_path)
    assert list(state["results"]) == ["jitter=0.2"]
    calls.clear()
    result = run_sweep(snn, data, sp, conversion_windows=snn.deltas, seed=0, state_path=state_path, state=state)
    assert calls == ["weight_bits=2", "latency_factor=8"]
    full = swept[0]["settings"]
    for kind, value in (("jitter", "0.2"), ("weight_bits", "2"), ("latency_factor", "8")):
        assert result["settings"][kind][value] == full[kind][value]  # same numbers as an uninterrupted sweep


# -- params ------------------------------------------------------------------------------------------


def parse_sweep(section, _path=None):
    """A sweep section validated the one way params are: inside a whole params file."""
    from tests.conftest import TINY_PARAMS

    raw = {**TINY_PARAMS, "experiments": {"toy": {**TINY_PARAMS["experiments"]["tiny_fc2"], "sweep": section}}}
    return P.parse(raw).experiment("toy").sweep


@pytest.mark.parametrize(
    "section,message",
    [
        ({"jitter": [0, -0.1]}, r"experiments\.toy\.sweep\.jitter\[1\]: input should be greater than or equal to 0, "
                                r"got -0\.1"),
        ({"time_steps": [16, 1]}, r"experiments\.toy\.sweep\.time_steps\[1\]: .* greater than or equal to 2, got 1"),
        ({"weight_bits": [4, 1]}, r"experiments\.toy\.sweep\.weight_bits\[1\]: .* greater than or equal to 2"),
        ({"weight_bits": [40]}, r"experiments\.toy\.sweep\.weight_bits\[0\]: .* less than or equal to 32"),
        ({"latency_factor": [0.5]}, r"sweep\.latency_factor\[0\]: .* greater than or equal to 1, got 0\.5"),
        ({"time_steps": [8.5]}, r"time_steps\[0\]: input should be a valid integer, .* got 8\.5"),
        ({"jitter": ["abc"]}, r"jitter\[0\]: input should be a valid number, .* got 'abc'"),
        ({"jitter": ["nan"]}, r"jitter\[0\]: .* finite"),
        ({"weight_bits": [4, 4]}, r"weight_bits\[1\]: duplicate grid value 4"),
        ({"jitter_seeds": 0}, r"experiments\.toy\.sweep\.jitter_seeds: .* greater than or equal to 1, got 0"),
        ({"window_quantile": 1.5}, r"window_quantile: input should be less than or equal to 1"),
        ({"latency_base": "loose"}, r"latency_base: expected one of tight, model"),
        ({"bits": [4]}, r"experiments\.toy\.sweep\.bits: unknown key; allowed keys: jitter"),
        ({"time_levels": "bits", "time_steps": [4, 30]}, r"time_steps\[1\]: at most 24 time bits .*got 30"),
        ({"time_levels": "levels"}, r"time_levels: expected one of steps, bits"),
        ({"finetune_lr_for": {"bits": 1e-5}}, r"finetune_lr_for\.bits\[key\]: expected one of jitter, time_steps"),
        ({"finetune_lr_for": {"weight_bits": 0}}, r"finetune_lr_for\.weight_bits: .* greater than 0"),
    ],
)
def test_bad_grid_values_are_rejected_with_the_key_and_value(section, message):
    with pytest.raises(P.ParamsError, match=message):
        parse_sweep(section, "experiments.toy.sweep")


def test_grid_values_are_coerced_like_dvc_exp_run_writes_them():
    sp = parse_sweep({"jitter": ["1e-2", 0], "time_steps": "16", "latency_factor": 4, "finetune_lr": "1e-5",
                      "train_metrics": "true"}, "s")
    assert sp.jitter == (0.01, 0.0) and sp.time_steps == (16,) and sp.latency_factor == (4.0,)
    assert sp.finetune_lr == 1e-5 and sp.train_metrics is True
    own = parse_sweep({"finetune_lr": 1e-4, "finetune_lr_for": {"weight_bits": 1e-5}})
    assert own.finetune_params("weight_bits").lr == 1e-5 and own.finetune_params("jitter").lr == 1e-4
    assert parse_sweep({}, "s") == parse_sweep(None, "s") == P.SweepParams()
    assert parse_sweep({"weight_bits": []}, "s").weight_bits == ()


# -- the DVC stage with MLflow on a synthetic pipeline ----------------------------------------------


def test_stage_writes_outputs_and_nested_mlflow_runs_linked_to_the_reference(tiny_params, tmp_path, monkeypatch,
                                                                             capsys):
    from mlflow import MlflowClient

    from stages import convert, finetune, prepare, pretrain
    from stages import sweep as sweep_stage

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    grid = {"jitter": [0, 0.1], "jitter_seeds": 2, "time_steps": [4], "weight_bits": [3], "latency_factor": [2],
            "finetune_epochs": 1, "batch_size": 32, "finetune_lr": 1e-3, "finetune_lr_for": {"weight_bits": 2e-4}}
    raw = tiny_params  # conftest: synthetic data, experiment tiny_fc2
    raw["experiments"]["toy"] = raw["experiments"].pop("tiny_fc2")
    upstream = "params.yaml"
    raw["experiments"]["toy"]["sweep"] = grid
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert prepare.main(["synthetic", "--params", upstream]) == 0
    for stage in (pretrain, convert, finetune):
        assert stage.main(["toy", "--params", upstream]) == 0

    calls, interrupted = [], []
    original = sweeps.Sweep.run_setting

    def interrupt_third(self, kind, value, reference):
        calls.append(setting_key(kind, value))
        if len(calls) == 3 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return original(self, kind, value, reference)

    monkeypatch.setattr(sweeps.Sweep, "run_setting", interrupt_third)
    assert sweep_stage.main(["toy"]) == 130  # Ctrl-C after two finished settings
    assert len(list((tmp_path / "checkpoints" / "toy").glob("sweep-*.pt"))) == 1
    calls.clear()
    assert sweep_stage.main(["toy"]) == 0
    assert calls == ["time_steps=4", "weight_bits=3", "latency_factor=2"]  # the first two are not redone

    paths = Paths("toy")
    result = json.loads(paths.metrics("sweep").read_text())
    assert {k: sorted(v) for k, v in result["settings"].items()} == {
        "jitter": ["0", "0.1"], "time_steps": ["4"], "weight_bits": ["3"], "latency_factor": ["2"]}
    for path in sweeps.output_files(paths):
        assert path.is_file()
    assert not list((tmp_path / "checkpoints" / "toy").glob("sweep*"))  # state removed once finished

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("toy")
    runs = client.search_runs([experiment.experiment_id])
    reference = [r for r in runs if r.data.tags.get("role") == "reference"]
    assert len(reference) == 1
    ref_id = reference[0].info.run_id
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]  # the interrupted run was resumed
    assert parent.data.tags["reference_run_id"] == ref_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["snn.accuracy"] == pytest.approx(result["snn"]["accuracy"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(
        ["jitter=0", "jitter=0.1", "time_steps=4", "weight_bits=3", "latency_factor=2"])
    for child in children:
        assert child.data.tags["reference_run_id"] == ref_id
        assert child.info.status == "FINISHED"
        assert child.data.params["constraint.kind"] == child.data.tags["constraint"]
        params = child.data.params  # shared hyperparameters unprefixed, as on the finetune run
        lr = 2e-4 if child.data.tags["constraint"] == "weight_bits" else grid["finetune_lr"]  # finetune_lr_for
        assert params["epochs"] == str(grid["finetune_epochs"]) and float(params["lr"]) == lr
        assert result["settings"][child.data.tags["constraint"]][child.data.tags["constraint_value"]][
            "finetune_lr"] == lr
        assert params["seed"] and params["batch_size"] and not any(k.startswith("sweep.") for k in params)
        assert {"before.accuracy", "finetuned.accuracy", "latency", "delta.test_accuracy"} <= set(child.data.metrics)

    raw["experiments"]["toy"]["sweep"] = {**grid, "time_steps": [16, 1]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert sweep_stage.main(["toy"]) == 2
    assert "experiments.toy.sweep.time_steps[1]: input should be greater than or equal to 2, got 1" in \
        capsys.readouterr().err


def test_a_missing_sweep_section_is_reported(tiny_params, tmp_path):
    del tiny_params["experiments"]["tiny_fc2"]["sweep"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    with pytest.raises(P.ParamsError, match=r"experiments\.tiny_fc2\.sweep: required key is missing"):
        P.load(tmp_path / "params.yaml")


def test_latency_base_model_shrinks_the_models_own_windows(toy, tmp_path):
    snn, data = toy
    sp = parse_sweep({"latency_base": "model"}, "s")
    sweep = sweeps.Sweep(snn, data, sp, conversion_windows=snn.deltas, seed=0, device="cpu", dtype=torch.float32,
                         state_path=tmp_path / "s.pt")
    shrunk = sweep.constrained("latency_factor", 4.0)
    assert float(shrunk.latency()) == pytest.approx(float(snn.latency()) / 4, rel=1e-6)
    tight = sweeps.Sweep(snn, data, parse_sweep({}, "s"), conversion_windows=snn.deltas, seed=0, device="cpu",
                         dtype=torch.float32, state_path=tmp_path / "s.pt").constrained("latency_factor", 4.0)
    assert float(tight.latency()) < float(shrunk.latency())
