"""The config keys the faithful Burda et al. (2016) protocol needs: ``init_decoder_bias`` (the
official code's decoder output bias at the training mean's logits), ``adam_eps`` and ``val_size``
(the official code trains on 59,600 images and holds out 400)."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

import variants
from bench import config, data, train
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.suite import load_suite
from tests.conftest import TINY, run_cli
from variants.base import Decoder

BERNOULLI_DECODERS = ["vanilla", "iwae", "planar-flow", "iaf", "hierarchical", "ladder", "gumbel-softmax", "bernoulli"]
CONV_DECODERS = ["vq-vae"]  # on images its decoder ends in a transposed convolution: a clear error


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", binarization="static")


@pytest.mark.parametrize("variant", CONV_DECODERS)
def test_init_decoder_bias_refuses_a_convolutional_output_layer(variant, digits):
    with pytest.raises(ConfigError, match="output layer is linear"):
        train.build_model(RunConfig(variant=variant, init_decoder_bias=True, latent_dim=4, hidden=[16]), digits)


@pytest.mark.parametrize("variant", BERNOULLI_DECODERS)
def test_init_decoder_bias_is_the_maximum_likelihood_bias(variant, digits):
    """With the output weights at zero, ``sigmoid(b) = mean`` maximizes the training set's
    Bernoulli log-likelihood sum_n x_n b - softplus(b): its gradient in b vanishes (pixels whose
    mean is clipped at 1e-3 or 1 - 1e-3 excepted)."""
    assert set(BERNOULLI_DECODERS + CONV_DECODERS) == {v for v in variants.available() if v != "linear-gaussian"}
    cfg = RunConfig(variant=variant, init_decoder_bias=True, latent_dim=4, hidden=[16])
    model = train.build_model(cfg, digits)
    (dec,) = [m for m in model.modules() if isinstance(m, Decoder)]
    last = [m for m in dec.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    mean = digits.train.mean(0)
    torch.testing.assert_close(last.bias.detach(), torch.logit(mean.clamp(1e-3, 1 - 1e-3)))
    with torch.no_grad():
        last.weight.zero_()
    b = last.bias
    loglik = (digits.train * b - torch.nn.functional.softplus(b)).sum()
    (grad,) = torch.autograd.grad(loglik, b)
    inside = (mean > 1e-3) & (mean < 1 - 1e-3)
    assert inside.sum() > 40 and grad[inside].abs().max() < 1e-3 * len(digits.train)
    torch.testing.assert_close(torch.sigmoid(b)[inside].detach(), mean[inside], atol=1e-5, rtol=0)
    # power: torch's default initialization is far from it
    plain = train.build_model(RunConfig(variant=variant, latent_dim=4, hidden=[16]), digits)
    (pdec,) = [m for m in plain.modules() if isinstance(m, Decoder)]
    pb = [m for m in pdec.net.modules() if isinstance(m, torch.nn.Linear)][-1].bias
    assert (torch.sigmoid(pb) - mean)[inside].abs().max() > 0.1


def test_init_decoder_bias_gaussian_and_without_a_decoder():
    cont = data.load("digits", binarization="none")
    model = train.build_model(RunConfig(variant="vanilla", init_decoder_bias=True, latent_dim=4, hidden=[16]), cont)
    last = [m for m in model.decoder.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(last.bias.detach(), cont.train.mean(0))  # a Gaussian decoder: the mean itself
    oracle = data.load("linear-gaussian", binarization="none")
    with pytest.raises(ConfigError, match="init_decoder_bias: variant 'linear-gaussian' has no Decoder"):
        train.build_model(RunConfig(variant="linear-gaussian", dataset="linear-gaussian", init_decoder_bias=True,
                                    latent_dim=4), oracle)


def test_adam_eps_reaches_the_optimizer(monkeypatch, digits):
    seen = []
    real = torch.optim.Adam

    def recording(params, **kw):
        seen.append(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", recording)
    cfg = RunConfig(objective="elbo", k=1, epochs=1, latent_dim=2, hidden=[8], train_size=100, test_size=20, eval_k=4, val_k=1,
                    gap_size=4, gap_steps=2, grad_draws=2, grad_batch=4, adam_eps=1e-4)
    train.run(cfg, digits, lambda m, s: None)
    assert seen[0]["eps"] == 1e-4 and RunConfig().adam_eps == 1e-8  # torch's default unless set


def test_val_size_and_adam_eps_are_checked():
    with pytest.raises(ConfigError, match="val_size must be >= 0"):
        load_suite(str(TINY), config.parse_overrides(["val_size=-1"]))
    with pytest.raises(ConfigError, match="adam_eps must be > 0"):
        load_suite(str(TINY), config.parse_overrides(["adam_eps=0"]))


@pytest.mark.slow
def test_val_size_reaches_the_loader(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    r = run_cli("run", "--suite", str(TINY), "--set", "variants=vanilla", "--set", "epochs=1", "--set", "train_size=0",
                "--set", "val_size=97", "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    (child,) = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("vaebench.role") == "child"]
    assert child.data.params["val_size"] == "97"
    assert child.data.params["train_examples"] == str(1497 - 97)  # the digits' pool is 1,497 images
