"""Learning-rate schedules: ``schedule(lr, epoch) -> lr of that epoch`` (``epoch`` counts from 1).

The registry ``LR_SCHEDULES`` is what the ``lr_schedule`` config key names.
"""

from __future__ import annotations

from collections.abc import Callable


def burda_lr(lr: float, epoch: int) -> float:
    """Burda et al. (2016) sec. 5: 3^i epochs at ``lr * 10^(-i/7)`` for i = 0, 1, ..., 7
    (3,280 epochs in all; later epochs stay at i = 7). ``epoch`` counts from 1."""
    i, seen = 0, 1
    while epoch > seen and i < 7:
        i += 1
        seen += 3**i
    return lr * 10 ** (-i / 7)


LR_SCHEDULES: dict[str, Callable[[float, int], float]] = {
    "constant": lambda lr, epoch: lr,
    "burda": burda_lr,
}
