"""Reference event-driven simulator of an exported SNN (NumPy only).

:func:`simulate` integrates the neuron dynamics of SPEC 2.3 event by event from the arrays of an export
(:func:`ttfs.export.to_dict` / ``arrays.npz``), independently of the closed-form code in
:mod:`ttfs.layers`: each neuron layer is turned into an explicit connectivity matrix, the input spikes
are sorted by time, the piecewise-linear membrane potential is integrated segment by segment from
V = 0 at t_min_in, and each threshold crossing is solved exactly on its linear segment.

Conventions (documented in docs/export_format.md, section "Reference simulator"):

* An input is a spike if its time is < t_min of the receiving layer (= t_max of the sending layer);
  a time >= t_min is a silent input: it emits no spike. An input spike that came before the receiving
  layer's integration start t_min_in (possible only after an alpha1 phase-1 spike upstream) acts from
  t_min_in on, since the potential starts at 0 there.
* B1 (``phase switch``): phase 1 [t_min_in, t_min) integrates with slope A + sum of arrived weights and
  has no threshold; phase 2 [t_min, t_max) has slope B and the threshold theta. If V(t_min) > theta the
  neuron fires at t_min (the earliest time its threshold is looked at) and is counted as a causality
  violation; the closed form would have extrapolated a spike before t_min instead.
* alpha1 (no phase switch): the slope stays alpha + sum of arrived weights throughout; silent inputs
  arrive at t_min (SPEC 2.4), so the slope in [t_min, t_max) is B = alpha + sum of all weights. The
  threshold is active from t_min_in on; a neuron reaching it before t_min fires there (at the true
  crossing time) and is counted as a phase-1 spike. A neuron with V(t_min) > theta is also counted as
  a causality violation (that is where the closed form would report t < t_min).
* No crossing before t_max: silent, time exactly t_max.
* Pooling: earliest time for channels with sign +1, latest for sign -1 (padded taps never win).
  Flatten: C order. Average pooling is no spike operation: it is folded into the synapses of the next
  neuron layer (every input of a window gets weight W / (kh * kw) to the targets of the window).
* Input groups (version 2, residual networks): the spikes of an earlier layer m, routed as the group
  says, arrive ``delay`` = t_min - t_max^(m) later; a silent source neuron (t = t_max^(m)) sends
  nothing. All groups' arrivals and the chain's spikes are merged into one sorted event list.
* Readout: potential at t_read = t_min of the readout, logit = (V - theta) / B (= W x + D for B1); an
  alpha1 readout neuron with B <= 0 gets logit -1, as in the closed form of the library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["connectivity", "simulate", "simulate_snn"]


def connectivity(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Explicit synaptic matrix (n_inputs, n_neurons) of a dense or conv2d layer, C-order flattening.

    Entry [j, i] is the weight from input j to neuron i; zero padding has no synapse (entry 0).
    """
    return _synapses(spec, np.asarray(arrays[spec["weight"]], dtype=np.float64), spec["in_shape"], spec["out_shape"])


def _synapses(spec: Mapping[str, Any], weight: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """Synaptic matrix of a dense, conv2d (with ``groups``) or scale (one weight per channel) map."""
    if spec["kind"] == "dense":
        return np.ascontiguousarray(weight.T)
    if spec["kind"] == "scale":
        return np.diag(np.repeat(weight, int(np.prod(in_shape[1:], dtype=np.int64))))
    c_in, h, w = in_shape
    c_out, oh, ow = out_shape
    kh, kw = spec["kernel"]
    sh, sw = spec["stride"]
    ph, pw = spec["padding"]
    groups = spec.get("groups", 1)
    cpg, opg = c_in // groups, c_out // groups
    m = np.zeros((c_in, h, w, c_out, oh, ow))
    for y in range(oh):
        for x in range(ow):
            for i in range(kh):
                iy = y * sh - ph + i
                if not 0 <= iy < h:
                    continue
                for j in range(kw):
                    ix = x * sw - pw + j
                    if 0 <= ix < w:
                        for g in range(groups):
                            m[g * cpg:(g + 1) * cpg, iy, ix, g * opg:(g + 1) * opg, y, x] += \
                                weight[g * opg:(g + 1) * opg, :, i, j].T
    return m.reshape(c_in * h * w, c_out * oh * ow)


def _linear_route(steps: list, shape) -> np.ndarray:
    """Matrix (n_in, n_out) of average pooling and flatten steps applied to a tensor of ``shape``."""
    n = int(np.prod(shape, dtype=np.int64))
    p = np.eye(n).reshape(n, *shape)
    for step in steps:
        if step["kind"] == "avgpool":
            p = _windows(p, step, np.nan).mean(axis=0)
        else:
            p = p.reshape(n, -1)
    return p.reshape(n, -1)


def _windows(t: np.ndarray, spec: Mapping[str, Any], fill: float) -> np.ndarray:
    """(kh * kw, batch, c, oh, ow): the taps of every window (padded taps hold ``fill``)."""
    kh, kw = spec["kernel"]
    sh, sw = spec["stride"]
    ph, pw = spec.get("padding", (0, 0)) if spec["kind"] == "pool" else (0, 0)
    _, oh, ow = spec["out_shape"]
    if ph or pw:
        t = np.pad(t, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    return np.stack(
        [
            t[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ]
    )


def _per_neuron_theta(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    theta = np.asarray(arrays[spec["theta"]], dtype=np.float64)  # (channels, regions)
    if spec["kind"] == "dense":
        return theta[:, 0]
    if spec["region_index"] is None:
        _, oh, ow = spec["out_shape"]
        return np.repeat(theta[:, 0], oh * ow)
    index = np.asarray(arrays[spec["region_index"]], dtype=np.int64)
    return theta[:, index].reshape(-1)


def _cross(
    v: np.ndarray, slope: np.ndarray, theta: np.ndarray, t_a: float, t_b: float, fire: np.ndarray
) -> None:
    """Record, for neurons not yet fired, a threshold crossing on the linear segment [t_a, t_b)."""
    waiting = np.isnan(fire) & (slope > 0) & (v < theta)
    if not waiting.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cross = t_a + (theta - v) / slope
    hit = waiting & (t_cross < t_b)
    fire[hit] = t_cross[hit]


def _neuron_layer(
    spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], t_in: np.ndarray, m: np.ndarray | None = None
) -> dict[str, Any]:
    """Simulate one neuron layer for a batch of input arrival times (batch, n_inputs) through the synaptic
    matrix ``m`` (n_inputs, n_neurons; by default the layer's own connectivity)."""
    if m is None:
        m = connectivity(spec, arrays)
    theta = _per_neuron_theta(spec, arrays)
    b_slope = np.asarray(arrays[spec["B"]], dtype=np.float64).reshape(-1)
    drive = float(spec["A"])
    switch = spec["parameterisation"] == "b1"  # two-phase model; alpha1 keeps integrating
    readout = spec["role"] == "readout"
    t_min_in, t_min = float(spec["t_min_in"]), float(spec["t_min"])
    t_max = t_min if readout else float(spec["t_max"])
    batch, n_out = t_in.shape[0], m.shape[1]
    times = np.full((batch, n_out), t_max)
    potential = np.empty((batch, n_out))
    phase1 = np.zeros((batch, n_out), dtype=bool)
    for s in range(batch):
        t = t_in[s]
        spiking = np.flatnonzero(t < t_min)
        arrival = np.maximum(t[spiking], t_min_in)
        order = np.argsort(arrival, kind="stable")
        v = np.zeros(n_out)
        slope = np.full(n_out, drive)
        fire = np.full(n_out, np.nan)
        threshold_on = not switch and not readout  # alpha1 looks at its threshold from t_min_in on
        now = t_min_in
        if threshold_on:
            fire[v >= theta] = now
        for k in order:
            t_next = arrival[k]
            if threshold_on:
                _cross(v, slope, theta, now, t_next, fire)
            v += slope * (t_next - now)
            now = t_next
            slope += m[spiking[k]]
            if threshold_on:
                fire[np.isnan(fire) & (v >= theta)] = now
        # end of phase 1
        if threshold_on:
            _cross(v, slope, theta, now, t_min, fire)
        v += slope * (t_min - now)
        potential[s] = v
        if readout:
            continue
        if switch:
            slope = b_slope.copy()
        else:
            silent = np.ones(t.shape[0], dtype=bool)
            silent[spiking] = False
            slope = slope + m[silent].sum(axis=0)  # silent inputs arrive at t_min
        phase1[s] = ~np.isnan(fire)
        fire[np.isnan(fire) & (v >= theta)] = t_min
        _cross(v, slope, theta, t_min, t_max, fire)
        times[s] = np.where(np.isnan(fire), t_max, fire)
    out: dict[str, Any] = {"potential": potential}
    if readout:
        rising = b_slope > 0
        out["logits"] = np.where(rising, (potential - theta) / np.where(rising, b_slope, 1.0), -1.0)
    else:
        out["times"] = times
        out["phase1"] = phase1
        out["violations"] = potential > theta
    return out


def _pool(t: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    windows = _windows(t, spec, np.nan)  # padded taps never win
    sign = np.asarray(spec["sign"]).reshape(1, -1, 1, 1)
    return np.where(sign > 0, np.nanmin(windows, axis=0), np.nanmax(windows, axis=0))


def _route(t: np.ndarray, steps: list) -> tuple[np.ndarray, list]:
    """Apply the spike-time steps (pool, flatten before any average) to ``t``; return the linear rest."""
    linear: list = []
    for step in steps:
        if step["kind"] == "pool":
            t = _pool(t, step)
        elif step["kind"] == "flatten" and not linear:
            t = t.reshape(t.shape[0], -1)
        else:
            linear.append(step)
    return t, linear


def simulate(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], t0: np.ndarray) -> dict[str, Any]:
    """Event-driven simulation of an exported SNN on input spike times ``t0`` (batch, *in_shape).

    Input times lie in [t_min^(0), t_max^(0)]; t_max^(0) means a silent input. Returns a dict with

    * ``times``: list of spike-time arrays (batch, *out_shape), one per hidden layer (silent = t_max);
    * ``layer_inputs``: the spike times arriving at each neuron layer (after pooling / flatten);
    * ``potentials``: list of V(t_min) per neuron layer, (batch, n_neurons);
    * ``logits``: (batch, n_classes);
    * ``spikes``, ``causality_violations``, ``phase1_spikes``: int arrays with one count per hidden
      layer (summed over the batch); ``phase1_mask``: list of boolean masks of phase-1 spikes.
    """
    if meta.get("format") != "ttfs-snn" or meta.get("version") not in (1, 2):
        raise ValueError(
            f"not a ttfs-snn version-1 or -2 export: format={meta.get('format')!r}, version={meta.get('version')!r}"
        )
    boundaries = meta["windows"]["boundaries"]
    t = np.asarray(t0, dtype=np.float64)
    in_shape = tuple(meta["input"]["in_shape"])
    if t.ndim != len(in_shape) + 1 or t.shape[1:] != in_shape:
        raise ValueError(
            f"input times have shape {t.shape}, expected (batch, {', '.join(map(str, in_shape))})"
        )
    batch = t.shape[0]
    result: dict[str, Any] = {"times": [], "layer_inputs": [], "potentials": [], "phase1_mask": []}
    spikes, violations, phase1 = [], [], []
    sources = [t]  # spike times of layers 0 (input), 1, ...: what input groups read
    pending: list = []  # average pooling (and flatten after it) since the last neuron layer
    for spec in meta["layers"]:
        kind = spec["kind"]
        if kind in ("pool", "avgpool", "flatten"):
            t, linear = _route(t, [*pending, spec] if pending else [spec])
            pending = linear
        elif kind in ("dense", "conv2d"):
            result["layer_inputs"].append(t)
            m = connectivity(spec, arrays)
            if pending:
                m = _linear_route(pending, t.shape[1:]) @ m
                pending = []
            arrivals, matrices = [t.reshape(batch, -1)], [m]
            for group in spec.get("inputs", ()) if meta["version"] >= 2 else ():
                source = group["source"]
                tg, linear = _route(sources[source], group["route"])
                w = _synapses(group, np.asarray(arrays[group["weight"]], dtype=np.float64), group["in_shape"],
                              spec["out_shape"])
                matrices.append(_linear_route(linear, tg.shape[1:]) @ w if linear else w)
                tg = tg.reshape(batch, -1)
                arrivals.append(np.where(tg < boundaries[source + 1], tg + group["delay"], spec["t_min"]))
            layer = _neuron_layer(spec, arrays, np.concatenate(arrivals, axis=1), np.concatenate(matrices, axis=0))
            result["potentials"].append(layer["potential"])
            if spec["role"] == "readout":
                result["logits"] = layer["logits"]
                break
            shape = (batch, *spec["out_shape"])
            t = layer["times"].reshape(shape)
            sources.append(t)
            result["times"].append(t)
            result["phase1_mask"].append(layer["phase1"].reshape(shape))
            spikes.append(int((t < spec["t_max"]).sum()))
            violations.append(int(layer["violations"].sum()))
            phase1.append(int(layer["phase1"].sum()))
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    result["spikes"] = np.asarray(spikes, dtype=np.int64)
    result["causality_violations"] = np.asarray(violations, dtype=np.int64)
    result["phase1_spikes"] = np.asarray(phase1, dtype=np.int64)
    return result


def simulate_snn(snn, z) -> dict[str, Any]:
    """Encode raw inputs ``z`` with ``snn.encode``, export ``snn`` with :func:`ttfs.export.to_dict` and
    run :func:`simulate` on the result (convenience wrapper; needs torch)."""
    import torch

    from .export import to_dict

    with torch.no_grad():
        t0 = snn.encode(z).detach().cpu().to(torch.float64).numpy()
    meta, arrays = to_dict(snn)
    return simulate(meta, arrays, t0)
