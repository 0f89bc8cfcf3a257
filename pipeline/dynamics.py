"""Learning dynamics of ReLU, B1 and alpha1 networks (the paper's central figure; SPEC 2.4, 2.7, 4).

One deep fully connected network (``depth`` weight layers, ``width`` neurons per hidden layer) is trained
in four forms on the same mini-batches, in lockstep:

* ``relu``: a Glorot-uniform, zero-bias ReLU network (:func:`ttfs.jacobian.init_snn` draws it; its readout
  is scaled down once so that alpha1 can represent it, which changes no argmax);
* ``b1``: that ReLU network converted exactly with the B1 parameterisation. Gradient descent on B1 *is*
  gradient descent on the ReLU network, so its loss curve must equal ReLU's and the cosine similarity
  of its reverse-mapped weights to ReLU's stays 1 (up to float64 rounding);
* ``alpha1_smart``: the same ReLU network converted with the alpha1 forward map (smart initialisation);
* ``alpha1_standard``: alpha1 with W drawn directly with Glorot uniform (standard initialisation),
  thresholds and windows calibrated on training data (:func:`ttfs.jacobian.alpha1_standard_snn`).

Which ReLU network an SNN is compared with: its *twin*, the ReLU network whose parameters are the SNN's
own reverse-mapped (equivalent ReLU) parameters at initialisation, trained like the others. Twin and SNN
start from the same function *and* the same ReLU-space parameters, so the cosine similarity of their
weights starts at exactly 1 and measures how far the SNN's training trajectory departs from ReLU training.
For B1 the twin is ``relu`` itself. For ``alpha1_smart`` it is not: the alpha1 conversion rescales hidden
neurons by ReLU's positive homogeneity (weights into neuron i divided by c_i, weights out of it multiplied),
which keeps the function but moves the weights (cosine ~0.45 to ``relu`` at initialisation for Glorot
8-layer networks), so its twin ``relu_alpha1_smart`` is that rescaled ReLU network. ``alpha1_standard``
has no ReLU counterpart by construction; its twin ``relu_alpha1_standard`` starts from its reverse-mapped
point (neurons with slope B <= 0 map to constant units, see :func:`ttfs.jacobian.equivalent_relu_parameters`).
The twins also answer the paper's question directly: the same initial function trained as a ReLU network
learns; whether the SNN does depends on its parameterisation only.

Recorded ``evals_per_epoch`` times per epoch: running training loss (mean over the steps since the last
record; at step 0 the loss on the whole training subset), test loss and accuracy, cosine similarity to the
twin, and the number of alpha1 neurons with slope B <= 0 (silent for good). At initialisation: Jacobian
spectra (:func:`ttfs.jacobian.jacobian_spectra`) of the three SNN initialisations on real training
samples, per layer and for the product over depth. A network whose loss becomes NaN/inf is recorded as
diverged and dropped from the rest of the run; the others continue.

Everything is float64 (B1 == ReLU to ~1e-15 needs it) and deterministic given ``seed``: subsets, initial
weights and batch order come from seeded generators, never from the global RNG.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ttfs import SNN
from ttfs.jacobian import (
    cosine_similarity_to_relu,
    equivalent_relu_parameters,
    init_snn,
    jacobian_spectra,
    layer_jacobians,
)
from ttfs.train import DivergenceError, TensorBatches, evaluate, train_epoch

from .artifacts import write_csv, write_json
from .params import DynamicsConfig, resolve_device

F64 = torch.float64
SNNS = ("b1", "alpha1_smart", "alpha1_standard")
PARTNER = {"b1": "relu", "alpha1_smart": "relu_alpha1_smart", "alpha1_standard": "relu_alpha1_standard"}
NETWORKS = ("relu", "b1", "alpha1_smart", "alpha1_standard", "relu_alpha1_smart", "relu_alpha1_standard")
CURVE_COLUMNS = ("network", "epoch", "step", "train_loss", "test_loss", "test_accuracy", "cosine",
                 "nonpositive_slopes")
PLOTS = ("training_curves.png", "cosine.png", "jacobian_spectra.png", "jacobian_depth.png")

LABELS = {
    "relu": "ReLU",
    "b1": "B1 (converted ReLU init)",
    "alpha1_smart": "α1, smart init",
    "alpha1_standard": "α1, standard init",
    "relu_alpha1_smart": "ReLU twin of α1 smart",
    "relu_alpha1_standard": "ReLU twin of α1 standard",
}
STYLE = {
    "relu": {"color": "black", "lw": 2.5},
    "b1": {"color": "tab:orange", "ls": "--", "lw": 1.6},
    "alpha1_smart": {"color": "tab:blue", "lw": 1.6},
    "alpha1_standard": {"color": "tab:red", "lw": 1.6},
    "relu_alpha1_smart": {"color": "tab:blue", "ls": ":", "lw": 1.2, "alpha": 0.7},
    "relu_alpha1_standard": {"color": "tab:red", "ls": ":", "lw": 1.2, "alpha": 0.7},
}
INIT_LABELS = {"b1": "B1", "alpha1_smart": "α1 smart init", "alpha1_standard": "α1 standard init"}

LogFn = Callable[[dict, int], None]


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------
def _subset(x: Tensor, y: Tensor, size: int | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    order = torch.randperm(len(x), generator=generator)
    if size is not None:
        order = order[:size]
    return x[order], y[order]


def _unit_inputs(x: Tensor, in_range: tuple[float, float]) -> Tensor:
    """Flattened float64 inputs in [0, 1] (the SNN input window [0, 1])."""
    p, q = in_range
    x = x.reshape(len(x), -1).to(F64)
    return ((x - p) / (q - p)).clamp(0.0, 1.0)


def relu_from_parameters(params: list[tuple[Tensor, Tensor]]) -> nn.Sequential:
    """Linear+ReLU ... Linear with the given (w, b[:, :1]) per layer, float64."""
    modules: list[nn.Module] = []
    for k, (w, b) in enumerate(params):
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=F64)
        with torch.no_grad():
            lin.weight.copy_(w.to(F64))
            lin.bias.copy_(b[:, 0].to(F64))
        modules.append(lin)
        if k < len(params) - 1:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def build_networks(widths: list[int], calibration: Tensor, seed: int) -> dict[str, nn.Module]:
    """The four networks and the ReLU twins of the two alpha1 SNNs, at initialisation (CPU, float64)."""
    b1, relu = init_snn(widths, "b1", calibration, seed=seed)
    smart, relu_again = init_snn(widths, "alpha1_smart", calibration, seed=seed)
    standard, _ = init_snn(widths, "alpha1_standard", calibration, seed=seed)
    for p, q in zip(relu.parameters(), relu_again.parameters(), strict=True):
        if not torch.equal(p, q):
            raise AssertionError("init_snn drew different ReLU networks for the same seed")
    return {
        "relu": relu,
        "b1": b1,
        "alpha1_smart": smart,
        "alpha1_standard": standard,
        "relu_alpha1_smart": relu_from_parameters(equivalent_relu_parameters(smart)),
        "relu_alpha1_standard": relu_from_parameters(equivalent_relu_parameters(standard)),
    }


def nonpositive_slopes(snn: SNN) -> int:
    """alpha1 neurons (hidden and readout) whose slope B = alpha + sum_j W_ij is <= 0; 0 for B1."""
    return sum(int((layer.alpha + layer.weight.detach().flatten(1).sum(1) <= 0).sum())
               for layer in snn.neuron_layers if not layer.is_b1)


@torch.no_grad()
def _max_logit_gap(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """max |logits_a - logits_b| relative to the logit scale max(1, max |logits_b|)."""
    la, lb = a(x), b(x)
    return float((la - lb).abs().max() / lb.abs().max().clamp(min=1.0))


# --------------------------------------------------------------------------------------------------
# Jacobian spectra at initialisation
# --------------------------------------------------------------------------------------------------
def _svd_top(m: Tensor) -> np.ndarray:
    return np.linalg.svd(m.detach().cpu().numpy(), compute_uv=False)[:, 0]


def _median(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values)) if values.size else float("nan")


@torch.no_grad()
def init_spectra_summary(snn: SNN, z: Tensor) -> tuple[dict, dict]:
    """(JSON summary, plot data) of the Jacobian spectra of ``snn`` on raw inputs ``z`` (SPEC 2.7).

    Blocks: J^(1) .. J^(N-1) of the hidden layers and the readout block dlogits/dx^(N-1) = diag(1/B) W, so
    that the depth product J^(N)...J^(1) is the input-output Jacobian dlogits/dx^(0). That product is a
    property of the function (B1 and alpha1-smart, converted from the same ReLU network, have the same one;
    the hidden-only product is not: alpha1's rescaling by positive homogeneity moves gain from the last
    hidden layer into the readout). Summary (medians over samples): top singular value of every block, of
    the cumulative products J^(n)...J^(1) and of the full product; spectral radius of the square
    (hidden-to-hidden) blocks and of their product J^(N-1)...J^(2) (NaN if the hidden widths differ); the
    fraction of eigenvalues of the square blocks outside the unit circle.
    """
    report = jacobian_spectra(snn, z, include_readout=True)
    jacobians = layer_jacobians(snn, z, include_readout=True)
    cumulative_top = []
    product = None
    for k, jac in enumerate(jacobians):
        product = jac if product is None else jac @ product
        top = report.product_singular_values[:, 0] if k == len(jacobians) - 1 else _svd_top(product)
        cumulative_top.append(_median(top))
    square = [j for j in jacobians[1:-1] if j.shape[-1] == j.shape[-2]]
    square_radius = float("nan")
    if square and len(square) == len(jacobians) - 2:
        sq = square[0]
        for jac in square[1:]:
            sq = jac @ sq
        square_radius = _median(np.abs(np.linalg.eigvals(sq.cpu().numpy())).max(-1))
    eig = [e for e in report.layer_eigenvalues if e is not None]
    pooled = np.concatenate([e.reshape(-1) for e in eig]) if eig else np.zeros(0, dtype=np.complex128)
    summary = {
        "product_top_singular_value": _median(report.product_singular_values[:, 0]),
        "product_median_singular_value": _median(np.median(report.product_singular_values, axis=1)),
        "square_product_spectral_radius": square_radius,
        "layer_top_singular_value": [_median(sv[:, 0]) for sv in report.layer_singular_values],
        "layer_spectral_radius": [None if e is None else _median(np.abs(e).max(-1)) for e in report.layer_eigenvalues],
        "eigenvalues_outside_unit_circle": float((np.abs(pooled) > 1).mean()) if pooled.size else None,
        "max_abs_eigenvalue": float(np.abs(pooled).max()) if pooled.size else None,
        "cumulative_top_singular_value": cumulative_top,
        "active_fraction": [float(a) for a in report.active_fraction],
        "nonpositive_slopes": [int(c) for c in report.nonpositive_slopes],
        "phase1_spikes": [int(c) for c in report.phase1_spikes],
        "samples": int(z.shape[0]),
    }
    plot = {"layer_sv": report.layer_singular_values, "product_sv": report.product_singular_values,
            "eigenvalues": pooled, "layer_top": summary["layer_top_singular_value"], "cumulative_top": cumulative_top}
    return summary, plot


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------
def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def run_dynamics(
    config: DynamicsConfig,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    out_dir: str | Path,
    log: LogFn | None = None,
    in_range: tuple[float, float] = (0.0, 1.0),
    plots: bool = True,
) -> dict:
    """Train ReLU, B1, alpha1-smart, alpha1-standard (and the alpha1 twins) in lockstep; write the results.

    Inputs are raw samples (any shape; flattened) with values mapped to [0, 1] by ``in_range`` = (p, q);
    labels are class indices. Writes ``out_dir``/metrics.json, curves.csv and (unless ``plots`` is False)
    the PNGs of :data:`PLOTS`, all byte-for-byte reproducible; returns the metrics dict.
    ``log(values, step)``, if given, is called at every record with
    ``values = {"epoch": e, network: {metric: value}}`` (finite numbers only), e.g. for MLflow.
    """

    out_dir = Path(out_dir)
    device = resolve_device(config.device, "dynamics.device")
    generator = torch.Generator().manual_seed(config.seed)
    x_train, y_train = _subset(train_x, train_y, config.train_size, generator)
    x_test, y_test = _subset(test_x, test_y, config.test_size, generator)
    x_train, x_test = _unit_inputs(x_train, in_range), _unit_inputs(x_test, in_range)
    y_train, y_test = y_train.to(torch.long), y_test.to(torch.long)
    classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    widths = [x_train.shape[1]] + [config.width] * (config.depth - 1) + [classes]
    calibration = x_train[: config.calibration_samples]

    started = time.perf_counter()
    nets = build_networks(widths, calibration, config.seed)
    init_gap = {name: _max_logit_gap(nets[name], nets[PARTNER[name]], calibration) for name in SNNS}
    twin_b1 = max(float((w - p.weight.detach()).abs().max()) for (w, _), p in
                  zip(equivalent_relu_parameters(nets["b1"]), _linears(nets["relu"]), strict=True))

    spectra, spectra_plot = {}, {}
    z = x_train[: config.spectra_samples]
    for name in tqdm(SNNS, desc="dynamics: Jacobian spectra at init", unit="init", file=sys.stderr, leave=False):
        spectra[name], spectra_plot[name] = init_spectra_summary(nets[name], z)

    for net in nets.values():
        net.to(device)
    train = TensorBatches(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed, device=device)
    test = TensorBatches(x_test, y_test, 1000, shuffle=False, device=device)
    train_eval = TensorBatches(x_train, y_train, 1000, shuffle=False, device=device)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=config.lr) for name, net in nets.items()}
    steps_per_epoch = len(train)
    marks = sorted({max(1, round(k * steps_per_epoch / config.evals_per_epoch))
                    for k in range(1, config.evals_per_epoch + 1)})
    diverged: dict[str, dict] = {}
    rows: list[dict] = []

    def record(step: int, train_loss: dict[str, float]) -> None:
        epoch = step / steps_per_epoch
        logged: dict = {"epoch": epoch}
        for name, net in nets.items():
            if name in diverged:
                continue
            stats = evaluate(net, test)
            row = {"network": name, "epoch": epoch, "step": step, "train_loss": train_loss.get(name),
                   "test_loss": stats["loss"], "test_accuracy": stats["accuracy"], "cosine": None,
                   "nonpositive_slopes": None}
            if name in PARTNER and PARTNER[name] not in diverged:
                row["cosine"] = cosine_similarity_to_relu(net, nets[PARTNER[name]])
            if name.startswith("alpha1"):
                row["nonpositive_slopes"] = nonpositive_slopes(net)
            rows.append(row)
            logged[name] = {k: v for k, v in row.items()
                            if k not in ("network", "epoch", "step") and v is not None and math.isfinite(v)}
        if log is not None:
            log(logged, step)

    record(0, {name: evaluate(net, train_eval)["loss"] for name, net in nets.items()})
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="dynamics: training", unit="step", mininterval=2.0,
               file=sys.stderr)
    for epoch in range(1, config.epochs + 1):
        batches, done = iter(train), 0
        for mark in marks:
            chunk = list(islice(batches, mark - done))
            done = mark
            step = (epoch - 1) * steps_per_epoch + mark
            losses = {}
            for name, net in nets.items():
                if name in diverged:
                    continue
                try:
                    losses[name] = train_epoch(net, chunk, optimizers[name])["loss"]
                except DivergenceError as e:
                    diverged[name] = {"step": step, "epoch": step / steps_per_epoch, "error": str(e)}
                    tqdm.write(f"dynamics: {name} diverged by step {step} ({e}); the others continue", file=sys.stderr)
            record(step, losses)
            bar.update(len(chunk))
            bar.set_postfix({r["network"]: f"{r['test_accuracy']:.3f}" for r in rows if r["step"] == step},
                            refresh=False)
    bar.close()

    metrics = {
        "config": config.model_dump() | {"widths": widths, "train_samples": len(x_train), "test_samples": len(x_test),
                                    "steps_per_epoch": steps_per_epoch, "dtype": "float64", "optimizer": "adam"},
        "networks": _final_metrics(rows, diverged),
        "init_spectra": spectra,
        "init_check": {"max_rel_logit_diff_to_partner": init_gap, "b1_max_abs_weight_diff_to_relu": twin_b1},
        "partners": dict(PARTNER),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "curves.csv", rows, CURVE_COLUMNS)
    if plots:
        plot_training_curves(out_dir / "training_curves.png", rows, diverged)
        plot_cosine(out_dir / "cosine.png", rows, diverged)
        plot_spectra(out_dir / "jacobian_spectra.png", spectra_plot)
        plot_depth(out_dir / "jacobian_depth.png", spectra_plot)
    tqdm.write(f"dynamics: done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return metrics


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _final_metrics(rows: list[dict], diverged: dict[str, dict]) -> dict:
    by_net = {name: [r for r in rows if r["network"] == name] for name in NETWORKS}
    out = {}
    for name, curve in by_net.items():
        last = curve[-1]
        m = {
            "test_accuracy": last["test_accuracy"],
            "test_loss": last["test_loss"],
            "train_loss": last["train_loss"],
            "initial_test_accuracy": curve[0]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in curve),
            "diverged": name in diverged,
            "diverged_at_step": diverged[name]["step"] if name in diverged else None,
            "diverged_at_epoch": diverged[name]["epoch"] if name in diverged else None,
            "last_epoch": last["epoch"],
        }
        if name in PARTNER:
            partner = {r["step"]: r for r in by_net[PARTNER[name]]}
            gaps = [abs(r["train_loss"] - partner[r["step"]]["train_loss"]) for r in curve
                    if r["step"] in partner and r["train_loss"] is not None
                    and partner[r["step"]]["train_loss"] is not None]
            cosines = [r["cosine"] for r in curve if r["cosine"] is not None]
            m |= {
                "partner": PARTNER[name],
                "cosine": cosines[-1] if cosines else None,
                "min_cosine": min(cosines) if cosines else None,
                "max_train_loss_gap_to_partner": max(gaps) if gaps else None,
            }
        if name.startswith("alpha1"):
            m |= {"nonpositive_slopes_init": curve[0]["nonpositive_slopes"],
                  "nonpositive_slopes": last["nonpositive_slopes"]}
        out[name] = m
    return out


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from .plots import save_png

    save_png(fig, path)


def _series(rows: list[dict], name: str, key: str) -> tuple[list[float], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r["network"] == name and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _mark_divergence(ax, rows, diverged, key):
    for name, info in diverged.items():
        xs, ys = _series(rows, name, key)
        y = ys[-1] if ys else 0.0
        ax.plot([info["epoch"]], [y], marker="X", ms=11, color=STYLE[name]["color"], ls="none")
        ax.annotate("diverged (NaN)", (info["epoch"], y), textcoords="offset points", xytext=(6, 6),
                    color=STYLE[name]["color"], fontsize=8)


def plot_training_curves(path: Path, rows: list[dict], diverged: dict[str, dict]) -> None:
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name in NETWORKS:
        for ax, key in ((ax_loss, "train_loss"), (ax_acc, "test_accuracy")):
            xs, ys = _series(rows, name, key)
            ax.plot(xs, ys, label=LABELS[name], marker="o" if name == "b1" else None, ms=3, **STYLE[name])
    _mark_divergence(ax_loss, rows, diverged, "train_loss")
    _mark_divergence(ax_acc, rows, diverged, "test_accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log",
                title="training loss (B1 lies exactly on ReLU)")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1))
    ax_acc.legend(fontsize=8, loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_cosine(path: Path, rows: list[dict], diverged: dict[str, dict]) -> None:
    plt = _plt()
    fig, (ax_cos, ax_gap, ax_dead) = plt.subplots(1, 3, figsize=(15, 4.3))
    for name in SNNS:
        xs, ys = _series(rows, name, "cosine")
        label = f"{LABELS[name]} vs {LABELS[PARTNER[name]]}"
        ax_cos.plot(xs, ys, label=label, marker="o", ms=3, **STYLE[name])
        ax_gap.plot(xs, [max(1 - y, 1e-17) for y in ys], label=label, marker="o", ms=3, **STYLE[name])
    for name in ("alpha1_smart", "alpha1_standard"):
        xs, ys = _series(rows, name, "nonpositive_slopes")
        ax_dead.plot(xs, ys, label=LABELS[name], marker="o", ms=3, **STYLE[name])
    _mark_divergence(ax_cos, rows, diverged, "cosine")
    ax_cos.set(xlabel="epoch", ylabel="cosine similarity", title="weights (reverse-mapped) vs ReLU twin")
    ax_cos.legend(fontsize=8)
    ax_gap.set(xlabel="epoch", ylabel="1 − cosine similarity (floored at 1e-17)", yscale="log",
               title="distance from the ReLU trajectory")
    ax_dead.set(xlabel="epoch", ylabel="neurons with slope B ≤ 0", title="α1 neurons silenced by B ≤ 0")
    ax_dead.legend(fontsize=8)
    for ax in (ax_cos, ax_gap, ax_dead):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _log10_positive(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values).reshape(-1)
    v = v[np.isfinite(v) & (v > 1e-12)]
    return np.log10(v)


def plot_spectra(path: Path, data: dict[str, dict]) -> None:
    """Row 1: histograms of log10 singular values per layer and of the depth product; row 2: eigenvalues
    of the square (hidden-to-hidden) layer Jacobians in the complex plane with the unit circle."""
    plt = _plt()
    inits = list(data)
    fig, axes = plt.subplots(2, len(inits), figsize=(5 * len(inits), 9), squeeze=False)
    all_logs = np.concatenate([_log10_positive(sv) for d in data.values() for sv in [*d["layer_sv"], d["product_sv"]]])
    # 1st percentile: a rank-deficient product has a few singular values ~1e-12 that would squash the rest
    lo, hi = (np.percentile(all_logs, 1) - 0.5, all_logs.max()) if all_logs.size else (-3, 3)
    bins = np.linspace(min(lo, -1.0), max(hi, 1.0) + 1e-9, 60)
    cmap = plt.get_cmap("viridis")
    for col, init in enumerate(inits):
        d = data[init]
        ax = axes[0, col]
        n = len(d["layer_sv"])
        for k, sv in enumerate(d["layer_sv"]):
            ax.hist(np.clip(_log10_positive(sv), bins[0], bins[-1]), bins=bins, histtype="step",
                    color=cmap(k / max(n - 1, 1)), label=f"layer {k + 1}" if k < n - 1 else "readout",
                    density=True)
        ax.hist(np.clip(_log10_positive(d["product_sv"]), bins[0], bins[-1]), bins=bins, histtype="step", lw=2.2,
                color="crimson", label="product = dlogits/dx(0)", density=True)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set(title=f"{INIT_LABELS[init]}: Jacobian singular values",
               xlabel="log10 singular value (outliers drawn in the edge bins)",
               ylabel="density", yscale="log")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        eig = d["eigenvalues"]
        radius = np.abs(eig)
        limit = max(1.5, float(np.percentile(radius, 99)) * 1.1) if radius.size else 1.5
        ax.scatter(eig.real, eig.imag, s=1.5, alpha=0.35, color="tab:purple", rasterized=True)
        circle = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(circle), np.sin(circle), color="black", lw=1)
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xlabel="Re λ", ylabel="Im λ",
               title=f"{INIT_LABELS[init]}: eigenvalues, square blocks")
        if radius.size:
            ax.text(0.02, 0.98, f"|λ| > 1: {100 * (radius > 1).mean():.1f} %\nmax |λ| = {radius.max():.3g}",
                    transform=ax.transAxes, va="top", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    fig.tight_layout()
    _save(fig, path)


def plot_depth(path: Path, data: dict[str, dict]) -> None:
    """Median top singular value of each layer's Jacobian and of the product up to that layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"b1": "tab:orange", "alpha1_smart": "tab:blue", "alpha1_standard": "tab:red"}
    for init, d in data.items():
        layers = np.arange(1, len(d["layer_top"]) + 1)
        ticks = [str(k) for k in layers[:-1]] + ["readout"]
        ax.plot(layers, d["cumulative_top"], marker="o", color=colors.get(init), label=f"{INIT_LABELS[init]}: product")
        ax.plot(layers, d["layer_top"], marker="s", ls="--", color=colors.get(init), alpha=0.6,
                label=f"{INIT_LABELS[init]}: single layer")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="layer n", ylabel="median top singular value", yscale="log",
           title="Jacobian gain at initialisation: layer n and product J(n)…J(1)")
    ax.set_xticks(layers, ticks)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, path)
