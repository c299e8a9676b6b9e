"""The VQ-VAE (van den Oord et al. 2017): K codes, straight-through, logged as an honest bound.

van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning": a
deterministic encoder, a codebook of ``K = n_codes`` vectors ``e_1..e_K`` in
``R^D`` (``D = latent_dim``), nearest-neighbour quantization of each of ``N`` encoder outputs,
and a decoder of the quantized vectors.

    z_e(x) in R^{N x D},   k_n = argmin_j ||z_e,n - e_j||,   z_q,n = e_{k_n},
    q(k | x) = 1[k = k(x)] (a point mass),  p(k) = Uniform(K)^N,  p(x | z_q) Bernoulli / Gaussian.

As a likelihood model this is honest: with the deterministic q and the uniform prior,
``log p(x) >= E_q[log p(x, k) - log q(k | x)] = log p(x | z_q) - N log K``. That bound is
``log_weights`` (``log q = 0``, ``log p(k) = -N log K``, ``kl = N log K``), logged as ``test/elbo``
with ``test/kl = N log K``. It is loose where the codes' true prior is far from uniform (the paper
fits a PixelCNN prior afterwards; this file does not build an autoregressive prior). Importance
sampling cannot tighten it (q is a point mass: ``deterministic_q``), so ``test/log_px`` with
``eval_k > 1``, the gap decomposition, gradient statistics and active units are declared not
applicable (``not_applicable``, ``bench.config.skipped_measurements``). Codebook usage is
:meth:`codebook_perplexity`, ``exp(H(p))`` of the average code assignment (``test/codebook_perplexity``).

Training (objective ``vq-vae``, ``bench.objectives.quantized``): the straight-through estimator
``z = z_e + stop_grad(z_q - z_e)`` carries the decoder's gradient to the encoder, and

    loss = -log p(x | z_q) + ||stop_grad(z_e) - e||^2 + beta ||z_e - stop_grad(e)||^2,   beta = commitment (0.25).

``ema=True`` replaces the codebook term by exponential moving averages of the assigned encoder
outputs (appendix A.1 of the paper; decay 0.99, Laplace-smoothed counts, each code starting with a
pseudo-count of one at its initial value so that an unused code stays where it is), updated in
training mode in :meth:`terms`; the codebook is then a buffer.

Networks (``arch="auto"``: conv for images whose sides divide by 4, else MLP):

* conv, as the paper's section 4 at a small width (``channels``, default ``hidden[0]``): two
  stride-2 4x4 convolutions, two residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) and a 1x1
  convolution to ``D``; the decoder a 3x3 convolution, two residual blocks and two stride-2 4x4
  transposed convolutions. ``N = (H/4)(W/4)`` code positions (2 x 2 for the 8x8 digits, 7 x 7
  for 28x28 images).
* mlp: ``x -> hidden -> N D`` and back (``N = n_latent``), for vector data.

Shapes: ``x`` ``[B, *x_shape]``; ``lambda = variational_params(x) = z_e`` flattened ``[B, N D]``;
terms ``[k, B]`` (the same value ``k`` times).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, OneHotCategorical
from torch.nn import functional as F

from variants.base import VAE, Decoder, LogWeightTerms, flat
from variants.densities import one_hot
from variants.nets import mlp
from variants.registry import VariantConfigError, register


@dataclass
class VQTerms(LogWeightTerms):
    """:class:`LogWeightTerms` plus the quantization losses (``[B]``, summed over positions):
    ``codebook = ||stop_grad(z_e) - z_q||^2`` (zero with the EMA codebook) and
    ``commitment = ||z_e - stop_grad(z_q)||^2``."""

    codebook: Tensor | None = None
    commitment: Tensor | None = None


class Residual(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` (the paper's residual block)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """``[B, C, H, W] -> [B, (H/4)(W/4) D]`` (positions row-major, each a ``D``-vector)."""

    def __init__(self, in_ch: int, ch: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, ch, 4, 2, 1), nn.ReLU(), nn.Conv2d(ch, ch, 4, 2, 1),
            Residual(ch), Residual(ch), nn.ReLU(), nn.Conv2d(ch, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).permute(0, 2, 3, 1).flatten(1)


class ConvDecoderNet(nn.Module):
    """``[..., h w D] -> [..., C H W]`` logits / means, batched over any leading shape."""

    def __init__(self, x_shape: tuple[int, int, int], ch: int, dim: int) -> None:
        super().__init__()
        self.x_shape, self.dim = x_shape, dim
        self.grid = (x_shape[1] // 4, x_shape[2] // 4)
        self.net = nn.Sequential(
            nn.Conv2d(dim, ch, 3, padding=1), Residual(ch), Residual(ch), nn.ReLU(),
            nn.ConvTranspose2d(ch, ch, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(ch, x_shape[0], 4, 2, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        z = z.reshape(-1, *self.grid, self.dim).permute(0, 3, 1, 2)
        return self.net(z).reshape(*lead, math.prod(self.x_shape))


@register("vq-vae")
class VQVAE(VAE):
    latent = "quantized"
    modes = frozenset({"straight-through"})
    eval_mode = "straight-through"
    default_objective = "vq-vae"
    default_k = 1
    local_objective = "vq-vae"
    deterministic_q = True
    not_applicable = {
        "gaps": "q(z | x) is the deterministic nearest-code assignment: there is no variational "
                "family to optimize per datapoint",
        "grad": "the training gradient is deterministic given the batch (no sampling): its variance "
                "is 0 and its SNR infinite by construction",
        "active_units": "codes have no posterior mean per unit; codebook usage is test/codebook_perplexity",
    }

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 16,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "relu",
        n_codes: int = 512,
        commitment: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        arch: str = "auto",
        n_latent: int = 4,
        channels: int = 0,
    ) -> None:
        """``latent_dim`` is ``D``, the codes' dimension; ``n_codes`` is ``K``; ``n_latent`` the
        number of code positions of the MLP form (the conv form has ``(H/4)(W/4)``); ``channels``
        the conv width (``0``: ``hidden[0]``, or 64 when ``hidden`` is empty)."""
        super().__init__(x_shape, likelihood)
        if n_codes < 2 or latent_dim < 1 or n_latent < 1 or commitment < 0 or not 0 < decay < 1:
            raise VariantConfigError("vq-vae needs n_codes >= 2, latent_dim >= 1, n_latent >= 1, "
                                     "commitment >= 0 and 0 < decay < 1")
        images = len(self.x_shape) == 3 and self.x_shape[1] % 4 == 0 and self.x_shape[2] % 4 == 0
        if arch not in ("auto", "conv", "mlp") or (arch == "conv" and not images):
            raise VariantConfigError(f"vq-vae arch must be auto, conv (images with sides divisible by 4) "
                                     f"or mlp; got {arch!r} for data of shape {self.x_shape}")
        self.arch = "conv" if arch == "conv" or (arch == "auto" and images) else "mlp"
        self.dim, self.n_codes, self.commitment = int(latent_dim), int(n_codes), float(commitment)
        self.ema, self.decay = bool(ema), float(decay)
        hidden = tuple(int(h) for h in hidden)
        if self.arch == "conv":
            ch = int(channels) or (hidden[0] if hidden else 64)
            self.n_latent = (self.x_shape[1] // 4) * (self.x_shape[2] // 4)
            self.encoder = ConvEncoder(self.x_shape[0], ch, self.dim)
            net = ConvDecoderNet(self.x_shape, ch, self.dim)
        else:
            self.n_latent = int(n_latent)
            self.encoder = mlp(self.x_dim, hidden, self.n_latent * self.dim, activation)
            net = mlp(self.n_latent * self.dim, tuple(reversed(hidden)), self.x_dim, activation)
        self.decoder = Decoder(net, self.x_dim, likelihood)
        # unit-variance uniform entries (the variance-scaling initializer of Sonnet's VectorQuantizer)
        codebook = torch.empty(self.n_codes, self.dim).uniform_(-math.sqrt(3 / self.dim), math.sqrt(3 / self.dim))
        if self.ema:  # EMA statistics: counts N_k and sums m_k of the assigned encoder outputs
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(self.n_codes))  # a pseudo-count at the initial code
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)

    @property
    def n_log_k(self) -> float:
        """``N log K``: the KL of the point-mass q from the uniform prior, in nats."""
        return self.n_latent * math.log(self.n_codes)

    # -- quantization ----------------------------------------------------------------------------
    def variational_params(self, x: Tensor) -> Tensor:
        """``z_e(x)``, ``[B, N D]``."""
        return self.encoder(x.reshape(x.shape[0], *self.x_shape) if self.arch == "conv" else flat(x))

    def assign(self, z_e: Tensor) -> Tensor:
        """Nearest code of every position: ``[B, N D] -> [B, N]`` indices."""
        z = z_e.unflatten(-1, (self.n_latent, self.dim))
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.codebook.T + self.codebook.pow(2).sum(-1))
        return d.argmin(-1)

    @torch.no_grad()
    def update_codebook(self, z_e: Tensor, idx: Tensor) -> None:
        """One EMA step (appendix A.1): ``N_k <- g N_k + (1-g) n_k``, ``m_k <- g m_k + (1-g) sum z_e``,
        ``e_k = m_k / N~_k`` with Laplace-smoothed counts ``N~`` (no division by zero)."""
        z = z_e.detach().reshape(-1, self.dim)
        onehot = one_hot(idx.reshape(-1), self.n_codes, z.dtype)
        g = self.decay
        self.ema_count.mul_(g).add_((1 - g) * onehot.sum(0))
        self.ema_sum.mul_(g).add_((1 - g) * onehot.T @ z)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.n_codes * 1e-5) * n
        self.codebook.copy_(self.ema_sum / smoothed.clamp(min=1e-12).unsqueeze(-1))

    def terms(self, x, k=1, *, params=None, mode="straight-through") -> VQTerms:
        self.check_mode(mode)
        z_e = self.variational_params(x) if params is None else params  # [B, N D]
        idx = self.assign(z_e)
        z_q = self.codebook[idx].flatten(-2)  # [B, N D]
        if self.ema and self.training:
            self.update_codebook(z_e, idx)
        z = z_e + (z_q - z_e).detach()  # straight-through: value z_q, gradient to z_e
        log_px_z = self.decoder.log_prob(z, flat(x)).unsqueeze(0).expand(k, -1)
        zero = torch.zeros_like(log_px_z)
        codebook = zero[0] if self.ema else (z_e.detach() - z_q).pow(2).sum(-1)
        return VQTerms(
            log_px_z=log_px_z,
            log_pz=zero - self.n_log_k,
            log_qz=zero,
            kl=torch.full_like(log_px_z[0], self.n_log_k),
            codebook=codebook,
            commitment=(z_e - z_q.detach()).pow(2).sum(-1),
        )

    @torch.no_grad()
    def codebook_perplexity(self, x: Tensor, batch: int = 1000) -> float:
        """``exp(-sum_j p_j log p_j)``, ``p_j`` the fraction of the ``len(x) * N`` code positions of
        ``x`` assigned to code ``j``: the effective number of codes used (1 to ``K``)."""
        counts = torch.zeros(self.n_codes, device=x.device, dtype=torch.float64)
        for i in range(0, len(x), batch):
            idx = self.assign(self.variational_params(x[i : i + batch]))
            counts += torch.bincount(idx.reshape(-1), minlength=self.n_codes).to(counts.dtype)
        p = counts / counts.sum()
        return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))

    # -- single-latent interface -------------------------------------------------------------
    def prior(self) -> Distribution:
        """``p(k)``: ``N`` independent uniform one-hot codes, event shape ``[N, K]``."""
        probs = self.codebook.new_full((self.n_latent, self.n_codes), 1.0 / self.n_codes)
        return Independent(OneHotCategorical(probs=probs), 1)

    def encode(self, x: Tensor) -> Distribution:
        """``q(k | x)``: the point mass on the nearest codes, one-hot ``[B, N, K]``."""
        idx = self.assign(self.variational_params(x))
        return Independent(OneHotCategorical(probs=F.one_hot(idx, self.n_codes).to(self.codebook.dtype)), 1)

    def decode(self, z: Tensor) -> Distribution:
        """``p(x | z_q)`` for one-hot codes ``[..., N, K]`` (or code vectors ``[..., N D]``)."""
        if z.shape[-2:] == (self.n_latent, self.n_codes):
            z = (z @ self.codebook).flatten(-2)
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder.mean(self.codebook[self.assign(self.variational_params(x))].flatten(-2))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        """Codes drawn from the uniform prior (the paper samples a learned PixelCNN prior instead)."""
        idx = torch.randint(self.n_codes, (n, self.n_latent), device=self.codebook.device)
        z = self.codebook[idx].flatten(-2)
        x = self.decoder.mean(z) if mean else self.decoder(z).sample()
        return x.reshape(n, *self.x_shape)
