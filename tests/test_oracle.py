"""Known answers on the linear-Gaussian oracle (probabilistic PCA), the harness's ground truth."""

from __future__ import annotations

import math

import torch

import variants
from bench import data as datasets
from bench.metrics import log_likelihood


def ppca(W, b, sigma):
    m = variants.build("linear-gaussian", x_shape=(W.shape[0],), latent_dim=W.shape[1])
    with torch.no_grad():
        m.decoder.W.copy_(W)
        m.decoder.b.copy_(b)
        m.decoder.log_sigma.fill_(math.log(sigma))
    return m


def test_exact_marginal_matches_a_direct_formula():
    """log N(x; b, W W^T + s^2 I), written out by hand (Cholesky-free, via slogdet and solve)."""
    torch.manual_seed(0)
    W, b, x = torch.randn(5, 2), torch.randn(5), torch.randn(7, 5)
    m = ppca(W, b, 0.7)
    C = W @ W.T + 0.49 * torch.eye(5)
    r = x - b
    direct = -0.5 * (5 * math.log(2 * math.pi) + torch.logdet(C) + (r @ torch.linalg.solve(C, r.T)).diagonal())
    torch.testing.assert_close(m.exact_log_marginal(x), direct, rtol=1e-5, atol=1e-5)


def test_elbo_with_the_exact_posterior_is_log_px_for_every_sample():
    """With q = p(z | x), log p(x, z) - log p(z | x) = log p(x) for every z (zero variance)."""
    torch.manual_seed(1)
    W, b, x = torch.randn(6, 3), torch.randn(6), torch.randn(4, 6)
    m = ppca(W, b, 0.5)
    post = m.exact_posterior(x)
    z = post.sample((50,))  # [50, 4, 3]
    log_w = m.decoder(z).log_prob(x) + m.prior().log_prob(z) - post.log_prob(z)
    torch.testing.assert_close(log_w, m.exact_log_marginal(x).expand(50, -1), rtol=0, atol=1e-4)


def test_amortized_q_set_to_a_diagonal_posterior_gives_exact_log_weights():
    """W with orthogonal columns makes p(z | x) diagonal; a linear encoder can then equal it, and
    every log-weight the variant returns is exactly log p(x)."""
    torch.manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(8, 3))
    W = Q * torch.tensor([2.0, 1.0, 0.5])
    b, x = torch.randn(8), torch.randn(5, 8)
    m = ppca(W, b, 0.4)
    lam = m.optimal_diagonal_params(x)
    lw = m.log_weights(x, 100, params=lam)
    torch.testing.assert_close(lw, m.exact_log_marginal(x).expand(100, -1), rtol=0, atol=1e-4)


def test_log_likelihood_with_large_k_matches_the_exact_marginal():
    """IWAE estimate with k = 20,000 vs log p(x), correlated posterior, q = the best diagonal Gaussian
    (the encoder set to the exact posterior mean and variances 1 / diag(Lambda)).

    The estimate's bias is about -Var(w) / (2 k E[w]^2) and its sd sqrt(Var(w) / k) / E[w]; for this
    q the relative variance of w, estimated from the same draws, is what bounds the tolerance:
    we require |est - log p(x)| < 5 sd + 2 |bias|, and separately < 0.02 nats."""
    torch.manual_seed(3)
    W, b = torch.randn(6, 2), torch.zeros(6)
    m = ppca(W, b, 0.8)
    Lam = m.posterior_precision()
    with torch.no_grad():
        A = torch.linalg.inv(Lam) @ W.T / 0.64
        m.encoder.mean.weight.copy_(A)
        m.encoder.mean.bias.copy_(-A @ b)
        m.encoder.log_sigma.copy_(-0.5 * torch.log(torch.diagonal(Lam)))
    x = m.marginal().sample((8,))
    k = 20_000
    est = log_likelihood(m, x, k=k)
    exact = m.exact_log_marginal(x)
    with torch.no_grad():
        w = torch.exp(m.log_weights(x, k) - exact)  # E[w] = 1
    rel_var = w.var(0)
    sd, bias = (rel_var / k).sqrt(), rel_var / (2 * k)
    assert ((est - exact).abs() < 5 * sd + 2 * bias).all(), (est - exact, sd)
    assert (est - exact).abs().max() < 0.02


def test_linear_gaussian_dataset_is_the_documented_model():
    """The synthetic data's sample covariance matches W W^T + s^2 I of its generating model."""
    d = datasets.load("linear-gaussian", binarization="none")
    W, b, s = datasets.linear_gaussian_model()
    x = torch.cat([d.train, d.val, d.test])
    cov = torch.cov(x.T)
    target = W @ W.T + s**2 * torch.eye(W.shape[0])
    # sampling error of a covariance entry with n = 3500 is about sqrt(2/n) * scale (~0.024 * ~4)
    assert (cov - target).abs().max() < 0.6
    torch.testing.assert_close(x.mean(0), b, atol=0.25, rtol=0)
