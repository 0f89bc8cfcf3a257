"""Keeping the alpha1 parameterisation trainable (SPEC 2.4, 2.8, 4): a well-conditioned smart
initialisation, a projection that keeps every slope B >= eps, and adaptive windows that do not change
the function.

alpha1 neuron i has slope B_i = alpha + sum_j W_ij at threshold; its equivalent ReLU unit has
w_ij = W_ij / B_i and b_i = Delta^(n) - (theta_i - alpha Delta^(n-1)) / B_i (SPEC 2.3). Three facts
follow, and each helper here rests on one of them:

* **Smart initialisation** (:func:`bound_row_sums`). The forward map W = alpha w / (1 - S) with
  S_i = sum_k w_ik needs S_i < 1 and gives B_i = alpha / (1 - S_i): a row sum near 1 makes B huge, a
  very negative one makes B tiny. The predecessor paper bounds the row sums to [-10, 0.99]. Each hidden
  neuron whose sum lies outside is rescaled by ReLU's positive homogeneity (its row and bias divided by
  c_i >= 1, the next layer's column i multiplied by c_i: the function is unchanged), layer by layer
  from the input, with the *smallest* such c_i (the sum is put on the bound it crossed), so the
  rescaling compounds through depth as little as possible. The readout has no next layer to absorb a
  factor; it is re-centred instead: subtracting one vector u from every readout row adds the same
  function -u.x to every logit, which changes neither the softmax, the loss, the argmax nor any
  gradient (the gradient w.r.t. the logits sums to 0 over the classes).
* **Slope projection** (:func:`project_slopes`). A step that takes B_i to <= 0 silences neuron i with
  zero gradient for good. After every step each row with B_i < eps is shifted uniformly
  (W_ij += (eps - B_i) / fan_in, with a relative margin of 1e-6 against rounding), the Euclidean
  projection of the row onto {sum_j W_ij >= eps - alpha}.
  The projection changes the network; it is counted.
* **Adaptive windows** (:func:`adapt_windows`). Unlike B1, an alpha1 network's function depends on its
  windows. Growing Delta^(n) by d while raising theta_i^(n) by B_i d (its own neurons) and
  theta_k^(n+1) by alpha d (the next layer's, whose phase-1 drive alpha Delta^(n) grew) leaves every
  equivalent ReLU (w, b), hence the function, unchanged: the SPEC 2.8 rule
  Delta^(n) <- max(Delta^(n), kappa max_batch x^(n)) then keeps spikes causal without moving the network.

Fully connected and 'valid' convolutional alpha1 layers are supported (their slope is the same at every
position); B1 layers are left alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import SpikingNeurons
from .network import SNN, SpikeRecord

#: the predecessor paper's bounds on alpha1 row sums sum_k w_ik in ReLU space
ROW_SUM_BOUNDS = (-10.0, 0.99)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def bound_row_sums(relu: nn.Module, low: float = ROW_SUM_BOUNDS[0], high: float = ROW_SUM_BOUNDS[1]
                   ) -> tuple[list[Tensor], float]:
    """Bring every row sum S_i = sum_k w_ik of a Linear/ReLU stack into [low, high], in place, keeping
    the function (hidden layers) and the softmax, loss and gradients (readout).

    Hidden layers, from the input: c_i = S_i / high where S_i > high, S_i / low where S_i < low, else 1;
    row i and its bias are divided by c_i, column i of the next Linear multiplied by c_i. Readout: every
    row loses the same constant vector delta * 1 (w_ik -= delta), with delta chosen so the row sums are
    centred on 0, or, if that leaves one above ``high``, so the largest equals ``high``. Returns the
    factors c of each hidden layer and delta. Raises ValueError if the readout's row sums spread over
    more than high - low (no common shift fits them).
    """
    if not low < 0 < high < 1:
        raise ValueError(f"alpha1 row-sum bounds need low < 0 < high < 1, got [{low}, {high}]")
    linears = _linears(relu)
    if len(linears) < 2:
        raise ValueError("bound_row_sums needs at least one hidden layer and a readout")
    factors: list[Tensor] = []
    for lin, nxt in zip(linears[:-1], linears[1:], strict=True):
        total = lin.weight.sum(1)
        c = torch.ones_like(total)
        c = torch.where(total > high, total / high, c)
        c = torch.where(total < low, total / low, c)
        lin.weight.div_(c[:, None])
        lin.bias.div_(c)
        nxt.weight.mul_(c[None, :])
        factors.append(c)
    readout = linears[-1]
    total = readout.weight.sum(1)
    if float(total.max() - total.min()) > high - low:
        raise ValueError(f"the readout's row sums spread over {float(total.max() - total.min()):.3g} > "
                         f"{high - low:.3g}: no common shift brings them into [{low}, {high}]")
    shift = float(total.mean())
    if float(total.max()) - shift > high:
        shift = float(total.max()) - high
    delta = shift / readout.weight.shape[1]
    readout.weight.sub_(delta)
    return factors, delta


def row_sums(model: nn.Module) -> list[Tensor]:
    """sum_k w_ik of every Linear of a ReLU network, layer by layer."""
    return [lin.weight.detach().sum(1) for lin in _linears(model)]


def _alpha1_layers(snn: SNN) -> list[SpikingNeurons]:
    layers = [layer for layer in snn.neuron_layers if not layer.is_b1]
    for layer in layers:
        if layer.has_padding:
            raise ValueError("alpha1 convolutions with zero padding have position-dependent slopes")
    return layers


def slopes(layer: SpikingNeurons) -> Tensor:
    """B_i = alpha + sum_j W_ij per neuron (per output channel for a convolution)."""
    return layer.alpha + layer.weight.detach().flatten(1).sum(1)


@torch.no_grad()
def project_slopes(snn: SNN, eps: float) -> list[Tensor]:
    """Shift every alpha1 row with B_i < eps uniformly onto B_i = eps (1 + 1e-6) (the margin keeps the
    recomputed sum >= eps despite rounding, so a neuron is not projected again unless a step pushes it
    down); per neuron layer, the indices of the neurons shifted (empty for B1 layers). The shift
    (target - B_i) / fan_in per weight is the Euclidean projection of the row onto {B_i >= target}."""
    if eps <= 0:
        raise ValueError(f"the slope floor eps must be positive, got {eps}")
    moved = []
    for layer in snn.neuron_layers:
        if layer.is_b1:
            moved.append(torch.zeros(0, dtype=torch.long))
            continue
        b = slopes(layer)
        low = b < eps
        if bool(low.any()):
            fan_in = layer.weight[0].numel()
            shift = torch.where(low, (eps * (1 + 1e-6) - b) / fan_in, 0.0)
            layer.weight.add_(shift.reshape(-1, *(1,) * (layer.weight.ndim - 1)))
        moved.append(torch.nonzero(low).flatten().cpu())
    return moved


@torch.no_grad()
def adapt_windows(snn: SNN, record: SpikeRecord, kappa: float = 10.0) -> list[float]:
    """SPEC 2.8 for alpha1, function-preserving: Delta^(n) <- max(Delta^(n), kappa * max_batch x^(n)) for
    every hidden layer, with the thresholds re-expressed so that every equivalent ReLU (w, b) stays as it
    was. Returns the growth d of each hidden window (0 where it did not grow). B1 networks are handed to
    :meth:`SNN.adapt_windows` (their function does not depend on the windows)."""
    if snn.parameterisation == "b1":
        before = snn.deltas[1:].clone()
        snn.adapt_windows(record, kappa)
        return (snn.deltas[1:] - before).tolist()
    layers = _alpha1_layers(snn)
    if snn.spike_constraints is not None:
        return [0.0] * (len(layers) - 1)  # windows under hardware constraints are set explicitly
    growth = []
    for n, x in enumerate(record.activations(), start=1):
        old = snn.deltas[n].clone()
        new = torch.maximum(old, kappa * x.detach().amax())
        d = new - old
        growth.append(float(d))
        if float(d) <= 0:
            continue
        snn.deltas[n] = new
        own, nxt = layers[n - 1], layers[n]
        own.bias.add_((slopes(own) * d).reshape(-1, 1))
        nxt.bias.add_(nxt.alpha * d)
    return growth


@torch.no_grad()
def causality_violations(snn: SNN, z: Tensor) -> int:
    """Spikes (over the samples ``z``) that the closed form puts before their window opens."""
    return int(snn.run(z).causality_violations().sum())
