"""Each method's defining property, on synthetic tensors (pure algorithmic checks) or the built-in model."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from tvmquant.methods import balanced, inq, multipoint, qnet, uniform, uniq
from tvmquant.qat import InqTrainer
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
    q = uniq.quantize_weight(w, bits, per_channel=False)  # the authors' per-tensor fit
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
    counts = np.bincount(uniq.quantize_weight(w, 3, fit="empirical", per_channel=False).codes.ravel(), minlength=8)
    assert counts.max() - counts.min() <= 2


def test_uniq_per_channel_fit_follows_each_channels_scale():
    w = _weights((8, 16, 3, 3)) * np.geomspace(0.01, 1, 8)[:, None, None, None]  # BatchNorm-folded-like scales
    q = uniq.quantize_weight(w, 3)
    for row, levels, codes in zip(w, q.levels, q.codes):
        _, want = uniq.thresholds_and_levels(row[None], 3)
        np.testing.assert_allclose(levels, want)
        np.testing.assert_array_equal(codes, uniq.quantize_weight(row[None], 3, per_channel=False).codes[0])
    err = [np.linalg.norm(x.dequantize()[0] - w[0]) / np.linalg.norm(w[0])
           for x in (q, uniq.quantize_weight(w, 3, per_channel=False))]
    assert err[0] < 0.5 and err[1] > 0.9  # one layer-wide table cannot resolve the smallest channel
    noisy = uniq.noisy_weight(torch.from_numpy(w).float(), 3)
    assert float((noisy[0] - torch.from_numpy(w[0]).float()).abs().max()) < 3 * float(np.abs(w[0]).max())


def test_uniq_noise_stays_within_one_bin_in_cdf_domain():
    w = torch.from_numpy(_weights()).float().requires_grad_(True)
    noisy = uniq.noisy_weight(w, 2, per_channel=False)
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
    paper, _ = inq.exponent_range(np.abs(w).max(), bits)
    n1 = int(q.exp_max[0])
    assert n1 == inq.choose_n1(w, bits) and (n1 == paper if bits >= 3 else n1 <= paper)
    n2 = n1 + 1 - (1 << (bits - 2))
    allowed = np.concatenate([[0.0], np.exp2(np.arange(n2, n1 + 1.0))])
    deq = q.dequantize()
    assert np.all(np.isin(np.abs(deq), allowed))
    assert len(allowed) - 1 == 1 << (bits - 2)  # 2^(b-1)+1 values with signs and zero
    assert np.abs(w).max() < 1.5 * 2.0**paper
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
    for channel in q.dequantize().reshape(len(w), -1):  # a uniform grid per channel
        levels = np.unique(channel)
        assert np.allclose(np.diff(levels), np.diff(levels)[0])


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
    away = np.abs(z).min(-1) > 1e-4  # there σ(T z) at T = 1e6 is the step to within e^-100
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
    assert qnet.temperature(0) == qnet.T_START and qnet.temperature(1.0) == qnet.T_END >= 300
    assert qnet.temperature(0.5) == pytest.approx((qnet.T_START + qnet.T_END) / 2)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_qnet_start_is_least_squares_and_centred(bits):
    w = _weights((32, 16, 3, 3)) - 0.05  # a nonzero mean: the thresholds must stay symmetric about zero
    for init in qnet.INITS:
        quant = qnet.QNQuantizer(w, bits, init=init)
        t = quant.thresholds.numpy()
        np.testing.assert_allclose(t, -t[::-1], atol=1e-12)
        wt = torch.from_numpy(w)
        y = quant.y.numpy()[quant.level_index(wt).numpy()]
        alpha = float(torch.exp(quant.log_alpha.detach()))
        # k-means: least squares for its assignment; Lloyd: a fixed point of (assign, least squares) to 1e-3
        assert alpha == pytest.approx(float((w * y).sum() / (y * y).sum()), rel=1e-9 if init == "kmeans" else 1e-3)
    kmeans = qnet.QNQuantizer(w, bits, init="kmeans").hard(torch.from_numpy(w)).detach().numpy()
    lloyd = qnet.QNQuantizer(w, bits, init="lloyd").hard(torch.from_numpy(w)).detach().numpy()
    assert np.linalg.norm(lloyd - w) <= np.linalg.norm(kmeans - w) + 1e-12
    assert np.linalg.norm(lloyd - w) < 0.6 * np.linalg.norm(w)  # a usable post-training quantizer


def test_qnet_released_gradient_is_temperature_one_sigmoid_scaled_by_t():
    w = torch.from_numpy(_weights((8, 8))).requires_grad_(True)
    quant = qnet.QNQuantizer(w.detach().numpy(), 2)
    quant.soft(w, 300.0).sum().backward()
    beta, alpha = torch.exp(quant.log_beta.detach()), torch.exp(quant.log_alpha.detach())
    z = beta * w.detach().double().unsqueeze(-1) - quant.thresholds
    s = torch.sigmoid(z)
    expected = (alpha * beta * 300.0 * (s * (1 - s)) * (quant.y[1:] - quant.y[:-1])).sum(-1)
    torch.testing.assert_close(w.grad, expected.to(w.dtype))
    assert float(w.grad.abs().min()) > 0  # no weight's gradient is clamped away at T = 300


def test_qnet_and_balanced_use_the_uniform_quantizer_at_8_bits():
    w = _weights() ** 3  # heavy-tailed
    for method in (qnet, balanced):
        np.testing.assert_array_equal(method.quantize_weight(w, 8).dequantize(), uniform.quantize_weight(w, 8).dequantize())
    assert np.linalg.norm(qnet.quantize_weight(w, 8).dequantize() - w) < 0.03 * np.linalg.norm(w)


def test_uniq_auto_fit_takes_the_fit_with_the_smaller_weight_error():
    gauss, heavy = _weights((64, 32, 3, 3)), _weights((64, 32, 3, 3)) ** 3
    err = {fit: uniq.fit_error(heavy, 8, fit) for fit in ("gaussian", "empirical")}
    assert err["empirical"] < 0.5 * err["gaussian"]  # the Gaussian fit clips the heavy tail at 2.89 sigma
    assert uniq.fit_error(heavy, 8, "auto") == err["empirical"]
    assert uniq.fit_error(gauss, 8, "auto") == min(uniq.fit_error(gauss, 8, f) for f in ("gaussian", "empirical"))
    for bits in (2, 4):
        assert uniq.fit_error(heavy, bits, "auto") == min(uniq.fit_error(heavy, bits, f) for f in ("gaussian", "empirical"))


@pytest.mark.parametrize("bits", [2, 3])
def test_inq_least_squares_n1_at_low_bits(bits):  # "lsq" at 2 and 3 bits; "auto" uses it at 2 bits only
    w = np.random.default_rng(4).laplace(size=(64, 32, 3, 3)) * 0.02  # heavy tail: the paper's n1 sits far out
    paper = inq.choose_n1(w, bits, "paper")
    auto = inq.choose_n1(w, bits, "lsq")
    assert auto < paper and inq.choose_n1(w, bits) == (auto if bits == 2 else paper)

    def err(n):
        return np.linalg.norm(w - inq.round_pow2(w, n, bits))

    assert err(auto) == min(err(n) for n in range(paper - 11, paper + 1))
    q = inq.quantize_weight(w, bits, "lsq")
    assert np.mean(q.dequantize() != 0) > 0.3 and int(q.exp_max[0]) == auto
    assert inq.choose_n1(w, 4) == inq.exponent_range(np.abs(w).max(), 4)[0]  # the paper's rule from 4 bits


def test_inq_trainer_gives_every_portion_the_same_steps():
    w = torch.nn.Parameter(torch.from_numpy(_weights()).float())
    trainer = InqTrainer({"l": w}, {"l": 3}, portion_steps=2)
    portions = inq.PORTIONS[3][:-1]
    assert trainer.total_steps(999) == 2 * len(portions)
    frozen = []
    for step in range(trainer.total_steps(999)):
        trainer.start_step(step / 14)
        frozen.append(int(trainer.states["l"].frozen.sum()))
    assert frozen == [round(p * w.numel()) for p in portions for _ in range(2)]
    assert InqTrainer({"l": w}, {"l": 3}).total_steps(5) == 5 * len(portions)


def test_inq_wide_layers_use_the_uniform_grid_in_ptq_and_qat():
    w = _weights()
    wide = inq.quantize_weight(w, 8)
    assert wide.kind is WeightKind.UNIFORM
    np.testing.assert_array_equal(wide.codes, uniform.quantize_weight(w, 8).codes)
    pow2 = inq.quantize_weight(w, 8, uniform_bits=9)  # the paper's all-pow2 network
    assert pow2.kind is WeightKind.POW2
    err = [np.linalg.norm(q.dequantize() - w) for q in (wide, pow2, inq.quantize_weight(w, 4))]
    assert err[0] < 0.1 * err[1] and err[1] > 0.75 * err[2]  # pow2 at 8 bits: hardly finer than at 4
    params = {n: torch.nn.Parameter(torch.from_numpy(w).float()) for n in ("edge", "mid")}
    trainer = InqTrainer(params, {"edge": 8, "mid": 3}, portion_steps=1)
    assert set(trainer.states) == {"mid"} and trainer.export("edge").kind is WeightKind.UNIFORM
    assert trainer.total_steps(10) == len(inq.PORTIONS[3]) - 1


def test_balanced_per_channel_grids_keep_small_channels_and_their_mean():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 320)) * np.geomspace(0.01, 1, 8)[:, None] - 0.3 * np.geomspace(0.01, 1, 8)[:, None]
    per_layer = balanced.quantize_weight(w, 4, per_channel=False, offset=False).dequantize()
    symmetric = balanced.quantize_weight(w, 4, offset=False).dequantize()
    offset = balanced.quantize_weight(w, 4).dequantize()
    rel = [np.linalg.norm(q - w, axis=1) / np.linalg.norm(w, axis=1) for q in (per_layer, symmetric, offset)]
    assert rel[0][0] > 2 * rel[1][0]  # one layer-wide grid swamps the smallest channel
    np.testing.assert_allclose(symmetric.mean(axis=1), 0, atol=1e-12)  # balanced codes: the mean is lost
    assert np.all(np.abs(offset.mean(axis=1) - w.mean(axis=1)) < 0.5 * np.abs(w.mean(axis=1)))
    assert np.all(rel[2] <= rel[1] + 1e-12)
    q = balanced.quantize_weight(w, 4)
    assert np.allclose(2 * q.zero_point, np.round(2 * q.zero_point))  # the integer kernels still apply


def test_balanced_2bit_grids_keep_each_channel_mean_exactly():
    """At 2 bits the offset is the exact least-squares one (a half step is too coarse): every channel keeps its
    mean, codes stay equal-count, and the weight error is below the symmetric grid's; zero_points="half" keeps
    the old symmetric 2-bit grids that the integer kernels run."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((6, 144)) * 0.2 + np.linspace(-0.06, 0.06, 6)[:, None]
    q, half = balanced.quantize_weight(w, 2), balanced.quantize_weight(w, 2, zero_points="half")
    np.testing.assert_allclose(q.dequantize().mean(axis=1), w.mean(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(q.codes, half.codes)
    assert all(np.bincount(row, minlength=4).tolist() == [36] * 4 for row in q.codes)
    np.testing.assert_array_equal(half.zero_point, 1.5)
    assert not np.allclose(2 * q.zero_point, np.round(2 * q.zero_point))
    assert np.all(np.linalg.norm(q.dequantize() - w, axis=1) < np.linalg.norm(half.dequantize() - w, axis=1))
    with pytest.raises(ValueError, match="zero points"):
        balanced.quantize_weight(w, 2, zero_points="exact")
