"""Layer Jacobians of spike times (SPEC 2.7) against autograd, and their spectra at initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ttfs
from ttfs.jacobian import (
    alpha1_standard_snn,
    cosine_similarity_to_relu,
    depth_product,
    glorot_relu_mlp,
    init_snn,
    init_spectra,
    jacobian_spectra,
    layer_jacobians,
    spectrum,
)

F64 = torch.float64


def per_sample_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """(batch, out_numel, in_numel) Jacobians of a map that treats samples independently."""
    jac = torch.autograd.functional.jacobian(lambda v: f(v).sum(0), x)  # (*out, batch, *in)
    out_numel = int(np.prod(jac.shape[: jac.ndim - x.ndim]))
    jac = jac.reshape(out_numel, x.shape[0], -1)
    return jac.permute(1, 0, 2)


def hidden_layer_maps(snn: ttfs.SNN):
    """For each hidden neuron layer: (input times recorded at that layer, map t_in -> t_out)."""
    layers = snn.neuron_layers[:-1]
    b = snn.boundaries()

    def make(layer, n):
        return lambda t: layer(t, b[n - 1], b[n], b[n + 1])

    return [make(layer, n) for n, layer in enumerate(layers, start=1)]


@pytest.fixture(scope="module")
def alpha1_standard():
    g = torch.Generator().manual_seed(3)
    z = torch.rand(40, 12, generator=g, dtype=F64)
    snn = alpha1_standard_snn([12, 16, 16, 9, 4], z, g)
    return snn, z


def test_alpha1_layer_jacobian_is_mask_over_slope_times_w_and_matches_autograd(alpha1_standard):
    snn, z = alpha1_standard
    record = snn.run(z)
    jacobians = layer_jacobians(snn, z)
    maps = hidden_layer_maps(snn)
    assert len(jacobians) == len(maps) == 3
    n_masked = n_nonpositive = 0
    for n, (layer, jac, f) in enumerate(zip(snn.neuron_layers, jacobians, maps, strict=False), start=1):
        t_in = record.layer_inputs[n - 1]
        # explicit formula, independent of ttfs.jacobian: M diag(1/B) W with B = alpha + sum_j W_ij
        w = layer.weight.detach()
        slope = layer.alpha + w.sum(1)
        spiking = record.times[n - 1] < record.t_max(n)
        expected = spiking[:, :, None] * (w / slope[:, None])[None]
        expected = torch.where(spiking[:, :, None], expected, 0.0)
        auto = per_sample_jacobian(f, t_in.clone())
        assert jac.shape == auto.shape == (z.shape[0], w.shape[0], w.shape[1])
        torch.testing.assert_close(jac, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(jac, auto, rtol=0, atol=1e-10)
        n_masked += int((~spiking).sum())
        n_nonpositive += layer.nonpositive_slopes(t_in)
        # silent neurons have zero rows, B <= 0 neurons are always silent
        assert bool((jac[~spiking] == 0).all())
        assert bool(spiking[:, slope <= 0].logical_not().all())
        assert float(jac.abs().max()) > 0.1
    assert n_masked > 0 and n_nonpositive > 0  # the mask and the B <= 0 case are both exercised


def test_alpha1_smart_layer_jacobian_matches_autograd_and_equals_relu_w():
    z = torch.rand(30, 10, generator=torch.Generator().manual_seed(1), dtype=F64)
    snn, relu = init_snn([10, 14, 14, 3], "alpha1_smart", z, seed=5)
    record = snn.run(z)
    jacobians = layer_jacobians(snn, z)
    back = snn.relu_parameters()
    for n, (jac, f) in enumerate(zip(jacobians, hidden_layer_maps(snn), strict=True), start=1):
        auto = per_sample_jacobian(f, record.layer_inputs[n - 1].clone())
        torch.testing.assert_close(jac, auto, rtol=0, atol=1e-10)
        # W/B is the reverse-mapped ReLU weight w of the (rescaled) network
        spiking = record.times[n - 1] < record.t_max(n)
        torch.testing.assert_close(jac, spiking[:, :, None] * back[n - 1][0][None], rtol=0, atol=1e-12)


def test_b1_layer_jacobian_is_the_relu_jacobian():
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 7), nn.ReLU(),
                         nn.Linear(7, 3)).to(F64)
    z = torch.rand(25, 8, dtype=F64)
    snn = ttfs.convert(relu, z)
    jacobians = layer_jacobians(snn, z)
    a = z
    linears = [m for m in relu if isinstance(m, nn.Linear)][:-1]
    assert len(jacobians) == len(linears)
    for lin, jac in zip(linears, jacobians, strict=True):
        def relu_layer(v, lin=lin):
            return torch.relu(lin(v))

        # x = t_max - t on both sides, so dt_out/dt_in = dx_out/dx_in: no sign flip
        auto = per_sample_jacobian(relu_layer, a.clone())
        torch.testing.assert_close(jac, auto, rtol=0, atol=1e-12)
        assert 0 < int((jac.abs().sum(2) == 0).sum()) < jac.shape[0] * jac.shape[1]  # some, not all, masked
        a = relu_layer(a).detach()
    # and the same from the SNN side: autograd of spike times w.r.t. input spike times
    t0 = snn.encode(z)
    auto_first = per_sample_jacobian(lambda t: snn.run_times(t).times[0], t0.clone())
    torch.testing.assert_close(jacobians[0], auto_first, rtol=0, atol=1e-12)


@pytest.mark.parametrize("init", ["b1", "alpha1_smart", "alpha1_standard"])
def test_depth_product_equals_autograd_chain(init):
    z = torch.rand(20, 9, generator=torch.Generator().manual_seed(2), dtype=F64)
    snn, _ = init_snn([9, 11, 11, 11, 4], init, z, seed=7)
    jacobians = layer_jacobians(snn, z)
    product, sv = depth_product(jacobians)
    t0 = snn.encode(z)
    auto = per_sample_jacobian(lambda t: snn.run_times(t).times[-1], t0.clone())
    scale = float(auto.abs().max())
    assert scale > 0
    torch.testing.assert_close(product, auto, rtol=0, atol=1e-10 * max(1.0, scale))
    torch.testing.assert_close(sv, torch.linalg.svdvals(auto), rtol=0, atol=1e-9 * max(1.0, scale))
    # with the readout block the chain is dlogits/dx^(0) = -dlogits/dt^(0)
    full, _ = depth_product(layer_jacobians(snn, z, include_readout=True))
    auto_logits = per_sample_jacobian(lambda t: snn.run_times(t).logits, t0.clone())
    torch.testing.assert_close(full, -auto_logits, rtol=0, atol=1e-10 * max(1.0, float(auto_logits.abs().max())))


def test_conv_and_pool_jacobians_match_autograd():
    torch.manual_seed(4)

    def bn(c):
        b = nn.BatchNorm2d(c)
        with torch.no_grad():
            b.weight.uniform_(-1.5, 1.5)
            b.bias.normal_()
            b.running_mean.normal_()
            b.running_var.uniform_(0.5, 2)
            b.weight[0] = -abs(float(b.weight[0])) - 0.5  # one channel with a negative scale
        return b

    # conv 'same' + BN after the ReLU (negative scales: sign-flipped pooling) + pool + flatten + dense
    relu = nn.Sequential(nn.Conv2d(2, 3, 3, padding="same"), nn.ReLU(), bn(3), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 6), nn.ReLU(),
                         nn.Linear(6, 3)).to(F64).eval()
    z = torch.rand(6, 2, 8, 8, dtype=F64)
    snn = ttfs.convert(relu, z)
    assert any(isinstance(m, ttfs.MinTimePool2d) and m.sign is not None for m in snn.layers)
    jacobians = layer_jacobians(snn, z)
    assert [tuple(j.shape[1:]) for j in jacobians] == [(3 * 64, 2 * 64), (16, 3 * 64), (6, 16)]
    record = snn.run(z)
    b = snn.boundaries()
    conv1, conv2, dense = snn.neuron_layers[:3]
    pool = snn.layers[1]

    def second(t):  # t^(1) -> pool -> conv2 -> t^(2)
        return conv2(pool(t), b[1], b[2], b[3])

    autos = [
        per_sample_jacobian(lambda t: conv1(t, b[0], b[1], b[2]), record.input_times.clone()),
        per_sample_jacobian(second, record.times[0].clone()),
        per_sample_jacobian(lambda t: dense(t.flatten(1), b[2], b[3], b[4]), record.times[1].clone()),
    ]
    for jac, auto in zip(jacobians, autos, strict=True):
        torch.testing.assert_close(jac, auto, rtol=0, atol=1e-12)
    product, _ = depth_product(jacobians)
    auto = per_sample_jacobian(lambda t: snn.run_times(t).times[-1], record.input_times.clone())
    torch.testing.assert_close(product, auto, rtol=0, atol=1e-10)


def test_alpha1_valid_conv_jacobian_matches_autograd():
    torch.manual_seed(6)
    relu = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).to(F64)
    with torch.no_grad():
        relu[-1].weight.mul_(0.05)
    z = torch.rand(5, 1, 6, 6, dtype=F64)
    snn = ttfs.convert(relu, z, parameterisation="alpha1")
    (jac,) = layer_jacobians(snn, z)
    layer = snn.neuron_layers[0]
    b = snn.boundaries()
    auto = per_sample_jacobian(lambda t: layer(t, b[0], b[1], b[2]), snn.encode(z).clone())
    torch.testing.assert_close(jac, auto, rtol=0, atol=1e-10)
    assert float(jac.abs().max()) > 0


def test_spectrum_shapes_and_values():
    g = torch.Generator().manual_seed(0)
    square = torch.randn(4, 5, 5, generator=g, dtype=F64)
    rect = torch.randn(4, 3, 5, generator=g, dtype=F64)
    s = spectrum(square)
    torch.testing.assert_close(s.singular_values, torch.linalg.svdvals(square), rtol=0, atol=1e-12)
    assert s.eigenvalues is not None and s.eigenvalues.shape == (4, 5)
    # eigenvalues: product = determinant, sum = trace
    torch.testing.assert_close(s.eigenvalues.prod(-1).real, torch.linalg.det(square), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.eigenvalues.sum(-1).real, square.diagonal(dim1=1, dim2=2).sum(-1),
                               rtol=1e-10, atol=1e-10)
    r = spectrum(rect)
    assert r.eigenvalues is None and r.singular_values.shape == (4, 3)
    with pytest.raises(ValueError):
        depth_product([])


@pytest.fixture(scope="module")
def init_reports():
    widths = [40, 40, 40, 40, 40, 10]
    return {init: init_spectra(widths, init, n_samples=64, seed=0)
            for init in ("b1", "alpha1_smart", "alpha1_standard")}


def test_init_spectra_report_shapes(init_reports):
    for init, r in init_reports.items():
        assert r.init == init and r.widths == [40, 40, 40, 40, 40, 10]
        assert len(r.layer_singular_values) == 4 and len(r.layer_eigenvalues) == 4
        assert all(sv.shape == (64, 40) for sv in r.layer_singular_values)
        assert all(e is not None and e.shape == (64, 40) and np.iscomplexobj(e) for e in r.layer_eigenvalues)
        assert r.product_singular_values.shape == (64, 40)
        assert isinstance(r.snn, ttfs.SNN)
        assert all(0.2 < a < 0.7 for a in r.active_fraction)  # roughly half active
    assert init_reports["b1"].phase1_spikes == [0, 0, 0, 0]
    assert init_reports["b1"].nonpositive_slopes == [0, 0, 0, 0]
    assert sum(init_reports["alpha1_standard"].nonpositive_slopes) > 0
    with pytest.raises(ValueError, match="unknown init"):
        init_spectra([4, 4, 2], "alpha2")


def test_alpha1_smart_depth_product_equals_b1(init_reports):
    # The rescaling by positive homogeneity changes single layers (the last hidden layer's rows are divided
    # by c and the readout compensates); the readout is re-centred by a vector common to all classes. So the
    # full product dlogits/dx^(0) agrees with B1's once the logits are centred (what the softmax sees), and
    # the hidden product differs from B1's only by the last hidden layer's factors 1/c.
    b1, smart = init_reports["b1"], init_reports["alpha1_smart"]
    assert smart.active_fraction == b1.active_fraction
    z = torch.rand(16, 40, generator=torch.Generator().manual_seed(9), dtype=F64)
    full_b1, _ = depth_product(layer_jacobians(b1.snn, z, include_readout=True))
    full_smart, _ = depth_product(layer_jacobians(smart.snn, z, include_readout=True))
    centre = torch.eye(10, dtype=F64) - 1 / 10
    torch.testing.assert_close(centre @ full_smart, centre @ full_b1, rtol=0, atol=1e-12 * float(full_b1.abs().max()))
    hidden_b1, _ = depth_product(layer_jacobians(b1.snn, z))
    hidden_smart, _ = depth_product(layer_jacobians(smart.snn, z))
    # row i of the hidden product is B1's row i times one factor 1/c_i in (0, 1], the same for every sample
    big = hidden_b1.abs() > 1e-6 * float(hidden_b1.abs().max())
    ratio = torch.where(big, hidden_smart / torch.where(big, hidden_b1, 1.0), float("nan"))
    per_row = ratio.permute(1, 0, 2).reshape(ratio.shape[1], -1)
    lo = torch.where(per_row.isnan(), float("inf"), per_row).min(1).values
    hi = torch.where(per_row.isnan(), -float("inf"), per_row).max(1).values
    seen = big.any(2).any(0)
    assert bool(seen.any()) and bool(((hi - lo)[seen] <= 1e-9).all()) and bool((lo[seen] > 0).all())
    assert bool((hi[seen] <= 1 + 1e-12).all()) and bool((hi[seen] < 1 - 1e-3).any())  # some rows rescaled
    rescaled = any(
        not np.allclose(a, b, rtol=1e-6) for a, b in zip(smart.layer_singular_values, b1.layer_singular_values,
                                                        strict=True)
    )
    assert rescaled  # the single-layer spectra do differ


def test_alpha1_standard_spectra_leave_the_unit_circle(init_reports):
    # Both reports analyse the same seeded inputs, so samples can be compared one by one.
    b1, std = init_reports["b1"], init_reports["alpha1_standard"]
    top_b1 = b1.product_singular_values[:, 0]
    top_std = std.product_singular_values[:, 0]
    print(f"median top singular value of the depth product: B1 {np.median(top_b1):.4g}, "
          f"alpha1-standard {np.median(top_std):.4g}")
    # B1 at Glorot init: the eigenvalues of every square block stay inside the unit circle (median radius
    # ~0.75: half the rows are masked) and the product's gain is O(1).
    radius_b1 = [np.median(np.abs(e).max(1)) for e in b1.layer_eigenvalues]
    outside_b1 = np.mean([(np.abs(e) > 1).mean() for e in b1.layer_eigenvalues])
    assert max(radius_b1) < 1.0 and outside_b1 < 0.005
    assert 0.1 < np.median(top_b1) < 3.0
    # alpha1 standard: 1/B with B = 1 + sum_j W_ij near 0 pushes eigenvalues out of the unit circle and
    # the depth product explodes, for every sample.
    radius_std = [np.median(np.abs(e).max(1)) for e in std.layer_eigenvalues]
    outside_std = np.mean([(np.abs(e) > 1).mean() for e in std.layer_eigenvalues])
    assert max(radius_std) > 1.5 and outside_std > 0.02 and outside_std > 10 * outside_b1
    assert np.median(top_std) > 30 * np.median(top_b1)
    assert (top_std > top_b1).mean() > 0.9


def test_cosine_similarity_to_relu_identity_and_errors():
    relu = glorot_relu_mlp([6, 5, 3], torch.Generator().manual_seed(0))
    z = torch.rand(10, 6, dtype=F64)
    snn = ttfs.convert(relu, z)
    assert cosine_similarity_to_relu(snn, relu) == pytest.approx(1.0, abs=1e-15)
    assert cosine_similarity_to_relu(snn, relu, include_bias=True) == pytest.approx(1.0, abs=1e-15)
    with torch.no_grad():
        relu[0].weight[0, 0] += 0.5
    assert cosine_similarity_to_relu(snn, relu) < 1 - 1e-3
    with pytest.raises(ValueError, match="neuron layers"):
        cosine_similarity_to_relu(snn, nn.Sequential(nn.Linear(6, 3)))


def test_jacobian_spectra_on_converted_network_matches_layers():
    relu = glorot_relu_mlp([5, 7, 7, 2], torch.Generator().manual_seed(1))
    z = torch.rand(12, 5, dtype=F64)
    snn = ttfs.convert(relu, z)
    report = jacobian_spectra(snn, z, include_readout=True)
    assert len(report.layer_singular_values) == 3
    assert report.layer_eigenvalues[0] is None and report.layer_eigenvalues[1] is not None
    assert report.product_singular_values.shape == (12, 2)
