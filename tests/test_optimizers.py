"""Optimizers as configuration: each optimizer's steps against torch's run by hand, the exponential
schedule's rates (known answers, and applied per step by the loop), a learned prior's own
optimizer, and the configuration errors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import variants
from bench import config, data, objectives, train
from bench import step as steps
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.schedules import LR_SCHEDULES, exponential_lr
from bench.suite import load_suite
from variants import priors

CPU = torch.device("cpu")


def _cfg(**settings) -> RunConfig:
    """A resolved config (validation wants an objective and k): the ELBO with k = 1 unless given."""
    return RunConfig(**({"objective": "elbo", "k": 1} | settings))


# -- the exponential schedule ----------------------------------------------------------------------
@pytest.mark.parametrize("step, n", [(0, 0), (999, 0), (1000, 1), (1999, 1), (2500, 2), (10_000, 10), (49_999, 49)])
def test_exponential_schedule_known_answer(step, n):
    """Jang et al.'s notebook: lr * 0.9 ** floor(t / 1000), whatever the epoch."""
    cfg = RunConfig(lr_schedule="exponential", lr_decay=0.9, lr_decay_every=1000)
    assert exponential_lr(1e-3, 1, step, cfg) == pytest.approx(1e-3 * 0.9**n, rel=1e-12)
    assert LR_SCHEDULES["exponential"](1e-3, 7, step, cfg) == exponential_lr(1e-3, 1, step, cfg)


def test_the_loop_sets_the_exponential_rate_within_an_epoch(monkeypatch):
    """4 steps an epoch (200 examples, batch 50) and a decay by 0.5 every 3 steps: the rate the
    loop sets is lr at steps 0-2, lr/2 at steps 3-5 (across the epoch boundary) and lr/4 from step
    6. The power check: a per-epoch schedule would not change the rate at step 3 or 6."""
    seen: list[tuple[int, float]] = []
    real_set_lr, real_make_step = train.set_lr, train.make_step

    def make_step(cfg, model, objective, optimizer, own, device):
        inner = real_make_step(cfg, model, objective, optimizer, own, device)

        def fn(x, beta):
            seen.append((len(seen), optimizer.param_groups[0]["lr"]))
            return inner(x, beta)

        return fn

    monkeypatch.setattr(train, "make_step", make_step)
    calls = []
    monkeypatch.setattr(train, "set_lr", lambda opt, lr: (calls.append(lr), real_set_lr(opt, lr)))
    cfg = RunConfig(objective="elbo", k=1, epochs=2, train_size=200, test_size=20, hidden=[8], latent_dim=2,
                    batch_size=50, eval_k=2, gap_size=4, gap_steps=2, gap_k=2, grad_draws=2, grad_batch=4, threads=1,
                    lr=1e-2, lr_schedule="exponential", lr_decay=0.5, lr_decay_every=3)
    train.run(cfg, data.load("digits"), lambda m, s: None)
    assert [lr for _, lr in seen] == [1e-2] * 3 + [5e-3] * 3 + [2.5e-3] * 2
    assert calls == [[1e-2], [5e-3], [5e-3], [2.5e-3]]  # epoch starts and changes only: no set_lr per step


# -- each optimizer against torch's, by hand ----------------------------------------------------------
CASES = {
    "adam": ({"optimizer": "adam", "weight_decay": 1e-2}, lambda p: torch.optim.Adam(p, lr=3e-2, weight_decay=1e-2, fused=True)),
    "sgd": ({"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-2},
            lambda p: torch.optim.SGD(p, lr=3e-2, momentum=0.9, weight_decay=1e-2)),
    "adagrad": ({"optimizer": "adagrad", "weight_decay": 1e-2}, lambda p: torch.optim.Adagrad(p, lr=3e-2, weight_decay=1e-2)),
    "rmsprop": ({"optimizer": "rmsprop", "momentum": 0.5, "weight_decay": 1e-2},
                lambda p: torch.optim.RMSprop(p, lr=3e-2, momentum=0.5, weight_decay=1e-2)),
}


def _trajectory(model, make_opt, x, n=4, seed=3):
    """``n`` steps of the ELBO (k = 2) on batch ``x``; the flattened parameters after them."""
    torch.manual_seed(seed)
    opt, obj = make_opt(model), objectives.build("elbo")
    for _ in range(n):
        steps.train_step(model, obj, opt, x, 2)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", list(CASES))
def test_each_optimizer_is_torchs_with_the_configs_settings(name):
    """4 eager steps of ``make_optimizer`` on a small VAE and a fixed batch equal 4 steps of
    torch's optimizer built by hand with the same lr, momentum and weight decay, from the same
    weights and noise: exactly, since both are the same implementation (Adam: the fused one). The
    power check: without the weight decay (or, for SGD and RMSprop, the momentum) the parameters
    end elsewhere; and every optimizer moves them."""
    torch.manual_seed(0)
    base = variants.build("vanilla", x_shape=(12,), latent_dim=3, hidden=(8,))
    x = (torch.rand(10, 12) > 0.5).float()
    settings, by_hand = CASES[name]
    cfg = _cfg(lr=3e-2, **settings)
    config.validate(cfg, "test")
    ours = _trajectory(copy.deepcopy(base), lambda m: steps.make_optimizer(m, cfg, CPU), x)
    hand = _trajectory(copy.deepcopy(base), lambda m: by_hand(list(m.parameters())), x)
    start = torch.cat([p.detach().reshape(-1) for p in base.parameters()])
    assert torch.equal(ours, hand), name
    assert (ours - start).abs().max() > 1e-3
    for off in ("weight_decay", "momentum"):
        if settings.get(off):
            other = dataclasses.replace(cfg, **{off: 0.0})
            moved = _trajectory(copy.deepcopy(base), lambda m, c=other: steps.make_optimizer(m, c, CPU), x)
            assert (moved - ours).abs().max() > 1e-6, off


def test_the_default_optimizer_is_the_adam_of_before():
    """The default config builds the fused Adam with torch's defaults besides lr and eps, as every
    run before the optimizer keys: no weight decay, nothing else changed."""
    model = variants.build("vanilla", x_shape=(12,), latent_dim=3, hidden=(8,))
    opt = steps.make_optimizer(model, RunConfig(), CPU)
    assert type(opt) is torch.optim.Adam and opt.defaults["fused"] is True
    ref = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8, fused=True).defaults
    assert opt.defaults == ref


# -- a learned prior's own optimizer ------------------------------------------------------------------
def test_the_prior_gets_its_own_optimizer_and_learning_rate():
    """Bernoulli VAE (its learned prior's logits ``prior_logits``), DisARM's setting: SGD at 1e-2
    on the prior, Adam at 1e-3 on the rest. After one step the prior moved by exactly -1e-2 times
    its gradient, and every other parameter by Adam's first step, -1e-3 g / (|g| + eps) (about
    1e-3 where the gradient is not tiny). The power check: with one Adam for all, the prior moves
    by Adam's step, not SGD's. (The four optimizers themselves are checked against torch's above.)"""
    torch.manual_seed(0)
    base = variants.build("bernoulli", x_shape=(12,), latent_dim=5, hidden=())
    with torch.no_grad():
        base.prior_logits.normal_()  # a prior gradient of some size everywhere
    x = (torch.rand(16, 12) > 0.5).float()
    cfg = _cfg(variant="bernoulli", objective="disarm", prior_optimizer="sgd", prior_lr=1e-2)
    config.validate(cfg, "test")

    grads = copy.deepcopy(base)
    torch.manual_seed(5)
    est = objectives.build("disarm")(grads, x, 1)
    objectives.backward(objectives.build("disarm"), est, grads)
    g = dict(grads.named_parameters())

    def after(c):
        model = copy.deepcopy(base)
        opt = steps.make_optimizer(model, c, CPU)
        torch.manual_seed(5)
        steps.train_step(model, objectives.build("disarm"), opt, x, 1)
        return model, opt

    model, opt = after(cfg)
    assert isinstance(opt, steps.PriorSplit) and [float(gr["lr"]) for gr in opt.param_groups] == [1e-3, 1e-2]
    start = dict(base.named_parameters())
    # SGD's update p - lr g, as torch computes it: exactly
    assert torch.equal(model.prior_logits.detach(), start["prior_logits"].detach().add(g["prior_logits"].grad, alpha=-1e-2))
    moved = {n: p.detach() - start[n].detach() for n, p in model.named_parameters()}
    for name, d in moved.items():  # Adam's first step, up to float32 rounding of p + step (|p| < 2)
        if name != "prior_logits":
            gr = g[name].grad
            torch.testing.assert_close(d, -1e-3 * gr / (gr.abs() + 1e-8), rtol=0, atol=3e-7)
    one_adam, _ = after(RunConfig(variant="bernoulli", objective="disarm", k=1))
    d_adam = one_adam.prior_logits.detach() - base.prior_logits.detach()
    assert (d_adam - moved["prior_logits"]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["mog", "vamp"])
def test_a_config_prior_is_what_the_prior_optimizer_trains(kind):
    """``prior_parameters()``: the attached mixture's or VampPrior's parameters, nothing of the
    encoder or decoder; the split optimizer holds them apart from every other parameter."""
    model = variants.build("vanilla", x_shape=(12,), latent_dim=3, hidden=(8,))
    priors.attach(model, kind, 4)
    assert {id(p) for p in model.prior_parameters()} == {id(p) for p in model.latent_prior.parameters()}
    opt = steps.make_optimizer(model, RunConfig(prior=kind, prior_optimizer="adagrad"), CPU)
    prior_ids = {id(p) for p in opt.prior.param_groups[0]["params"]}
    rest_ids = {id(p) for p in opt.model.param_groups[0]["params"]}
    assert prior_ids == {id(p) for p in model.latent_prior.parameters()} and not prior_ids & rest_ids
    assert prior_ids | rest_ids == {id(p) for p in model.parameters()}
    assert isinstance(opt.prior, torch.optim.Adagrad) and isinstance(opt.model, torch.optim.Adam)
    assert variants.build("vanilla", x_shape=(12,)).prior_parameters() == []


# -- configuration errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"optimizer": "adamw"}, "optimizer must be one of adam, sgd, adagrad, rmsprop, got 'adamw'"),
    ({"momentum": 0.9}, "momentum = 0.9 applies to optimizer = sgd or rmsprop, not 'adam'"),
    ({"optimizer": "adagrad", "momentum": 0.9}, "not 'adagrad'"),
    ({"optimizer": "sgd", "momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"weight_decay": -1e-3}, "weight_decay must be >= 0"),
    ({"optimizer": "sgd", "adam_eps": 1e-4}, "no parameter is trained by Adam"),
    ({"lr_decay": 0.9}, "apply to lr_schedule = 'exponential', not 'constant'"),
    ({"lr_schedule": "burda", "lr_decay_every": 1000}, "not 'burda'"),
    ({"lr_schedule": "exponential"}, "needs lr_decay in"),
    ({"lr_schedule": "exponential", "lr_decay": 0.9}, "lr_decay_every >= 1"),
    ({"prior_lr": 1e-2}, "prior_lr = 0.01 needs prior_optimizer"),
    ({"prior_optimizer": "sgd"}, "prior_optimizer = 'sgd' but the prior has no parameters"),
    ({"variant": "bernoulli", "objective": "disarm", "prior_optimizer": "nesterov"},
     'prior_optimizer must be one of "", adam, sgd'),
    ({"objective": "elbo", "step_mode": "cuda-graph", "optimizer": "sgd"}, "cuda-graph' captures Adam only"),
    ({"variant": "bernoulli", "objective": "disarm", "step_mode": "cuda-graph", "prior_optimizer": "sgd"}, "with prior_optimizer"),
])
def test_config_errors_name_the_rule(settings, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(_cfg(**settings), "suite.toml")


def test_valid_settings_pass_and_cuda_graph_refusal_is_a_planning_error(tmp_path):
    """What the errors above leave allowed validates; a suite asking a CUDA graph of SGD fails
    while it is planned (no CUDA needed: the refusal is the configuration's), with one message."""
    for ok in ({"optimizer": "sgd", "momentum": 0.9, "lr_schedule": "exponential", "lr_decay": 0.9, "lr_decay_every": 1000},
               {"optimizer": "adagrad", "weight_decay": 1e-4},
               {"optimizer": "rmsprop", "momentum": 0.5},
               {"variant": "bernoulli", "objective": "disarm", "prior_optimizer": "sgd", "prior_lr": 1e-2},
               {"prior": "mog", "prior_optimizer": "adam"},
               {"objective": "elbo", "step_mode": "compile", "optimizer": "sgd", "momentum": 0.9}):
        config.validate(_cfg(**ok), "test")
    suite = tmp_path / "graph.toml"
    suite.write_text('description = "t"\n[defaults]\nstep_mode = "cuda-graph"\noptimizer = "sgd"\n'
                     '[[grid]]\nvariants = ["vanilla"]\nobjectives = ["elbo"]\ndatasets = ["digits"]\n')
    with pytest.raises(ConfigError, match="captures Adam only"):
        load_suite(str(suite))
