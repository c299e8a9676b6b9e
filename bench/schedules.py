"""Training schedules: the learning rate per epoch and the KL warm-up weight per step.

``schedule(lr, epoch) -> lr of that epoch`` (``epoch`` counts from 1); the registry
``LR_SCHEDULES`` is what the ``lr_schedule`` config key names. :func:`kl_weight` is the KL
warm-up (``kl_warmup_epochs``).
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


def kl_weight(step: int, warmup_epochs: int, steps_per_epoch: int) -> float | None:
    """The KL warm-up weight at optimizer step ``step`` (0-based): ``beta = min(1, step / (E S))``
    for ``E = warmup_epochs`` (the config's ``kl_warmup_epochs``) and ``S`` steps per epoch, a
    linear rise from 0 at the first step to 1 after ``E`` epochs, updated every step (Sønderby et
    al. 2016). ``None`` when warm-up is off (``E = 0``) or over, so objectives without a KL term
    are called as always."""
    if warmup_epochs <= 0 or step >= warmup_epochs * steps_per_epoch:
        return None
    return step / (warmup_epochs * steps_per_epoch)
