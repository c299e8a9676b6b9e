"""The wake-sleep family: wake-sleep (Hinton, Dayan, Frey & Neal 1995) and reweighted wake-sleep
(Bornschein & Bengio 2015), for continuous and discrete latents.

Neither follows the gradient of one bound: the generative parameters ``theta`` and the inference
parameters ``phi`` get the gradients of different objectives. The logged ``value`` stays a bound of
the model (the ELBO for ``wake-sleep``, the IWAE bound at the run's ``k`` for ``rws``); the
surrogate only carries the gradients.

Shapes: ``x`` ``[B, D]``; ``model.terms(x, k, mode="score")`` gives ``[k, B]`` terms at ``z_j ~ q(z | x)``
drawn without gradient (so ``log p(x | z_j) + log p(z_j)`` carries only ``theta``'s gradient and
``log q(z_j | x)`` only ``phi``'s score). The sleep phase dreams ``(z_s, x_s) ~ p(z) p(x | z)``,
``s = 1..B`` (one dream per example of the batch; ``model.sample_prior``, ``model.decode``), and
scores them with ``model.log_q_at(x_s, z_s)`` (``[1, B]``), ``log q`` at given latents over the whole
latent (all stochastic layers, in ``sample_prior``'s layout).

Parameters that both p and q use receive the gradient of every phase they take part in: the
ladder's top-down networks (``p(z_i | z_{i+1})`` and the merge in ``q``), a VampPrior's encoder
(``q`` and ``p(z)``). Variants whose ``log q`` at a given ``z`` needs an inverse (flows) have no
``"score"`` mode and no ``log_q_at``: neither objective applies to them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.objectives.basic import elbo_of, logmeanexp
from bench.objectives.registry import Estimate, NotApplicableError, register
from variants.base import flat


@torch.no_grad()
def dream(model, n: int) -> tuple[Tensor, Tensor]:
    """``n`` draws ``(z [n, L], x [n, D])`` from the model, ``z ~ p(z)``, ``x ~ p(x | z)``."""
    z = model.sample_prior(n)
    px = model.decode(z)
    base = px.base_dist if isinstance(px, torch.distributions.Independent) else px
    if isinstance(base, torch.distributions.Bernoulli):
        # torch.bernoulli refuses a NaN probability with a RuntimeError; a diverged model's NaN is the
        # loss's to report (the training loop stops the run as diverged). Same draws otherwise.
        return z, torch.bernoulli(torch.nan_to_num(base.probs, nan=0.5))
    return z, px.sample()


def sleep_term(model, n: int) -> Tensor:
    """The sleep phase's objective ``(1/n) sum_s log q(z_s | x_s)`` on ``n`` dreams: its ``phi``
    gradient is an unbiased estimate of ``-E_{p(x)}[grad_phi KL(p(z | x) || q(z | x))]``
    (``E_{p(z, x)}[grad log q(z | x)]``; ``p(z | x)`` does not depend on ``phi``)."""
    if getattr(model, "log_q_at", None) is None:
        raise NotApplicableError(f"the sleep phase needs log q(z | x) at given latents, which variant "
                                 f"{getattr(model, 'name', type(model).__name__)!r} does not give (log_q_at)")
    z, x = dream(model, n)
    return model.log_q_at(x, z.unsqueeze(0)).mean()


@register("wake-sleep", modes=("score",), latents=("continuous", "discrete"), needs=("log_q_at",))
def wake_sleep(model, x, k: int = 1, params=None) -> Estimate:
    """Wake-sleep (Hinton et al. 1995): decoder by the wake phase at z ~ q, encoder by the sleep phase on dreams.

    Wake (``theta``): ``(1/k) sum_j grad_theta log p(x, z_j)``, ``z_j ~ q(z | x)`` (held fixed):
    the ELBO's gradient in ``theta``. Sleep (``phi``): ``(1/B) sum_s grad_phi log q(z_s | x_s)`` on
    ``(z_s, x_s) ~ p(z) p(x | z)`` (:func:`sleep_term`): it minimizes ``KL(p(z | x) || q(z | x))``
    averaged over the model's own data, not the training data. Surrogate:
    ``-[mean_{j,b} (log p(x_b | z_jb) + log p(z_jb)) + sleep_term]``. Value: the ELBO estimate
    (``(1/k) sum_j log w_j``, or ``(1/k) sum_j log p(x | z_j) - KL`` where the KL is analytic: the
    categorical latents). ``params`` (free per-datapoint ``lambda``) act in the wake phase's
    ``z ~ q`` only; the sleep phase uses the encoder.
    """
    t = model.terms(x, k, params=params, mode="score")
    wake = (t.log_px_z + t.log_pz).mean(0).mean()
    sleep = sleep_term(model, flat(x).shape[0])
    return Estimate(value=elbo_of(t).detach(), surrogate=-(wake + sleep))


@register("rws", modes=("score",), latents=("continuous", "discrete"))
class ReweightedWakeSleep:
    """Reweighted wake-sleep (Bornschein & Bengio 2015): self-normalized importance weights over k samples of q.

    With ``w~_j = softmax_j(log w_j)`` (detached), ``z_j ~ q(z | x)`` (held fixed):

        theta (wake):      sum_j w~_j grad_theta log p(x, z_j)   -> grad_theta log p(x)        (k -> inf)
        phi (wake q):      sum_j w~_j grad_phi log q(z_j | x)    -> -grad_phi KL(p(z | x) || q(z | x))

    both self-normalized importance-sampling estimates of posterior expectations (biased at finite
    ``k``, consistent; the ``theta`` part is the IWAE gradient's ``theta`` part). Surrogate:
    ``-mean_b sum_j w~_jb [log p(x_b, z_jb) + log q(z_jb | x_b)]``. ``sleep = True`` adds the
    sleep phase's ``phi`` update (:func:`sleep_term`, as in wake-sleep); ``wake_q = False`` drops
    the wake-phase ``q`` update (sleep only; then ``sleep`` must be on). Value: the IWAE bound
    ``logmeanexp_j log w_j`` at the run's ``k``.
    """

    def __init__(self, sleep: bool = False, wake_q: bool = True) -> None:
        if not isinstance(sleep, bool) or not isinstance(wake_q, bool):
            raise ValueError(f"rws options sleep and wake_q must be true or false, got {sleep!r}, {wake_q!r}")
        if not (sleep or wake_q):
            raise ValueError("rws: with wake_q = false the encoder needs the sleep phase (sleep = true)")
        self.sleep, self.wake_q = sleep, wake_q

    def __call__(self, model, x, k: int = 5, params=None) -> Estimate:
        t = model.terms(x, k, params=params, mode="score")
        log_w = t.log_w
        w = torch.softmax(log_w.detach(), 0)  # [k, B]
        signal = t.log_px_z + t.log_pz + (t.log_qz if self.wake_q else 0.0)
        surrogate = -(w * signal).sum(0).mean()
        if self.sleep:
            surrogate = surrogate - sleep_term(model, flat(x).shape[0])
        return Estimate(value=logmeanexp(log_w.detach(), 0), surrogate=surrogate)
