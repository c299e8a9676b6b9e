"""The signal-to-noise ratio of a gradient estimator from ``n`` draws, with the noise floor removed.

For one parameter coordinate the estimator's draws ``g_1..g_n`` have mean ``mu`` and standard
deviation ``sigma``; its SNR is ``|mu| / sigma`` (Rainforth et al. 2018). A group's SNR (the
headline ``snr``) is the MEDIAN over the group's live coordinates (nonzero in some draw) of the
per-coordinate SNR. Not the mean: the mean is carried by a few deterministic coordinates (sd at
float32 rounding of the mean, e.g. the closed-form KL's logits of near-impossible classes): a
REINFORCE encoder read 2842 with two weights carrying the whole average where the median was
0.125, and one such coordinate among 2,000 turned 0.153 into 2855. In the median it moves one rank.

Deterministic coordinates: ``s_c <= DET_ULPS * eps_float32 * |m_c|`` (``DET_ULPS = 32``; ``s_c = 0``
included), an SNR above ``1 / (32 * 2^-23) = 2.6e5``: float32 gradients summed over a batch carry
rounding noise of a few ulps of their value (different reduction orders per draw), so below ~16
ulps a truly deterministic gradient can be missed, and no stochastic estimator here comes within
orders of magnitude of 2.6e5 (which would need s/m at 64 ulps: still counted spread, harmlessly, as
a coordinate far above the median). They count as ``+inf`` in the median and are reported as
``snr_det`` (share of the live coordinates); at 1/2 or more the median is ``inf``.

The plug-in ``|m| / s`` is biased up by the noise of ``m``: with ``t = sqrt(n) m / s``,
``|m| / s = |t| / sqrt(n)``, and at true SNR 0 ``t`` follows Student's t with ``n - 1`` degrees of
freedom, so the plug-in median reads ``floor(n) = t_{0.75, n-1} / sqrt(n)`` (0.125 at n = 30,
0.039 at n = 300). The correction is an empirical-Bayes deconvolution:

1. Per coordinate ``c``, ``t_c`` has the noncentral t distribution with ``nu = n - 1`` and
   noncentrality ``delta_c = sqrt(n) mu_c / sigma_c`` (exact for Gaussian draws). Its density
   ``f(t | delta) = E_U[U phi(t U - delta)]``, ``U^2 ~ chi^2_nu / nu``, by quadrature.
2. The distribution ``G`` of ``|delta|`` over the group's spread (not deterministic) coordinates
   is fitted to the ``|t_c|`` by nonparametric maximum likelihood on a grid (EM with SQUAREM;
   Jiang & Zhang 2009, Koenker & Mizera 2014).
3. The group's SNRs are then ``S`` coordinates distributed as ``G / sqrt(n)`` and ``D`` at
   ``+inf``; ``snr`` is the average of this population's quantile function over the levels
   ``1/2 +- WINDOW`` (0.4-0.6): the NPMLE is discrete (a few atoms), and its plain median jumps
   from atom to atom with the data, while this window mean is continuous in ``G``'s weights (its
   difference from the median is ``Q''(1/2) WINDOW^2 / 6``: 0.7% for exponentially spread SNRs).

Dropped coordinates (zero in all ``n`` draws; ``snr_dropped``, share of the group) are unused
parameters or rare events that did not occur. A coordinate nonzero with chance ``p`` has
``SNR^2 <= p / (1 - p)`` (Cauchy-Schwarz: ``(E g)^2 = (E[1_{g!=0} g])^2 <= p E[g^2]``), and zero in
``n`` draws means ``p < 3 / n`` (rule of three), so its SNR lies in ``[0, B(n)]``,
``B(n) = sqrt(3 / (n - 3))`` (0.33 at n = 30, 0.10 at n = 300). The headline leaves them out; the
interval's lower end puts them at 0 and its upper end at ``B(n)`` (or out, whichever is higher),
so it covers the median over the coordinates that are live in distribution whichever they are;
with half the group dropped the lower end is 0.

Interval: a delete-a-group jackknife over the draws (``GROUPS = 10``, draw ``i`` in group
``i mod 10``; the draws are the independent units), ``end +- t_{0.975, 9} sd_jack`` for each end,
widened by the bias allowance ``BIAS_UP / sqrt(n)`` below and ``BIAS_DOWN / sqrt(n)`` above
(0.30, 0.20), clipped at 0. Measured (20 repetitions, 2,000 coordinates with exponential SNRs of
mean 0.15, median 0.107; bias of the headline times ``sqrt(n)``, coverage of the 95% interval):

    family                    n = 30            n = 300
    Gaussian                  +0.02   1.00      -0.05   1.00
    skewed (Exp(1) - 1)       +0.21   1.00      -0.08   0.90
    heavy (t_3)               +0.17   1.00      +0.02   1.00
    rare (+-Bernoulli(p_c))   +0.94*  1.00      +0.24*  1.00

(* of the live coordinates' median: 61% / 27% of the coordinates are dropped, which the interval
accounts for.) Without the allowance the skewed and heavy-tailed n = 30 cells covered 0.50 and
0.75, the rare n = 300 cell 0.10. The old deconvolved mean at n = 30 was biased +0.024..+0.043 on
skewed and heavy-tailed draws.

Alongside: the ratio of averages that the official DReG code reports (Tucker et al. 2019,
``dreg_estimators/utils.py``), ``mean_c E[g_c]^2 / mean_c Var g_c``, an SNR squared, with
``E[g_c]^2`` estimated without bias as ``m_c^2 - s_c^2 / n``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

GROUPS = 10  # jackknife groups of draws
BIAS_UP, BIAS_DOWN = 0.30, 0.20  # allowance for the measured bias (up, down) of the headline, in units of 1/sqrt(n)
EPS32 = float(torch.finfo(torch.float32).eps)  # 2^-23
DET_ULPS = 32  # a coordinate is deterministic where s_c <= DET_ULPS * EPS32 * |m_c|
WINDOW = 0.1  # the headline averages the quantile function of the SNRs over the levels 1/2 +- WINDOW
DROPPED_P = 3.0  # a coordinate zero in all n draws: its chance of a nonzero draw is below DROPPED_P / n
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)  # Student t, df = 1..9
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class GradientMoments:
    """Streaming per-coordinate sums of gradient draws, in ``groups`` groups (draw ``i`` goes to
    group ``i mod groups``), float64.

    Sums are taken relative to the first draw, so a coordinate whose draws are bit-identical has
    exactly zero spread (a deterministic gradient is recognized exactly, not as rounding noise)
    and the sums do not cancel catastrophically where the mean is large against the spread.
    ``nonzero`` marks coordinates where some draw was nonzero.
    """

    def __init__(self, numel: int, device: torch.device, groups: int = GROUPS) -> None:
        self.groups = groups
        self.counts = [0] * groups
        self.shift: Tensor | None = None
        self.s1 = torch.zeros(groups, numel, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(groups, numel, dtype=torch.float64, device=device)
        self.nonzero = torch.zeros(numel, dtype=torch.bool, device=device)

    @property
    def n(self) -> int:
        return sum(self.counts)

    def update(self, g: Tensor) -> None:
        g = g.to(torch.float64)
        if self.shift is None:
            self.shift = g.clone()
        i = self.n % self.groups
        d = g - self.shift
        self.s1[i] += d
        self.s2[i] += d * d
        self.counts[i] += 1
        self.nonzero |= g != 0

    def moments(self, sl: slice = slice(None), drop: int | None = None) -> tuple[int, Tensor, Tensor]:
        """``(n, mean [P], unbiased variance [P])`` over the coordinates ``sl``, of all draws or of
        all but group ``drop`` (a jackknife replicate)."""
        keep = [i for i in range(self.groups) if i != drop]
        n = sum(self.counts[i] for i in keep)
        s1 = self.s1[keep, sl].sum(0)
        s2 = self.s2[keep, sl].sum(0)
        var = ((s2 - s1 * s1 / n) / (n - 1)).clamp_min(0) if n > 1 else torch.zeros_like(s1)
        return n, self.shift[sl] + s1 / n, var


def noise_floor(n: int) -> float:
    """``median |T_{n-1}| / sqrt(n) = t_{0.75, n-1} / sqrt(n)``: what the plug-in median over
    coordinates of ``|m_c| / s_c`` reads, in the limit of many coordinates, for Gaussian draws whose
    true SNR is 0 (0.1247 at n = 30, 0.0390 at n = 300; ``0.6745 / sqrt(n)`` for large n)."""
    return _floor(n)


@functools.lru_cache(maxsize=64)
def _floor(n: int) -> float:
    return student_t_quantile(0.75, n - 1) / math.sqrt(n) if n >= 2 else math.inf


def mean_noise_floor(n: int) -> float:
    """``E|T_{n-1}| / sqrt(n)``: what the plug-in *mean* ``mean_c |m_c| / s_c`` reads, in
    expectation, at zero signal (the old headline's floor; ``inf`` for n = 2)."""
    nu = n - 1
    if nu < 2:
        return math.inf
    log_e = math.log(2) + 0.5 * math.log(nu) + math.lgamma((nu + 1) / 2) - 0.5 * math.log(math.pi)
    log_e -= math.log(nu - 1) + math.lgamma(nu / 2)
    return math.exp(log_e) / math.sqrt(n)


def dropped_bound(n: int) -> float:
    """``B(n) = sqrt(p / (1 - p))``, ``p = DROPPED_P / n``: the largest SNR of a coordinate whose
    chance of a nonzero draw is ``p`` (Cauchy-Schwarz, see the module docstring); ``inf`` where
    ``p >= 1``."""
    p = DROPPED_P / n
    return math.sqrt(p / (1 - p)) if p < 1 else math.inf


def _grid(top: float, device: torch.device, step: float = 0.05, knee: float = 8.0, ratio: float = 1.03) -> Tensor:
    """``0, step, ..., knee`` then geometric steps of ``ratio`` up to at least ``top``: the grid of
    ``|delta|`` and of the ``|t|`` bins (fine where the noise matters, relative beyond). Every such
    grid is a prefix of a longer one."""
    lin = torch.arange(0.0, knee, step, dtype=torch.float64, device=device)
    m = max(1, math.ceil(math.log(max(top, knee) / knee) / math.log(ratio)) + 1)
    return torch.cat([lin, knee * ratio ** torch.arange(m, dtype=torch.float64, device=device)])


def _log_pdf_u(u: Tensor, nu: int) -> Tensor:
    """``log f_U(u)`` for ``U = sqrt(X / nu)``, ``X ~ chi^2_nu`` (``-inf`` for ``u <= 0``)."""
    pos = u > 0
    u = torch.where(pos, u, torch.ones_like(u))
    h = nu / 2
    out = math.log(2) + h * math.log(h) - math.lgamma(h) + (nu - 1) * torch.log(u) - h * u * u
    return torch.where(pos, out, torch.full_like(u, -math.inf))


def _log_t_density(t: Tensor, d: Tensor, nu: int, nodes: int = 64, budget: int = 2**22) -> Tensor:
    """``log f(t | delta)`` of the noncentral t, ``[R, M]`` for ``t [R]`` (``t > 0``) and ``d [M]``.

    ``f = int f_U(u) u phi(t u - delta) du`` is integrated over whichever factor is the narrower:
    where ``t < sqrt(2 nu)`` the normal factor (width ``1 / t`` in ``u``) is wider than ``f_U``
    (width ``~1 / sqrt(2 nu)``) and a uniform grid in ``u`` over ``f_U``'s support is accurate;
    elsewhere the substitution ``s = t u - delta`` puts the normal factor on Gauss-Hermite nodes,
    and ``f_U((s + delta) / t)`` is smooth in ``s``. Relative error below 1e-3 against SciPy's
    ``nct.pdf`` for nu = 2..299 (tests/test_snr.py). Rows go ``budget`` terms at a time."""
    dev, sd_u = t.device, 1 / math.sqrt(2 * nu)
    lo, hi = max(0.0, 1 - 10 * sd_u), 1 + 12 * sd_u + (2.0 if nu < 4 else 0.0)
    u = torch.linspace(lo, hi, 2 * nodes + 1, dtype=torch.float64, device=dev)[1:]
    lu = _log_pdf_u(u, nu) + torch.log(u) + math.log((hi - lo) / (2 * nodes))  # a Riemann sum
    s, w = _hermite_e(nodes, dev)
    out = torch.empty(len(t), len(d), dtype=torch.float64, device=dev)
    rows = max(1, budget // (len(d) * 2 * nodes))
    for i in range(0, len(t), rows):
        ti = t[i : i + rows]
        narrow = ti < math.sqrt(2 * nu)
        if bool(narrow.any()):
            z = ti[narrow, None, None] * u - d[None, :, None]  # [r, M, N]
            out[i : i + rows][narrow] = torch.logsumexp(lu - 0.5 * z * z, -1) - _LOG_SQRT_2PI
        if not bool(narrow.all()):
            tw = ti[~narrow, None, None]
            u2 = (s + d[None, :, None]) / tw  # [r, M, Q]
            b = torch.logsumexp(torch.log(w) + _log_pdf_u(u2, nu) + torch.log(u2.clamp_min(1e-300)), -1)
            out[i : i + rows][~narrow] = b - torch.log(tw[..., 0])
    return out


_HERMITE: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def _hermite_e(q: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the probabilists' Gauss-Hermite rule (weights sum to 1), by the
    Golub-Welsch eigenvalue method."""
    key = (q, str(device))
    if key not in _HERMITE:
        off = torch.sqrt(torch.arange(1, q, dtype=torch.float64))
        nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
        _HERMITE[key] = (nodes.to(device), (vecs[0] ** 2).to(device))
    return _HERMITE[key]


def folded_t_log_density(a: Tensor, d: Tensor, nu: int) -> Tensor:
    """``log f(|t| = a | |delta| = d)``, ``[R, M]`` for ``a [R]`` and ``d [M]``: the density of
    ``|t|`` for noncentrality ``+d`` or ``-d``, ``f(a | d) + f(a | -d)``."""
    a = a.clamp_min(1e-12)
    return torch.logaddexp(_log_t_density(a, d, nu), _log_t_density(a, -d, nu))


GRID_TOP = 1e8  # |t| above this is counted as this (an SNR above 1e8 / sqrt(n): deterministic in all but name)
_TABLES: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def _log_likelihood_rows(nu: int, rows: Tensor, device: torch.device) -> Tensor:
    """``folded_t_log_density`` of the bin centres ``rows`` of the full grid (up to
    :data:`GRID_TOP`) at every grid point, ``[R, M]``. Rows are computed on first use and kept,
    per ``nu``: the jackknife replicates and the later calls of a run share them."""
    key = (nu, str(device))
    if key not in _TABLES:
        if len(_TABLES) >= 8:
            _TABLES.pop(next(iter(_TABLES)))
        m = len(_grid(GRID_TOP, device))
        _TABLES[key] = (torch.full((m, m), math.nan, dtype=torch.float64, device=device),
                        torch.zeros(m, dtype=torch.bool, device=device))
    table, done = _TABLES[key]
    todo = rows[~done[rows]]
    if len(todo):
        grid = _grid(GRID_TOP, device)
        centres = torch.cat([grid[:1], (grid[1:] + grid[:-1]) / 2])
        table[todo] = folded_t_log_density(centres[todo], grid, nu)
        done[todo] = True
    return table[rows]


def _npmle(lik: Tensor, frac: Tensor, w: Tensor, iters: int, tol: float = 1e-8) -> Tensor:
    """Mixing weights ``w [G, M]`` maximizing, for each of ``G`` problems at once, the binned
    likelihood of the distribution of ``|delta|``, ``sum_r frac_gr log sum_j lik_grj w_gj``
    (``lik [G, R, M]`` scaled per row, padded rows with ``frac = 0``): EM,
    ``w <- w * lik^T (frac / lik w)``, accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3,
    the plain EM step kept wherever the extrapolation lowers the likelihood). Plain EM converges
    slowly toward a point mass (an SNR of 0: 1,500 EM steps still moved the estimate by
    0.01 / sqrt(n)); ``iters`` SQUAREM steps cost 3 EM steps each."""

    def mix(v: Tensor) -> Tensor:  # [G, R]; one matrix-vector product per problem (faster than bmm)
        return torch.stack([li @ vi for li, vi in zip(lik, v)]).clamp_min(1e-300)

    def em(v: Tensor) -> Tensor:
        ratio = frac / mix(v)
        return v * torch.stack([ri @ li for li, ri in zip(lik, ratio)])

    def loglik(v: Tensor) -> Tensor:
        return (frac * torch.log(mix(v))).sum(-1)

    best = loglik(w)
    for _ in range(iters):
        w1 = em(w)
        w2 = em(w1)
        r, v = w1 - w, w2 - 2 * w1 + w
        alpha = (r.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)).clamp_min(1.0)
        w3 = (w + 2 * alpha * r + alpha * alpha * v).clamp_min(0)
        w3 = em(w3 / w3.sum(-1, keepdim=True))
        l2, l3 = loglik(w2), loglik(w3)
        keep = l3 >= l2  # NaN compares False: the EM step then
        w = torch.where(keep[:, None], w3, w2)
        cand = torch.where(keep, l3, l2)
        if bool((cand - best < tol).all()):
            break
        best = cand
    return w


def _binned(t_abs: Tensor, n: int, top: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(lik [R, M]`` scaled per row, ``frac [R]``, ``grid [M])``: the ``|t|`` values binned on the
    grid of ``|delta|`` up to ``top`` (bin ``j`` is ``(grid[j-1], grid[j]]``, represented by its
    centre: 0.025 wide up to 8, 1.5% relative beyond; at most :data:`GRID_TOP`), the bins' shares
    ``frac`` and the noncentral-t likelihood of each occupied bin at every grid point."""
    grid = _grid(min(top, GRID_TOP), t_abs.device)
    idx = torch.bucketize(t_abs, grid).clamp_max(len(grid) - 1)
    cnt = torch.bincount(idx, minlength=len(grid)).to(torch.float64)
    rows = torch.nonzero(cnt).squeeze(1)
    log_lik = _log_likelihood_rows(n - 1, rows, t_abs.device)[:, : len(grid)]
    return torch.exp(log_lik - log_lik.max(1, keepdim=True).values), cnt[rows] / cnt.sum(), grid


def _deconvolve_many(ts: list[Tensor], ns: list[int], top: float, w0: Tensor | None, iters: int
                     ) -> tuple[list[float], Tensor, Tensor]:
    """:func:`deconvolve` for several ``(|t|, n)`` sets on one grid, solved as one batch: the
    posterior-mean averages, ``G``'s weights ``[len(ts), M]`` and the grid of ``|delta|`` ``[M]``."""
    parts = [_binned(t, n, top) for t, n in zip(ts, ns)]
    grid = parts[0][2]
    r_max = max(lik.shape[0] for lik, _, _ in parts)
    lik = torch.ones(len(parts), r_max, len(grid), dtype=torch.float64, device=grid.device)
    frac = torch.zeros(len(parts), r_max, dtype=torch.float64, device=grid.device)
    for i, (li, fi, _) in enumerate(parts):
        lik[i, : len(fi)], frac[i, : len(fi)] = li, fi
    w = torch.full_like(grid, 1 / len(grid)) if w0 is None else w0 / w0.sum()
    w = _npmle(lik, frac, w.expand(len(parts), -1).clone(), iters)
    post = lik * w[:, None, :]
    post = post / post.sum(-1, keepdim=True).clamp_min(1e-300)
    means = (frac * (post @ grid)).sum(-1)  # [G]
    return [float(m) / math.sqrt(n) for m, n in zip(means, ns)], w, grid


def deconvolve(t_abs: Tensor, n: int, *, top: float | None = None, w0: Tensor | None = None,
               iters: int = 150) -> tuple[float, Tensor]:
    """The group's average SNR from ``|t_c|`` (``[P]``, finite) and ``n`` draws, with the noise
    removed as the module docstring says: ``(mean_c E[|delta_c| | t_c] / sqrt(n), G's weights)``.
    ``top`` fixes the grid's end (jackknife replicates share the full data's grid; default 1.5 x
    the largest ``|t|``), ``w0`` starts EM from given weights on it."""
    top = float(t_abs.max()) * 1.5 + 2 if top is None else top
    (est,), w, _ = _deconvolve_many([t_abs], [n], top, w0, iters)
    return est, w[0]


def student_t_quantile(p: float, nu: int) -> float:
    """The ``p`` quantile (``1/2 <= p < 1``) of Student's t with ``nu`` degrees of freedom: Newton's
    method on the CDF, ``1/2 + int_0^x f``, by Simpson's rule on 2,048 intervals (error < 1e-9
    for ``x`` below 10)."""
    c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)

    def pdf(x: Tensor | float):
        x = torch.as_tensor(x, dtype=torch.float64)
        return torch.exp(c - (nu + 1) / 2 * torch.log1p(x * x / nu))

    def cdf(x: float) -> float:
        u = torch.linspace(0, x, 2049, dtype=torch.float64)
        wts = torch.ones(2049, dtype=torch.float64)
        wts[1:-1:2], wts[2:-1:2] = 4, 2
        return 0.5 + float((wts * pdf(u)).sum()) * x / (3 * 2048)

    x = 0.0
    for _ in range(50):
        step = (cdf(x) - p) / float(pdf(x))
        x -= step
        if abs(step) < 1e-12:
            break
    return x


def _jackknife_sd(reps: list[float]) -> float:
    """The delete-a-group jackknife s.d. of replicates (``inf`` if fewer than 2 or any infinite)."""
    g = len(reps)
    if g < 2 or not all(math.isfinite(r) for r in reps):
        return math.inf
    mean = sum(reps) / g
    return math.sqrt((g - 1) / g * sum((r - mean) ** 2 for r in reps))


def window_mean(values: Tensor, masses: Tensor, centre: float, half: float = WINDOW) -> float:
    """``(1 / 2h) int_{centre-h}^{centre+h} Q(u) du``: the average of the quantile function ``Q`` of
    the discrete distribution ``masses`` (summing to 1) on the sorted ``values`` over the window of
    levels ``centre +- half`` (clipped to ``[0, 1]``): each atom counts by the overlap of its
    interval of levels with the window; ``inf`` if an atom at ``inf`` overlaps it."""
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    upper = torch.cumsum(masses, 0)
    overlap = (torch.minimum(upper, torch.tensor(hi, dtype=upper.dtype, device=upper.device))
               - torch.maximum(upper - masses, torch.tensor(lo, dtype=upper.dtype, device=upper.device))).clamp_min(0)
    hit = overlap > 1e-12
    if bool(torch.isinf(values[hit]).any()):
        return math.inf
    return float((values[hit] * overlap[hit]).sum() / overlap[hit].sum())


def _median(w: Tensor, grid: Tensor, n: int, spread: int, det: int, dropped: int, at: float) -> float:
    """The headline for one fit: :func:`window_mean` at level 1/2 of the group's SNRs, made of
    ``spread`` coordinates distributed as ``G / sqrt(n)`` (weights ``w`` on ``grid``), ``det`` at
    ``inf`` and ``dropped`` at the SNR ``at`` (0 or :func:`dropped_bound`)."""
    total = spread + det + dropped
    inf = torch.tensor([math.inf], dtype=grid.dtype, device=grid.device)
    values = torch.cat([grid / math.sqrt(n), inf])
    masses = torch.cat([w / w.sum() * spread, torch.tensor([float(det)], dtype=w.dtype, device=w.device)])
    if dropped:
        values = torch.cat([values, torch.tensor([at], dtype=grid.dtype, device=grid.device)])
        masses = torch.cat([masses, torch.tensor([float(dropped)], dtype=w.dtype, device=w.device)])
    order = torch.argsort(values, stable=True)
    return window_mean(values[order], masses[order] / total, 0.5)


def summarize(mom: GradientMoments, sl: slice = slice(None)) -> dict[str, float]:
    """The pure core of ``bench.metrics.gradient_stats`` for one parameter group (coordinates
    ``sl``): ``{var, snr, snr_lo, snr_hi, snr_floor, snr_ratio, snr_det, snr_dropped}``, as the
    module docstring says.

    * ``var``: the mean over the live coordinates (nonzero in some draw) of the unbiased variance.
    * ``snr``: the median over the live coordinates of ``|E g_c| / sd(g_c)``: deterministic
      coordinates (``s_c <= DET_ULPS * eps_float32 * |m_c|``) at ``+inf``, the others' SNRs
      distributed as the deconvolved ``G / sqrt(n)``; ``inf`` if half the live coordinates or more
      are deterministic.
    * ``snr_lo``, ``snr_hi``: its 95% interval, for the median over the group's coordinates that
      are live in distribution (the dropped ones placed at 0 and at :func:`dropped_bound` for the
      two ends), jackknife over groups of draws, widened by the measured bias allowance.
    * ``snr_floor``: :func:`noise_floor` of ``n``, the plug-in median's reading at zero signal.
    * ``snr_ratio``: ``mean_c (m_c^2 - s_c^2 / n) / mean_c s_c^2`` over the live coordinates (may
      be negative where the signal is below the noise; ``inf`` if every one is deterministic).
    * ``snr_det``: the share of the live coordinates that are deterministic.
    * ``snr_dropped``: the share of the group's coordinates identically zero in every draw.
    * A group with no live coordinate reports 0 for all but the floor ("no signal"), never NaN.
    """
    n, mean, var = mom.moments(sl)
    live = mom.nonzero[sl]
    size, n_live = live.numel(), int(live.sum())
    out = {"var": 0.0, "snr": 0.0, "snr_lo": 0.0, "snr_hi": 0.0, "snr_floor": noise_floor(n), "snr_ratio": 0.0,
           "snr_det": 0.0, "snr_dropped": (size - n_live) / size if size else 0.0}
    if not n_live:
        return out
    m, v = mean[live], var[live]
    out["var"] = mean_var = float(v.mean())
    out["snr_ratio"] = float((m * m - v / n).mean()) / mean_var if mean_var > 0 else math.inf
    det = v <= (DET_ULPS * EPS32 * m) ** 2  # includes s = 0 (m != 0 there: the coordinate is live)
    n_det, n_spread, n_drop = int(det.sum()), n_live - int(det.sum()), size - n_live
    out["snr_det"] = n_det / n_live
    at = dropped_bound(n)
    if not n_spread:
        lo = window_mean(torch.tensor([0.0, math.inf], dtype=torch.float64),
                         torch.tensor([n_drop, n_det], dtype=torch.float64) / size, 0.5)
        out.update(snr=math.inf, snr_lo=lo, snr_hi=math.inf)
        return out
    spread = ~det
    t = math.sqrt(n) * m[spread].abs() / v[spread].sqrt()
    top = 2 * float(t.max()) + 2  # room for the replicates' |t| on the same grid
    _, w, grid = _deconvolve_many([t], [n], top, None, 150)

    def three(wg: Tensor, n_g: int) -> tuple[float, float, float]:
        """(point, lower end, upper end) of the headline for the weights ``wg`` from ``n_g`` draws."""
        point = _median(wg, grid, n_g, n_spread, n_det, 0, 0.0)
        if not n_drop:
            return point, point, point
        return (point, _median(wg, grid, n_g, n_spread, n_det, n_drop, 0.0),
                max(point, _median(wg, grid, n_g, n_spread, n_det, n_drop, at)))

    est, lo, hi = three(w[0], n)
    ts, ns = [], []
    for g in range(mom.groups):
        n_g, m_g, v_g = mom.moments(sl, drop=g)
        if mom.counts[g] == 0 or n_g < 3:
            continue
        m_g, v_g = m_g[live][spread], v_g[live][spread]
        ts.append(math.sqrt(n_g) * m_g.abs() / v_g.sqrt().clamp_min(1e-300))  # s = 0 in a replicate: |t| huge
        ns.append(n_g)
    reps = [three(wr, n_g) for wr, n_g in zip(_deconvolve_many(ts, ns, top, w[0], 30)[1], ns)] if ts else []
    q = _T975[len(reps) - 2] if len(reps) > 1 else math.inf
    sd_lo, sd_hi = _jackknife_sd([r[1] for r in reps]), _jackknife_sd([r[2] for r in reps])
    out["snr"] = est
    out["snr_lo"] = max(0.0, lo - q * sd_lo - BIAS_UP / math.sqrt(n)) if lo > 0 else 0.0
    out["snr_hi"] = hi + q * sd_hi + BIAS_DOWN / math.sqrt(n)
    return out
