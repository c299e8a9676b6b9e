"""Two-level variants (hierarchical, ladder): log-weights decompose into both levels' densities
(checked against a direct torch.distributions computation), the draws follow q, the stop-q and
score modes split the gradient of log q exactly, and the bound ordering."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

import variants

DTYPE = torch.float64
TWO_LEVEL = ["hierarchical", "ladder"]


def tiny(name: str, dtype=DTYPE, **kw):
    torch.manual_seed(0)
    kw = {"latent_dim2": 2, "hidden2": (4,), **kw} if name == "hierarchical" else {"upper_latent_dims": (2,), "hidden2": (4,), **kw}
    model = variants.build(name, x_shape=(6,), latent_dim=3, hidden=(5,), **kw).to(dtype)
    x = torch.bernoulli(torch.full((3, 6), 0.4, dtype=dtype))
    return model, x


def normal_lp(z, mu, log_sigma):
    return Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)


def hierarchical_direct(model, x, z1, z2):
    """log p(x | z1), log p(z2) + log p(z1 | z2), log q(z1 | x) + log q(z2 | z1), written out."""
    mu1, ls1 = model.encoder(x).chunk(2, -1)
    mu2, ls2 = model.encoder2(z1).chunk(2, -1)
    mup, lsp = model.decoder_z1(z2).chunk(2, -1)
    log_px = Bernoulli(logits=model.decoder.net(z1)).log_prob(x).sum(-1)
    log_pz = normal_lp(z2, torch.zeros_like(z2), torch.zeros_like(z2)) + normal_lp(z1, mup, lsp)
    log_qz = normal_lp(z1, mu1, ls1) + normal_lp(z2, mu2, ls2)
    return log_px, log_pz, log_qz


def ladder_q_params(model, x, zs):
    """Per level (bottom to top) the (mu, log sigma) of q, from the paper's formulas, given the
    upper-level draws ``zs``; and the generative (mu_p, log sigma_p) below the top."""
    h, hats = x, []
    for up, head in zip(model.encoder_up, model.encoder_heads):
        h = up(h)
        hats.append(head(h).chunk(2, -1))
    L = len(hats)
    q, p = [None] * L, [None] * L
    q[-1] = hats[-1]
    for i in range(L - 1):
        mu_p, ls_p = model.decoder_td[i](zs[i + 1]).chunk(2, -1)
        mu_hat, ls_hat = hats[i]
        prec_hat, prec_p = torch.exp(-2 * ls_hat), torch.exp(-2 * ls_p)
        var_q = 1 / (prec_hat + prec_p)
        q[i] = ((mu_hat * prec_hat + mu_p * prec_p) * var_q, 0.5 * torch.log(var_q))
        p[i] = (mu_p, ls_p)
    return q, p


def ladder_direct(model, x, zs):
    q, p = ladder_q_params(model, x, zs)
    top = zs[-1]
    log_pz = normal_lp(top, torch.zeros_like(top), torch.zeros_like(top))
    log_pz = log_pz + sum(normal_lp(zs[i], *p[i]) for i in range(len(zs) - 1))
    log_qz = sum(normal_lp(z, *qi) for z, qi in zip(zs, q))
    log_px = Bernoulli(logits=model.decoder.net(zs[0])).log_prob(x).sum(-1)
    return log_px, log_pz, log_qz


@pytest.mark.parametrize(
    "name, kw",
    [("hierarchical", {}), ("ladder", {}), ("ladder", {"upper_latent_dims": (2, 3)})],
    ids=["hierarchical", "ladder-2", "ladder-3"],
)
def test_log_weights_decompose_into_both_levels(name, kw):
    model, x = tiny(name, **kw)
    torch.manual_seed(7)
    zs, _, _ = model.posterior_sample(x, 5)
    torch.manual_seed(7)  # the same seed gives terms the same draws
    t = model.terms(x, 5)
    direct = hierarchical_direct(model, x, *zs) if name == "hierarchical" else ladder_direct(model, x, zs)
    for got, want in zip((t.log_px_z, t.log_pz, t.log_qz), direct):
        assert got.shape == (5, 3)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(t.log_w, direct[0] + direct[1] - direct[2], rtol=0, atol=1e-10)
    torch.manual_seed(7)
    torch.testing.assert_close(model.log_weights(x, 5), t.log_w, rtol=0, atol=0)


@pytest.mark.parametrize("name", TWO_LEVEL)
def test_draws_follow_q(name):
    """Every level's draw, standardized by its q-parameters at the drawn upper level, is N(0, 1):
    mean within 4 SE (SE = 1/sqrt(n)) and variance within 4 SE (SE of a sample variance =
    sqrt(2/n)), n = 20,000 draws x 3 examples per coordinate."""
    model, x = tiny(name)
    with torch.no_grad():
        zs, _, _ = model.posterior_sample(x, 20_000)
        if name == "hierarchical":
            params = [model.encoder(x).chunk(2, -1), model.encoder2(zs[0]).chunk(2, -1)]
        else:
            params = ladder_q_params(model, x, zs)[0]
    for z, (mu, ls) in zip(zs, params):
        eps = ((z - mu) / ls.exp()).reshape(-1, z.shape[-1])
        n = eps.shape[0]
        assert (eps.mean(0).abs() < 4 / math.sqrt(n)).all()
        assert ((eps.var(0) - 1).abs() < 4 * math.sqrt(2 / n)).all()


@pytest.mark.parametrize("name", TWO_LEVEL)
@pytest.mark.parametrize("mode", ["reparam", "stop-q", "score"])
def test_draws_are_reparameterized_in_lambda(name, mode):
    """The level drawn straight from lambda (z1 for hierarchical, z_L for ladder) is
    z = mu + sigma * eps: over k = 4 draws, d(sum z)/d mu = 4 and d(sum z)/d log sigma =
    sum (z - mu); in "score" no gradient reaches z at all."""
    model, x = tiny(name)
    lam = model.variational_params(x).detach().requires_grad_(True)
    zs, _, _ = model.posterior_sample(x, 4, params=lam, mode=mode)
    # lambda's block for that level: hierarchical [mu1, log sigma1]; ladder's last block (z_L: 2 dims)
    sl = slice(0, lam.shape[1]) if name == "hierarchical" else slice(lam.shape[1] - 2 * 2, None)
    z = zs[0] if name == "hierarchical" else zs[-1]
    if mode == "score":
        assert not z.requires_grad
        return
    g_mu, g_ls = torch.autograd.grad(z.sum(), lam)[0][:, sl].chunk(2, -1)
    mu = lam[:, sl].chunk(2, -1)[0].detach()
    torch.testing.assert_close(g_mu, torch.full_like(g_mu, 4.0), rtol=0, atol=1e-12)
    torch.testing.assert_close(g_ls, (z.detach() - mu).sum(0), rtol=0, atol=1e-12)


def grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for gi, i in zip(g, inputs)]


@pytest.mark.parametrize("name", TWO_LEVEL)
def test_stop_q_and_score_split_the_gradient_of_log_q(name):
    """With one seed (the same z in every mode), d log q / d(lambda, q's weights) in "reparam"
    (path + direct) equals "stop-q" (path only) plus "score" (direct only), exactly; both parts
    are non-zero, and in "score" nothing flows through z."""
    model, x = tiny(name)
    lam = model.variational_params(x).detach().requires_grad_(True)
    q_net = model.encoder2 if name == "hierarchical" else model.decoder_td
    inputs = [lam, *q_net.parameters()]
    out = {}
    for mode in ("reparam", "stop-q", "score"):
        torch.manual_seed(3)
        t = model.terms(x, 4, params=lam, mode=mode)
        out[mode] = (t.log_qz.detach(), grads(t.log_qz.sum(), inputs))
        if mode == "score":
            assert all((g == 0).all() for g in grads(t.log_px_z.sum() + t.log_pz.sum(), [lam]))
    torch.testing.assert_close(out["stop-q"][0], out["reparam"][0], rtol=0, atol=0)
    torch.testing.assert_close(out["score"][0], out["reparam"][0], rtol=0, atol=0)
    for g_all, g_path, g_score in zip(out["reparam"][1], out["stop-q"][1], out["score"][1]):
        torch.testing.assert_close(g_all, g_path + g_score, rtol=0, atol=1e-10)
    assert out["stop-q"][1][0].abs().max() > 1e-3 and out["score"][1][0].abs().max() > 1e-3


@pytest.mark.parametrize("name", TWO_LEVEL)
def test_variational_params_layout(name):
    """lambda: [mu_1, log sigma_1] (hierarchical); the bottom-up pair of both levels (ladder)."""
    model, x = tiny(name, dtype=torch.float32)
    lam = model.variational_params(x)
    assert lam.shape == (3, 2 * 3 + (0 if name == "hierarchical" else 2 * 2))
    assert model.terms(x, 3, params=lam).kl is None  # (the round trip is in test_contract.py)


def test_parameter_groups_follow_the_roles():
    h, _ = tiny("hierarchical")
    lad, _ = tiny("ladder")
    for model, enc, dec in [
        (h, [h.encoder, h.encoder2], [h.decoder, h.decoder_z1]),
        (lad, [lad.encoder_up, lad.encoder_heads], [lad.decoder, lad.decoder_td]),
    ]:
        groups = {k: {id(p) for p in v} for k, v in model.parameter_groups().items()}
        assert groups["encoder"] == {id(p) for m in enc for p in m.parameters()}
        assert groups["decoder"] == {id(p) for m in dec for p in m.parameters()}


@pytest.mark.parametrize("name", TWO_LEVEL)
def test_gaussian_likelihood_and_sampling(name):
    torch.manual_seed(0)
    model = variants.build(name, x_shape=(5,), latent_dim=2, hidden=(8,), likelihood="gaussian")
    x = torch.randn(3, 5)
    for mode in sorted(model.modes):
        lw = model.terms(x, 4, mode=mode).log_w
        assert lw.shape == (4, 3) and torch.isfinite(lw).all()
    assert model.sample(6).shape == (6, 5) and model.sample(2, mean=True).shape == (2, 5)
