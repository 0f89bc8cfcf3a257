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


@pytest.mark.parametrize("name", ["params.yaml", "params.paper.yaml"])
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
    ("lr", "abc", "experiments.tiny_fc2.pretrain.lr: expected a float, got 'abc'"),
    ("epochs", 2.5, "experiments.tiny_fc2.pretrain.epochs: expected an integer, got 2.5"),
    ("epochs", True, "experiments.tiny_fc2.pretrain.epochs: expected an integer"),
    ("lr", -1, "experiments.tiny_fc2.pretrain.lr: must be > 0.0"),
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
    assert "experiments.tiny_fc2.model.width: expected an integer, got 'wide'" in _error(tiny_params)
    model["name"] = "resnet"
    assert "experiments.tiny_fc2.model.name: unknown model 'resnet'" in _error(tiny_params)


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
    assert "data.datasets.imagenet: unknown dataset" in _error(tiny_params)
    del tiny_params["data"]["datasets"]["imagenet"]
    tiny_params["data"]["datasets"]["synthetic"]["shape"] = "28x28"
    assert "data.datasets.synthetic.shape: expected a list" in _error(tiny_params)


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
    assert "invalid params: experiments.tiny_fc2.pretrain.lr: expected a float, got 'abc'" in capsys.readouterr().err
