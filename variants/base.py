"""The contract every variant honours, and the shared single-Gaussian-latent machinery.

Shapes: ``B`` examples, ``D = prod(x_shape)`` observed dimensions, ``k`` samples per example,
``d`` latent dimensions. Inputs may be ``[B, *x_shape]`` or flat ``[B, D]``.

The one method everything is computed from is :meth:`VAE.terms`: for ``z_j ~ q(z | x)``,
``j = 1..k``, it returns ``log p(x | z_j)``, ``log p(z_j)`` and ``log q(z_j | x)`` as ``[k, B]``
tensors. Their combination ``log w_j = log p(x, z_j) - log q(z_j | x)`` gives

* the ELBO            ``mean_j log w_j``                        (Kingma & Welling 2014),
* the IWAE bound      ``logmeanexp_j log w_j``                  (Burda et al. 2016),
* the log-likelihood  the IWAE bound for large ``k`` (a consistent, downward-biased estimate).

``mode`` says how ``z`` is drawn and which gradients the terms carry; a gradient estimator
(``bench.objectives``) picks the mode it needs, and a variant declares the modes it supports in
``modes``:

``"reparam"``             ``z = g(eps, lambda)``, gradients flow through ``z`` and ``lambda``.
``"stop-q"``              as ``"reparam"`` but ``log q`` is evaluated with ``lambda`` detached
                          (its gradient is only the path through ``z``: STL, DReG).
``"score"``               ``z`` is detached (``q.sample()``); ``log q`` keeps its gradient, the
                          score ``grad log q(z | x)`` (REINFORCE, VIMCO; exact discrete samples).
``"relaxed"``             Gumbel-softmax relaxed samples (discrete latents only).
``"straight-through"``    one-hot forward, relaxed backward (discrete latents only).

For the amortization gap (Cremer, Li & Duvenaud 2018) the encoder's output is an explicit tensor
``lambda(x) = variational_params(x)`` of shape ``[B, P]``; ``terms(x, k, params=lam)`` evaluates
the same family at any ``lam`` (for instance free per-datapoint parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

from variants.densities import (
    BernoulliLogits,
    bernoulli_logits_log_prob,
    diag_gaussian,
    diag_gaussian_log_prob,
    diag_gaussian_rsample,
    kl_to_standard_normal,
    normal_log_prob,
    standard_normal_log_prob,
)
from variants.nets import mlp
from variants.registry import VariantConfigError

MODES = ("reparam", "stop-q", "score", "relaxed", "straight-through")


class Lazy:
    """A term computed when it is first read: ``Lazy(fn, *args)`` stands for ``fn(*args)``,
    evaluated in the autograd mode (grad enabled or not) in force when the ``Lazy`` was made.

    A variant hands :class:`LogWeightTerms` the terms an objective may not need this way (the
    ELBO with a closed-form KL reads neither ``log p(z)`` nor ``log q(z | x)``; an evaluation of
    ``log w`` never reads the KL), so that no work is done for a value nobody reads."""

    __slots__ = ("fn", "args", "grad")

    def __init__(self, fn, *args) -> None:
        self.fn, self.args, self.grad = fn, args, torch.is_grad_enabled()

    def __call__(self):
        with torch.set_grad_enabled(self.grad):
            return self.fn(*self.args)


class _Deferred:
    """A :class:`LogWeightTerms` field that may be given as a :class:`Lazy`: evaluated on the
    first read and stored in its place. Reading a field always gives the value (or ``None``)."""

    _MISSING = object()

    def __init__(self, default=_MISSING) -> None:
        self.default = default

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:  # the class: a dataclass asks for the field's default
            if self.default is _Deferred._MISSING:
                raise AttributeError(self.name)
            return self.default
        value = obj.__dict__[self.name]
        if isinstance(value, Lazy):
            value = obj.__dict__[self.name] = value()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.name] = value


@dataclass
class LogWeightTerms:
    """The pieces of ``log w = log p(x | z) + log p(z) - log q(z | x)``, each ``[k, B]``.

    ``kl`` is the closed-form ``KL(q(z | x) || p(z))`` per example (``[B]``) where it exists
    for the drawn family, else ``None``; the ELBO objective uses it to lower the variance.
    ``log_pz`` is the prior over all latent levels (``log p(z2) + log p(z1 | z2)`` for two).
    ``log_pz``, ``log_qz`` and ``kl`` may be constructed from a :class:`Lazy` (computed if read).
    """

    log_px_z: Tensor
    log_pz: Tensor = _Deferred()
    log_qz: Tensor = _Deferred()
    kl: Tensor | None = _Deferred(default=None)

    @property
    def log_w(self) -> Tensor:
        return self.log_px_z + self.log_pz - self.log_qz


def flat(x: Tensor) -> Tensor:
    """``[B, *x_shape] -> [B, D]``."""
    return x.reshape(x.shape[0], -1)


class VAE(nn.Module):
    """Base class of every variant. Subclasses implement :meth:`terms` and :meth:`sample`.

    Class attributes a variant sets:

    * ``latent``: ``"continuous"`` or ``"discrete"``;
    * ``modes``: the sampling modes :meth:`terms` supports (see the module docstring);
    * ``default_objective`` and ``default_k``: what the variant trains with when a suite does not
      say (``iwae`` is the vanilla networks with the IWAE objective, for instance);
    * ``eval_mode``: the mode used by :meth:`log_weights` (exact samples of ``q``);
    * ``local_objective``: the objective that optimizes free per-datapoint parameters ``lambda``
      for the gap decomposition (the ELBO for reparameterizable families);
    * ``q_determined_by_params``: ``lambda = variational_params(x)`` fixes ``q(z | x)`` entirely
      (no inference weights act after it, as in a two-layer ``q(z2 | z1)`` network). DReG needs it:
      its per-path weights are applied to the gradient that reaches ``lambda``;
    * ``deterministic_q``: ``q(z | x)`` is a point mass (VQ-VAE): ``log_weights`` repeats one value;
    * ``not_applicable``: measurements that do not apply to the variant, each with the reason
      (``"log_px"``, ``"gaps"``, ``"grad"``, ``"active_units"``): the training loop skips them and
      the run records the reason (``bench.config.skipped_measurements``), never a NaN;
    * ``learned_priors``: the config's non-standard priors (``"mog"``, ``"vamp"``, see
      ``variants.priors``) the variant accepts over its top latent (``top_latent_dim``). Once one is
      attached, ``self.latent_prior`` holds it (``None``: the variant's own prior) and the variant
      reads ``log p(z_top)`` from :meth:`log_top_prior` and ``p(z_top)`` from :meth:`top_prior`;
      ``"vamp"`` also needs :meth:`vamp_components`.
    * ``prior_parameter_names``: the attributes holding the variant's own learned prior's
      parameters (``bernoulli``: ``prior_logits``); :meth:`prior_parameters` returns them with an
      attached prior's (what the config's ``prior_optimizer`` trains).
    * ``mode_options``: constructor options read only when sampling in some modes, each with those
      modes (the discrete variants' temperature schedule is read by the ``relaxed`` and
      ``straight-through`` samples only). A run none of whose samples is in those modes ignores
      the option (``bench.config.unread_options``): a search's trials that differ only there are
      one run.
    """

    name: ClassVar[str] = "?"
    latent: ClassVar[str] = "continuous"
    modes: ClassVar[frozenset[str]] = frozenset({"reparam", "stop-q", "score"})
    default_objective: ClassVar[str] = "elbo"
    default_k: ClassVar[int] = 1
    eval_mode: ClassVar[str] = "reparam"
    local_objective: ClassVar[str] = "elbo"
    q_determined_by_params: ClassVar[bool] = True
    deterministic_q: ClassVar[bool] = False
    not_applicable: ClassVar[dict[str, str]] = {}
    learned_priors: ClassVar[frozenset[str]] = frozenset()
    prior_parameter_names: ClassVar[tuple[str, ...]] = ()
    mode_options: ClassVar[dict[str, frozenset[str]]] = {}

    def __init__(self, x_shape: tuple[int, ...], likelihood: str) -> None:
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.x_shape = tuple(int(s) for s in x_shape)
        self.x_dim = math.prod(self.x_shape)
        self.likelihood = likelihood
        # a 0-dim zero that follows the module's device and dtype (priors are built from it)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)
        self.latent_prior = None  # a variants.priors.LatentPrior once attached (prior = "mog" | "vamp")

    # -- the contract --------------------------------------------------------------------------
    def terms(
        self, x: Tensor, k: int = 1, *, params: Tensor | None = None, mode: str = "reparam"
    ) -> LogWeightTerms:
        raise NotImplementedError

    def log_weights(self, x: Tensor, k: int = 1, params: Tensor | None = None) -> Tensor:
        """``log p(x, z_j) - log q(z_j | x)`` for ``z_j ~ q(. | x)``: ``[k, B]``."""
        return self.terms(x, k, params=params, mode=self.eval_mode).log_w

    def variational_params(self, x: Tensor) -> Tensor:
        """``lambda(x)``, the encoder's output as one ``[B, P]`` tensor."""
        raise NotImplementedError

    def prior(self) -> Distribution:
        """``p(z)``, over the latent the decoder reads."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        """``n`` draws from the model, ``[n, *x_shape]`` (``mean=True``: the decoder's mean);
        by default ``x ~ p(x | z)`` at ``z ~`` :meth:`prior`, for a one-layer ``self.decoder``."""
        z = self.prior().sample((n,))
        x = self.decoder.mean(z) if mean else self.decoder(z).sample()
        return x.reshape(n, *self.x_shape)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at one ``z ~ q(z | x)``: ``[B, D]`` (for the reconstruction grids);
        by default at a draw of the variant's ``encode(x)``, ``q(z | x)`` (one-layer variants; the
        metrics tell those from the hierarchical ones by whether ``encode`` exists)."""
        return self.decoder.mean(self.encode(x).sample())

    def local_params(self, x: Tensor) -> Tensor:
        """The gap decomposition's starting point ``[B, P']``: the encoder's ``q`` as a member of
        the local family whose parameters are fitted per datapoint (Cremer et al. 2018);
        ``terms(x, k, params=...)`` accepts it. ``variational_params(x)`` unless inference
        weights act after it (IAF: the flow's networks, then copied per datapoint)."""
        return self.variational_params(x)

    # -- the joint latent, for annealed importance sampling (bench.ais) -------------------------
    # Continuous-latent variants give the prior and the likelihood over their whole latent,
    # flattened to ``z [..., L]`` (``L`` = the sum of every stochastic layer's size, in the order
    # of ``posterior_sample``: the layer next to x first).
    def sample_prior(self, n: int) -> Tensor:
        """``n`` draws of the whole latent from the prior, ``[n, L]``."""
        raise NotImplementedError

    def log_prior(self, z: Tensor) -> Tensor:
        """``log p(z)`` over the whole latent, ``z [..., L] -> [...]``."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Distribution:
        """``p(x | z)`` for the whole latent ``z [..., L]``: a distribution with event ``[D]``."""
        raise NotImplementedError

    def on_train_step(self, step: int) -> None:
        """Called by the training loop before every optimizer step (``step`` counts from 0).

        Schedules that belong to the model live here (the Gumbel-softmax temperature)."""

    def prior_parameters(self) -> list[nn.Parameter]:
        """The parameters of ``p(z)``: the variant's own (``prior_parameter_names``) and those of
        the attached ``latent_prior`` (``variants.priors``); ``[]`` for a fixed prior. (A
        VampPrior's components also depend on the encoder, which stays with the rest.)"""
        own = [getattr(self, name) for name in self.prior_parameter_names]
        return own + (list(self.latent_prior.parameters()) if self.latent_prior is not None else [])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"encoder": [...], "decoder": [...]}``: inference vs generative parameters.

        Convention: every inference-network submodule's attribute name starts with ``encoder``
        (``encoder``, ``encoder_flow``, ...); everything else (decoder, prior, likelihood scale)
        is generative and counted as ``decoder``. Gradient statistics are reported per group.
        """
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": []}
        for name, p in self.named_parameters():
            groups["encoder" if name.startswith("encoder") else "decoder"].append(p)
        return groups

    # -- helpers ---------------------------------------------------------------------------------
    def standard_normal(self, dim: int) -> Independent:
        """``N(0, I_dim)`` on the model's device and dtype, event shape ``[dim]`` (a prior)."""
        z = self._zero.expand(dim)
        return Independent(Normal(z, torch.ones_like(z), validate_args=False), 1, validate_args=False)

    def top_prior(self, dim: int) -> Distribution:
        """``p(z_top)``: ``N(0, I_dim)`` (:meth:`standard_normal`) or the attached learned prior."""
        return self.standard_normal(dim) if self.latent_prior is None else self.latent_prior.distribution(self)

    def log_top_prior(self, z: Tensor) -> Tensor:
        """``log p(z_top)``, ``[..., d] -> [...]``: ``self.prior().log_prob(z)`` (the variant's own
        prior, computed as before) or the attached learned prior's log-density."""
        return self.prior().log_prob(z) if self.latent_prior is None else self.latent_prior.log_prob(z, self)

    def vamp_components(self, u: Tensor) -> Tensor:
        """The Gaussian ``[mu, log sigma]`` (``[K, 2d]``) over the top latent at inputs ``u [K, D]``:
        the VampPrior's components (``variants.priors``)."""
        raise NotImplementedError(f"variant {self.name!r} defines no VampPrior components")

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(
                f"variant {self.name!r} does not support sampling mode {mode!r}; "
                f"it supports {sorted(self.modes)}"
            )


class Decoder(nn.Module):
    """``p(x | z)``: an MLP from ``z`` to Bernoulli logits or a Gaussian mean.

    The Gaussian has a learned per-dimension scale ``exp(log_scale)`` (independent of ``z``),
    floored at ``min_scale`` so that constant pixels cannot drive the density to infinity.
    ``forward(z)`` with ``z: [..., d]`` returns a distribution with event shape ``[D]``.
    """

    def __init__(self, net: nn.Module, x_dim: int, likelihood: str, min_scale: float = 1e-2):
        super().__init__()
        self.net = net
        self.likelihood = likelihood
        self.min_scale = min_scale
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(x_dim))

    def scale(self) -> Tensor:
        """The Gaussian's per-dimension scale ``min_scale + softplus(log_scale + 0.5413)`` (1 at 0), ``[D]``."""
        return self.min_scale + nn.functional.softplus(self.log_scale + 0.5413)

    def forward(self, z: Tensor) -> Distribution:
        out = self.net(z)
        if self.likelihood == "bernoulli":
            return Independent(BernoulliLogits(out), 1, validate_args=False)
        scale = self.scale()
        return Independent(Normal(out, scale.expand_as(out), validate_args=False), 1, validate_args=False)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)`` summed over the ``D`` dimensions, ``z [..., d]``, ``x [B, D]`` -> ``[...]``:
        the number ``self(z).log_prob(x)`` gives, computed directly (no distribution objects)."""
        out = self.net(z)
        if self.likelihood == "bernoulli":
            return bernoulli_logits_log_prob(out, x).sum(-1)
        scale = self.scale()
        return normal_log_prob(x, out, scale.log()).sum(-1)

    def mean(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    @classmethod
    def mirrored(cls, in_dim: int, hidden: Sequence[int], x_dim: int, likelihood: str, activation: str) -> Decoder:
        """The decoder every MLP variant uses: ``in_dim -> reversed(hidden) -> x_dim``, i.e. the
        encoder's widths mirrored (Burda et al. 2016's 200-200 on both sides, for instance)."""
        return cls(mlp(in_dim, tuple(reversed(tuple(hidden))), x_dim, activation), x_dim, likelihood)

    @torch.no_grad()
    def init_output_bias(self, x_mean: Tensor, clip: float = 1e-3) -> None:
        """Output bias := the data mean ``x_mean [D]`` as this likelihood parametrizes it:
        ``logit(clip(x_mean, 1e-3, 1 - 1e-3))`` (Bernoulli; Burda et al. 2016's code) or the
        mean itself (Gaussian). At initialization the decoder then predicts the mean image."""
        layers = [m for m in self.net.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
        if not layers or not isinstance(layers[-1], nn.Linear):
            raise VariantConfigError(
                "init_decoder_bias needs a decoder whose output layer is linear (one bias per pixel); "
                "this one ends in a convolution"
            )
        last = layers[-1]
        mean = x_mean.to(last.bias)
        last.bias.copy_(torch.logit(mean.clamp(clip, 1 - clip)) if self.likelihood == "bernoulli" else mean)


class GaussianLatentVAE(VAE):
    """One diagonal-Gaussian latent layer, ``q(z | x) = N(mu(x), diag sigma(x)^2)``, ``p(z) = N(0, I)``.

    Subclasses provide ``self.encoder`` (``[B, D] -> [B, 2d]``, i.e. ``lambda = [mu, log sigma]``)
    and ``self.decoder`` (a :class:`Decoder`). This class gives the whole contract. ``p(z)`` may be
    replaced by a learned prior (``variants.priors``); the KL then has no closed form.
    """

    learned_priors = frozenset({"mog", "vamp"})

    def __init__(self, x_shape, latent_dim: int, likelihood: str) -> None:
        super().__init__(x_shape, likelihood)
        self.latent_dim = int(latent_dim)

    @property
    def top_latent_dim(self) -> int:
        return self.latent_dim

    def prior(self) -> Distribution:
        return self.top_prior(self.latent_dim)

    def vamp_components(self, u: Tensor) -> Tensor:
        return self.variational_params(u)

    def variational_params(self, x: Tensor) -> Tensor:
        return self.encoder(flat(x))

    def encode(self, x: Tensor) -> Distribution:
        return diag_gaussian(self.variational_params(x))

    def decode(self, z: Tensor) -> Distribution:
        return self.decoder(z)

    def sample_prior(self, n: int) -> Tensor:
        return self.prior().sample((n,))

    def log_prior(self, z: Tensor) -> Tensor:
        return self.log_top_prior(z)

    def log_q_at(self, x: Tensor, z: Tensor) -> Tensor:
        """``log q(z | x)`` at given latents ``z [..., B, d]`` for ``x [B, D]``: ``[..., B]`` (the
        sleep phase of wake-sleep scores dreamt ``(z, x)`` with it)."""
        mu, log_sigma = self.variational_params(flat(x)).chunk(2, dim=-1)
        return diag_gaussian_log_prob(z, mu, log_sigma)

    def terms(self, x, k=1, *, params=None, mode="reparam") -> LogWeightTerms:
        """``z = mu + sigma eps`` (detached in ``"score"``), ``log q`` at ``lambda`` (detached in
        ``"stop-q"``), the closed-form KL in ``"reparam"`` under ``N(0, I)``; computed directly, and
        ``log p(z)``, ``log q(z | x)`` and the KL only when read (:class:`Lazy`). With a learned
        prior ``log p(z)`` is its log-density at the sample and ``kl`` is ``None``."""
        self.check_mode(mode)
        x = flat(x)
        lam = self.variational_params(x) if params is None else params
        mu, log_sigma = lam.chunk(2, dim=-1)
        z = diag_gaussian_rsample(mu, log_sigma, k)  # [k, B, d]
        if mode == "score":
            z = z.detach()
        q_mu, q_log_sigma = (mu.detach(), log_sigma.detach()) if mode == "stop-q" else (mu, log_sigma)
        if self.latent_prior is not None:
            return LogWeightTerms(
                log_px_z=self.decoder.log_prob(z, x),
                log_pz=Lazy(self.latent_prior.log_prob, z, self),
                log_qz=Lazy(diag_gaussian_log_prob, z, q_mu, q_log_sigma),
            )
        return LogWeightTerms(
            log_px_z=self.decoder.log_prob(z, x),
            log_pz=Lazy(standard_normal_log_prob, z),
            log_qz=Lazy(diag_gaussian_log_prob, z, q_mu, q_log_sigma),
            kl=Lazy(kl_to_standard_normal, mu, log_sigma) if mode == "reparam" else None,
        )


class FlowVAE(GaussianLatentVAE):
    """``q(z | x)``: a diagonal Gaussian ``q_0`` pushed through an amortized normalizing flow
    (Rezende & Mohamed 2015): ``z_0 ~ q_0 = N(mu(x), diag sigma(x)^2)``, ``z_K = f_K o ... o f_1(z_0)``,

        log q(z_K | x) = log q_0(z_0 | x) - sum_k log |det df_k / dz_{k-1}|.

    ``lambda(x)`` starts with the base parameters ``[mu, log sigma]`` (``[B, 2d]``); the flow's
    per-datapoint parameters follow. A subclass provides :meth:`transform` (the flow and its
    log-determinant, batched over ``k``) and :meth:`transforms` (the same flow as
    ``torch.distributions`` transforms, for :meth:`encode`). ``p(z) = N(0, I)``, ``p(x | z)`` as
    in vanilla (or a learned prior, ``variants.priors``).

    Modes: only ``"reparam"``: ``"stop-q"`` and ``"score"`` need ``log q`` at a given ``z_K`` under
    parameters other than those that drew it, i.e. the inverse flow. No closed-form KL.
    """

    modes = frozenset({"reparam"})

    def base_params(self, lam: Tensor) -> Tensor:
        """``lambda [B, P] -> [mu, log sigma] [B, 2d]``."""
        return lam[..., : 2 * self.latent_dim]

    def vamp_components(self, u: Tensor) -> Tensor:
        """The base Gaussian ``q_0(z | u)`` (a flow's density at a given ``z`` needs its inverse)."""
        return self.base_params(self.variational_params(u))

    log_q_at = None  # log q(z | x) at a given z needs the inverse flow: no sleep phase

    def transform(self, z0: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_K, sum_k log |det df_k/dz|)`` for ``z0 [k, B, d]`` under ``lam [B, P]``."""
        raise NotImplementedError

    def transforms(self, lam: Tensor) -> list:
        """The flow at ``lam`` as a list of ``torch.distributions.Transform``."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Distribution:
        lam = self.variational_params(x)
        return TransformedDistribution(diag_gaussian(self.base_params(lam)), self.transforms(lam))

    def terms(self, x, k=1, *, params=None, mode="reparam") -> LogWeightTerms:
        self.check_mode(mode)
        x = flat(x)
        lam = self.variational_params(x) if params is None else params
        mu, log_sigma = self.base_params(lam).chunk(2, dim=-1)
        z0 = diag_gaussian_rsample(mu, log_sigma, k)  # [k, B, d]
        z, log_det = self.transform(z0, lam)
        return LogWeightTerms(
            log_px_z=self.decoder.log_prob(z, x),
            log_pz=standard_normal_log_prob(z) if self.latent_prior is None else self.latent_prior.log_prob(z, self),
            log_qz=diag_gaussian_log_prob(z0, mu, log_sigma) - log_det,
        )
