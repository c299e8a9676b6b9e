"""The gradient SNR on synthetic draws with a known SNR (``bench.snr``), fixed seeds.

Each synthetic "gradient" has ``P`` coordinates drawn i.i.d. ``N(snr_c * sigma, sigma^2)`` per
draw, so the true group SNR is ``mean_c snr_c`` exactly. Tolerances are stated beside each test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from bench import metrics, snr
from tests.test_estimators import rainforth_toy


def summaries(true: torch.Tensor, n: int, reps: int, seed: int, sigma: float = 3.0) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(reps):
        mom = snr.GradientMoments(len(true), torch.device("cpu"))
        for x in sigma * (true + torch.randn(n, len(true), generator=g, dtype=torch.float64)):
            mom.update(x)
        out.append(snr.summarize(mom))
    return out


def plug_in(true: torch.Tensor, n: int, seed: int) -> float:
    """The old estimator, mean_c |m_c| / s_c."""
    x = true + torch.randn(n, len(true), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return float((x.mean(0).abs() / x.std(0)).mean())


def test_noise_floor_is_what_the_plug_in_reads_at_zero_signal():
    """E|T_{n-1}| / sqrt(n) against a Monte Carlo mean of |m| / s over 400k coordinates (s.e.
    ~1e-4 at n = 30); sqrt(2 / (pi n)) is its large-n limit."""
    for n in (5, 30):
        mc = plug_in(torch.zeros(400_000, dtype=torch.float64), n, seed=n)
        assert mc == pytest.approx(snr.noise_floor(n), abs=1e-3), n
    assert snr.noise_floor(30) == pytest.approx(0.1496, abs=1e-4)
    assert snr.noise_floor(10**6) == pytest.approx(math.sqrt(2 / (math.pi * 10**6)), rel=1e-5)
    assert snr.noise_floor(2) == math.inf


def test_noncentral_t_density_matches_scipy():
    """The quadrature behind the deconvolution: relative error < 2e-3 wherever the density is above
    1e-6 of its row's maximum, for nu = 2..299 and t, delta from 0 to ~80."""
    stats = pytest.importorskip("scipy.stats")
    t = torch.cat([torch.linspace(0.01, 8, 60), 8 * 1.03 ** torch.arange(1, 80)]).double()
    d = torch.cat([torch.linspace(0, 8, 40), 8 * 1.03 ** torch.arange(1, 80, 3)]).double()
    for nu in (2, 9, 29, 299):
        mine = snr._log_t_density(t, d, nu).exp().numpy()
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SciPy's own quadrature warns where it gives up (NaN)
            ref = stats.nct.pdf(t.numpy()[:, None], nu, d.numpy()[None, :])
        ok = np.isfinite(ref) & (ref > 1e-6 * np.nanmax(ref, 1, keepdims=True))
        assert (np.abs(mine - ref)[ok] / ref[ok]).max() < 2e-3, nu


SPREAD = torch.empty(2000, dtype=torch.float64).exponential_(10.0, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "name, true",
    [
        ("zero", torch.zeros(2000, dtype=torch.float64)),
        ("0.1", torch.full((2000,), 0.1, dtype=torch.float64)),
        ("0.5", torch.full((2000,), 0.5, dtype=torch.float64)),
        ("spread", SPREAD),
    ],
)
def test_corrected_snr_has_the_right_expectation(name, true):
    """n = 30 draws, 2,000 coordinates, 6 repetitions. The corrected estimate's mean is within the
    documented bias range [-0.15, +0.15] / sqrt(n) of the truth (+ 3 s.e.); measured: +0.017 at 0,
    -0.024 at 0.1, -0.003 at 0.5, +0.001 for the exponential spread (mean 0.096). Power: the
    plug-in reads 0.147 at 0 (the floor 0.150; 9x the corrected estimate), 0.171 at 0.1 and 0.184
    for the spread, above the same range."""
    n = 30
    est = [s["snr"] for s in summaries(true, n, reps=6, seed=21)]
    mean, se = float(np.mean(est)), float(np.std(est)) / math.sqrt(len(est))
    truth = float(true.mean())
    lo, hi = truth - snr.BIAS_DOWN / math.sqrt(n) - 3 * se, truth + snr.BIAS_UP / math.sqrt(n) + 3 * se
    assert lo < mean < hi, (mean, truth)
    old = plug_in(true, n, seed=22)
    if name in ("zero", "0.1", "spread"):
        assert old > hi, (old, hi)
    if name == "zero":
        assert old == pytest.approx(snr.noise_floor(n), abs=0.01) and mean < old / 4


def test_corrected_snr_is_unbiased_where_the_signal_is_clear():
    """Away from 0 (true SNR 0.5 at n = 300, delta = 8.7) the deconvolution leaves no bias:
    |mean - truth| < 3 s.e. + 1e-3 over 5 repetitions (measured -0.0001)."""
    true = torch.full((2000,), 0.5, dtype=torch.float64)
    est = [s["snr"] for s in summaries(true, 300, reps=5, seed=23)]
    assert abs(np.mean(est) - 0.5) < 3 * np.std(est) / math.sqrt(5) + 1e-3


@pytest.mark.parametrize("value", [0.0, 0.3])
def test_interval_covers_the_truth(value):
    """20 repetitions at n = 30 with 1,000 coordinates: the 95% interval covers the true SNR at
    least 18 times (expected >= 19; measured 20 of 20 at both values: the bias allowance makes it
    conservative). Power: the jackknife interval without the allowance covers 0 in none of the 20
    (the deconvolution's bias there is several of its s.d.)."""
    true = torch.full((1000,), value, dtype=torch.float64)
    out = summaries(true, 30, reps=20, seed=24)
    covered = sum(s["snr_lo"] <= value <= s["snr_hi"] for s in out)
    assert covered >= 18, covered
    if value == 0.0:
        up, down = snr.BIAS_UP / math.sqrt(30), snr.BIAS_DOWN / math.sqrt(30)
        bare = sum(max(0.0, s["snr_lo"] + up) <= value <= s["snr_hi"] - down for s in out)
        assert bare < 10, bare


def test_interval_tells_a_small_snr_from_zero():
    """Power: at n = 300 the intervals for a true SNR of 0 and of 0.05 (one third of the n = 30
    floor) do not overlap (measured: [0, 0.017] and [0.037, ...], estimates 0.008 and 0.051)."""
    zero = summaries(torch.zeros(2000, dtype=torch.float64), 300, reps=1, seed=25)[0]
    small = summaries(torch.full((2000,), 0.05, dtype=torch.float64), 300, reps=1, seed=26)[0]
    assert zero["snr_hi"] < small["snr_lo"], (zero, small)


def test_ratio_of_averages_is_unbiased():
    """mean_c (m_c^2 - s_c^2 / n) / mean_c s_c^2 is unbiased (in its numerator) for
    mean_c snr_c^2 = 0.25: 5 repetitions of 2,000 coordinates, n = 30, within 3 s.e. + 0.01
    (measured 0.245; -0.0003 at 0)."""
    out = summaries(torch.full((2000,), 0.5, dtype=torch.float64), 30, reps=5, seed=27)
    ratios = [s["snr_ratio"] for s in out]
    assert abs(np.mean(ratios) - 0.25) < 3 * np.std(ratios) / math.sqrt(5) + 0.01
    zero = summaries(torch.zeros(2000, dtype=torch.float64), 30, reps=1, seed=28)[0]
    assert abs(zero["snr_ratio"]) < 0.005  # the plug-in ratio would read 1/n = 0.033


@pytest.mark.slow
def test_iwae_snr_fall_with_k_is_resolved():
    """Rainforth et al. (2018) on their toy (tests/test_estimators.py, 35 encoder coordinates): with
    1,000 draws the IWAE encoder-SNR intervals for k = 1 and k = 64 do not overlap, and neither do
    DReG's, the other way round (measured for k = 1, 4, 16, 64: iwae 0.123 [0.108, 0.138], 0.047
    [0.013, 0.080], 0.025 [0.001, 0.049], 0.002 [0, 0.029]; dreg 0.449 [0.416, 0.483] up to 3.295
    [3.260, 3.330]). With 300 draws k = 1 and 64 can still overlap on this small group."""
    model, x = rainforth_toy()
    torch.manual_seed(1)
    iwae = [metrics.gradient_stats(model, x, "iwae", n=1000, k=k) for k in (1, 64)]
    dreg = [metrics.gradient_stats(model, x, "dreg", n=1000, k=k) for k in (1, 64)]
    assert iwae[1]["encoder_snr_hi"] < iwae[0]["encoder_snr_lo"], iwae
    assert dreg[0]["encoder_snr_hi"] < dreg[1]["encoder_snr_lo"], dreg
