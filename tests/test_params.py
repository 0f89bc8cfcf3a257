"""params.yaml validation: coercion of DVC-written strings, key paths in errors, unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import params as P
from stages import pretrain

ROOT = Path(__file__).resolve().parents[1]


def _error(raw: dict) -> str:
    with pytest.raises(P.ParamsError) as info:
        P.parse(raw)
    return str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in ROOT.glob("params*.yaml")))  # every profile
def test_shipped_profiles_are_valid(name):
    params = P.load(ROOT / name)
    assert params.experiments
    for exp in params.experiments.values():
        assert exp.dataset in params.datasets


def test_valid_tiny_params(tiny_params):
    params = P.parse(tiny_params)
    exp = params.experiment("tiny_fc2")
    assert exp.model.name == "fc2" and exp.model.kwargs() == {"width": 32}
    assert exp.pretrain.lr == 1e-3 and exp.convert.zeta == 0.5  # section defaults apply


def test_dvc_written_strings_are_coerced(tiny_params):
    # `dvc exp run -S ...lr=1e-05` writes an unquoted 1e-05, which YAML 1.1 (PyYAML) reads as a string.
    raw = yaml.safe_load("lr: 1e-05\nepochs: 1e1\nl1: '0'\n")
    assert raw["lr"] == "1e-05"
    tiny_params["experiments"]["tiny_fc2"]["pretrain"].update(raw)
    tiny_params["experiments"]["tiny_fc2"]["finetune"]["adapt_windows"] = "true"
    exp = P.parse(tiny_params).experiment("tiny_fc2")
    assert exp.pretrain.lr == pytest.approx(1e-5) and isinstance(exp.pretrain.lr, float)
    assert exp.pretrain.epochs == 10 and isinstance(exp.pretrain.epochs, int)
    assert exp.pretrain.l1 == 0.0
    assert exp.finetune.adapt_windows is True


@pytest.mark.parametrize(("key", "value", "message"), [
    ("lr", "abc", "experiments.tiny_fc2.pretrain.lr: input should be a valid number"),
    ("epochs", 2.5, "experiments.tiny_fc2.pretrain.epochs: input should be a valid integer, got a number with a "
                    "fractional part, got 2.5"),
    ("epochs", True, "experiments.tiny_fc2.pretrain.epochs: expected a number, not a boolean"),
    ("lr", -1, "experiments.tiny_fc2.pretrain.lr: input should be greater than 0, got -1"),
    ("lr", float("nan"), "experiments.tiny_fc2.pretrain.lr: input should be a finite number, got nan"),
    ("lr_decay", "inf", "experiments.tiny_fc2.pretrain.lr_decay: input should be a finite number"),
    ("optimizer", "rmsprop", "experiments.tiny_fc2.pretrain.optimizer: expected one of adam, sgd"),
    ("lrr", 1e-3, "experiments.tiny_fc2.pretrain.lrr: unknown key; allowed keys: epochs, batch_size"),
])
def test_bad_pretrain_values_name_the_key(tiny_params, key, value, message):
    tiny_params["experiments"]["tiny_fc2"]["pretrain"][key] = value
    assert message in _error(tiny_params)


def test_nonpositive_bias_is_refused_with_batch_norm(tiny_params):
    exp = tiny_params["experiments"]["tiny_fc2"]
    exp["pretrain"]["nonpositive_bias"] = "true"  # as `dvc exp run -S` writes it
    assert P.parse(tiny_params).experiment("tiny_fc2").pretrain.nonpositive_bias is True
    exp["model"]["batch_norm"] = True
    assert ("experiments.tiny_fc2.pretrain.nonpositive_bias: needs a model without batch norm"
            in _error(tiny_params))


def test_model_keywords_follow_the_zoo_signature(tiny_params):
    model = tiny_params["experiments"]["tiny_fc2"]["model"]
    model["depth"] = 3
    assert "experiments.tiny_fc2.model.depth: unknown key for model 'fc2'" in _error(tiny_params)
    model.pop("depth")
    model["width"] = "wide"
    assert "experiments.tiny_fc2.model.width: input should be a valid integer" in _error(tiny_params)
    model["name"] = "resnet"
    assert "experiments.tiny_fc2.model.name: unknown model 'resnet'" in _error(tiny_params)


def test_sequence_model_keywords_are_coerced(tiny_params):
    """A zoo keyword with a sequence default (vgg_fmnist's widths: ints and "P" pools) takes a YAML list."""
    tiny_params["experiments"]["tiny_fc2"]["model"] = {"name": "vgg_fmnist", "widths": [4, "4", "P"], "dense": 8}
    assert "experiments.tiny_fc2.model.dense: input should be a valid tuple" in _error(tiny_params)
    tiny_params["experiments"]["tiny_fc2"]["model"]["dense"] = [8]
    model = P.parse(tiny_params).experiments["tiny_fc2"].model
    assert model.kwargs() == {"widths": (4, 4, "P"), "dense": (8,)}


def test_structure_errors(tiny_params):
    bad = {**tiny_params, "extra": 1}
    assert "extra: unknown top-level section" in _error(bad)
    exp = tiny_params["experiments"]["tiny_fc2"]
    del exp["seed"]
    assert "experiments.tiny_fc2.seed: required key is missing" in _error(tiny_params)
    exp["seed"] = 0
    exp["dataset"] = "mnist"
    assert "experiments.tiny_fc2.dataset: 'mnist' is not listed under data.datasets" in _error(tiny_params)
    exp["dataset"] = "synthetic"
    exp["device"] = "gpu"
    assert "experiments.tiny_fc2.device: expected auto, cpu, cuda or cuda:N" in _error(tiny_params)
    exp["device"] = "cpu"
    tiny_params["data"]["datasets"]["imagenet"] = {}
    assert "data.datasets.imagenet: unknown key; allowed keys: mnist" in _error(tiny_params)
    del tiny_params["data"]["datasets"]["imagenet"]
    tiny_params["data"]["datasets"]["synthetic"]["shape"] = "28x28"
    assert "data.datasets.synthetic.shape: input should be a valid tuple" in _error(tiny_params)


def test_device_resolution():
    import torch

    assert P.resolve_device("cpu").type == "cpu"
    assert P.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(P.ParamsError, match="experiments.x.device: 'cuda' requested"):
            P.resolve_device("cuda", "experiments.x.device")


def test_params_hash_is_stable_and_sensitive(tiny_params):
    exp = P.parse(tiny_params).experiment("tiny_fc2")
    assert P.params_hash(exp.pretrain) == P.params_hash(P.parse(tiny_params).experiment("tiny_fc2").pretrain)
    tiny_params["experiments"]["tiny_fc2"]["pretrain"]["lr"] = 2e-3
    assert P.params_hash(exp.pretrain) != P.params_hash(P.parse(tiny_params).experiment("tiny_fc2").pretrain)


def test_stage_exits_with_status_2_and_the_key(tiny_params, tmp_path, capsys):
    tiny_params["experiments"]["tiny_fc2"]["pretrain"]["lr"] = "abc"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params))
    assert pretrain.main(["tiny_fc2", "--params", str(path)]) == 2
    assert "invalid params: experiments.tiny_fc2.pretrain.lr: input should be a valid number" in capsys.readouterr().err


@pytest.mark.parametrize(("section", "key", "message"), [
    ("tune", "n_trails", "tune.tiny_fc2.n_trails: unknown key; allowed keys: n_trials"),
    ("dynamics", "widht", "dynamics.widht: unknown key; allowed keys: depth"),
])
def test_typos_in_study_sections_are_rejected_before_any_stage_runs(tiny_params, tmp_path, capsys, section, key,
                                                                      message):
    """The first stage of the DAG (prepare) already refuses a typo in the tune or dynamics section."""
    from stages import prepare

    tiny_params["tune"] = {"tiny_fc2": {"n_trials": 2}}
    tiny_params["dynamics"] = {"dataset": "synthetic"}
    (tiny_params["tune"]["tiny_fc2"] if section == "tune" else tiny_params["dynamics"])[key] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params))
    assert prepare.main(["synthetic", "--params", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused_everywhere(tiny_params, value):
    for section, key in [("data", "noise"), ("convert", "zeta"), ("pretrain", "weight_decay")]:
        raw = yaml.safe_load(yaml.safe_dump(tiny_params))
        target = raw["data"]["datasets"]["synthetic"] if section == "data" else raw["experiments"]["tiny_fc2"][section]
        target[key] = yaml.safe_load(value)
        assert "input should be a finite number" in _error(raw)


def test_experiment_names_are_identifiers(tiny_params):
    tiny_params["experiments"][".."] = tiny_params["experiments"]["tiny_fc2"]
    assert "experiments: '..' is not a valid experiment name" in _error(tiny_params)


def test_committed_schema_is_current():
    assert P.SCHEMA_FILE.read_text() == P.json_schema(), "run: python -m pipeline.params --schema"


def test_a_stage_run_outside_the_project_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    from stages import convert

    monkeypatch.chdir(tmp_path)
    assert convert.main(["fmnist_fc2"]) == 2
    assert "params.yaml: no params file (run from the project root, where params.yaml is)" in capsys.readouterr().err
