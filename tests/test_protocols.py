"""Data protocols that reproduction suites name: thresholded binarization (Cremer et al.'s code) and
minibatches in file order (Burda et al.'s code)."""

from __future__ import annotations

import torch

from bench import data, train
from bench.config import RunConfig


def test_threshold_binarization_is_intensity_at_least_one_half():
    """Every split of ``binarization = "threshold"`` is ``1[x >= 0.5]`` of the same split's
    intensities (``none``), the same at every load; it differs from the random draws of
    ``static`` (the power check)."""
    raw, thr = data.load("digits", binarization="none"), data.load("digits", binarization="threshold")
    for split in ("train", "val", "test"):
        x, b = getattr(raw, split), getattr(thr, split)
        assert torch.equal(b, (x >= 0.5).float()), split
    assert thr.likelihood == "bernoulli"
    assert torch.equal(thr.train_epoch(torch.Generator().manual_seed(1)), thr.train)  # no redraw per epoch
    assert torch.equal(data.load("digits", binarization="threshold").test, thr.test)
    assert not torch.equal(data.load("digits", binarization="static").train, thr.train)


def _batches(monkeypatch, **settings) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = train.make_step

    def make_step(cfg, model, objective, optimizer, own, device):
        inner = real(cfg, model, objective, optimizer, own, device)
        return lambda x, beta: (seen.append(x.clone()), inner(x, beta))[1]

    monkeypatch.setattr(train, "make_step", make_step)
    cfg = RunConfig(objective="elbo", k=1, epochs=2, train_size=120, test_size=10, hidden=[8], latent_dim=2,
                    batch_size=50, eval_k=2, gap_size=4, gap_steps=2, gap_k=2, grad_draws=2, grad_batch=4, threads=1,
                    binarization="static", **settings)
    train.run(cfg, data.load("digits", binarization="static"), lambda m, s: None)
    return seen


def test_shuffle_false_takes_minibatches_in_file_order(monkeypatch):
    """``shuffle = false``: every epoch's batches are the training split's rows 0-49, 50-99,
    100-119 in order (the last one short); with the default shuffle they are not (the power check)."""
    x = data.load("digits", binarization="static").train[:120]
    in_order = [x[:50], x[50:100], x[100:120]] * 2
    seen = _batches(monkeypatch, shuffle=False)
    assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen, in_order, strict=True))
    shuffled = _batches(monkeypatch)
    assert not torch.equal(shuffled[0], in_order[0])
