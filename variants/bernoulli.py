"""Binary latents: the Bernoulli VAE the discrete-estimator papers benchmark (learned prior).

The model of NVIL, MuProp, REBAR, RELAX, ARM and DisARM (Mnih & Gregor 2014; Tucker et al. 2017;
Grathwohl et al. 2018; Yin & Zhou 2019; Dong et al. 2020): one layer of ``n = latent_dim``
stochastic binary units.

    p(b) = prod_i Bernoulli(b_i; sigmoid(a_i)),      a = prior_logits, learned (zeros at start),
    q(b | x) = prod_i Bernoulli(b_i; sigmoid(l_i(x))),  lambda(x) = logits l(x)   ([B, n]),
    p(x | b) = Bernoulli / Gaussian decoder of b.

Networks: ``hidden = []`` is the "linear" model of the benchmarks (encoder ``D -> n`` and decoder
``n -> D``, one affine map each; DisARM's 784-200-784); ``hidden = [200, 200]`` with
``activation = "leaky_relu"`` the "nonlinear" one (784-200-200-200 and back, LeakyReLU(0.3), as in
google-research ``disarm/binary``). The decoder mirrors the encoder's widths.

Sampling (``terms(..., mode=...)``), all from one logistic perturbation ``L = logit(u)``,
``u ~ U(0, 1)^[k, B, n]``, of the logits:

* hard sample     ``b = 1[l + L > 0]``: an exact draw of q;
* relaxed sample  ``y = sigmoid((l + L) / tau)`` (the binary Concrete / relaxed Bernoulli,
                  Maddison et al. 2017; Jang et al. 2017), tending to ``b`` as ``tau -> 0``;
* ``"score"``             ``z = b`` (``eval_mode``: exact samples; the discrete model's log-weights);
* ``"relaxed"``           ``z = y`` in the decoder;
* ``"straight-through"``  ``z = b + y - stop_grad(y)``: the value of ``b``, the gradient of ``y``.

In every mode ``log_qz`` and ``log_pz`` are the Bernoulli log-probabilities of ``b`` and ``kl`` the
closed form ``sum_i KL(Bern(sigmoid(l_i)) || Bern(sigmoid(a_i)))`` (``[B]``), so the categorical
objectives (``gumbel-softmax``, ``st-gumbel``, ``reinforce``, ``vimco``, ``concrete``, ``rloo``,
``nvil``) apply unchanged (``variants.gumbel_softmax.CategoricalTerms``: ``log_px_z_hard`` is
``log p(x | b)``). ``"relaxed"`` adds the densities of the logistic pre-sigmoid sample
``s = (l + L) / tau`` (the binary Concrete's KL is the same in either space):

    log q_tau(s | x) = sum_i [log tau + l_i - tau s_i - 2 softplus(l_i - tau s_i)],
    log p_lambda(s)  = the same with a_i and lambda = prior_tau (0: tau).

:meth:`binary_terms` evaluates the terms at *given* codes (binary or relaxed in [0, 1]): what the
binary estimators (``arm``, ``disarm``, ``rebar``, ``relax``; ``bench.objectives.binary``) need.
Temperature: as the Gumbel-softmax variant (``tau0``, ``tau_min``, ``anneal_rate``, ``anneal_every``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent
from torch.nn import functional as F

from variants.base import VAE, Decoder, flat
from variants.densities import detached_call
from variants.gumbel_softmax import AnnealedTemperature, CategoricalTerms
from variants.nets import mlp
from variants.registry import register


def bernoulli_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """``sum_i [b_i l_i - softplus(l_i)]`` (``b`` binary, or relaxed in [0, 1]): ``[...]``."""
    return (b * logits - F.softplus(logits)).sum(-1)


def logistic_log_prob(s: Tensor, logits: Tensor, tau: float | Tensor) -> Tensor:
    """``sum_i log`` of the density of ``s_i = (l_i + L_i) / tau``, ``L`` standard logistic."""
    tau = torch.as_tensor(tau, dtype=s.dtype, device=s.device)
    a = logits - tau * s
    return (tau.log() + a - 2 * F.softplus(a)).sum(-1)


@register("bernoulli")
class BernoulliVAE(AnnealedTemperature, VAE):
    latent = "discrete"
    modes = frozenset({"score", "relaxed", "straight-through"})
    eval_mode = "score"
    default_objective = "disarm"
    default_k = 1
    local_objective = "disarm"  # free logits: the lowest-variance unbiased estimator here
    prior_parameter_names = ("prior_logits",)

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 200,
        hidden: Sequence[int] = (),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        tau0: float = 1.0,
        tau_min: float = 0.5,
        anneal_rate: float = 3e-5,
        anneal_every: int = 1000,
        prior_tau: float = 0.0,
    ) -> None:
        super().__init__(x_shape, likelihood)
        if latent_dim < 1 or prior_tau < 0:
            raise ValueError(f"bernoulli needs latent_dim >= 1 and prior_tau >= 0, got {latent_dim}, {prior_tau}")
        self.latent_dim = int(latent_dim)
        self.prior_tau = float(prior_tau)
        self.init_temperature(tau0, tau_min, anneal_rate, anneal_every)
        self.encoder = mlp(self.x_dim, hidden, self.latent_dim, activation)
        self.decoder = Decoder.mirrored(self.latent_dim, hidden, self.x_dim, likelihood, activation)
        self.prior_logits = nn.Parameter(torch.zeros(self.latent_dim))

    # -- distributions -----------------------------------------------------------------------
    def variational_params(self, x: Tensor) -> Tensor:
        return self.encoder(flat(x))

    def prior(self) -> Distribution:
        return Independent(Bernoulli(logits=self.prior_logits), 1)

    def encode(self, x: Tensor) -> Distribution:
        """``q(b | x)`` over codes ``[B, n]`` (``sample``, ``log_prob``, ``mean``; no ``rsample``:
        its relaxation is ``terms(mode="relaxed")``)."""
        return Independent(Bernoulli(logits=self.variational_params(x)), 1)

    def decode(self, z: Tensor) -> Distribution:
        return self.decoder(z)

    def kl(self, lam: Tensor) -> Tensor:
        """``KL(q(b | x) || p(b))`` in closed form, ``[B]``."""
        q = torch.sigmoid(lam)
        log_q1, log_q0 = F.logsigmoid(lam), F.logsigmoid(-lam)
        log_p1, log_p0 = F.logsigmoid(self.prior_logits), F.logsigmoid(-self.prior_logits)
        return (q * (log_q1 - log_p1) + (1 - q) * (log_q0 - log_p0)).sum(-1)

    # -- the contract ------------------------------------------------------------------------
    def sample_prior(self, n: int) -> Tensor:
        """``n`` codes ``b ~ p(b)``, ``[n, latent_dim]`` (the sleep phase of ``bench.objectives.wake_sleep``)."""
        return torch.bernoulli(torch.sigmoid(self.prior_logits.detach()).expand(n, -1))

    def log_q_at(self, x: Tensor, z: Tensor) -> Tensor:
        """``log q(b | x)`` at given codes ``z [..., B, n]``: ``[..., B]``."""
        return bernoulli_log_prob(z, self.variational_params(flat(x)))

    def binary_terms(
        self, x: Tensor, b: Tensor, *, params: Tensor | None = None, detach_generative: bool = False
    ) -> CategoricalTerms:
        """The log-weight terms at given codes ``b`` (``[m, B, n]``, binary or relaxed): ``[m, B]``.

        ``log q(b | x)`` under ``params`` (the encoder's logits if None); ``detach_generative``
        evaluates ``log p(x | b)`` and ``log p(b)`` with the decoder's and prior's parameters
        detached (gradients flow only via ``b`` and ``params``: REBAR's control variate)."""
        x = flat(x)
        lam = self.variational_params(x) if params is None else params
        if detach_generative:
            log_px_z = detached_call(self.decoder, b).log_prob(x)
            prior_logits = self.prior_logits.detach()
        else:
            log_px_z = self.decoder.log_prob(b, x)
            prior_logits = self.prior_logits
        return CategoricalTerms(
            log_px_z=log_px_z,
            log_pz=bernoulli_log_prob(b, prior_logits),
            log_qz=bernoulli_log_prob(b, lam),
            log_px_z_hard=log_px_z.detach(),
        )

    def terms(self, x, k=1, *, params=None, mode="score") -> CategoricalTerms:
        self.check_mode(mode)
        x = flat(x)
        lam = self.variational_params(x) if params is None else params  # [B, n]
        u = torch.rand((k, *lam.shape), device=lam.device, dtype=lam.dtype).clamp_(1e-6, 1 - 1e-6)
        pre = lam + torch.logit(u)  # [k, B, n], logistic perturbation
        hard = (pre > 0).to(lam.dtype).detach()
        relaxed = torch.sigmoid(pre / self.tau)
        z = {"score": hard, "relaxed": relaxed, "straight-through": hard + relaxed - relaxed.detach()}[mode]
        log_px_z = self.decoder.log_prob(z, x)
        t = CategoricalTerms(
            log_px_z=log_px_z,
            log_pz=bernoulli_log_prob(hard, self.prior_logits),
            log_qz=bernoulli_log_prob(hard, lam),
            kl=self.kl(lam),
            log_px_z_hard=log_px_z.detach(),
        )
        if mode == "relaxed":
            with torch.no_grad():
                t.log_px_z_hard = self.decoder.log_prob(hard, x)
            s = pre / self.tau
            t.log_qz_relaxed = logistic_log_prob(s, lam, self.tau)
            t.log_pz_relaxed = logistic_log_prob(s, self.prior_logits, self.prior_tau or self.tau)
        return t

