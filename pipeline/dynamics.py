"""Learning dynamics of ReLU, B1 and alpha1 networks: the paper's Fig. 3 (SPEC 2.4, 2.7, 2.8, 4, 4a).

One deep fully connected network (``depth`` weight layers, ``width`` neurons per hidden layer) in four
forms, trained on a small fixed subset of the training split until it fits it:

* ``relu``: a Glorot-uniform, zero-bias ReLU network (the standard initialisation);
* ``b1``: that ReLU network converted exactly with the B1 parameterisation. Gradient descent on B1 is
  gradient descent on the ReLU network in exact arithmetic; in float64 its activations pass through
  spike times (x = t_min - t), which rounds differently from the ReLU network, and the records show how
  far the two training losses stay apart;
* ``alpha1_smart``: alpha1 with the smart initialisation (the same Glorot draw made alpha1-safe by
  :func:`ttfs.jacobian.smart_alpha1_relu`: rows re-centred if ``alpha1_recentre``, row sums bounded to
  [``alpha1_row_sum_min``, ``alpha1_row_sum_max``] layer by layer, then forward-mapped);
* ``alpha1_standard``: alpha1 with W drawn directly with Glorot uniform (:func:`ttfs.jacobian.alpha1_standard_snn`);

and a control, ``relu_ulp``: the ReLU network with every initial parameter moved by one ulp, trained at
ReLU's learning rate, which measures how much this training run amplifies differences of rounding size.

**Learning rates on validation (SPEC 4a).** Each of the four picks its own learning rate (Adam by default) from
``lr_grid``: a fresh copy of its initial network is trained ``selection_epochs`` epochs at every grid
value, and the value with the best ``selection_metric`` on ``val_size`` samples of the *validation* split
wins (a run whose loss became NaN/inf is out). The default is the lowest validation loss: after
``selection_epochs`` epochs on 1,000 images a fast rate has already begun to overfit (its validation
loss rises while its accuracy still leads), and a fast Adam rate also makes training chaotic: a copy of
the ReLU network moved by one ulp (the control below) then leaves the original's loss curve by more than
1e-12 within a few dozen epochs, so no float64 comparison of B1 with ReLU could show more than that.
The final run then trains the network at that rate for up to ``epochs`` epochs. The test split is not
touched until every network has finished training: each record keeps a copy of the parameters, and the
test curves are computed from those copies at the end (:func:`evaluate_test_split`).

**Keeping alpha1 trainable.** After every optimiser step (:func:`train_step`): every alpha1 row with slope
B = alpha + sum_j W_ij < ``slope_floor`` is projected back onto B = ``slope_floor``
(:func:`ttfs.alpha1.project_slopes`; counted, per network, in step-neuron events and distinct neurons),
and the windows follow SPEC 2.8 (Delta <- max(Delta, kappa max_batch x)) -- for B1 with ``kappa_b1`` as
:meth:`ttfs.SNN.adapt_windows`, for alpha1 with ``kappa_alpha1`` and the thresholds re-expressed so that
the function is unchanged (:func:`ttfs.alpha1.adapt_windows`).

**Stopping.** A network stops at ``epochs``, or earlier when its running training accuracy over an epoch
reaches ``target_train_accuracy`` (``converged``), when its best running training accuracy has not risen
for ``patience`` epochs (``stalled``), or when its loss is NaN/inf (``diverged``).

**Records** at log-spaced epochs (``records`` of them between 1 and ``epochs``, plus epoch 0 and the
last epoch): loss and accuracy on the whole training subset and on the validation subset (evaluation
mode), later on the test subset; the cosine similarity of B1's reverse-mapped weights to ReLU's; for
alpha1 the projections so far, neurons with B <= 0, the smallest slope, and causality violations on the
training subset. **Jacobians** (:func:`spectra_summary`) of the three SNNs over the *hidden* layers only
(J^(N-1)...J^(1); the readout is left out, so that no readout scaling enters the comparison), at
initialisation and at the end of training.

Everything is float64 and deterministic given ``seed``: subsets, initial weights and batch order come
from seeded generators (every run sees the same batches in the same order), never from the global RNG.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ttfs import SNN, convert
from ttfs.alpha1 import adapt_windows, project_slopes, row_sums, slopes
from ttfs.jacobian import (
    alpha1_standard_snn,
    cosine_similarity_to_relu,
    glorot_relu_mlp,
    jacobian_spectra,
    layer_jacobians,
    smart_alpha1_relu,
)
from ttfs.train import TensorBatches, evaluate

from .artifacts import write_csv, write_json
from .params import DynamicsConfig, resolve_device

F64 = torch.float64
SELECTED = ("relu", "b1", "alpha1_smart", "alpha1_standard")  # each chooses its own learning rate
CONTROL = "relu_ulp"  # ReLU with every initial weight moved by one ulp, at ReLU's learning rate
NETWORKS = (*SELECTED, CONTROL)
SNNS = ("b1", "alpha1_smart", "alpha1_standard")
KIND = {"relu": "relu", "b1": "b1", "alpha1_smart": "alpha1", "alpha1_standard": "alpha1", CONTROL: "relu"}
#: B1 "equals" ReLU when their training losses agree this closely (float64)
GAP_TOLERANCE = 1e-12
CURVE_COLUMNS = ("network", "epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                 "test_loss", "test_accuracy", "cosine_to_relu", "projections", "nonpositive_slopes", "min_slope",
                 "causality_violations")
PLOTS = ("training_curves.png", "cosine.png", "jacobian_spectra.png", "jacobian_depth.png")
STOPS = ("converged", "stalled", "diverged", "epochs")

LABELS = {
    "relu": "ReLU",
    "b1": "B1 (converted ReLU init)",
    "alpha1_smart": "α1, smart init",
    "alpha1_standard": "α1, standard init",
    CONTROL: "ReLU, weights moved 1 ulp (control)",
}
STYLE = {
    "relu": {"color": "black", "lw": 2.5},
    "b1": {"color": "tab:orange", "ls": "--", "lw": 1.6},
    "alpha1_smart": {"color": "tab:blue", "lw": 1.6},
    "alpha1_standard": {"color": "tab:red", "lw": 1.6},
    CONTROL: {"color": "grey", "ls": ":", "lw": 1.4},
}
INIT_LABELS = {"b1": "B1", "alpha1_smart": "α1 smart init", "alpha1_standard": "α1 standard init"}

LogFn = Callable[[dict, int], None]
Split = tuple[Tensor, Tensor]


# --------------------------------------------------------------------------------------------------
# Data and networks
# --------------------------------------------------------------------------------------------------
def _subset(x: Tensor, y: Tensor, size: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random subset (all of it, shuffled, if ``size`` is None or larger than the split)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    if size is not None:
        order = order[:size]
    return x[order], y[order]


def _unit_inputs(x: Tensor, in_range: tuple[float, float]) -> Tensor:
    """Flattened float64 inputs in [0, 1] (the SNN input window [0, 1])."""
    p, q = in_range
    x = x.reshape(len(x), -1).to(F64)
    return ((x - p) / (q - p)).clamp(0.0, 1.0)


def build_networks(widths: list[int], calibration: Tensor, config: DynamicsConfig) -> tuple[dict[str, nn.Module],
                                                                                             nn.Module]:
    """The networks at initialisation (CPU, float64) and the ReLU network alpha1-smart maps. The control
    is the ReLU network with every weight and bias moved one ulp up (a relative change <= 2.2e-16)."""
    generator = torch.Generator().manual_seed(config.seed)
    relu = glorot_relu_mlp(widths, generator)
    b1 = convert(relu, calibration, zeta=config.zeta, parameterisation="b1")
    bounds = (config.alpha1_row_sum_min, config.alpha1_row_sum_max)
    smart_relu = smart_alpha1_relu(relu, config.alpha1_recentre, bounds)
    high = config.alpha1_row_sum_max
    smart = convert(smart_relu, calibration, zeta=config.zeta, parameterisation="alpha1", alpha1_margin=1 - high)
    standard = alpha1_standard_snn(widths, calibration, torch.Generator().manual_seed(config.seed + 1),
                                   zeta=config.zeta)
    control = copy.deepcopy(relu)
    with torch.no_grad():
        for param in control.parameters():
            param.copy_(torch.nextafter(param, torch.full_like(param, math.inf)))
    return {"relu": relu, "b1": b1, "alpha1_smart": smart, "alpha1_standard": standard, CONTROL: control}, smart_relu


def nonpositive_slopes(net: nn.Module) -> int | None:
    """alpha1 neurons (hidden and readout) whose slope B = alpha + sum_j W_ij is <= 0; None if not alpha1."""
    if not isinstance(net, SNN) or net.parameterisation != "alpha1":
        return None
    return sum(int((slopes(layer) <= 0).sum()) for layer in net.neuron_layers)


def min_slope(net: nn.Module) -> float | None:
    if not isinstance(net, SNN) or net.parameterisation != "alpha1":
        return None
    return min(float(slopes(layer).min()) for layer in net.neuron_layers)


@torch.no_grad()
def _causality_violations(net: nn.Module, x: Tensor) -> int | None:
    if not isinstance(net, SNN):
        return None
    return sum(int(net.run(z).causality_violations().sum()) for z in x.split(1000))


@torch.no_grad()
def _max_logit_gap(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """max |log_softmax_a - log_softmax_b| (the readout re-centring of alpha1 shifts logits by a common
    amount, which the softmax does not see)."""
    return float((F.log_softmax(a(x), 1) - F.log_softmax(b(x), 1)).abs().max())


# --------------------------------------------------------------------------------------------------
# Jacobian spectra over the hidden layers
# --------------------------------------------------------------------------------------------------
def _svd(m: Tensor) -> np.ndarray:
    return np.linalg.svd(m.detach().cpu().numpy(), compute_uv=False)


def _median(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values)) if values.size else float("nan")


@torch.no_grad()
def spectra_summary(snn: SNN, z: Tensor) -> tuple[dict, dict]:
    """(JSON summary, plot data) of the hidden-layer Jacobians of ``snn`` on raw inputs ``z`` (SPEC 2.7).

    Blocks J^(1) .. J^(N-1) (the readout is not included); the depth product is J^(N-1) ... J^(1) =
    dt^(N-1)/dt^(0). Summary (medians over samples): top singular value of every block and of every
    cumulative product J^(n)...J^(1); top and median singular value of the depth product; spectral
    radius of the square (hidden-to-hidden) blocks and of their product J^(N-1)...J^(2) (None if the
    hidden widths differ); the fraction of the square blocks' eigenvalues outside the unit circle; per
    layer the fraction of active (spiking) neurons, the neurons with slope B <= 0, the smallest positive
    slope (alpha1; 1/B is the gain of a neuron) and the phase-1 threshold crossings.
    """
    report = jacobian_spectra(snn, z)
    jacobians = layer_jacobians(snn, z)
    cumulative_top = []
    product = None
    for jac in jacobians:
        product = jac if product is None else jac @ product
        cumulative_top.append(_median(_svd(product)[:, 0]))
    square = [j for j in jacobians[1:] if j.shape[-1] == j.shape[-2]]
    square_radius = None
    if square and len(square) == len(jacobians) - 1:
        sq = square[0]
        for jac in square[1:]:
            sq = jac @ sq
        square_radius = _median(np.abs(np.linalg.eigvals(sq.cpu().numpy())).max(-1))
    eig = [e for e in report.layer_eigenvalues if e is not None]
    pooled = np.concatenate([e.reshape(-1) for e in eig]) if eig else np.zeros(0, dtype=np.complex128)
    positive: list[float | None] = []  # alpha1 only: B1's slope is 1
    for layer in snn.neuron_layers[:-1]:
        b = slopes(layer)
        b = b[b > 0]
        positive.append(float(b.min()) if b.numel() and not layer.is_b1 else None)
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
        "min_positive_slope": positive,
        "phase1_spikes": [int(c) for c in report.phase1_spikes],
        "samples": int(z.shape[0]),
    }
    plot = {"layer_sv": report.layer_singular_values, "product_sv": report.product_singular_values,
            "eigenvalues": pooled, "layer_top": summary["layer_top_singular_value"], "cumulative_top": cumulative_top}
    return summary, plot


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def train_step(net: nn.Module, kind: str, z: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
               config: DynamicsConfig) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One Adam step on a mini-batch; returns (loss, correct predictions, per neuron layer the alpha1
    neurons whose slope was projected).

    ReLU: plain cross-entropy. B1: the same through the closed-form spike times, then SPEC 2.8 windows
    (``kappa_b1``; the function does not change). alpha1: after the step, rows with B < ``slope_floor``
    are projected onto B = ``slope_floor``, then the windows grow by SPEC 2.8 (``kappa_alpha1``) with the
    thresholds re-expressed so that the function does not change.
    """
    record = None
    if kind == "relu":
        logits = net(z)
    else:
        record = net.run(z)
        logits = record.logits
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    projected: list[Tensor] = []
    if kind == "b1":
        net.adapt_windows(record, config.kappa_b1)
    elif kind == "alpha1":
        projected = project_slopes(net, config.slope_floor)
        adapt_windows(net, record, config.kappa_alpha1)
    correct = (logits.detach().argmax(1) == y).sum()
    return loss.detach(), correct, projected


def make_optimizer(net: nn.Module, lr: float, config: DynamicsConfig) -> torch.optim.Optimizer:
    """Adam (default betas and eps) or SGD with ``config.momentum``, at ``lr``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=config.momentum)
    return torch.optim.Adam(net.parameters(), lr=lr)


@dataclass
class Fit:
    """What one training run of one network did."""

    epochs: int = 0
    steps: int = 0
    stop: str = "epochs"
    projections: int = 0  # step-neuron events
    projected_neurons: set = field(default_factory=set)  # (layer, neuron) ever projected
    rows: list[dict] = field(default_factory=list)
    snapshots: dict[int, dict] = field(default_factory=dict)  # epoch -> parameters and buffers


def fit(net: nn.Module, kind: str, lr: float, batches: TensorBatches, epochs: int, config: DynamicsConfig,
        stopping: bool = True, on_epoch: Callable[[int, Fit], bool] | None = None) -> Fit:
    """Train ``net`` in place with Adam at ``lr`` for up to ``epochs`` epochs over ``batches``.

    With ``stopping`` the convergence and stall rules of the module apply; divergence (NaN/inf loss)
    always stops. ``on_epoch(epoch, fit)`` runs after every epoch (and once with epoch 0 before the
    first); a True return forces a record there (the caller decides what a record is).
    """
    out = Fit()
    optimizer = make_optimizer(net, lr, config)
    best_accuracy, best_epoch = -1.0, 0
    if on_epoch is not None:
        on_epoch(0, out)
    for epoch in range(1, epochs + 1):
        loss_sum = torch.zeros((), dtype=F64)
        correct = torch.zeros((), dtype=torch.long)
        seen = 0
        for z, y in batches:
            loss, right, projected = train_step(net, kind, z, y, optimizer, config)
            for n, idx in enumerate(projected):
                if idx.numel():
                    out.projections += idx.numel()
                    out.projected_neurons |= {(n, int(i)) for i in idx}
            loss_sum += loss.to("cpu", F64) * len(y)
            correct += right.cpu()
            seen += len(y)
            out.steps += 1
        out.epochs = epoch
        mean_loss, accuracy = float(loss_sum) / seen, float(correct) / seen
        if not math.isfinite(mean_loss):
            out.stop = "diverged"
        elif stopping and config.target_train_accuracy is not None and accuracy >= config.target_train_accuracy:
            out.stop = "converged"
        elif accuracy > best_accuracy:
            best_accuracy, best_epoch = accuracy, epoch
        elif stopping and config.patience is not None and epoch - best_epoch >= config.patience:
            out.stop = "stalled"
        if on_epoch is not None:
            on_epoch(epoch, out)
        if out.stop != "epochs":
            break
    return out


def record_epochs(epochs: int, records: int) -> list[int]:
    """Epoch 0, ``records`` log-spaced epochs in [1, epochs] (duplicates merged) and ``epochs``."""
    if epochs == 0:
        return [0]
    marks = np.unique(np.round(np.logspace(0, math.log10(epochs), records)).astype(int))
    return sorted({0, epochs, *(int(m) for m in marks)})


def _snapshot(net: nn.Module) -> dict:
    """A copy of the parameters and buffers, on the CPU (a GPU run keeps its memory for training)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _restore(template: nn.Module, state: dict) -> nn.Module:
    net = copy.deepcopy(template)
    net.load_state_dict(state)
    return net


def select_learning_rate(name: str, initial: nn.Module, train: Split, val: Split, config: DynamicsConfig,
                         device: torch.device) -> tuple[float | None, list[dict]]:
    """The grid search of one network on the validation split; (chosen lr or None, one row per lr)."""
    rows = []
    val_batches = TensorBatches(*val, 1000, shuffle=False, device=device)
    for lr in config.lr_grid:
        net = copy.deepcopy(initial).to(device)
        batches = TensorBatches(*train, config.batch_size, shuffle=True, seed=config.seed, device=device)
        run = fit(net, KIND[name], lr, batches, config.selection_epochs, config, stopping=False)
        row = {"lr": lr, "diverged": run.stop == "diverged", "val_accuracy": None, "val_loss": None,
               "projections": run.projections}
        if run.stop != "diverged":
            stats = evaluate(net, val_batches)
            row |= {"val_accuracy": stats["accuracy"], "val_loss": stats["loss"]}
            if not math.isfinite(stats["loss"]):
                row |= {"diverged": True, "val_accuracy": None, "val_loss": None}
        rows.append(row)
    valid = [r for r in rows if not r["diverged"]]
    if not valid:
        return None, rows
    if config.selection_metric == "val_loss":
        best = min(valid, key=lambda r: (r["val_loss"], -r["val_accuracy"], r["lr"]))
    else:
        best = max(valid, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["lr"]))
    return best["lr"], rows


@dataclass
class Study:
    """Everything the training phase produced: no test-split number is in here."""

    config: DynamicsConfig
    widths: list[int]
    train: Split
    val: Split
    initial: dict[str, nn.Module]
    fits: dict[str, Fit]
    chosen_lr: dict[str, float | None]
    selection: dict[str, list[dict]]
    init_spectra: dict[str, dict]
    final_spectra: dict[str, dict]
    spectra_plot: dict[str, dict]
    init_check: dict
    smart_init: dict


def train_study(config: DynamicsConfig, train: Split, val: Split, log: LogFn | None = None,
                in_range: tuple[float, float] = (0.0, 1.0)) -> Study:
    """Everything up to the test split: subsets, initial networks and their Jacobians, the learning-rate
    selection on validation and the final training runs (with parameter copies at every record)."""
    device = resolve_device(config.device, "dynamics.device")
    x_train, y_train = _subset(*train, config.train_size, config.seed)
    x_val, y_val = _subset(*val, config.val_size, config.seed + 1)
    x_train, x_val = _unit_inputs(x_train, in_range), _unit_inputs(x_val, in_range)
    y_train, y_val = y_train.to(torch.long), y_val.to(torch.long)
    classes = int(max(int(y_train.max()), int(y_val.max()))) + 1
    widths = [x_train.shape[1]] + [config.width] * (config.depth - 1) + [classes]
    calibration = x_train[: config.calibration_samples]

    nets, smart_relu = build_networks(widths, calibration, config)
    init_check = {"b1_max_log_softmax_diff_to_relu": _max_logit_gap(nets["b1"], nets["relu"], calibration),
                  "alpha1_smart_max_log_softmax_diff_to_relu": _max_logit_gap(nets["alpha1_smart"], nets["relu"],
                                                                              calibration)}
    sums = row_sums(smart_relu)
    smart_init = {"recentred": config.alpha1_recentre,
                  "row_sum_bounds": [config.alpha1_row_sum_min, config.alpha1_row_sum_max],
                  "row_sum_min": [float(s.min()) for s in sums], "row_sum_max": [float(s.max()) for s in sums]}

    z = x_train[: config.spectra_samples]
    init_spectra, spectra_plot = {}, {}
    for name in SNNS:
        init_spectra[name], spectra_plot[name] = spectra_summary(nets[name], z)

    train_dev = (x_train.to(device), y_train.to(device))
    val_dev = (x_val.to(device), y_val.to(device))
    chosen, selection = {}, {}
    for name in tqdm(SELECTED, desc="dynamics: learning rates on validation", unit="network", file=sys.stderr,
                     leave=False):
        chosen[name], selection[name] = select_learning_rate(name, nets[name], train_dev, val_dev, config, device)
        metric = config.selection_metric
        tqdm.write(f"dynamics: {name}: lr {chosen[name]} ({metric} "
                   + ", ".join(f"{r['lr']:g}: " + ("diverged" if r["diverged"] else f"{r[metric]:.4g}")
                               for r in selection[name]) + ")", file=sys.stderr)

    chosen[CONTROL] = chosen["relu"]
    marks = set(record_epochs(config.epochs, config.records))
    train_eval = TensorBatches(*train_dev, 1000, shuffle=False, device=device)
    val_eval = TensorBatches(*val_dev, 1000, shuffle=False, device=device)
    fits: dict[str, Fit] = {}
    final_spectra: dict[str, dict] = {}
    for name in NETWORKS:
        lr = chosen[name]
        if lr is None:  # every grid value diverged: nothing to train
            fits[name] = Fit(stop="diverged")
            continue
        net = copy.deepcopy(nets[name]).to(device)
        batches = TensorBatches(*train_dev, config.batch_size, shuffle=True, seed=config.seed, device=device)
        bar = tqdm(total=config.epochs, desc=f"dynamics: {name} (lr {lr:g})", unit="epoch", file=sys.stderr,
                   mininterval=2.0)

        def on_epoch(epoch: int, run: Fit, net=net, name=name, lr=lr, bar=bar) -> bool:
            bar.update(1 if epoch else 0)
            if epoch not in marks and run.stop == "epochs" and epoch < config.epochs:
                return False
            tr, va = evaluate(net, train_eval), evaluate(net, val_eval)
            row = {"network": name, "epoch": epoch, "step": run.steps, "lr": lr,
                   "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                   "val_loss": va["loss"], "val_accuracy": va["accuracy"],
                   "test_loss": None, "test_accuracy": None, "cosine_to_relu": None,
                   "projections": run.projections if KIND[name] == "alpha1" else None,
                   "nonpositive_slopes": nonpositive_slopes(net), "min_slope": min_slope(net),
                   "causality_violations": _causality_violations(net, train_dev[0])}
            run.rows.append(row)
            run.snapshots[epoch] = _snapshot(net)
            bar.set_postfix({"train": f"{tr['accuracy']:.3f}", "val": f"{va['accuracy']:.3f}"}, refresh=False)
            if log is not None:
                log({name: _finite_numbers(row)}, epoch)
            return True

        fits[name] = fit(net, KIND[name], lr, batches, config.epochs, config, on_epoch=on_epoch)
        bar.close()
        if name in SNNS:
            final_spectra[name], _ = spectra_summary(net.cpu(), z)
    return Study(config=config, widths=widths, train=(x_train, y_train), val=(x_val, y_val), initial=nets,
                 fits=fits, chosen_lr=chosen, selection=selection, init_spectra=init_spectra,
                 final_spectra=final_spectra, spectra_plot=spectra_plot, init_check=init_check,
                 smart_init=smart_init)


def _finite_numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("network", "epoch", "step") and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


@torch.no_grad()
def evaluate_test_split(study: Study, test: Split, in_range: tuple[float, float], log: LogFn | None = None) -> None:
    """Fill in test loss and accuracy of every record from its parameter copy, and the cosine similarity
    of every SNN's reverse-mapped weights to ReLU's at the same epoch. The only reader of the test split."""
    config = study.config
    device = resolve_device(config.device, "dynamics.device")
    x_test, y_test = _subset(*test, config.test_size, config.seed + 2)
    x_test, y_test = _unit_inputs(x_test, in_range).to(device), y_test.to(torch.long).to(device)
    batches = TensorBatches(x_test, y_test, 1000, shuffle=False, device=device)
    relu_states = study.fits["relu"].snapshots
    for name, run in study.fits.items():
        template = study.initial[name].to(device)
        for row in run.rows:
            net = _restore(template, run.snapshots[row["epoch"]])
            stats = evaluate(net, batches)
            row["test_loss"], row["test_accuracy"] = stats["loss"], stats["accuracy"]
            if isinstance(net, SNN) and row["epoch"] in relu_states:
                relu = _restore(study.initial["relu"].to(device), relu_states[row["epoch"]])
                row["cosine_to_relu"] = cosine_similarity_to_relu(net, relu)
            if log is not None:
                log({name: {k: row[k] for k in ("test_loss", "test_accuracy", "cosine_to_relu")
                            if row[k] is not None and math.isfinite(row[k])}}, row["epoch"])
    for run in study.fits.values():
        run.snapshots.clear()


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------
def run_dynamics(
    config: DynamicsConfig,
    train: Split,
    val: Split,
    test: Split,
    out_dir: str | Path,
    log: LogFn | None = None,
    in_range: tuple[float, float] = (0.0, 1.0),
    plots: bool = True,
) -> dict:
    """The whole study: :func:`train_study` on (train, val), then :func:`evaluate_test_split` on ``test``; writes
    ``out_dir``/metrics.json, curves.csv and (unless ``plots`` is False) the PNGs of :data:`PLOTS`, all
    byte-for-byte reproducible; returns the metrics dict.

    Splits are (inputs, labels) with raw inputs of any shape (flattened) whose values ``in_range`` = (p, q)
    maps to [0, 1]. ``log(values, step)``, if given, is called at every record with
    ``values = {network: {metric: value}}`` (finite numbers only) and step = the epoch, e.g. for MLflow.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        study = train_study(config, train, val, log, in_range)
        trained = time.perf_counter()
        evaluate_test_split(study, test, in_range, log)
    finally:
        torch.set_num_threads(threads)
    metrics = summarise(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for name in NETWORKS for r in study.fits[name].rows]
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "curves.csv", rows, CURVE_COLUMNS)
    if plots:
        plot_training_curves(out_dir / "training_curves.png", rows, study)
        plot_cosine(out_dir / "cosine.png", rows, study)
        plot_spectra(out_dir / "jacobian_spectra.png", study.spectra_plot)
        plot_depth(out_dir / "jacobian_depth.png", study.spectra_plot)
    tqdm.write(f"dynamics: done in {time.perf_counter() - started:.0f} s "
               f"(training and selection {trained - started:.0f} s)", file=sys.stderr)
    return metrics


def _first_epoch(rows: list[dict], key: str, threshold: float) -> int | None:
    for r in rows:
        if r[key] is not None and r[key] >= threshold:
            return r["epoch"]
    return None


def summarise(study: Study) -> dict:
    """metrics.json: the setup, the learning-rate selection, per-network final numbers, B1-vs-ReLU and
    alpha1-vs-ReLU comparisons, and the Jacobian spectra."""
    config = study.config
    networks = {}
    relu_rows = {r["epoch"]: r for r in study.fits["relu"].rows}
    for name in NETWORKS:
        run = study.fits[name]
        rows = run.rows
        last = rows[-1] if rows else None
        m = {
            "lr": study.chosen_lr[name],
            "stop": run.stop,
            "epochs": run.epochs,
            "steps": run.steps,
            "records": len(rows),
            "train_accuracy": last["train_accuracy"] if last else None,
            "train_loss": last["train_loss"] if last else None,
            "val_accuracy": last["val_accuracy"] if last else None,
            "val_loss": last["val_loss"] if last else None,
            "test_accuracy": last["test_accuracy"] if last else None,
            "test_loss": last["test_loss"] if last else None,
            "initial_train_accuracy": rows[0]["train_accuracy"] if rows else None,
            "best_train_accuracy": max((r["train_accuracy"] for r in rows), default=None),
            "best_test_accuracy": max((r["test_accuracy"] for r in rows), default=None),
            "first_epoch_train_accuracy_90": _first_epoch(rows, "train_accuracy", 0.9),
            "first_epoch_train_accuracy_99": _first_epoch(rows, "train_accuracy", 0.99),
        }
        if name != "relu":
            gaps = [abs(r["train_loss"] - relu_rows[r["epoch"]]["train_loss"]) for r in rows
                    if r["epoch"] in relu_rows and r["train_loss"] is not None
                    and relu_rows[r["epoch"]]["train_loss"] is not None]
            common = [r for r in rows if r["epoch"] in relu_rows]
            cosines = [r["cosine_to_relu"] for r in rows if r["cosine_to_relu"] is not None]
            over = [r["epoch"] for r in common if r["train_loss"] is not None
                    and relu_rows[r["epoch"]]["train_loss"] is not None
                    and abs(r["train_loss"] - relu_rows[r["epoch"]]["train_loss"]) > GAP_TOLERANCE]
            m |= {
                "common_records_with_relu": len(common),
                "records_within_gap_tolerance": len(common) - len(over),
                "first_epoch_over_gap_tolerance": over[0] if over else None,
                "max_train_loss_gap_to_relu": max(gaps) if gaps else None,
                "max_test_loss_gap_to_relu": max((abs(r["test_loss"] - relu_rows[r["epoch"]]["test_loss"])
                                                  for r in common if r["test_loss"] is not None
                                                  and relu_rows[r["epoch"]]["test_loss"] is not None), default=None),
                "max_train_accuracy_gap_to_relu": max((abs(r["train_accuracy"]
                                                           - relu_rows[r["epoch"]]["train_accuracy"])
                                                       for r in common), default=None),
                "cosine_to_relu": cosines[-1] if cosines else None,
                "min_cosine_to_relu": min(cosines) if cosines else None,
            }
        if KIND[name] == "alpha1":
            m |= {
                "projections": run.projections,
                "projected_neurons": len(run.projected_neurons),
                "nonpositive_slopes_init": nonpositive_slopes(study.initial[name]),
                "nonpositive_slopes": last["nonpositive_slopes"] if last else None,
                "min_slope": last["min_slope"] if last else None,
            }
        if name in SNNS:
            m["causality_violations"] = last["causality_violations"] if last else None
        networks[name] = m
    return {
        "config": config.model_dump() | {
            "widths": study.widths, "train_samples": len(study.train[0]), "val_samples": len(study.val[0]),
            "classes": study.widths[-1], "steps_per_epoch": -(-len(study.train[0]) // config.batch_size),
            "dtype": "float64", "record_epochs": record_epochs(config.epochs, config.records)},
        "selection": {name: {"chosen_lr": study.chosen_lr[name], "split": "val", "runs": study.selection[name]}
                      for name in SELECTED},
        "gap_tolerance": GAP_TOLERANCE,
        "networks": networks,
        "init_spectra": study.init_spectra,
        "final_spectra": study.final_spectra,
        "init_check": study.init_check,
        "smart_init": study.smart_init,
    }


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


def _epoch_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3, which="both")


def plot_training_curves(path: Path, rows: list[dict], study: Study) -> None:
    """Fig. 3: training and test loss and accuracy per epoch (log epoch axis; epoch 0 at the left edge)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = ((axes[0, 0], "train_loss", "training loss"), (axes[0, 1], "train_accuracy", "training accuracy"),
              (axes[1, 0], "test_loss", "test loss"), (axes[1, 1], "test_accuracy", "test accuracy"))
    for ax, key, title in panels:
        for name in SELECTED:
            xs, ys = _series(rows, name, key)
            lr = study.chosen_lr[name]
            label = f"{LABELS[name]} (lr {lr:g}, {study.fits[name].stop})" if lr is not None else \
                f"{LABELS[name]} (every lr diverged)"
            ax.plot(xs, ys, label=label, marker="o" if name == "b1" else None, ms=3, **STYLE[name])
            if xs and study.fits[name].stop == "diverged":
                ax.plot([xs[-1]], [ys[-1]], marker="X", ms=11, color=STYLE[name]["color"], ls="none")
        _epoch_axis(ax)
        ax.set(xlabel="epoch (symlog)", ylabel=title, title=title)
        if key.endswith("loss"):
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.02)
    axes[0, 1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{study.config.depth}-layer FC network, width {study.config.width}, "
                 f"{len(study.train[0])} training samples (each network at its own validation-chosen lr)")
    fig.tight_layout()
    _save(fig, path)


def plot_cosine(path: Path, rows: list[dict], study: Study) -> None:
    """Cosine similarity of each SNN's reverse-mapped weights to ReLU's; alpha1 slope projections."""
    plt = _plt()
    fig, (ax_cos, ax_gap, ax_proj) = plt.subplots(1, 3, figsize=(15, 4.3))
    for name in SNNS:
        xs, ys = _series(rows, name, "cosine_to_relu")
        ax_cos.plot(xs, ys, label=LABELS[name], marker="o", ms=3, **STYLE[name])
    relu = {r["epoch"]: r["train_loss"] for r in rows if r["network"] == "relu" and r["train_loss"] is not None}
    for name in (*SNNS, CONTROL):
        pts = [(r["epoch"], abs(r["train_loss"] - relu[r["epoch"]])) for r in rows if r["network"] == name
               and r["epoch"] in relu and r["train_loss"] is not None]
        ax_gap.plot([p[0] for p in pts], [max(p[1], 1e-17) for p in pts], label=LABELS[name], marker="o", ms=3,
                    **STYLE[name])
    ax_gap.axhline(GAP_TOLERANCE, color="grey", lw=0.8, ls="--")
    for name in ("alpha1_smart", "alpha1_standard"):
        xs, ys = _series(rows, name, "projections")
        ax_proj.plot(xs, [max(y, 0.5) for y in ys], label=f"{LABELS[name]}: projections B → ε", marker="o", ms=3,
                     **STYLE[name])
    ax_cos.set(xlabel="epoch (symlog)", ylabel="cosine similarity", title="weights (reverse-mapped) vs ReLU's")
    ax_gap.set(xlabel="epoch (symlog)", ylabel="|training loss − ReLU's| (floored at 1e-17)", yscale="log",
               title=f"distance from ReLU's training loss (dashed: {GAP_TOLERANCE:g})")
    ax_proj.set(xlabel="epoch (symlog)", ylabel="cumulative step-neuron projections (0 drawn at 0.5)",
                yscale="log", title=f"α1 slopes projected onto B = {study.config.slope_floor:g}")
    for ax in (ax_cos, ax_gap, ax_proj):
        _epoch_axis(ax)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _log10_positive(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values).reshape(-1)
    v = v[np.isfinite(v) & (v > 1e-12)]
    return np.log10(v)


def plot_spectra(path: Path, data: dict[str, dict]) -> None:
    """Row 1: histograms of log10 singular values per hidden layer and of the hidden depth product; row 2:
    eigenvalues of the square (hidden-to-hidden) layer Jacobians in the complex plane with the unit circle."""
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
                    color=cmap(k / max(n - 1, 1)), label=f"layer {k + 1}", density=True)
        ax.hist(np.clip(_log10_positive(d["product_sv"]), bins[0], bins[-1]), bins=bins, histtype="step", lw=2.2,
                color="crimson", label="hidden product dt(N-1)/dt(0)", density=True)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set(title=f"{INIT_LABELS[init]}: Jacobian singular values at init",
               xlabel="log10 singular value (outliers drawn in the edge bins)", ylabel="density", yscale="log")
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
    """Median top singular value of each hidden layer's Jacobian and of the product up to that layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"b1": "tab:orange", "alpha1_smart": "tab:blue", "alpha1_standard": "tab:red"}
    layers = np.arange(1)
    for init, d in data.items():
        layers = np.arange(1, len(d["layer_top"]) + 1)
        ax.plot(layers, d["cumulative_top"], marker="o", color=colors.get(init), label=f"{INIT_LABELS[init]}: product")
        ax.plot(layers, d["layer_top"], marker="s", ls="--", color=colors.get(init), alpha=0.6,
                label=f"{INIT_LABELS[init]}: single layer")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="hidden layer n", ylabel="median top singular value", yscale="log",
           title="Jacobian gain at initialisation: layer n and product J(n)…J(1), hidden layers only")
    ax.set_xticks(layers)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, path)
