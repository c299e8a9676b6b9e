"""The training loop's pieces with known answers."""

from __future__ import annotations

import pytest

from bench.schedules import LR_SCHEDULES, burda_lr


@pytest.mark.parametrize(
    "epoch, i",
    [(1, 0), (2, 1), (4, 1), (5, 2), (13, 2), (14, 3), (40, 3), (41, 4), (121, 4), (122, 5), (364, 5),
     (365, 6), (1093, 6), (1094, 7), (3280, 7), (5000, 7)],
)
def test_burda_schedule(epoch, i):
    """3^i epochs at 1e-3 * 10^(-i/7): stage i ends at epoch sum_{j<=i} 3^j = (3^(i+1) - 1) / 2."""
    assert burda_lr(1e-3, epoch) == pytest.approx(1e-3 * 10 ** (-i / 7))


def test_constant_schedule():
    assert all(LR_SCHEDULES["constant"](3e-3, e) == 3e-3 for e in (1, 10, 1000))
