"""KL warm-up (``kl_warmup_epochs``): the schedule, what it changes (only the surrogate, affinely in
beta, and unbiasedly for the annealed objective's gradient), what it never changes (the logged
bound), and the objectives that refuse it."""

from __future__ import annotations

import pytest
import torch

import variants
from bench import objectives
from bench.config import RunConfig
from bench.data import load
from bench.errors import ConfigError
from bench.schedules import kl_weight
from bench.suite import load_suite
from bench.train import run
from tests.test_binary import codes, draws
from tests.test_binary import tiny as tiny_binary
from tests.test_estimators import MAX_T, flat_grad, t_scores


def test_schedule_rises_linearly_per_step_and_switches_off():
    assert kl_weight(0, 2, 10) == 0.0
    assert kl_weight(5, 2, 10) == pytest.approx(0.25)
    assert kl_weight(10, 2, 10) == pytest.approx(0.5)
    assert kl_weight(19, 2, 10) == pytest.approx(0.95)
    assert kl_weight(20, 2, 10) is None and kl_weight(10**6, 2, 10) is None
    assert kl_weight(0, RunConfig().kl_warmup_epochs, 10) is None  # off by default


def _example(name):
    """A small model of a variant the objective applies to, and a batch."""
    vname = next(v for v in ("vanilla", "bernoulli", "gumbel-softmax") if objectives.applies_to(name, variants.get(v)))
    torch.manual_seed(0)
    model = variants.build(vname, x_shape=(6,), latent_dim=3, hidden=(5,)).double()
    return model, torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.double))


WARMUP = [n for n in objectives.available() if objectives.spec(n).warmup]


def test_which_objectives_warm_up():
    assert set(WARMUP) == {
        "elbo", "stl", "score-function", "reinforce", "rloo", "nvil", "gumbel-softmax", "st-gumbel", "concrete",
        "arm", "disarm", "rebar", "relax",
    }


@pytest.mark.parametrize("name", WARMUP)
def test_the_value_is_the_bound_and_the_surrogate_is_affine_in_beta(name):
    """Same noise, beta in {0, 0.5, 1}: the value does not move; the surrogate and its gradient are
    affine in beta (the KL enters linearly) and beta = 1 is the plain objective."""
    model, x = _example(name)
    objective = objectives.build(name)
    if isinstance(objective, torch.nn.Module):
        objective.double().eval()  # NVIL's running statistics stay put between the calls
        objective(model, x, 2)
    params = list(model.parameters())
    out = {}
    for beta in (0.0, 0.5, 1.0, None):
        torch.manual_seed(1)
        est = objective(model, x, 2) if beta is None else objective(model, x, 2, kl_weight=beta)
        g = torch.autograd.grad(est.surrogate, params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1) for p, gi in zip(params, g)])
        out[beta] = (est.value, est.surrogate.detach(), flat)
    for b in (0.0, 0.5):
        torch.testing.assert_close(out[b][0], out[1.0][0], rtol=0, atol=0)
    torch.testing.assert_close(out[None][1], out[1.0][1], rtol=0, atol=0)
    torch.testing.assert_close(out[0.5][1], (out[0.0][1] + out[1.0][1]) / 2)
    torch.testing.assert_close(out[0.5][2], (out[0.0][2] + out[1.0][2]) / 2)
    assert not torch.allclose(out[0.0][2], out[1.0][2])  # beta really acts


def test_elbo_at_beta_zero_is_the_reconstruction_term():
    model, x = _example("elbo")
    torch.manual_seed(2)
    est = objectives.build("elbo")(model, x, 3, kl_weight=0.0)
    torch.manual_seed(2)
    t = model.terms(x, 3)
    torch.testing.assert_close(est.surrogate, -t.log_px_z.mean(0).mean())
    torch.testing.assert_close(est.value, (t.log_px_z.mean(0) - t.kl).detach())


@pytest.mark.parametrize("name", ["disarm", "rloo", "reinforce", "rebar"])
def test_warm_up_gradients_are_unbiased_for_the_annealed_objective(name):
    """beta = 0.3: unbiased for grad [E_q log p(x | b) + beta E_q(log p(b) - log q(b | x))], by
    enumeration of the 8 codes (max |t| < 5 as in tests/test_binary.py)."""
    model, x = tiny_binary()
    t = model.binary_terms(x, codes(3).unsqueeze(1))
    q = t.log_qz.exp()
    annealed = (q * (t.log_px_z + 0.3 * (t.log_pz - t.log_qz))).sum(0)
    exact = flat_grad(-annealed.mean(), list(model.parameters()))
    objective = objectives.build(name)

    def at_beta(m, x, k=1, params=None):
        return objective(m, x, k, kl_weight=0.3)

    torch.manual_seed(3)
    d = draws(model, x, at_beta if not isinstance(objective, torch.nn.Module) else _Wrapped(objective), 1)
    assert t_scores(d, exact).max() < MAX_T


class _Wrapped(torch.nn.Module):
    """A trainable objective called with kl_weight = 0.3 (keeps its parameters and flags)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.minimizes_variance = inner.minimizes_variance

    def forward(self, model, x, k=1, params=None):
        return self.inner(model, x, k, kl_weight=0.3)


def test_iwae_type_bounds_refuse_warm_up_with_a_clear_error(tmp_path):
    for objective in ("iwae", "dreg"):
        with pytest.raises(ConfigError, match=f"objective '{objective}' has no separate KL term"):
            _suite(tmp_path, f'variants = ["vanilla"]\nobjectives = ["{objective}"]')
    _suite(tmp_path, 'variants = ["vanilla"]\nobjectives = ["elbo"]')  # (an ELBO objective is fine)
    with pytest.raises(ConfigError, match="'vimco' has no separate KL term"):
        _suite(tmp_path, 'variants = ["bernoulli"]\nobjectives = ["vimco"]')
    with pytest.raises(ConfigError, match="kl_warmup_epochs .* must be >= 0"):
        _suite(tmp_path, 'variants = ["vanilla"]', warmup=-1)


def _suite(tmp_path, grid: str, warmup: int = 3):
    p = tmp_path / "w.toml"
    p.write_text(f'description = "w"\n[defaults]\nkl_warmup_epochs = {warmup}\n[[grid]]\n{grid}\n')
    return load_suite(str(p))


def test_the_loop_logs_the_weight_and_the_true_bound():
    """Two epochs of warm-up over two epochs: train/kl_weight is beta at each epoch's last step
    ((S - 1) / 2S, then (2S - 1) / 2S for S steps per epoch); and train/loss is the objective's
    value, the same number a run without warm-up logs from the same parameters and noise at step 1
    (the very first step's bound does not depend on beta)."""
    data = load("digits")
    cfg = RunConfig(variant="vanilla", objective="elbo", k=1, latent_dim=4, hidden=[16], epochs=2, lr=1e-3,
                    batch_size=100, train_size=300, test_size=20, val_k=2, eval_k=4, gap_size=4, gap_steps=2,
                    gap_k=4, grad_draws=2, grad_batch=4, device="cpu", kl_warmup_epochs=2)
    seen = {}
    run(cfg, data, lambda m, step: seen.setdefault(step, {}).update(m))
    assert seen[1]["train/kl_weight"] == pytest.approx(2 / 6) and seen[2]["train/kl_weight"] == pytest.approx(5 / 6)
    one = RunConfig(**{**cfg.__dict__, "epochs": 1, "train_size": 100, "kl_warmup_epochs": 0})
    warm = RunConfig(**{**one.__dict__, "kl_warmup_epochs": 5})
    losses = []
    for c in (one, warm):
        s = {}
        run(c, data, lambda m, step, s=s: s.setdefault(step, {}).update(m))
        losses.append(s[1]["train/loss"])
    assert losses[0] == losses[1]
