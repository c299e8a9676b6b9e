"""Learned priors over the (top) Gaussian latent: a mixture of Gaussians and the VampPrior.

The run-config key ``prior`` picks ``p(z)`` for every Gaussian-latent variant (for two-layer
variants the top layer's ``p(z_L)``; ``p(z_i | z_{i+1})`` stays as it was):

``"standard"``  ``p(z) = N(0, I)`` (default): nothing is attached, the variant's own code runs
                unchanged (bit for bit), with its closed-form KL where it has one.
``"mog"``       a learned mixture of ``K`` diagonal Gaussians,
                ``p(z) = sum_k pi_k N(z; m_k, diag s_k^2)``, ``pi = softmax(a)``; initialized
                with ``a = 0``, ``m_k ~ N(0, I)``, ``s_k = 1``.
``"vamp"``      the VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior", AISTATS):
                ``p(z) = (1/K) sum_k q(z | u_k)``, the encoder's own Gaussian at ``K`` learned
                pseudo-inputs ``u_k`` (``[K, D]``). As in the authors' code
                (``models/Model.py: add_pseudoinputs``), ``u = hardtanh_{[0, 1]}(W)`` with
                ``W ~ N(0.05, 0.01^2)`` elementwise (their MNIST setting; binary data,
                Bernoulli decoder); for a Gaussian likelihood (continuous data on any scale)
                ``u = W`` without the clamp. ``K = 500`` by default, as in the paper.

``prior_components`` is ``K`` (``0``: :data:`DEFAULT_COMPONENTS`). With a non-standard prior the
KL has no closed form: the variants return ``kl = None`` and every ELBO is
``mean_j [log p(x | z_j) + log p(z_j) - log q(z_j | x)]`` at the samples.

Both priors are a mixture of diagonal Gaussians, given by :meth:`LatentPrior.mixture`:
``(log pi [K], m [K, d], log s [K, d])``, and

    log p(z) = logsumexp_k [ log pi_k + sum_i log N(z_i; m_ki, s_ki^2) ]        z [..., d] -> [...].

The VampPrior's components are the variant's Gaussian over its top latent at the pseudo-inputs
(``model.vamp_components(u)``, ``[K, 2d]`` = ``[mu, log sigma]``): ``q(z | u)`` for one-layer
variants; the flow variants' base Gaussian ``q_0(z_0 | u)`` (a flow's density at a given ``z``
needs its inverse); ``q(z_2 | z_1 = E[z_1 | u])`` for ``hierarchical``, whose ``q(z_2 | u)`` is
an integral over ``z_1``; the bottom-up top head ``q(z_L | u)`` for ``ladder`` (without batch
normalization: the pseudo-inputs would pass through the data's batch statistics). The prior's
parameters (pseudo-inputs, mixture parameters) are generative (``parameter_groups``: ``decoder``);
through the VampPrior the encoder's weights take part in ``log p(z)`` too.

The VampPrior's components cost an encoder pass over the ``K`` pseudo-inputs at every evaluation
of ``log p(z)``; an evaluation that does not change the parameters holds them with :func:`fixed`
(computed once, detached): ``log p(x)``, the validation and test ELBO, AIS and BDMC (whose HMC
differentiates only in ``z``), the gaps (only in the free per-datapoint parameters). No cache
outlives such a block (an optimizer step need not bump a parameter's version counter: fused Adam
does not).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from variants.densities import LOG_SQRT_2PI
from variants.registry import VariantConfigError

PRIORS = ("standard", "mog", "vamp")
DEFAULT_COMPONENTS = {"standard": 0, "mog": 10, "vamp": 500}
SUMMARIES = {
    "standard": "the variant's own prior (default): N(0, I) for a Gaussian latent, the closed-form KL where it has one",
    "mog": f"learned mixture of K diagonal Gaussians (K = prior_components, default {DEFAULT_COMPONENTS['mog']})",
    "vamp": "VampPrior, (1/K) sum_k q(z | u_k) at K learned pseudo-inputs (Tomczak & Welling 2018; "
            f"default K = {DEFAULT_COMPONENTS['vamp']})",
}
VAMP_INIT_MEAN, VAMP_INIT_STD = 0.05, 0.01  # Tomczak & Welling's code, MNIST (utils/load_data.py)


def log_mixture_density(z: Tensor, log_pi: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """``log sum_k pi_k N(z; mu_k, diag sigma_k^2)``: ``z [..., d]``, ``log_pi [K]``, ``mu``,
    ``log_sigma [K, d]`` -> ``[...]`` (the component axis is broadcast as ``[..., K, d]``)."""
    zk = z.unsqueeze(-2)  # [..., 1, d]
    comp = (-((zk - mu) ** 2) / (2 * (2 * log_sigma).exp()) - log_sigma - LOG_SQRT_2PI).sum(-1)  # [..., K]
    return torch.logsumexp(comp + log_pi, -1)


def mixture_distribution(log_pi: Tensor, mu: Tensor, log_sigma: Tensor) -> Distribution:
    """The same mixture as a ``torch.distributions`` object (event ``[d]``; ``sample``, ``log_prob``)."""
    comps = Independent(Normal(mu, log_sigma.exp(), validate_args=False), 1, validate_args=False)
    return MixtureSameFamily(Categorical(logits=log_pi, validate_args=False), comps, validate_args=False)


def mixture_variance(log_pi: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """Each coordinate's marginal variance under the mixture, ``[d]``:
    ``sum_k pi_k (s_ki^2 + m_ki^2) - (sum_k pi_k m_ki)^2``."""
    pi = log_pi.exp()[:, None]
    mean = (pi * mu).sum(0)
    return (pi * ((2 * log_sigma).exp() + mu**2)).sum(0) - mean**2


class LatentPrior(nn.Module):
    """A learned ``p(z)`` over a ``dim``-dimensional latent, a mixture of diagonal Gaussians.

    Methods take the owning variant (``model``), which the VampPrior's components are computed
    with (a reference kept inside would make the module tree a cycle)."""

    kind: str = "?"

    def __init__(self, dim: int, components: int) -> None:
        super().__init__()
        if components < 1:
            raise VariantConfigError(f"prior_components must be >= 1, got {components}")
        self.dim, self.components = int(dim), int(components)
        self._fixed = False
        self._cache: tuple | None = None

    def _mixture(self, model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def mixture(self, model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """``(log pi [K], mu [K, d], log sigma [K, d])``."""
        return self._mixture(model)

    def log_prob(self, z: Tensor, model: nn.Module) -> Tensor:
        """``log p(z)``, ``z [..., d] -> [...]`` (see :func:`log_mixture_density`)."""
        return log_mixture_density(z, *self.mixture(model))

    def distribution(self, model: nn.Module) -> Distribution:
        return mixture_distribution(*self.mixture(model))

    def variance(self, model: nn.Module) -> Tensor:
        """The marginal variance of each latent coordinate under the prior, ``[d]``."""
        with torch.no_grad():
            return mixture_variance(*self.mixture(model))


class MixturePrior(LatentPrior):
    """``p(z) = sum_k softmax(a)_k N(z; m_k, diag exp(2 l_k))``, all learned (``a [K]``, ``m``, ``l [K, d]``)."""

    kind = "mog"

    def __init__(self, dim: int, components: int) -> None:
        super().__init__(dim, components)
        self.logits = nn.Parameter(torch.zeros(self.components))
        self.means = nn.Parameter(torch.randn(self.components, self.dim))
        self.log_scales = nn.Parameter(torch.zeros(self.components, self.dim))

    def _mixture(self, model):
        return torch.log_softmax(self.logits, 0), self.means, self.log_scales


class VampPrior(LatentPrior):
    """``p(z) = (1/K) sum_k q(z | u_k)`` with learned pseudo-inputs ``u_k`` (Tomczak & Welling 2018).

    ``pseudo [K, D]`` holds ``W``; ``u = clamp(W, 0, 1)`` when ``clamp`` (binary data: the
    authors' hardtanh) else ``W``. Components: ``model.vamp_components(u)`` (``[K, 2d]``)."""

    kind = "vamp"

    def __init__(self, dim: int, components: int, x_dim: int, clamp: bool) -> None:
        super().__init__(dim, components)
        self.clamp = bool(clamp)
        self.pseudo = nn.Parameter(torch.empty(self.components, int(x_dim)).normal_(VAMP_INIT_MEAN, VAMP_INIT_STD))

    def pseudo_inputs(self) -> Tensor:
        """``u [K, D]``."""
        return nn.functional.hardtanh(self.pseudo, 0.0, 1.0) if self.clamp else self.pseudo

    def _components(self, model) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_sigma = model.vamp_components(self.pseudo_inputs()).chunk(2, dim=-1)
        log_pi = mu.new_full((self.components,), -math.log(self.components))
        return log_pi, mu, log_sigma

    def _mixture(self, model):
        if not self._fixed:
            return self._components(model)
        if self._cache is None:
            with torch.no_grad():
                self._cache = self._components(model)
        return self._cache


@contextlib.contextmanager
def fixed(model: nn.Module) -> Iterator[None]:
    """Within the block, a VampPrior's components are computed once (detached) and reused: for
    measurements that differentiate with respect to ``z`` (HMC) or free per-datapoint parameters
    (the gaps), never the model's parameters. A no-op for other priors."""
    prior = getattr(model, "latent_prior", None)
    if prior is None:
        yield
        return
    old = prior._fixed
    prior._fixed = True
    try:
        yield
    finally:
        prior._fixed = old
        prior._cache = None


def components(kind: str, k: int) -> int:
    """``K``: ``k`` if positive, else the prior's default (:data:`DEFAULT_COMPONENTS`)."""
    return int(k) if k > 0 else DEFAULT_COMPONENTS[kind]


def unsupported(variant_cls, kind: str, options: dict | None = None) -> str | None:
    """Why ``prior = kind`` does not apply to the variant class (with its ``variant_options``), or ``None``."""
    if kind not in PRIORS:
        return f"prior must be one of {', '.join(PRIORS)}, got {kind!r}"
    if kind == "standard":
        return None
    name = getattr(variant_cls, "name", variant_cls.__name__)
    if kind not in getattr(variant_cls, "learned_priors", frozenset()):
        return (f"prior = {kind!r} needs a Gaussian latent whose p(z) the variant takes from the config; "
                f"variant {name!r} ({variant_cls.latent} latents) has only its own prior (use prior = 'standard')")
    if kind == "vamp" and getattr(variant_cls, "vamp_batch_norm_option", None) and \
            (options or {}).get("batch_norm", True):
        return (f"prior = 'vamp' on {name!r} with batch normalization would pass the pseudo-inputs through "
                "the data's batch statistics (and update them); set variant option batch_norm = false or use 'mog'")
    return None


def attach(model: nn.Module, kind: str, k: int = 0, options: dict | None = None) -> nn.Module:
    """Give ``model`` the prior ``kind`` with ``k`` components (``0``: the default) over its top
    latent (``model.top_latent_dim``), on the model's device and in its dtype; ``"standard"``
    leaves the model as built. Returns ``model``. Raises ``VariantConfigError`` with :func:`unsupported`'s reason."""
    why = unsupported(type(model), kind, options)
    if why:
        raise VariantConfigError(why)
    if kind == "standard":
        return model
    n = components(kind, k)
    like = next(model.parameters())  # the prior lives on the model's device, in its dtype
    if kind == "mog":
        prior = MixturePrior(model.top_latent_dim, n)
    else:
        prior = VampPrior(model.top_latent_dim, n, model.x_dim, clamp=model.likelihood == "bernoulli")
    model.latent_prior = prior.to(device=like.device, dtype=like.dtype)
    return model


def top_variance(model: nn.Module) -> Tensor | None:
    """The learned prior's marginal variance per top-latent coordinate (``[d]``), or ``None`` for
    ``N(0, I)``."""
    prior = getattr(model, "latent_prior", None)
    return None if prior is None else prior.variance(model)
