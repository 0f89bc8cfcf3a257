"""Learning-dynamics study (pipeline/dynamics.py, ttfs/alpha1.py, stages/dynamics.py) at toy scale."""

from __future__ import annotations

import copy
import csv
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import dynamics as D
from pipeline import params as P
from pipeline import results as R
from ttfs import convert
from ttfs.alpha1 import adapt_windows, bound_row_sums, project_slopes, row_sums, slopes
from ttfs.jacobian import alpha1_standard_snn, glorot_relu_mlp, layer_jacobians, smart_alpha1_relu

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy-sized matrices gain nothing from threads, and on a busy 2-core machine they lose a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


PROTOTYPES = torch.rand(4, 64, generator=torch.Generator().manual_seed(99))


def synthetic(n: int, seed: int, prototypes: torch.Tensor = PROTOTYPES):
    """Noisy copies of one random prototype per class, in [0, 1]; every split shares the prototypes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(len(prototypes), (n,), generator=g)
    x = prototypes[y] * (0.7 + 0.3 * torch.rand(n, 1, generator=g)) + 0.2 * torch.randn(n, prototypes.shape[1],
                                                                                          generator=g)
    return x.clamp(0, 1).to(torch.float32), y


def splits():
    return synthetic(200, 1), synthetic(100, 2), synthetic(100, 3)


TOY = D.DynamicsConfig(depth=5, width=32, train_size=None, val_size=None, test_size=None, epochs=30, batch_size=16,
                       lr_grid=[1e-2, 1e-3, 1e-4], selection_epochs=3, records=8, patience=None,
                       calibration_samples=100, spectra_samples=16, seed=0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamics")
    logged = []
    metrics = D.run_dynamics(TOY, *splits(), out, log=lambda values, step: logged.append((step, values)))
    with open(out / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return out, metrics, rows, logged


def _curve(rows, network, key):
    return [float(r[key]) for r in rows if r["network"] == network]


def test_outputs_exist_and_are_valid(study):
    out, metrics, rows, logged = study
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    R.DynamicsResult.model_validate({**metrics, "params_hash": "0" * 16,
                                     "lineage": {"dataset": "synthetic", "data_sha256": "x"}})
    assert tuple(rows[0]) == D.CURVE_COLUMNS
    assert {r["network"] for r in rows} == set(D.NETWORKS)
    nets = metrics["networks"]
    for name in D.NETWORKS:
        assert len(_curve(rows, name, "epoch")) == nets[name]["records"]
        assert _curve(rows, name, "epoch")[-1] == nets[name]["epochs"]
        assert all(r["test_accuracy"] != "" for r in rows if r["network"] == name)  # filled in at the end
    for name in D.PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert width >= 400 and height >= 300 and len(data) > 10_000, (name, width, height, len(data))
    assert {name for _, values in logged for name in values} == set(D.NETWORKS)
    # the toy task is easy: ReLU (and so B1) fits it and stops as converged
    assert nets["relu"]["stop"] == nets["b1"]["stop"] == "converged"
    assert nets["relu"]["train_accuracy"] >= 0.99 and nets["b1"]["train_accuracy"] >= 0.99


def test_b1_loss_equals_relu_loss_at_every_record(study):
    _, metrics, rows, _ = study
    relu, b1 = metrics["networks"]["relu"], metrics["networks"]["b1"]
    assert metrics["selection"]["b1"]["chosen_lr"] == metrics["selection"]["relu"]["chosen_lr"]
    assert [r["val_loss"] for r in metrics["selection"]["b1"]["runs"]] == pytest.approx(
        [r["val_loss"] for r in metrics["selection"]["relu"]["runs"]], abs=1e-12)
    assert _curve(rows, "b1", "epoch") == _curve(rows, "relu", "epoch")
    assert b1["common_records_with_relu"] == relu["records"] >= 3
    for key in ("train_loss", "val_loss", "test_loss"):
        gaps = [abs(a - b) for a, b in zip(_curve(rows, "relu", key), _curve(rows, "b1", key), strict=True)]
        assert max(gaps) <= 1e-12, (key, gaps)
    assert _curve(rows, "b1", "train_accuracy") == _curve(rows, "relu", "train_accuracy")
    assert b1["max_train_loss_gap_to_relu"] <= 1e-12 and b1["max_train_accuracy_gap_to_relu"] == 0
    assert all(abs(c - 1) <= 1e-9 for c in _curve(rows, "b1", "cosine_to_relu"))
    assert _curve(rows, "relu", "train_loss")[-1] < 0.01 < _curve(rows, "relu", "train_loss")[0]
    assert b1["causality_violations"] == 0
    assert b1["records_within_gap_tolerance"] == b1["records"] and b1["first_epoch_over_gap_tolerance"] is None
    # the control (ReLU with its initial parameters moved one ulp) trains at ReLU's rate, without a search
    assert metrics["networks"][D.CONTROL]["lr"] == relu["lr"] and D.CONTROL not in metrics["selection"]


def test_alpha1_is_projected_counted_and_departs_from_relu(study):
    _, metrics, rows, _ = study
    nets = metrics["networks"]
    for name in ("alpha1_smart", "alpha1_standard"):
        assert all(b >= TOY.slope_floor * (1 - 1e-9) for b in _curve(rows, name, "min_slope")[1:])
        assert _curve(rows, name, "nonpositive_slopes")[1:] == [0] * (nets[name]["records"] - 1)
        assert nets[name]["projections"] == _curve(rows, name, "projections")[-1]
        assert nets[name]["projected_neurons"] <= nets[name]["projections"]
        assert nets[name]["causality_violations"] == 0  # the alpha1 windows grew with the activations
    # alpha1-standard starts with silent B <= 0 neurons; the projection revives (and counts) them
    assert nets["alpha1_standard"]["nonpositive_slopes_init"] > 0
    assert nets["alpha1_standard"]["projected_neurons"] >= nets["alpha1_standard"]["nonpositive_slopes_init"]
    assert nets["alpha1_smart"]["nonpositive_slopes_init"] == 0
    # alpha1-smart learns, but not along ReLU's curve
    smart = nets["alpha1_smart"]
    assert smart["best_train_accuracy"] > 0.5 > smart["initial_train_accuracy"]
    assert smart["max_train_loss_gap_to_relu"] > 1e-3


def test_project_slopes_keeps_every_slope_above_the_floor_and_counts_the_neurons():
    g = torch.Generator().manual_seed(2)
    z = torch.rand(64, 10, generator=g, dtype=F64)
    snn = alpha1_standard_snn([10, 24, 24, 6], z, g)
    eps = 0.05
    before = [slopes(layer).clone() for layer in snn.neuron_layers]
    weights = [layer.weight.detach().clone() for layer in snn.neuron_layers]
    low = [int((b < eps).sum()) for b in before]
    assert sum(low) >= 3  # the standard init has slopes below the floor
    moved = project_slopes(snn, eps)
    assert [m.numel() for m in moved] == low
    for layer, b, w, m in zip(snn.neuron_layers, before, weights, moved, strict=True):
        after = slopes(layer)
        assert bool((after >= eps).all()) and bool((after[~(b >= eps)] <= eps * (1 + 2e-6)).all())
        assert torch.equal(torch.nonzero(b < eps).flatten(), m)
        keep = b >= eps
        assert torch.equal(layer.weight.detach()[keep], w[keep])  # rows above the floor untouched
        shift = layer.weight.detach()[~keep] - w[~keep]  # uniform shift per projected row
        torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), rtol=0, atol=1e-15)
    assert sum(m.numel() for m in project_slopes(snn, eps)) == 0  # a second projection has nothing to do
    with pytest.raises(ValueError, match="positive"):
        project_slopes(snn, 0.0)


def test_alpha1_window_adaptation_keeps_the_function_and_causality():
    g = torch.Generator().manual_seed(4)
    z = torch.rand(64, 12, generator=g, dtype=F64)
    relu = glorot_relu_mlp([12, 16, 16, 3], g)
    snn = convert(smart_alpha1_relu(relu), z, parameterisation="alpha1", alpha1_margin=0.01)
    with torch.no_grad():
        snn.neuron_layers[0].weight.mul_(3.0)  # activations now outgrow their windows
        record = snn.run(z)
    assert int(record.causality_violations().sum()) > 0
    logits, deltas = record.logits.clone(), snn.deltas.clone()
    growth = adapt_windows(snn, record, kappa=1.1)
    assert growth[0] > 0 and float(snn.deltas[1]) == pytest.approx(1.1 * float(record.activations()[0].max()))
    with torch.no_grad():
        after = snn.run(z)
    torch.testing.assert_close(after.logits, logits, rtol=0, atol=1e-10 * float(logits.abs().max()))
    assert int(after.causality_violations().sum()) == 0 and bool((snn.deltas >= deltas).all())


class SplitReadError(RuntimeError):
    pass


class Forbidden(torch.Tensor):
    """A tensor that raises on any use: the test split, while learning rates are chosen and nets train."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise SplitReadError(f"the test split was read ({getattr(func, '__name__', func)})")


def test_the_learning_rate_is_chosen_on_validation_and_test_is_read_only_after_training(tmp_path):
    cfg = TOY.model_copy(update={"epochs": 4, "records": 3, "depth": 3, "width": 16})
    train, val, test = splits()
    forbidden = (torch.Tensor._make_subclass(Forbidden, test[0]), torch.Tensor._make_subclass(Forbidden, test[1]))
    logged = []
    with pytest.raises(SplitReadError):
        D.run_dynamics(cfg, train, val, forbidden, tmp_path / "a", log=lambda v, s: logged.append((s, v)))
    # it was read only after every network had chosen its lr and trained: all training records were logged
    trained = {name for _, values in logged for name in values}
    assert trained == set(D.NETWORKS)
    assert not (tmp_path / "a" / "metrics.json").exists()
    # different test data change the test numbers only; different validation data can change the choice
    a = D.run_dynamics(cfg, train, val, test, tmp_path / "b", plots=False)
    b = D.run_dynamics(cfg, train, val, synthetic(100, 7), tmp_path / "c", plots=False)
    assert a["selection"] == b["selection"]
    for name in D.NETWORKS:
        for key in ("lr", "epochs", "train_loss", "val_loss", "val_accuracy"):
            assert a["networks"][name][key] == b["networks"][name][key], (name, key)
    assert a["networks"]["relu"]["test_loss"] != b["networks"]["relu"]["test_loss"]
    for name, sel in a["selection"].items():
        best = min((r for r in sel["runs"] if not r["diverged"]), key=lambda r: r["val_loss"])
        assert sel["split"] == "val" and sel["chosen_lr"] == best["lr"] == a["networks"][name]["lr"]
    noisy_val = synthetic(100, 2, prototypes=torch.rand(4, 64, generator=torch.Generator().manual_seed(5)))
    c = D.run_dynamics(cfg, train, noisy_val, test, tmp_path / "d", plots=False)
    assert c["selection"]["relu"]["runs"] != a["selection"]["relu"]["runs"]
    by_accuracy = D.run_dynamics(cfg.model_copy(update={"selection_metric": "val_accuracy"}), train, val, test,
                                 tmp_path / "e", plots=False)
    for sel in by_accuracy["selection"].values():
        best = max((r for r in sel["runs"] if not r["diverged"]), key=lambda r: (r["val_accuracy"], -r["val_loss"]))
        assert sel["chosen_lr"] == best["lr"]


@pytest.mark.parametrize("recentre", [False, True])
def test_smart_init_row_sums_are_bounded_layer_by_layer(recentre):
    widths = [64, 40, 40, 40, 40, 40, 5]
    z = torch.rand(128, 64, generator=torch.Generator().manual_seed(0), dtype=F64)
    relu = glorot_relu_mlp(widths, torch.Generator().manual_seed(1))
    with torch.no_grad():
        relu[0].weight.mul_(4.0)  # row sums far outside [-10, 0.99] in the first layer
        relu[0].weight[0] = -1.0  # a row sum of -64: below the lower bound
    low, high = -10.0, 0.99
    smart = smart_alpha1_relu(relu, recentre, (low, high))
    for k, s in enumerate(row_sums(smart)):
        assert float(s.min()) >= low - 1e-12 and float(s.max()) <= high + 1e-12, (k, s.min(), s.max())
    if not recentre:  # same softmax as the ReLU network it came from
        torch.testing.assert_close(F.log_softmax(smart(z), 1), F.log_softmax(relu(z), 1), rtol=0, atol=1e-10)
        assert float(row_sums(smart)[0].min()) == pytest.approx(low)
    snn = convert(smart, z, parameterisation="alpha1", alpha1_margin=1 - high)
    b = [slopes(layer) for layer in snn.neuron_layers]  # B = 1 / (1 - S) in [1/11, 100]
    assert all(float(s.min()) >= 1 / 11 - 1e-9 and float(s.max()) <= 100 + 1e-6 for s in b)
    # the hidden layers' gains stay of the order of the B1 ones instead of compounding through depth
    b1 = convert(relu, z)
    top = [np.median(np.linalg.svd(j.numpy(), compute_uv=False)[:, 0]) for j in layer_jacobians(snn, z)]
    top_b1 = [np.median(np.linalg.svd(j.numpy(), compute_uv=False)[:, 0]) for j in layer_jacobians(b1, z)]
    assert max(top[1:]) < 4 * max(top_b1[1:]), (top, top_b1)
    with pytest.raises(ValueError, match="bounds"):
        bound_row_sums(copy.deepcopy(relu), 0.5, 0.99)


def test_depth_products_are_over_the_hidden_layers_only(study):
    _, metrics, _, _ = study
    hidden = TOY.depth - 1
    for name, s in metrics["init_spectra"].items():
        assert len(s["layer_top_singular_value"]) == len(s["cumulative_top_singular_value"]) == hidden, name
        assert s["cumulative_top_singular_value"][-1] == pytest.approx(s["product_top_singular_value"], rel=1e-12)
    assert set(metrics["final_spectra"]) == set(D.SNNS)
    assert metrics["init_spectra"]["b1"]["min_positive_slope"] == [None] * hidden  # B1's slope is 1
    assert all(b == pytest.approx(1.0) for b in metrics["init_spectra"]["alpha1_smart"]["min_positive_slope"])
    # by hand on a tiny network: the product J(N-1)...J(1), no readout block; scaling the readout changes nothing
    g = torch.Generator().manual_seed(1)
    z = torch.rand(8, 6, generator=g, dtype=F64)
    relu = glorot_relu_mlp([6, 5, 5, 5, 3], g)
    snn = convert(relu, z)
    summary, _ = D.spectra_summary(snn, z)
    jac = [j.numpy() for j in layer_jacobians(snn, z)]
    assert len(jac) == 3
    product = jac[2] @ jac[1] @ jac[0]
    assert summary["product_top_singular_value"] == pytest.approx(
        float(np.median(np.linalg.svd(product, compute_uv=False)[:, 0])), rel=1e-9)
    assert summary["square_product_spectral_radius"] == pytest.approx(
        float(np.median(np.abs(np.linalg.eigvals(jac[2] @ jac[1])).max(-1))), rel=1e-9)
    with torch.no_grad():
        snn.neuron_layers[-1].weight.mul_(1e-3)
    assert D.spectra_summary(snn, z)[0] == summary


def test_alpha1_standard_jacobian_explodes_at_init(study):
    _, metrics, _, _ = study
    b1, std = metrics["init_spectra"]["b1"], metrics["init_spectra"]["alpha1_standard"]
    assert std["product_top_singular_value"] > 5 * b1["product_top_singular_value"], (b1, std)
    assert std["eigenvalues_outside_unit_circle"] > 0.02 > b1["eigenvalues_outside_unit_circle"]
    assert sum(std["nonpositive_slopes"]) > 0 and sum(b1["nonpositive_slopes"]) == 0


def test_divergence_is_recorded_and_the_study_continues(tmp_path, monkeypatch):
    real = D.train_step

    def poisoned(net, kind, z, y, optimizer, config):
        if kind == "alpha1":
            with torch.no_grad():
                net.neuron_layers[-1].bias.fill_(float("nan"))  # NaN thresholds: NaN logits
        return real(net, kind, z, y, optimizer, config)

    monkeypatch.setattr(D, "train_step", poisoned)
    cfg = TOY.model_copy(update={"depth": 3, "width": 8, "epochs": 3, "records": 2, "lr_grid": [1e-2]})
    metrics = D.run_dynamics(cfg, *splits(), tmp_path)
    nets = metrics["networks"]
    for name in ("alpha1_smart", "alpha1_standard"):  # every grid value diverged: no lr, nothing trained
        assert metrics["selection"][name]["chosen_lr"] is None and metrics["selection"][name]["runs"][0]["diverged"]
        assert nets[name]["stop"] == "diverged" and nets[name]["records"] == 0 and nets[name]["lr"] is None
    assert nets["relu"]["stop"] != "diverged" and nets["b1"]["max_train_loss_gap_to_relu"] <= 1e-12
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    assert all((tmp_path / name).read_bytes()[:8] == PNG_MAGIC for name in D.PLOTS)


def test_deterministic_given_the_seed(tmp_path):
    cfg = TOY.model_copy(update={"depth": 3, "width": 8, "train_size": 80, "val_size": 40, "test_size": 30,
                                 "epochs": 3, "records": 2, "lr_grid": [1e-3], "selection_epochs": 1})
    data = splits()
    D.run_dynamics(cfg, *data, tmp_path / "a", plots=False)
    D.run_dynamics(cfg, *data, tmp_path / "b", plots=False)
    for name in ("metrics.json", "curves.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not (tmp_path / "a" / D.PLOTS[0]).exists()
    other = D.run_dynamics(cfg.model_copy(update={"seed": 4}), *data, tmp_path / "c", plots=False)
    assert other["networks"]["relu"] != json.loads((tmp_path / "a" / "metrics.json").read_text())["networks"]["relu"]


def test_the_dynamics_section_is_validated_with_the_params():
    base = {"data": {"datasets": {"synthetic": {}}}}
    cfg = P.parse({**base, "dynamics": {"dataset": "synthetic", "width": "64", "lr_grid": ["1e-3", 1e-5],
                                        "train_size": None, "alpha1_row_sum_min": -5, "alpha1_row_sum_max": "0.9"}}
                  ).dynamics
    assert cfg.dataset == "synthetic" and cfg.width == 64 and cfg.lr_grid == [1e-3, 1e-5] and cfg.train_size is None
    assert (cfg.alpha1_row_sum_min, cfg.alpha1_row_sum_max) == (-5.0, 0.9) and cfg.depth == D.DynamicsConfig().depth
    for section, message in [({"dataset": "synthetic", "widht": 3}, r"dynamics\.widht: unknown key"),
                             ({"dataset": "synthetic", "depth": 1}, r"dynamics\.depth: .* greater than or equal to 2"),
                             ({"dataset": "synthetic", "lr_grid": []}, r"dynamics\.lr_grid: .*at least 1"),
                             ({"dataset": "synthetic", "alpha1_row_sum_max": 1.5},
                              r"dynamics\.alpha1_row_sum_max: .*less than 1"),
                             ({"dataset": "synthetic", "slope_floor": 0}, r"dynamics\.slope_floor: .*greater than 0"),
                             ({"dataset": "mnist"}, "not listed under data.datasets"),
                             ({}, r"dynamics\.dataset: required")]:
        with pytest.raises(P.ParamsError, match=message):
            P.parse({**base, "dynamics": section})
