"""Jacobians of spike times and their spectra (SPEC 2.7).

For a spiking neuron i of layer n the closed-form spike time gives

    dt_i^(n) / dt_j^(n-1) = W_ij^(n) / B_i^(n),        and 0 for a silent neuron,

so per sample J^(n) = M^(n) diag(1/B^(n)) W^(n), M the spiking mask (a neuron spikes iff its spike
time lies before t_max^(n), i.e. its equivalent ReLU pre-activation is > 0; alpha1 neurons with B <= 0
are silent by design). For B1 (B = 1) this is the ReLU Jacobian M w. Because x = t_max - t on both
sides, dt^(n)/dt^(n-1) = dx^(n)/dx^(n-1): the spike-time Jacobian *is* the activation Jacobian.

Everything here is analytic (no autograd): matrices are built from the layers' own weights. Pooling and
flatten layers between two neuron layers are folded into the next layer's Jacobian (max-pooling of
activations = min-pooling of times selects one input per output, so its Jacobian is a 0/1 selection
matrix). Convolutions are expanded to dense matrices by applying the layer's linear map to the unit
basis, so the Jacobians are dense (batch, out_numel, in_numel) tensors: fine for the small networks of an
analysis plot, not meant for VGG-sized layers.

Return types: :func:`layer_jacobians`, :func:`spectrum` and :func:`depth_product` work on torch tensors;
:func:`jacobian_spectra` and :func:`init_spectra` return a :class:`SpectraReport` of plot-ready numpy
arrays. :func:`cosine_similarity_to_relu` compares an SNN's reverse-mapped weights with a ReLU network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .alpha1 import ROW_SUM_BOUNDS, bound_row_sums
from .convert import convert
from .layers import InputEncoder, MeanTimePool2d, MinTimePool2d, SpikingLinear, SpikingNeurons
from .network import SNN

INITS = ("b1", "alpha1_standard", "alpha1_smart")


# --------------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------------
def dense_weight(layer: SpikingNeurons, in_shape: tuple[int, ...]) -> Tensor:
    """The layer's linear map x -> sum_j W_ij x_j as a dense (out_numel, in_numel) matrix.

    ``in_shape`` is the shape of one sample's input (without batch). For a convolution the matrix is
    obtained by applying the layer's own map (:meth:`SpikingNeurons.integrate`) to the unit basis.
    """
    if isinstance(layer, SpikingLinear):
        return layer.weight.detach()
    numel = int(np.prod(in_shape))
    w = layer.weight.detach()
    basis = torch.eye(numel, dtype=w.dtype, device=w.device).reshape(numel, *in_shape)
    with torch.no_grad():
        columns = layer.integrate(basis)  # (in_numel, *out_shape)
    return columns.reshape(numel, -1).t()


def pool_jacobian(pool: MinTimePool2d, t: Tensor) -> Tensor:
    """Per-sample 0/1 selection matrix (batch, out_numel, in_numel) of a spike-time pooling layer.

    Each output takes the time of one input (the earliest spike, or the latest for channels with sign
    -1); ties are broken exactly as torch's max-pooling (and hence autograd) breaks them.
    """
    batch, channels, h, w = t.shape
    s = torch.ones((), dtype=t.dtype, device=t.device) if pool.sign is None else pool.sign.to(t.dtype)
    _, index = F.max_pool2d(-s * t, pool.kernel_size, pool.stride, pool.padding, return_indices=True)
    offset = (torch.arange(channels, device=t.device) * (h * w)).reshape(1, channels, 1, 1)
    flat = (index + offset).reshape(batch, -1, 1)
    jac = torch.zeros(batch, flat.shape[1], channels * h * w, dtype=t.dtype, device=t.device)
    return jac.scatter_(2, flat, 1.0)


@torch.no_grad()
def layer_jacobians(snn: SNN, z: Tensor, include_readout: bool = False) -> list[Tensor]:
    """Per-sample Jacobians J^(n) = dt^(n)/dt^(n-1) of every hidden layer, shape (batch, out, in).

    ``z`` are raw inputs (as for ``snn(z)``). J^(1) is taken w.r.t. the input spike times t^(0); "in" is
    the flattened output of the previous neuron layer (pooling/flatten in between are folded in), "out"
    the flattened output of layer n. The network is taken as exact: ``snn.spike_constraints``
    (jitter, quantisation) are not applied. With ``include_readout`` a last block dlogits/dx^(N-1) =
    diag(1/B) W (= -dlogits/dt^(N-1), no mask: the readout does not spike) is appended, so that the
    product of all blocks is dlogits/dx^(0), the input-output Jacobian of the equivalent ReLU network.
    """
    if snn.residual:
        raise ValueError("layer_jacobians follows a chain; a network with input groups (skip connections) has "
                         "Jacobians with several inputs per layer, which this analysis does not cover")
    b = snn.boundaries()
    t = snn.encode(z)
    batch = t.shape[0]
    pre: Tensor | None = None  # Jacobian of t w.r.t. the last neuron layer's output (None = identity)
    jacobians: list[Tensor] = []
    last = len(snn.layers) - 1
    n = 1
    for i, layer in enumerate(snn.layers):
        if isinstance(layer, SpikingNeurons):
            readout = i == last
            if readout and not include_readout:
                break
            act = layer.activation(t, b[n - 1], b[n], None if readout else b[n + 1])
            weight = dense_weight(layer, tuple(t.shape[1:]))
            if layer.is_b1:
                scaled = weight
            else:
                slope = layer.slope(t).expand(act.shape[1:]).reshape(-1)
                inv = torch.where(slope > 0, 1.0 / torch.where(slope > 0, slope, 1.0), 0.0)
                scaled = weight * inv[:, None]
            if readout:
                jac = scaled.expand(batch, *scaled.shape)
            else:
                mask = (act > 0).reshape(batch, -1).to(scaled.dtype)
                jac = mask[:, :, None] * scaled
            jacobians.append(jac if pre is None else jac @ pre)
            if readout:
                break
            t = layer(t, b[n - 1], b[n], b[n + 1])
            pre = None
            n += 1
        elif isinstance(layer, MinTimePool2d):
            sel = pool_jacobian(layer, t)
            pre = sel if pre is None else sel @ pre
            t = layer(t)
        elif isinstance(layer, MeanTimePool2d):  # linear: the same averaging matrix for every sample
            numel = t[0].numel()
            basis = torch.eye(numel, dtype=t.dtype, device=t.device).reshape(numel, *t.shape[1:])
            sel = layer(basis).reshape(numel, -1).t().expand(batch, -1, -1)
            pre = sel if pre is None else sel @ pre
            t = layer(t)
        elif isinstance(layer, nn.Flatten):
            t = layer(t)  # identity in flattened coordinates
        else:
            raise TypeError(f"layer_jacobians does not know the Jacobian of {type(layer).__name__}")
    return jacobians


@dataclass
class Spectrum:
    """Singular values (descending) and, for square blocks, eigenvalues (complex) of per-sample matrices.

    Shapes: (batch, min(out, in)) and (batch, n); ``eigenvalues`` is None for non-square matrices.
    """

    singular_values: Tensor
    eigenvalues: Tensor | None


def spectrum(jacobian: Tensor) -> Spectrum:
    """Spectrum of a (..., out, in) Jacobian: torch.linalg.svdvals and, when out == in, eigvals."""
    sv = _svdvals(jacobian)
    square = jacobian.shape[-1] == jacobian.shape[-2]
    return Spectrum(sv, torch.linalg.eigvals(jacobian) if square else None)


def depth_product(jacobians: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(J^(L) ... J^(2) J^(1) per sample, its singular values): the Jacobian of the last block's output
    w.r.t. the first block's input, e.g. dt^(N-1)/dt^(0) for the hidden layers of :func:`layer_jacobians`.
    """
    if not jacobians:
        raise ValueError("depth_product needs at least one Jacobian")
    product = jacobians[0]
    for jac in jacobians[1:]:
        product = jac @ product
    return product, _svdvals(product)


def _svdvals(m: Tensor) -> Tensor:
    # torch's batched CPU svdvals can be orders of magnitude slower than LAPACK via numpy when several
    # threads are available (seen with torch 2.14 on 2 cores); the values are the same.
    if m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.linalg.svd(m.detach().numpy(), compute_uv=False))
    return torch.linalg.svdvals(m)


# --------------------------------------------------------------------------------------------------
# Reports for plots
# --------------------------------------------------------------------------------------------------
@dataclass
class SpectraReport:
    """Plot-ready (numpy) spectra of one network on one batch.

    ``layer_singular_values[k]``: (samples, min(out, in)) of block k; ``layer_eigenvalues[k]``: complex
    (samples, n) for square blocks, else None; ``product_*``: the same for the depth product.
    ``active_fraction[k]``: fraction of (sample, neuron) pairs that spike in hidden layer k;
    ``nonpositive_slopes[k]``: alpha1 neurons of layer k silenced by B <= 0; ``phase1_spikes[k]``: number of
    (sample, neuron) pairs whose potential reaches threshold during phase 1 (alpha1 only).
    """

    layer_singular_values: list[np.ndarray]
    layer_eigenvalues: list[np.ndarray | None]
    product_singular_values: np.ndarray
    product_eigenvalues: np.ndarray | None
    active_fraction: list[float]
    nonpositive_slopes: list[int]
    phase1_spikes: list[int]
    init: str | None = None
    widths: list[int] = field(default_factory=list)
    snn: SNN | None = None


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


@torch.no_grad()
def jacobian_spectra(snn: SNN, z: Tensor, include_readout: bool = False) -> SpectraReport:
    """Spectra of every layer Jacobian and of their product for ``snn`` on raw inputs ``z``."""
    jacobians = layer_jacobians(snn, z, include_readout)
    spectra = [spectrum(j) for j in jacobians]
    product, _ = depth_product(jacobians)
    prod_spec = spectrum(product)
    record = snn.run(z)
    ins = record.layer_inputs
    hidden = snn.neuron_layers[:-1]
    return SpectraReport(
        layer_singular_values=[_np(s.singular_values) for s in spectra],
        layer_eigenvalues=[_np(s.eigenvalues) for s in spectra],
        product_singular_values=_np(prod_spec.singular_values),
        product_eigenvalues=_np(prod_spec.eigenvalues),
        active_fraction=[
            float((t < record.t_max(n)).to(torch.float64).mean()) for n, t in enumerate(record.times, start=1)
        ],
        nonpositive_slopes=[layer.nonpositive_slopes(x) for layer, x in zip(hidden, ins, strict=False)],
        phase1_spikes=[int(c) for c in snn.phase1_spikes(record)],
    )


def glorot_relu_mlp(widths: list[int], generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Fully connected ReLU network Linear+ReLU ... Linear, Glorot-uniform weights and zero biases."""
    if len(widths) < 2:
        raise ValueError(f"need at least input and output widths, got {widths}")
    modules: list[nn.Module] = []
    for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(fan_in, fan_out, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(_glorot(fan_out, fan_in, generator, dtype))
            lin.bias.zero_()
        modules.append(lin)
        if k < len(widths) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def _glorot(fan_out: int, fan_in: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    return (torch.rand(fan_out, fan_in, generator=generator, dtype=dtype) * 2 - 1) * bound


def alpha1_standard_snn(widths: list[int], calibration: Tensor, generator: torch.Generator | None = None,
                        alpha: float = 1.0, zeta: float = 0.5) -> SNN:
    """alpha1 SNN whose weights W are drawn directly with Glorot uniform (standard alpha1 init, SPEC 2.4).

    Thresholds and windows are set layer by layer from ``calibration`` (raw inputs in [0, 1], input
    window [0, 1]): with V_i the potential at t_min^(n) on each calibration sample and m_i its median
    (the midpoint of the two middle values, so no sample sits exactly on the threshold),
    theta_i = m_i + B_i Delta^(n). Then x_i = t_max - t_i = (V_i - m_i) / B_i, independent of Delta^(n):
    each neuron with B_i > 0 spikes on about half of the calibration samples (those with V_i > m_i).
    Neurons with B_i <= 0 are silent by design (theta_i = m_i for them). Delta^(n) = (1 + zeta) X_n with
    X_n the largest x of the layer on the calibration data (1 if the layer is silent), so no closed-form
    spike comes before its window. The readout gets theta = alpha Delta^(N-1) (equivalent ReLU bias 0).
    Float64. Phase-1 threshold crossings are possible and are not prevented (see
    :meth:`SNN.phase1_spikes`).
    """
    dtype = torch.float64
    z = calibration.to(dtype)
    if z.ndim != 2 or z.shape[1] != widths[0]:
        raise ValueError(f"calibration must have shape (samples, {widths[0]}), got {tuple(z.shape)}")
    encoder = InputEncoder((widths[0],))
    x = encoder.scaled(z)
    deltas = [1.0]
    layers: list[SpikingLinear] = []
    n_layers = len(widths) - 1
    for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layer = SpikingLinear(fan_in, fan_out, "alpha1", alpha).to(dtype)
        w = _glorot(fan_out, fan_in, generator, dtype)
        slope = alpha + w.sum(1)
        potential = alpha * deltas[-1] + x @ w.t()
        if k == n_layers - 1:
            theta = torch.full((fan_out,), alpha * deltas[-1], dtype=dtype)
        else:
            median = _midpoint_median(potential)
            rising = slope > 0
            x = torch.where(rising, F.relu((potential - median) / torch.where(rising, slope, 1.0)), 0.0)
            peak = float(x.max())
            delta = (1 + zeta) * peak if peak > 0 else 1.0
            theta = median + torch.where(rising, slope, 0.0) * delta
            deltas.append(delta)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(theta[:, None])
        layers.append(layer)
    return SNN(encoder, layers, torch.tensor(deltas, dtype=dtype)).to(dtype)


def _midpoint_median(v: Tensor) -> Tensor:
    """Per column, the midpoint between the two middle order statistics: a median that no sample hits
    exactly (unless values tie), so no calibration sample sits on a neuron's threshold (the ReLU kink)."""
    if v.shape[0] < 2:
        return v[0] - 1.0
    s = v.sort(dim=0).values
    k = v.shape[0] // 2
    return (s[k - 1] + s[k]) / 2


@torch.no_grad()
def recentre_rows(relu: nn.Module) -> None:
    """Subtract from every row of every Linear its mean, in place: each row sum sum_k w_ik becomes 0, so the
    alpha1 forward map gives every neuron the slope B = alpha (W = w). A different ReLU network (not a
    reparameterisation): the initialiser's draw, centred row by row."""
    for m in relu.modules():
        if isinstance(m, nn.Linear):
            m.weight.sub_(m.weight.mean(1, keepdim=True))


def smart_alpha1_relu(relu: nn.Module, recentre: bool = False,
                      row_sum_bounds: tuple[float, float] = ROW_SUM_BOUNDS) -> nn.Sequential:
    """The ReLU network that the smart alpha1 initialisation forward-maps: a copy of ``relu``, its rows
    re-centred if ``recentre`` (:func:`recentre_rows`), then every row sum brought into ``row_sum_bounds``
    (:func:`ttfs.alpha1.bound_row_sums`: hidden neurons rescaled by positive homogeneity, the readout
    re-centred by a vector common to all classes). Without ``recentre`` it computes the same softmax as
    ``relu``."""
    smart = copy.deepcopy(relu)
    if recentre:
        recentre_rows(smart)
    bound_row_sums(smart, *row_sum_bounds)
    return smart


def init_snn(widths: list[int], init: str, calibration: Tensor, seed: int = 0, alpha: float = 1.0,
             zeta: float = 0.5, recentre: bool = False,
             row_sum_bounds: tuple[float, float] = ROW_SUM_BOUNDS) -> tuple[SNN, nn.Sequential | None]:
    """An FC SNN of the given ``widths`` (input, hidden..., output) at initialisation, float64.

    * ``"b1"``: a Glorot-uniform zero-bias ReLU network converted with the B1 parameterisation (nothing
      rescaled: its Jacobians are those of the standard initialisation);
    * ``"alpha1_smart"``: the same ReLU network (same seed) made alpha1-safe by :func:`smart_alpha1_relu`
      (row sums in ``row_sum_bounds`` = [-10, 0.99] by default, layer by layer; re-centred rows first if
      ``recentre``), then converted with the alpha1 forward map;
    * ``"alpha1_standard"``: :func:`alpha1_standard_snn`.

    Returns the SNN and the ReLU network it was converted from (for alpha1_smart the rescaled one, whose
    parameters are the SNN's reverse map; None for alpha1_standard).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    generator = torch.Generator().manual_seed(seed)
    if init == "alpha1_standard":
        return alpha1_standard_snn(widths, calibration, generator, alpha, zeta), None
    relu = glorot_relu_mlp(widths, generator)
    calibration = calibration.to(torch.float64)
    if init == "b1":
        return convert(relu, calibration, zeta=zeta, parameterisation="b1"), relu
    smart = smart_alpha1_relu(relu, recentre, row_sum_bounds)
    # every row sum is already <= row_sum_bounds[1]: convert's own rescaling (sums > 1 - margin) finds
    # nothing left to do
    snn = convert(smart, calibration, zeta=zeta, parameterisation="alpha1", alpha=alpha,
                  alpha1_margin=1 - row_sum_bounds[1])
    return snn, smart


def init_spectra(widths: list[int], init: str = "b1", n_samples: int = 256, seed: int = 0,
                 include_readout: bool = False, alpha: float = 1.0, zeta: float = 0.5,
                 recentre: bool = False) -> SpectraReport:
    """Jacobian spectra at initialisation of an FC network of ``widths`` (input, hidden..., output).

    ``init`` in {"b1", "alpha1_standard", "alpha1_smart"} (see :func:`init_snn`). Inputs are
    ``n_samples`` uniform draws in [0, 1]^widths[0] (seeded by ``seed``; the same draws calibrate the
    windows/thresholds and are analysed). Returns a :class:`SpectraReport` (numpy arrays, float64) with
    one block per hidden layer (plus the readout if ``include_readout``) and the depth product; the SNN
    is attached as ``report.snn``.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    if len(widths) < 3:
        raise ValueError(f"need at least one hidden layer, got widths {widths}")
    generator = torch.Generator().manual_seed(seed)
    z = torch.rand(n_samples, widths[0], generator=generator, dtype=torch.float64)
    snn, _ = init_snn(widths, init, z, seed=seed + 1, alpha=alpha, zeta=zeta, recentre=recentre)
    report = jacobian_spectra(snn, z, include_readout)
    report.init = init
    report.widths = list(widths)
    report.snn = snn
    return report


# --------------------------------------------------------------------------------------------------
# Trajectory comparison
# --------------------------------------------------------------------------------------------------
def _relu_affine(relu_model: nn.Module) -> list[tuple[Tensor, Tensor | None]]:
    out = []
    for m in relu_model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out.append((m.weight.detach(), None if m.bias is None else m.bias.detach()))
    return out


@torch.no_grad()
def equivalent_relu_parameters(snn: SNN) -> list[tuple[Tensor, Tensor]]:
    """(w, b) of the equivalent ReLU network, like :meth:`SNN.relu_parameters`, but total for alpha1.

    :meth:`SNN.relu_parameters` refuses alpha1 neurons with slope B <= 0. Such neurons compute a
    constant (the core makes them silent): a hidden one outputs x = 0, whose exact ReLU equivalent is
    w = 0, b = 0; a readout one outputs the constant logit -1 (see :meth:`SpikingNeurons.activation`),
    i.e. w = 0, b = -1. This returns those rows and the ordinary reverse map for all other neurons, so it
    also works for alpha1 networks trained into (or initialised with) B <= 0 neurons.
    """
    widths = snn.deltas.detach().tolist() + [0.0]
    layers = snn.neuron_layers
    out = []
    for n, layer in enumerate(layers):
        weight, bias = layer.weight.detach(), layer.bias.detach()
        slope = layer.alpha + weight.flatten(1).sum(1)
        dead = slope <= 0
        if layer.is_b1 or layer.has_padding or not bool(dead.any()):
            out.append(layer.relu_equivalent(widths[n], widths[n + 1]))
            continue
        safe = torch.where(dead, 1.0, slope)
        w = weight / safe.reshape(-1, *(1,) * (weight.ndim - 1))
        w[dead] = 0.0
        b = widths[n + 1] - (bias - layer.alpha * widths[n]) / safe[:, None]
        b[dead] = -1.0 if n == len(layers) - 1 else 0.0
        out.append((w, b))
    return out


@torch.no_grad()
def cosine_similarity_to_relu(snn: SNN, relu_model: nn.Module, include_bias: bool = False) -> float:
    """Cosine similarity between the SNN's reverse-mapped weights and a ReLU network's weights.

    The SNN's equivalent ReLU weights w (``snn.relu_parameters()``, i.e. what :func:`ttfs.to_relu`
    puts into its Linear/Conv2d layers, acting on inputs scaled to [0, 1] * Delta^(0); alpha1 neurons with
    B <= 0 count as w = 0, see :func:`equivalent_relu_parameters`) of all layers are
    flattened and concatenated, likewise the weights of the Linear/Conv2d modules of ``relu_model`` in
    module order; the result is <a, b> / (|a| |b|) as a Python float (computed in float64). With
    ``include_bias`` the biases are appended too (only for single-region layers; a missing ReLU bias
    counts as 0). 1 means the two weight vectors are parallel. For B1, gradient descent on the SNN is
    gradient descent on the ReLU network, so identical training keeps this at 1 (up to rounding); for
    alpha1 it does not.
    """
    snn_params = equivalent_relu_parameters(snn)
    relu_params = _relu_affine(relu_model)
    if len(snn_params) != len(relu_params):
        raise ValueError(
            f"the SNN has {len(snn_params)} neuron layers but the ReLU model {len(relu_params)} Linear/Conv2d layers"
        )
    a_parts, b_parts = [], []
    for k, ((w_s, b_s), (w_r, b_r)) in enumerate(zip(snn_params, relu_params, strict=True)):
        if w_s.shape != w_r.shape:
            raise ValueError(f"layer {k}: SNN weight shape {tuple(w_s.shape)} != ReLU {tuple(w_r.shape)}")
        a_parts.append(w_s.reshape(-1))
        b_parts.append(w_r.reshape(-1))
        if include_bias:
            if b_s.shape[1] != 1:
                raise ValueError(f"layer {k} has per-region biases; compare weights only (include_bias=False)")
            a_parts.append(b_s[:, 0])
            b_parts.append(torch.zeros_like(b_s[:, 0]) if b_r is None else b_r.reshape(-1))
    a = torch.cat([p.to("cpu", torch.float64) for p in a_parts])
    b = torch.cat([p.to("cpu", torch.float64) for p in b_parts])
    return float(a @ b / (a.norm() * b.norm()))
