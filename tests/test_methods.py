"""Each method's defining property, on synthetic tensors (pure algorithmic checks) or the built-in model."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from tvmquant.methods import balanced, inq, multipoint, qnet, uniq
from tvmquant.scheme import WeightKind


def _weights(shape=(16, 8, 3, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * 0.1


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_uniq_bins_equiprobable_and_levels_at_bin_medians(bits):
    w = _weights()
    thresholds, levels = uniq.thresholds_and_levels(w, bits)
    mu, sigma = uniq.gaussian_fit(w)
    cdf = norm.cdf((np.concatenate([[-np.inf], thresholds, [np.inf]]) - mu) / sigma)
    np.testing.assert_allclose(np.diff(cdf), 1 / (1 << bits), atol=1e-12)
    np.testing.assert_allclose(norm.cdf((levels - mu) / sigma), (cdf[:-1] + cdf[1:]) / 2, atol=1e-12)
    q = uniq.quantize_weight(w, bits)
    assert q.kind is WeightKind.CODEBOOK
    deq = q.dequantize()
    assert set(np.unique(deq)) <= set(levels)
    # every weight lands in the bin that contains it
    codes = q.codes.astype(int)
    lo = np.concatenate([[-np.inf], thresholds])[codes]
    hi = np.concatenate([thresholds, [np.inf]])[codes]
    assert np.all((w >= lo) & (w < hi))


def test_uniq_empirical_variant_equal_counts():
    w = _weights((64, 32, 3, 3))
    counts = np.bincount(uniq.quantize_weight(w, 3, fit="empirical").codes.ravel(), minlength=8)
    assert counts.max() - counts.min() <= 2


def test_uniq_noise_stays_within_one_bin_in_cdf_domain():
    w = torch.from_numpy(_weights()).float().requires_grad_(True)
    noisy = uniq.noisy_weight(w, 2)
    mu, sigma = w.detach().mean(), w.detach().std()
    du = (torch.special.ndtr((noisy - mu) / sigma) - torch.special.ndtr((w - mu) / sigma)).detach()
    assert float(du.abs().max()) <= 1 / 8 + 1e-5 and float(du.abs().max()) > 0
    noisy.sum().backward()
    assert torch.allclose(w.grad, torch.ones_like(w))  # straight-through


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_inq_values_in_power_of_two_set(bits):
    w = _weights()
    q = inq.quantize_weight(w, bits)
    assert q.kind is WeightKind.POW2
    n1, n2 = inq.exponent_range(np.abs(w).max(), bits)
    allowed = np.concatenate([[0.0], np.exp2(np.arange(n2, n1 + 1.0))])
    deq = q.dequantize()
    assert np.all(np.isin(np.abs(deq), allowed))
    assert len(allowed) - 1 == 1 << (bits - 2)  # 2^(b-1)+1 values with signs and zero
    assert np.abs(w).max() < 1.5 * 2.0**n1
    # nearest in the linear domain
    dist = np.abs(np.abs(w)[..., None] - allowed).min(-1)
    np.testing.assert_allclose(np.abs(np.abs(w) - np.abs(deq)), dist, atol=1e-15)


def test_inq_portions_respected_and_frozen_weights_never_move():
    w = torch.nn.Parameter(torch.from_numpy(_weights()).float())
    state = inq.IncrementalState(w, 3)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
    previous_mask = torch.zeros_like(state.frozen)
    for portion in inq.PORTIONS[3][:-1]:
        before = w.detach().abs().clone()
        state.advance(w, portion)
        assert int(state.frozen.sum()) == round(portion * w.numel())
        assert torch.all(state.frozen[previous_mask])  # persistent
        newly = state.frozen & ~previous_mask
        assert before[newly].min() >= before[~state.frozen].max()  # largest magnitudes first
        frozen_values = w.detach()[state.frozen].clone()
        assert np.all(np.isin(np.abs(frozen_values.numpy()), inq.power_set(state.n1, 3).astype(np.float32)))
        for _ in range(3):
            opt.zero_grad()
            (torch.where(state.frozen, w.detach(), w) ** 2).sum().backward()
            opt.step()
            state.hold(w)
            assert torch.equal(w.detach()[state.frozen], frozen_values)
        previous_mask = state.frozen.clone()


@pytest.mark.parametrize("approx", ["exact", "mean"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_balanced_bins_hold_equal_counts_and_full_entropy(bits, approx):
    w = _weights((128, 64, 3, 3), seed=bits)  # 73,728 weights
    q = balanced.quantize_weight(w, bits, approx)
    assert q.kind is WeightKind.UNIFORM
    counts = np.bincount(q.codes.ravel(), minlength=1 << bits)
    p = counts / counts.sum()
    entropy = -(p * np.log2(p)).sum()
    if approx == "exact":
        assert counts.max() - counts.min() <= 1
        assert entropy == pytest.approx(bits, abs=1e-6)
    else:  # means = medians only for symmetric sub-populations; half-normal halves are skewed
        assert entropy == pytest.approx(bits, abs=0.05)
    levels = np.unique(q.dequantize())
    assert np.allclose(np.diff(levels), np.diff(levels)[0]) and np.isclose(levels[0], -levels[-1])


def test_balanced_skewed_tensor_mean_split_is_biased():
    w = np.random.default_rng(0).exponential(size=(64, 256))
    exact = np.bincount(balanced.quantize_weight(w, 2, "exact").codes.ravel(), minlength=4)
    mean = np.bincount(balanced.quantize_weight(w, 2, "mean").codes.ravel(), minlength=4)
    assert exact.max() - exact.min() <= 1 and mean.max() - mean.min() > 100


def test_multipoint_residual_non_increasing_per_point():
    rng = np.random.default_rng(1)
    for bits in (2, 3, 4):
        r = rng.standard_normal(200) * rng.uniform(0.01, 1)
        norms = [np.linalg.norm(r)]
        for _ in range(5):
            a, q = multipoint.best_point(r, bits)
            assert a >= 0 and np.all(np.abs(q) <= (1 << (bits - 1)) - 1)
            r = r - a * q
            norms.append(np.linalg.norm(r))
        assert all(b <= a + 1e-12 for a, b in zip(norms, norms[1:]))
        assert norms[-1] < 0.5 * norms[0]


@pytest.mark.parametrize("budget", [0.0, 0.1, 0.5])
def test_multipoint_budget_respected_and_representation_exact(budget):
    rng = np.random.default_rng(2)
    weights = {"a": rng.standard_normal((12, 5, 3, 3)), "b": rng.standard_normal((20, 30))}
    grams = {}
    for name, w in weights.items():
        x = rng.standard_normal((300, w[0].size))
        grams[name] = x.T @ x
    out = multipoint.quantize_layers(weights, {"a": 3, "b": 2}, grams, budget)
    rows = sum(int(q.coeffs.sum()) for q in out.values())
    channels = sum(len(w) for w in weights.values())
    assert channels <= rows <= channels + int(np.floor(budget * channels))
    if budget > 0:
        assert rows == channels + int(np.floor(budget * channels))
    for name, q in out.items():
        assert q.kind is WeightKind.MULTIPOINT and q.codes.shape[1:] == weights[name].shape
        assert np.linalg.norm(q.dequantize() - weights[name]) < np.linalg.norm(weights[name])


def test_multipoint_more_budget_lowers_output_error():
    rng = np.random.default_rng(3)
    w = {"l": rng.standard_normal((16, 40))}
    x = rng.standard_normal((500, 40))
    errs = []
    for budget in (0.0, 0.25, 1.0):
        q = multipoint.quantize_layers(w, {"l": 2}, {"l": x.T @ x}, budget)["l"]
        errs.append(np.linalg.norm(x @ (q.dequantize() - w["l"]).T))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("bits,kind", [(1, WeightKind.UNIFORM), (2, WeightKind.UNIFORM), (3, WeightKind.POW2), (4, WeightKind.UNIFORM)])
def test_qnet_high_temperature_matches_unit_step_and_export(bits, kind):
    w = _weights()
    quant = qnet.QNQuantizer(w, bits)
    wt = torch.from_numpy(w)
    hard = quant.hard(wt).detach().numpy()
    soft = quant.soft(wt, 1e6).detach().numpy()
    z = np.exp(float(quant.log_beta.detach())) * w[..., None] - quant.thresholds.numpy()
    away = np.abs(z).min(-1) > 1e-4  # at T*z clamped to ±10 the sigmoid is within 5e-5 of the step
    np.testing.assert_allclose(soft[away], hard[away], atol=1e-4 * np.abs(hard).max())
    exported = quant.export(wt)
    assert exported.kind is kind
    np.testing.assert_allclose(exported.dequantize(), hard, rtol=1e-12)
    levels = np.unique(hard / np.exp(float(quant.log_alpha.detach())))
    assert set(np.round(levels, 9)) <= set(qnet.level_set(bits))


def test_qnet_thresholds_from_kmeans_are_sorted_between_levels():
    w = _weights((32, 16, 3, 3))
    quant = qnet.QNQuantizer(w, 2)
    t = quant.thresholds.numpy()
    assert len(t) == 2 and t[0] < t[1]
    assert qnet.temperature(0) == 10 and qnet.temperature(10**6) == qnet.T_CAP
