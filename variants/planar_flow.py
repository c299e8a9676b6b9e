"""Amortized planar flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows").

    z_0 ~ q_0(z | x) = N(mu(x), diag sigma(x)^2),
    z_k = f_k(z_{k-1}) = z_{k-1} + u_hat_k tanh(w_k^T z_{k-1} + b_k),        k = 1..K,
    log q(z_K | x) = log q_0(z_0 | x) - sum_k log |det df_k / dz_{k-1}|,
    det df_k / dz = 1 + tanh'(w_k^T z + b_k) w_k^T u_hat_k                   (matrix determinant lemma).

Invertibility (appendix A of the paper): f_k is invertible iff ``w^T u_hat >= -1``; the raw ``u``
is mapped to

    u_hat = u + (m(w^T u) - w^T u) w / |w|^2,    m(a) = -1 + softplus(a),   so  w^T u_hat = m(w^T u) > -1.

With ``t = tanh(w^T z + b)`` and ``tanh' = 1 - t^2`` the determinant is computed as
``t^2 + (1 - t^2) softplus(w^T u)`` (the same number, positive term by term, no cancellation).
Limit of floating point: where ``w^T u`` is very negative (below about -30 in double, -15 in
single precision) and ``w^T z + b`` is near 0, the exact determinant ``softplus(w^T u)`` is below
the rounding error of ``w^T u_hat`` itself; the reported log-determinant is the exact one (floored
at ``log(finfo.tiny)``), while the computed map may fold there.

The encoder (an MLP of the vanilla widths) outputs, per data point, ``lambda(x) = [mu, log sigma,
u_1..u_K, w_1..w_K, b_1..b_K]`` (``[B, 2d + K(2d + 1)]``): the base Gaussian *and* the flow are
amortized, and the gap metric optimizes all of it per data point. ``p(z) = N(0, I)``, ``p(x | z)``
as in vanilla.

Shapes: ``x`` ``[B, D]``, ``z`` ``[k, B, d]``, per-layer ``u, w`` ``[B, d]``, ``b`` ``[B]``.

Modes: only ``"reparam"`` (``variants.base.FlowVAE``): the planar map has no closed-form
inverse. ``encode(x)`` returns a ``TransformedDistribution`` whose ``log_prob`` works for the
sample it has just drawn (the transforms cache ``(z_0, z_K)``) and raises
``NotImplementedError`` for any other value. No closed-form KL (``kl=None``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Transform, constraints
from torch.nn.functional import softplus

from variants.base import Decoder, FlowVAE
from variants.nets import mlp
from variants.registry import VariantConfigError, register


def constrain_u(u: Tensor, w: Tensor) -> Tensor:
    """``u_hat = u + (m(w^T u) - w^T u) w / |w|^2`` (``[..., d]``), so that ``w^T u_hat > -1``."""
    a = (w * u).sum(-1, keepdim=True)
    w_sq = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return u + (softplus(a) - 1 - a) * w / w_sq


def planar(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One planar layer with raw parameters; returns ``(f(z), log det df/dz)``.

    ``z``: ``[..., d]``; ``u, w``: ``[..., d]`` (raw, broadcast against ``z``); ``b``: ``[...]``.
    The log-determinant has ``z``'s batch shape.
    """
    u_hat = constrain_u(u, w)
    t = torch.tanh((w * z).sum(-1) + b)
    t2 = t * t
    a = (w * u).sum(-1)
    # 1 + (1 - t^2) w^T u_hat with w^T u_hat = m(a); for w = 0 the layer is the identity (a = 0)
    det = torch.where((w * w).sum(-1) > 0, t2 + (1 - t2) * softplus(a), 1 + (1 - t2) * a)
    return z + u_hat * t.unsqueeze(-1), torch.log(det.clamp_min(torch.finfo(det.dtype).tiny))


class PlanarTransform(Transform):
    """:func:`planar` as a ``torch.distributions.Transform`` (for :meth:`PlanarFlowVAE.encode`).

    The inverse is only available from the cache (the last ``(x, f(x))`` pair)."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, u: Tensor, w: Tensor, b: Tensor) -> None:
        super().__init__(cache_size=1)
        self.u, self.w, self.b = u, w, b

    def _call(self, x: Tensor) -> Tensor:
        return planar(x, self.u, self.w, self.b)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError(
            "the planar flow has no closed-form inverse: log_prob is available only for the "
            "sample just drawn with rsample()/sample()"
        )

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return planar(x, self.u, self.w, self.b)[1]


@register("planar-flow")
class PlanarFlowVAE(FlowVAE):
    """Vanilla networks with ``flow_length`` amortized planar layers on top of the Gaussian q."""

    default_objective = "elbo"

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 16,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        flow_length: int = 4,
    ) -> None:
        super().__init__(x_shape, latent_dim, likelihood)
        if int(flow_length) < 0:
            raise VariantConfigError(f"flow_length must be >= 0, got {flow_length}")
        self.flow_length = int(flow_length)
        d, K = self.latent_dim, self.flow_length
        self.encoder = mlp(self.x_dim, hidden, 2 * d + K * (2 * d + 1), activation)
        self.decoder = Decoder.mirrored(d, hidden, self.x_dim, likelihood, activation)

    def split_params(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``lambda [B, P] -> (base [B, 2d], u [B, K, d], w [B, K, d], b [B, K])``."""
        d, K = self.latent_dim, self.flow_length
        base, u, w, b = lam.split([2 * d, K * d, K * d, K], dim=-1)
        B = lam.shape[:-1]
        return base, u.reshape(*B, K, d), w.reshape(*B, K, d), b

    def transform(self, z0: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """``z_K`` and ``sum_k log det`` for ``z0 [k, B, d]`` under ``lam [B, P]``."""
        _, u, w, b = self.split_params(lam)
        z, log_det = z0, z0.new_zeros(z0.shape[:-1])
        for i in range(self.flow_length):
            z, ld = planar(z, u[..., i, :], w[..., i, :], b[..., i])
            log_det = log_det + ld
        return z, log_det

    def transforms(self, lam: Tensor) -> list[Transform]:
        _, u, w, b = self.split_params(lam)
        return [PlanarTransform(u[..., i, :], w[..., i, :], b[..., i]) for i in range(self.flow_length)]
