"""The ladder VAE (Sønderby, Raiko, Maaløe, Sønderby & Winther 2016, "Ladder Variational
Autoencoders"), with ``L = 1 + len(upper_latent_dims)`` stochastic layers (two by default).

Bottom-up (deterministic, inference only), ``d_0 = x``:

    d_i = MLP_i(d_{i-1}),   [mu_hat_i, log sigma_hat_i] = Linear_i(d_i),          i = 1..L.

Top-down (shared by the generative model and the inference model):

    p(z_L) = N(0, I),   p(z_i | z_{i+1}) = N(mu_p,i, sigma_p,i^2),  [mu_p,i, log sigma_p,i] = TD_i(z_{i+1}),
    p(x | z_1) as in vanilla;
    q(z_L | x) = N(mu_hat_L, sigma_hat_L^2),
    q(z_i | z_{i+1}, x) = N(mu_q,i, sigma_q,i^2)   (precision-weighted merge, eq. 17-18 of the paper):
        sigma_q^2 = 1 / (sigma_hat^-2 + sigma_p^-2),
        mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2,

computed stably as ``log sigma_q = -1/2 logaddexp(-2 log sigma_hat, -2 log sigma_p)`` and
``mu_q = r mu_hat + (1 - r) mu_p`` with ``r = sigmoid(2 (log sigma_p - log sigma_hat))``.
Sampling goes top-down: ``z_L ~ q(z_L | x)``, then ``z_i ~ q(z_i | z_{i+1}, x)``, and

    log w = log p(x | z_1) + [log p(z_L) + sum_{i<L} log p(z_i | z_{i+1})]
            - [log q(z_L | x) + sum_{i<L} log q(z_i | z_{i+1}, x)].

``latent_dim`` is ``z_1``'s size (the layer next to ``x``), ``upper_latent_dims`` the sizes of
``z_2..z_L``. ``MLP_1`` has the vanilla widths ``hidden`` (``hidden[-1]`` is ``d_1``'s width);
the upper bottom-up MLPs and the top-down networks have ``hidden2`` (default half of ``hidden``).
The bottom-up networks are the encoder (``encoder_up``, ``encoder_heads``); the top-down networks
(``decoder_td``) are generative, even though q uses them too.

Shapes: ``x`` ``[B, D]``, ``z_i`` ``[k, B, d_i]``; terms ``[k, B]``.

``variational_params(x)`` is the bottom-up output ``[mu_hat_1, log sigma_hat_1, ..., mu_hat_L,
log sigma_hat_L]`` (``[B, 2 sum_i d_i]``); ``terms(x, k, params=lam)`` merges ``lam`` with the
top-down network. Modes: ``"reparam"``; ``"stop-q"`` (``log q`` with ``lambda`` and the top-down
weights detached, the path through every ``z_i`` kept, via ``torch.func.functional_call``);
``"score"`` (all ``z_i`` drawn without gradient, ``log q`` live). No closed-form KL (``kl=None``).

Batch normalization (``batch_norm=True``, the default): every deterministic hidden layer, bottom-up,
top-down and in ``p(x | z_1)``, is ``Linear -> BatchNorm -> activation`` (Sønderby et al. 2016,
who report batch normalization and a KL warm-up as crucial for several stochastic layers). In
training mode a layer normalizes by the batch's statistics (the ``k`` samples and ``B`` examples
of a call together) and updates its running statistics; every evaluation of the harness runs in
eval mode (``bench.passes.evaluating``), where the running statistics make each layer a fixed
affine map, so the evaluated model is a proper density and an example's bound does not depend
on its batch. ``bench.metrics.gradient_stats`` restores the running statistics after its draws.

Training difficulty, and what fixed it (measured on the ``smoke`` suite: 8x8 digits, plain
ELBO, Adam 3e-3, 100 epochs, tanh 64-64, 8 + 8 latents, one seed). Without batch normalization
(``batch_norm=False``) the ladder collapses to the independent-pixel fit within 2-3 epochs (KL 0,
no active unit, ``test/log_px`` -27.21) where ``hierarchical`` reaches -24.00. The model can
represent the good solution and keeps it: with ``q(z_2 | x) = p(z_2) = N(0, I)`` and
``p(z_1 | z_2) = N(0, I)`` it is a one-level VAE whose posterior is
``N(mu_hat / (1 + sigma_hat^2), sigma_hat^2 / (1 + sigma_hat^2))``, so with the bottom-up
parameters of a trained ``vanilla`` mapped accordingly it gives the same ELBO (-23.69 both), and
a ladder given that ``vanilla``'s weights keeps improving under ladder training. The collapse comes
from the merge: with an uninformative bottom-up message, the variance part of
``KL(q(z_1 | .) || p(z_1 | z_2))``, ``(-r - log(1 - r)) / 2`` per unit, pushes the gate ``r`` to 0
(``sigma_hat`` up, ``sigma_p`` down, a gradient of the same sign for every example), Adam moves
every parameter at the full step whatever the gradient's size, and it shuts the gate long before
the decoder starts to use ``z``; the gradient reaching ``mu_hat`` is then scaled by ``r``.
Initialization did not fix it (biases of ``log sigma_hat``, gains, data-dependent centring, a
top-down net starting at ``N(0, I)``, softplus variances, precision-weighted bottom-up outputs),
nor did a KL warm-up alone (20, 50 or 100 epochs: still KL 0, -27.22). Batch normalization does:
the normalized hidden units keep the bottom-up messages input-dependent from the first step.
With it the smoke ladder reaches ``test/log_px`` -23.51 (ELBO -23.99, KL 3.4, 8 active units),
and with a 20-epoch warm-up on top (``kl_warmup_epochs = 20``, the smoke suite's setting)
-23.37 (ELBO -23.88, KL 3.7, 11 active units), against ``hierarchical``'s -24.00.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from variants.base import VAE, Decoder, LogWeightTerms, flat
from variants.densities import detached_call, diag_gaussian, draw
from variants.nets import ACTIVATIONS
from variants.registry import VariantConfigError, register


class BatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` over the last axis of ``[..., C]`` inputs (the leading axes, e.g. ``[k, B]``,
    are one batch): training mode normalizes by the batch's statistics and updates the running
    ones; eval mode (every evaluation of the harness) applies the running statistics, a fixed
    affine map, so the evaluated model is a proper density."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def layers(in_dim: int, widths: Sequence[int], activation: str, batch_norm: bool) -> list[nn.Module]:
    """``Linear -> [BatchNorm] -> activation`` for each width (Sønderby et al.'s deterministic layers)."""
    out: list[nn.Module] = []
    for w in widths:
        out += [nn.Linear(in_dim, int(w)), *([BatchNorm(int(w))] if batch_norm else []), ACTIVATIONS[activation]()]
        in_dim = int(w)
    return out


def precision_merge(hat: Tensor, p: Tensor) -> Tensor:
    """Merge ``hat = [mu_hat, log sigma_hat]`` and ``p = [mu_p, log sigma_p]`` (``[..., 2d]``,
    broadcast) into ``[mu_q, log sigma_q]``: the product of the two Gaussian densities, normalized."""
    mu_hat, ls_hat = hat.chunk(2, dim=-1)
    mu_p, ls_p = p.chunk(2, dim=-1)
    r = torch.sigmoid(2 * (ls_p - ls_hat))  # sigma_hat^-2 / (sigma_hat^-2 + sigma_p^-2)
    mu_q = r * mu_hat + (1 - r) * mu_p
    ls_q = -0.5 * torch.logaddexp(-2 * ls_hat, -2 * ls_p)
    return torch.cat([mu_q, ls_q], dim=-1)


@register("ladder")
class LadderVAE(VAE):
    modes = frozenset({"reparam", "stop-q", "score"})
    q_determined_by_params = False  # q(z2 | z1) / the top-down pass act after lambda: no DReG
    default_objective = "elbo"
    learned_priors = frozenset({"mog", "vamp"})  # over z_L (variants.priors); vamp without batch norm
    vamp_batch_norm_option = True

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 16,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        upper_latent_dims: Sequence[int] = (8,),
        hidden2: Sequence[int] | None = None,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(x_shape, likelihood)
        hidden = tuple(int(h) for h in hidden)
        hidden2 = tuple(max(1, h // 2) for h in hidden) if hidden2 is None else tuple(hidden2)
        if not hidden or not hidden2:
            raise VariantConfigError("ladder needs at least one hidden layer in hidden and hidden2")
        if activation not in ACTIVATIONS:
            raise VariantConfigError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.latent_dims = (int(latent_dim), *(int(d) for d in upper_latent_dims))
        self.latent_dim = self.latent_dims[0]
        self.batch_norm = bool(batch_norm)
        up, heads, width = [], [], self.x_dim
        for i, d in enumerate(self.latent_dims):
            h = hidden if i == 0 else hidden2
            up.append(nn.Sequential(*layers(width, h, activation, self.batch_norm)))
            heads.append(nn.Linear(h[-1], 2 * d))
            width = h[-1]
        self.encoder_up = nn.ModuleList(up)
        self.encoder_heads = nn.ModuleList(heads)
        rev2 = tuple(reversed(hidden2))
        self.decoder_td = nn.ModuleList(  # decoder_td[i]: p(z_{i+1} | z_{i+2}) in 1-based layers
            nn.Sequential(*layers(self.latent_dims[i + 1], rev2, activation, self.batch_norm),
                          nn.Linear(rev2[-1], 2 * self.latent_dims[i]))
            for i in range(len(self.latent_dims) - 1)
        )
        rev = tuple(reversed(hidden))
        net = nn.Sequential(*layers(self.latent_dim, rev, activation, self.batch_norm), nn.Linear(rev[-1], self.x_dim))
        self.decoder = Decoder(net, self.x_dim, likelihood)

    @property
    def top_latent_dim(self) -> int:
        return self.latent_dims[-1]

    def prior(self) -> Distribution:
        """The top prior ``p(z_L) = N(0, I)``, or the learned one (``variants.priors``)."""
        return self.top_prior(self.latent_dims[-1])

    def vamp_components(self, u: Tensor) -> Tensor:
        """The bottom-up top head ``q(z_L | u) = N(mu_hat_L(u), sigma_hat_L(u)^2)``, ``[K, 2 d_L]``."""
        return self.split_params(self.variational_params(u))[-1]

    def log_q_at(self, x: Tensor, z: Tensor) -> Tensor:
        """``log q(z_L | x) + sum_{i<L} log q(z_i | z_{i+1}, x)`` at given ``z = [z_1, ..., z_L]``
        (``[..., B, sum d_i]``): ``[..., B]``."""
        zs = z.split(list(self.latent_dims), -1)
        hats = self.split_params(self.variational_params(flat(x)))
        out = diag_gaussian(hats[-1]).log_prob(zs[-1])
        for i in reversed(range(len(self.latent_dims) - 1)):
            out = out + diag_gaussian(precision_merge(hats[i], self.decoder_td[i](zs[i + 1]))).log_prob(zs[i])
        return out

    def variational_params(self, x: Tensor) -> Tensor:
        h, out = flat(x), []
        for up, head in zip(self.encoder_up, self.encoder_heads):
            h = up(h)
            out.append(head(h))
        return torch.cat(out, dim=-1)

    # the whole latent z = [z_1, ..., z_L] (``[..., sum_i d_i]``), for annealed importance sampling
    def sample_prior(self, n: int) -> Tensor:
        zs = [self.prior().sample((n,))]
        for td in reversed(self.decoder_td):
            zs.insert(0, diag_gaussian(td(zs[0])).sample())
        return torch.cat(zs, -1)

    def log_prior(self, z: Tensor) -> Tensor:
        """``log p(z_L) + sum_{i<L} log p(z_i | z_{i+1})``."""
        zs = z.split(list(self.latent_dims), -1)
        out = self.log_top_prior(zs[-1])
        for i, td in enumerate(self.decoder_td):
            out = out + diag_gaussian(td(zs[i + 1])).log_prob(zs[i])
        return out

    def decode(self, z: Tensor) -> Distribution:
        """``p(x | z) = p(x | z_1)``."""
        return self.decoder(z[..., : self.latent_dim])

    def split_params(self, lam: Tensor) -> list[Tensor]:
        """``lambda [B, P] -> [[B, 2 d_1], ..., [B, 2 d_L]]``."""
        return list(lam.split([2 * d for d in self.latent_dims], dim=-1))

    def posterior_sample(
        self, x: Tensor, k: int = 1, *, params: Tensor | None = None, mode: str = "reparam"
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """``([z_1 [k, B, d_1], ..., z_L], log p(z) [k, B], log q(z | x) [k, B])``, drawn as
        :meth:`terms` draws them (the same ``z`` for the same seed)."""
        self.check_mode(mode)
        hats = self.split_params(self.variational_params(x) if params is None else params)
        q_params = hats[-1].detach() if mode == "stop-q" else hats[-1]
        z = draw(diag_gaussian(hats[-1]), (k,), mode)
        zs, log_pz, log_qz = [z], self.log_top_prior(z), diag_gaussian(q_params).log_prob(z)
        for i in reversed(range(len(self.latent_dims) - 1)):
            p_out = self.decoder_td[i](z)  # [k, B, 2 d_i]
            q_params = precision_merge(hats[i], p_out)
            z_next = draw(diag_gaussian(q_params), (), mode)
            if mode == "stop-q":
                q_params = precision_merge(hats[i].detach(), detached_call(self.decoder_td[i], z))
            log_pz = log_pz + diag_gaussian(p_out).log_prob(z_next)
            log_qz = log_qz + diag_gaussian(q_params).log_prob(z_next)
            z = z_next
            zs.insert(0, z)
        return zs, log_pz, log_qz

    def terms(self, x, k=1, *, params=None, mode="reparam") -> LogWeightTerms:
        x = flat(x)
        zs, log_pz, log_qz = self.posterior_sample(x, k, params=params, mode=mode)
        return LogWeightTerms(log_px_z=self.decoder.log_prob(zs[0], x), log_pz=log_pz, log_qz=log_qz)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at one ``z1 ~ q(z1 | x)`` (upper levels drawn too): ``[B, D]``."""
        return self.decoder.mean(self.posterior_sample(x, 1)[0][0][0])

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        z = self.prior().sample((n,))
        for td in reversed(self.decoder_td):
            z = diag_gaussian(td(z)).sample()
        x = self.decoder.mean(z) if mean else self.decoder(z).sample()
        return x.reshape(n, *self.x_shape)
