"""The arithmetic of tuning on a budget: successive-halving rungs, Hyperband's brackets, and the
expected best validation score after n trials (pure functions; ``bench.run.search`` runs them).

**Successive halving** (Jamieson & Talwalkar 2016), with training epochs as the resource: the
trials of a bracket train to the first rung ``r_0``; the best ``max(1, floor(n / eta))`` by the
selecting metric at ``r_0`` go on to ``r_1 = eta r_0``, and so on up to the full ``epochs``. The
rungs are synchronous: every trial of the bracket reports at a rung before any is promoted, so the
decisions depend on the values alone, not on which worker was fast (Optuna's own
``SuccessiveHalvingPruner`` is the asynchronous variant, ASHA, whose decisions depend on the
order in which trials report).

**Hyperband** (Li et al. 2018, JMLR, Algorithm 1): brackets ``s = s_max, ..., 0`` with
``s_max = floor(log_eta(R / r_min))``; bracket ``s`` starts ``n_s = ceil((s_max + 1) / (s + 1) eta^s)``
trials at ``R eta^-s`` epochs. Here the cell's trial budget is shared among the brackets in
proportion to ``n_s``.

**Expected maximum** (Dodge et al. 2019, "Show Your Work", eq. 1): with the N trials' validation
scores sorted ``v_(1) <= ... <= v_(N)`` (their empirical distribution standing for the search's),
the expected best score of ``n`` trials is ``sum_i v_(i) [(i / N)^n - ((i - 1) / N)^n]``.
"""

from __future__ import annotations

import math


def rungs(epochs: int, first: int, eta: int) -> list[int]:
    """The epochs at which a bracket starting at ``first`` is cut: ``first, first eta, ...`` below
    ``epochs``, then ``epochs``. ``rungs(27, 1, 3) == [1, 3, 9, 27]``; ``rungs(10, 0, 3)``: ``first``
    defaults to ``max(1, epochs // eta**2)``."""
    first = first or max(1, epochs // eta**2)
    out, r = [], first
    while r < epochs:
        out.append(r)
        r *= eta
    return [*out, epochs]


def hyperband_brackets(trials: int, epochs: int, min_epochs: int, eta: int) -> list[tuple[int, int]]:
    """Hyperband's brackets for a budget of ``trials``: ``[(n_trials, first_rung), ...]`` from the
    most aggressive (many trials, few epochs) to plain training (``first_rung = epochs``); bracket
    sizes in proportion to Li et al.'s ``n_s``, summing to ``trials``, each at least 1 (brackets
    that get no trial are dropped)."""
    r_min = min_epochs or max(1, epochs // eta**2)
    s_max = 0
    while r_min * eta ** (s_max + 1) <= epochs:
        s_max += 1
    ns = [math.ceil((s_max + 1) / (s + 1) * eta**s) for s in range(s_max, -1, -1)]
    total = sum(ns)
    sizes = [n * trials // total for n in ns]
    for i in sorted(range(len(ns)), key=lambda i: -(ns[i] * trials / total - sizes[i]))[: trials - sum(sizes)]:
        sizes[i] += 1  # the largest remainders first
    firsts = [max(1, round(epochs / eta**s)) for s in range(s_max, -1, -1)]
    return [(n, f) for n, f in zip(sizes, firsts) if n > 0]


def promoted(values: dict[int, float], eta: int, higher: bool = True) -> list[int]:
    """The trials (keys of ``values``, their scores at a rung) that go on: the best
    ``max(1, floor(n / eta))``, ties to the earlier trial. A non-finite score ranks last."""
    def rank(t):
        v = values[t]
        return (0 if math.isfinite(v) else 1, -v if higher else v, t)

    keep = max(1, len(values) // eta)
    return sorted(sorted(values, key=rank)[:keep])


def expected_max(scores: list[float], n_max: int, higher: bool = True) -> list[tuple[float, float]]:
    """Dodge et al.'s expected best score after ``n = 1 .. n_max`` trials, with its standard
    deviation: ``[(mean, sd), ...]``, from the empirical distribution of ``scores``. For a
    lower-is-better metric the best is the minimum."""
    v = sorted(scores) if higher else sorted(scores, reverse=True)
    big_n = len(v)
    out = []
    for n in range(1, n_max + 1):
        w = [(i / big_n) ** n - ((i - 1) / big_n) ** n for i in range(1, big_n + 1)]
        mean = sum(wi * vi for wi, vi in zip(w, v))
        var = max(0.0, sum(wi * vi * vi for wi, vi in zip(w, v)) - mean * mean)
        out.append((mean, math.sqrt(var)))
    return out
