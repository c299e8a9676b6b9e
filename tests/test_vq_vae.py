"""The VQ-VAE (van den Oord et al. 2017): quantization, the honest bound, the straight-through
gradient, the EMA codebook, codebook perplexity, and the measurements it declares not applicable."""

from __future__ import annotations

import math

import pytest
import torch

import variants
from bench import objectives
from bench.config import RunConfig, skipped_measurements


def tiny(seed=0, **options):
    torch.manual_seed(seed)
    model = variants.build("vq-vae", x_shape=(1, 8, 8), latent_dim=3, hidden=(8,), n_codes=5, **options).double()
    return model, torch.bernoulli(torch.full((6, 1, 8, 8), 0.3, dtype=torch.double))


def test_quantization_is_the_nearest_code_and_the_bound_is_log_px_given_zq_minus_n_log_k():
    model, x = tiny()
    assert model.arch == "conv" and model.n_latent == 4  # 8x8 -> 2x2 positions
    z_e = model.variational_params(x).reshape(6, 4, 3)
    d = ((z_e.unsqueeze(-2) - model.codebook) ** 2).sum(-1)  # [B, N, K], brute force
    idx = model.assign(model.variational_params(x))
    torch.testing.assert_close(idx, d.argmin(-1))
    z_q = model.codebook[idx].flatten(-2)
    log_px = model.decoder(z_q).log_prob(x.reshape(6, -1))
    t = model.terms(x, 3)
    n_log_k = 4 * math.log(5)
    torch.testing.assert_close(t.log_w, (log_px - n_log_k).expand(3, 6))
    torch.testing.assert_close(t.kl, torch.full((6,), n_log_k, dtype=torch.double))
    torch.testing.assert_close(t.log_qz, torch.zeros(3, 6, dtype=torch.double))  # log 1: a point mass
    torch.testing.assert_close(t.commitment, ((z_e - model.codebook[idx]) ** 2).sum((-1, -2)))
    # the bound: log p(x) = logsumexp_k log p(x | e_k) p(k) >= any single term, here the argmin's
    assert (log_px - n_log_k <= log_px).all()


def test_straight_through_gradient_and_loss_terms():
    """The encoder gets the decoder's gradient at z_q as if at z_e, plus beta times the
    commitment gradient; the codebook gets the codebook loss's gradient 2 (e - z_e) only."""
    model, x = tiny()
    z_e = model.variational_params(x)
    est = objectives.build("vq-vae")(model, x, 1, params=z_e)
    t = model.terms(x, 1)
    torch.testing.assert_close(est.value, t.log_w[0].detach())
    idx = model.assign(z_e)
    z_q = model.codebook[idx].flatten(-2).detach()
    z = z_q.clone().requires_grad_(True)
    (g_dec,) = torch.autograd.grad(-model.decoder(z).log_prob(x.reshape(6, -1)).mean(), z)
    want = g_dec + 0.25 * 2 * (z_e.detach() - z_q) / 6
    (got,) = torch.autograd.grad(est.surrogate, z_e, retain_graph=True)
    torch.testing.assert_close(got, want)
    (g_code,) = torch.autograd.grad(est.surrogate, model.codebook)
    onehot = torch.nn.functional.one_hot(idx, 5).double()  # [B, N, K]
    want_code = torch.einsum("bnk,bnd->kd", onehot, 2 * (z_q - z_e.detach()).reshape(6, 4, 3)) / 6
    torch.testing.assert_close(g_code, want_code)


def test_ema_codebook_update():
    """One training-mode call moves every used code to the smoothed running mean of its assigned
    encoder outputs (decay g): N <- g N + (1-g) n, m <- g m + (1-g) sum z_e, e = m / N~; unused
    codes stay where they are; eval mode leaves the codebook alone; it is not a parameter."""
    model, x = tiny(ema=True, decay=0.9)
    assert "codebook" not in dict(model.named_parameters()) and "codebook" in model.state_dict()
    before = model.codebook.clone()
    z_e = model.variational_params(x).detach().reshape(-1, 3)
    idx = model.assign(model.variational_params(x)).reshape(-1)
    model.eval()
    model.terms(x, 1)
    torch.testing.assert_close(model.codebook, before)
    model.train()
    model.terms(x, 1)
    n_k = torch.bincount(idx, minlength=5).double()
    count = 0.9 * torch.ones(5, dtype=torch.double) + 0.1 * n_k
    sums = 0.9 * before + 0.1 * torch.zeros(5, 3, dtype=torch.double).index_add_(0, idx, z_e)
    n = count.sum()
    smoothed = (count + 1e-5) / (n + 5 * 1e-5) * n
    torch.testing.assert_close(model.codebook, sums / smoothed.unsqueeze(-1))
    unused = n_k == 0
    if unused.any():
        assert (model.codebook[unused] - before[unused]).abs().max() < 1e-4


def test_codebook_perplexity_known_answers():
    model, x = tiny()
    z = torch.zeros(8, 4 * 3, dtype=torch.double)
    with torch.no_grad():
        model.codebook.copy_(torch.eye(5, 3, dtype=torch.double) * 10)
    orig = model.variational_params
    model.variational_params = lambda x: z  # every position on the same (nearest to 0) code
    assert model.codebook_perplexity(x) == pytest.approx(1.0)
    spread = torch.stack([model.codebook[i % 4] for i in range(8 * 4)]).reshape(8, 12)
    model.variational_params = lambda x: spread  # four codes used equally often
    assert model.codebook_perplexity(x) == pytest.approx(4.0)
    model.variational_params = orig


def test_mlp_form_for_vector_data():
    model = variants.build("vq-vae", x_shape=(7,), latent_dim=2, hidden=(6,), likelihood="gaussian", n_latent=3)
    assert model.arch == "mlp" and model.n_latent == 3
    assert model.log_weights(torch.randn(4, 7), 2).shape == (2, 4)
    with pytest.raises(variants.VariantConfigError, match="conv"):
        variants.build("vq-vae", x_shape=(7,), arch="conv")


@pytest.mark.slow
def test_not_applicable_measurements_are_skipped_and_recorded(store, tmp_path, capsys):
    """A short real run: no test/log_px, gap/*, grad/* or active units are logged (no NaN either),
    the reasons are tags of the child run, test/codebook_perplexity and the bound are logged, and
    the report does not call the skipped metrics missing."""
    from mlflow import MlflowClient

    from bench import plots
    from bench.cli import main

    cfg = RunConfig(variant="vq-vae", objective="vq-vae", eval_k=50, k=1)
    skipped = skipped_measurements(cfg, variants.get("vq-vae"))
    assert set(skipped) == {"log_px", "gaps", "grad", "active_units"}
    assert "eval_k = 50" in skipped["log_px"]
    assert "log_px" not in skipped_measurements(RunConfig(eval_k=1), variants.get("vq-vae"))
    assert skipped_measurements(cfg, variants.get("vanilla")) == {}
    suite = tmp_path / "vq.toml"
    suite.write_text(
        'description = "vq"\n[defaults]\nepochs = 2\nbatch_size = 50\nlatent_dim = 4\nhidden = [16]\n'
        "train_size = 200\ntest_size = 40\nval_k = 2\neval_k = 16\ngap_epochs = [1]\ngap_size = 8\n"
        'gap_steps = 5\ngrad_epochs = [1]\ngrad_draws = 3\ngrad_batch = 8\nthreads = 1\n'
        '[[grid]]\nvariants = ["vq-vae", "vanilla"]\ndatasets = ["digits"]\n'
        "[variant_options.vq-vae]\nn_codes = 8\nchannels = 8\n"
    )
    assert main(["run", "--suite", str(suite), "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("vq")
    runs = {r.data.params["variant"]: r for r in client.search_runs([exp.experiment_id]) if "variant" in r.data.params}
    vq = runs["vq-vae"].data
    assert "test/log_px" not in vq.metrics and "test/active_units" not in vq.metrics
    assert not any(k.startswith(("gap/", "grad/")) for k in vq.metrics)
    assert all(math.isfinite(v) for v in vq.metrics.values())
    assert vq.metrics["test/kl"] == pytest.approx(4 * math.log(8))
    assert 1 <= vq.metrics["test/codebook_perplexity"] <= 8
    for name, why in skipped.items():
        assert vq.tags[f"vaebench.skipped.{name}"] == why.replace("50", "16")
    assert "test/log_px" in runs["vanilla"].data.metrics
    assert not any(k.startswith("vaebench.skipped") for k in runs["vanilla"].data.tags)
    plots.draw("vq", tmp_path / "results", store)
    report = (tmp_path / "results" / "vq" / "README.md").read_text()
    assert "vq-vae" in report and "missing in" not in report
