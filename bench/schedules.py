"""Training schedules: the learning rate of each optimizer step and the KL warm-up weight per step.

A learning-rate schedule is one function ``schedule(lr, epoch, step, cfg) -> the learning rate``
of optimizer step ``step`` (0-based, counted over the whole run) in epoch ``epoch`` (counted from
1), for the base rate ``lr`` and the run's config ``cfg`` (its ``lr_decay``, ``lr_decay_every``);
the registry ``LR_SCHEDULES`` is what the ``lr_schedule`` config key names. Each schedule is
``lr * m(epoch, step)``, so one schedule scales several base rates alike (a learned prior's own
optimizer, ``prior_lr``). The loop sets the rate at the start of every epoch, and before every
step only for the schedules in ``PER_STEP``. :func:`kl_weight` is the KL warm-up
(``kl_warmup_epochs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.config import RunConfig


def constant_lr(lr: float, epoch: int = 1, step: int = 0, cfg: RunConfig | None = None) -> float:
    """``lr`` throughout."""
    return lr


def burda_lr(lr: float, epoch: int, step: int = 0, cfg: RunConfig | None = None) -> float:
    """Burda et al. (2016) sec. 5: 3^i epochs at ``lr * 10^(-i/7)`` for i = 0, 1, ..., 7
    (3,280 epochs in all; later epochs stay at i = 7). ``epoch`` counts from 1."""
    i, seen = 0, 1
    while epoch > seen and i < 7:
        i += 1
        seen += 3**i
    return lr * 10 ** (-i / 7)


def exponential_lr(lr: float, epoch: int, step: int, cfg: RunConfig) -> float:
    """``lr * d ** floor(t / T)`` with ``d = cfg.lr_decay``, ``T = cfg.lr_decay_every`` and ``t =
    step`` the optimizer steps taken so far: a staircase decay by ``d`` every ``T`` steps
    whatever the epoch length (Jang et al. 2017's notebook: ``d = 0.9``, ``T = 1000``)."""
    return lr * cfg.lr_decay ** (step // cfg.lr_decay_every)


LR_SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant_lr,
    "burda": burda_lr,
    "exponential": exponential_lr,
}
PER_STEP = frozenset({"exponential"})  # schedules whose rate can change within an epoch


def kl_weight(step: int, warmup_epochs: int, steps_per_epoch: int) -> float | None:
    """The KL warm-up weight at optimizer step ``step`` (0-based): ``beta = min(1, step / (E S))``
    for ``E = warmup_epochs`` (the config's ``kl_warmup_epochs``) and ``S`` steps per epoch, a
    linear rise from 0 at the first step to 1 after ``E`` epochs, updated every step (Sønderby et
    al. 2016). ``None`` when warm-up is off (``E = 0``) or over, so objectives without a KL term
    are called as always."""
    if warmup_epochs <= 0 or step >= warmup_epochs * steps_per_epoch:
        return None
    return step / (warmup_epochs * steps_per_epoch)
