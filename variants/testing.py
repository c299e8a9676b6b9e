"""A contract check a variant's author runs on their class: :func:`check_variant`.

    >>> from variants.testing import check_variant
    >>> check_variant(MyVAE)                       # raises AssertionError listing every failure

It builds the class on a small shape as the harness does (``x_shape``, ``latent_dim``, ``hidden``,
``likelihood``, ``activation`` and the variant's options) and checks what the harness relies on
(``variants.base``: shapes ``B`` examples, ``k`` samples, ``D = prod(x_shape)``):

1. **declarations**: a subclass of ``variants.base.VAE``; ``latent`` one of continuous, discrete,
   quantized; ``modes`` a non-empty subset of ``variants.base.MODES`` holding ``eval_mode``;
   ``default_k >= 1``; ``default_objective`` a registered objective that applies to the class;
   ``mode_options`` keywords of the constructor, each read in a non-empty subset of ``modes``;
2. **construction** with the harness's keywords;
3. **shapes**: ``terms(x, k, mode=m)`` for every declared mode gives ``log p(x|z)``, ``log p(z)``,
   ``log q(z|x)`` of shape ``[k, B]``, finite, and ``kl`` ``None`` or ``[B]``; ``log_weights(x, k)``
   is ``[k, B]`` and the same for ``x`` as ``[B, *x_shape]`` or ``[B, D]``; ``variational_params(x)``
   is ``[B, P]``, ``terms(x, k, params=variational_params(x))`` equals ``terms(x, k)`` and other
   ``params`` change it;
   ``sample(n)`` is ``[n, *x_shape]``; ``reconstruct(x)`` has ``B * D`` values;
4. **determinism**: the same ``torch.manual_seed`` gives the same log-weights, bit for bit;
5. **gradients**: the default objective's surrogate gives every trainable parameter a finite
   gradient (what the training step differentiates), and ``parameter_groups()`` names encoder
   and decoder parameters;
6. **a normalized model and a valid bound** (Bernoulli likelihood; in eval mode, as the harness
   measures ``log p(x)``): on a tiny ``norm_shape`` (``D <= 10``) every binary ``x`` is enumerated
   and ``p(x)`` estimated by importance sampling, ``p_hat(x) = (1/K) sum_j w_j`` with ``K = norm_k``
   draws of ``q`` (unbiased where ``q`` is a sampling distribution): ``sum_x p_hat(x)`` must be 1
   within a factor of 2 (:data:`NORM_FACTOR`: the weights of an untrained ``q`` are heavy-tailed;
   at most 1 for a point-mass ``q``), which fails when ``log q``, ``log p(z)`` or ``p(x|z)`` is not
   a normalized log-density (off by a factor ``e^{O(d)}``); a closed-form ``kl`` must equal
   ``E_q[log q(z|x) - log p(z)]`` within five standard errors, so that the ELBO
   ``E_q[log p(x|z)] - KL`` is a bound ``<= log p(x)`` (checked against ``log p_hat(x)``).
"""

from __future__ import annotations

import inspect
import itertools
import math

import torch
from torch import Tensor

from variants.base import MODES, VAE

LATENTS = ("continuous", "discrete", "quantized")
# The importance weights of an untrained q are heavy-tailed, so sum_x p_hat(x) scatters around 1 (0.6-1.6 over seeds
# for the built-in flows and two-layer variants); a log-density that is not normalized is off by a factor e^{O(d)}.
NORM_FACTOR = 2.0
HARNESS_KEYWORDS = ("x_shape", "latent_dim", "hidden", "likelihood", "activation")  # bench.train.build_model passes these


def check_variant(cls, *, x_shape=(1, 8, 8), latent_dim: int = 4, hidden=(16,), likelihood: str = "bernoulli",
                  options: dict | None = None, batch: int = 6, k: int = 4, seed: int = 0,
                  norm_shape=(4,), norm_k: int = 4000) -> None:
    """Check the variant class ``cls`` against the contract (the module docstring); raise an
    ``AssertionError`` whose message lists every failure, one line each. ``options``: the
    variant's own keyword options (a suite's ``[variant_options.NAME]``)."""
    failures: list[str] = []
    # its registered name (set on the class itself by @register), else the class's name
    name = vars(cls).get("name") or getattr(cls, "__name__", repr(cls)) if isinstance(cls, type) else repr(cls)

    def fail(msg: str) -> None:
        failures.append(msg)

    def done() -> None:
        if failures:
            raise AssertionError(f"variant {name!r} breaks the contract:\n" + "\n".join(f"- {f}" for f in failures))

    if not (isinstance(cls, type) and issubclass(cls, VAE)):
        fail("it must be a subclass of variants.base.VAE (or GaussianLatentVAE)")
        done()
    _declarations(cls, fail)
    model = _build(cls, fail, x_shape=tuple(x_shape), latent_dim=latent_dim, hidden=tuple(hidden),
                   likelihood=likelihood, options=options or {})
    if model is None:
        done()
    torch.manual_seed(seed)
    x = _data(model.x_shape, batch, likelihood)
    try:
        _shapes(model, x, k, seed, fail)
        _gradients(model, x, k, seed, fail)
    except Exception as e:  # a method that raises is a failure to report, not a crash of the check
        fail(f"raised {type(e).__name__}: {e}")
    if likelihood == "bernoulli" and norm_shape is not None and not failures:
        small = _build(cls, fail, x_shape=tuple(norm_shape), latent_dim=latent_dim, hidden=tuple(hidden),
                       likelihood=likelihood, options=options or {})
        if small is not None:
            try:
                _normalization(small, norm_k, seed, fail)
            except Exception as e:
                fail(f"on x_shape {tuple(norm_shape)} it raised {type(e).__name__}: {e}")
    done()


def _declarations(cls, fail) -> None:
    if cls.latent not in LATENTS:
        fail(f"latent = {cls.latent!r}: must be one of {', '.join(LATENTS)}")
    modes = set(cls.modes)
    if not modes or not modes <= set(MODES):
        fail(f"modes = {sorted(modes)}: must be a non-empty subset of {', '.join(MODES)}")
    if cls.eval_mode not in modes:
        fail(f"eval_mode = {cls.eval_mode!r} is not among its modes {sorted(modes)}")
    if not (isinstance(cls.default_k, int) and cls.default_k >= 1):
        fail(f"default_k = {cls.default_k!r}: must be an integer >= 1")
    accepted = set(inspect.signature(cls.__init__).parameters)
    for option, read_in in getattr(cls, "mode_options", {}).items():
        if option not in accepted:
            fail(f"mode_options names {option!r}, which is not a keyword of its constructor")
        if not (read_in and set(read_in) <= modes):
            fail(f"mode_options[{option!r}] = {sorted(read_in)}: must be a non-empty subset of its modes {sorted(modes)}")
    try:
        from bench import objectives  # the harness's objectives (imported here only: variants sits below bench)
    except ImportError:
        return
    if cls.default_objective not in objectives.available():
        fail(f"default_objective = {cls.default_objective!r} is not a registered objective")
    elif not objectives.applies_to(cls.default_objective, cls):
        fail(f"default_objective = {cls.default_objective!r} does not apply to it (the objective needs "
             f"{'/'.join(sorted(objectives.spec(cls.default_objective).latents))} latents and mode(s) "
             f"{', '.join(sorted(objectives.spec(cls.default_objective).modes))})")


def _build(cls, fail, *, x_shape, latent_dim, hidden, likelihood, options) -> VAE | None:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [kw for kw in HARNESS_KEYWORDS if kw not in params and not takes_any]
    if missing:
        fail(f"its constructor must accept the keyword(s) {', '.join(missing)} (the harness passes "
             f"{', '.join(HARNESS_KEYWORDS)} and the variant's options)")
        return None
    try:
        return cls(x_shape=x_shape, latent_dim=latent_dim, hidden=hidden, likelihood=likelihood,
                   activation="tanh", **options)
    except Exception as e:
        fail(f"building it with x_shape={x_shape}, latent_dim={latent_dim}, hidden={hidden}, "
             f"likelihood={likelihood!r} raised {type(e).__name__}: {e}")
        return None


def _data(x_shape, n: int, likelihood: str) -> Tensor:
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, *x_shape), 0.3))
    return torch.rand(n, *x_shape)


def _seeded(seed: int, fn):
    torch.manual_seed(seed)
    return fn()


def _shapes(model: VAE, x: Tensor, k: int, seed: int, fail) -> None:
    B, D = len(x), model.x_dim
    for mode in sorted(model.modes):
        t = _seeded(seed, lambda mode=mode: model.terms(x, k, mode=mode))
        for field in ("log_px_z", "log_pz", "log_qz"):
            v = getattr(t, field)
            if not isinstance(v, Tensor) or tuple(v.shape) != (k, B):
                fail(f"terms(x, k={k}, mode={mode!r}).{field} has shape "
                     f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}, expected [k, B] = [{k}, {B}]")
            elif not torch.isfinite(v).all():
                fail(f"terms(x, k={k}, mode={mode!r}).{field} is not finite")
        if t.kl is not None and (not isinstance(t.kl, Tensor) or tuple(t.kl.shape) != (B,)):
            fail(f"terms(x, k={k}, mode={mode!r}).kl has shape {tuple(getattr(t.kl, 'shape', ()))}, expected None or [B] = [{B}]")
    lw = _seeded(seed, lambda: model.log_weights(x, k))
    if tuple(lw.shape) != (k, B):
        fail(f"log_weights(x, k={k}) has shape {tuple(lw.shape)}, expected [k, B] = [{k}, {B}]")
        return
    again = _seeded(seed, lambda: model.log_weights(x, k))
    if not torch.equal(lw, again):
        fail("log_weights is not deterministic under torch.manual_seed: draw all randomness from torch's generator "
             f"(largest difference {(lw - again).abs().max().item():.3g})")
    flat = _seeded(seed, lambda: model.log_weights(x.reshape(B, D), k))
    if not torch.allclose(flat, lw, rtol=1e-5, atol=1e-5):
        fail("log_weights differs between x as [B, *x_shape] and as flat [B, D]")
    lam = model.variational_params(x)
    if not isinstance(lam, Tensor) or lam.dim() != 2 or len(lam) != B:
        fail(f"variational_params(x) has shape {tuple(getattr(lam, 'shape', ()))}, expected [B, P] with B = {B}")
    else:
        at = _seeded(seed, lambda: model.log_weights(x, k, params=lam))
        moved = _seeded(seed, lambda: model.log_weights(x, k, params=lam + torch.linspace(-1, 1, lam.shape[1])))
        if not torch.allclose(at, lw, rtol=1e-5, atol=1e-5):
            fail("log_weights(x, k, params=variational_params(x)) differs from log_weights(x, k): with `params` "
                 "the terms must use q at those parameters (the gap decomposition fits them per datapoint)")
        elif torch.allclose(moved, lw):
            fail("log_weights(x, k, params=...) ignores `params`: the terms must read q's parameters from it when "
                 "given (the gap decomposition fits them per datapoint)")
    with torch.no_grad():
        s = model.sample(3)
        if tuple(s.shape) != (3, *model.x_shape) or not torch.isfinite(s).all():
            fail(f"sample(3) has shape {tuple(s.shape)} (finite: {bool(torch.isfinite(s).all())}), "
                 f"expected finite [n, *x_shape] = {[3, *model.x_shape]}")
        r = model.reconstruct(x)
        if r.numel() != B * D:
            fail(f"reconstruct(x) has shape {tuple(r.shape)}, expected [B, D] = [{B}, {D}]")


def _gradients(model: VAE, x: Tensor, k: int, seed: int, fail) -> None:
    groups = model.parameter_groups()
    for g in ("encoder", "decoder"):
        if not groups.get(g):
            fail(f"parameter_groups() has no {g} parameters (name inference submodules encoder*, the rest is the decoder)")
    try:
        from bench import objectives
    except ImportError:
        return
    if model.default_objective not in objectives.available() or not objectives.applies_to(model.default_objective, type(model)):
        return  # reported with the declarations
    objective = objectives.build(model.default_objective)
    model.zero_grad(set_to_none=True)
    est = _seeded(seed, lambda: objective(model, x.reshape(len(x), -1), k))
    objectives.backward(objective, est, model)
    names = {id(p): n for n, p in model.named_parameters()}
    none = [names[id(p)] for p in model.parameters() if p.requires_grad and p.grad is None]
    bad = [names[id(p)] for p in model.parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if none:
        fail(f"the default objective {model.default_objective!r} gives no gradient to parameter(s) {', '.join(none)}: "
             "they are not connected to the log-weights (detached, or computed outside torch)")
    if bad:
        fail(f"non-finite gradients of parameter(s) {', '.join(bad)}")
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def _normalization(model: VAE, n_samples: int, seed: int, fail) -> None:
    D = model.x_dim
    if D > 10:
        fail(f"norm_shape must have at most 10 values (every binary x is enumerated), got {D}")
        return
    xs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=D))).reshape(2**D, *model.x_shape)
    model.eval()  # as the harness evaluates log p(x): batch statistics (batch norm) would couple the x's
    torch.manual_seed(seed)
    chunk = 500
    lw = torch.cat([model.log_weights(xs, min(chunk, n_samples - i)) for i in range(0, n_samples, chunk)])  # [K, 2^D]
    K = len(lw)
    log_p = torch.logsumexp(lw, 0) - math.log(K)  # log p_hat(x), [2^D]
    w = (lw - log_p).exp()  # w_j / p_hat(x): the relative spread of the weights
    se = (log_p.exp() * w.std(0) / math.sqrt(K)).pow(2).sum().sqrt().item()  # the standard error of sum_x p_hat(x)
    total = log_p.exp().sum().item()
    if model.deterministic_q:
        if total > 1 + max(5 * se, 1e-3):
            fail(f"sum over every binary x of p_hat(x) is {total:.4f} > 1 (a point-mass q gives a lower bound of p(x)): "
                 "p(x | z) or log p(z) is not a normalized log-density")
        return
    if not 1 / NORM_FACTOR < total < NORM_FACTOR:
        fail(f"sum over every binary x of p_hat(x) = (1/K) sum_j exp(log w_j) is {total:.4f} (standard error {se:.4f}, "
             f"K = {K}), not 1 within a factor {NORM_FACTOR:g}: log p(x | z) + log p(z) - log q(z | x) is not a valid log "
             "importance weight (a log-density that is not normalized, or z not drawn from the q that log q scores)")
    torch.manual_seed(seed)
    t = model.terms(xs, min(n_samples, 1000), mode="reparam") if "reparam" in model.modes else None
    if t is not None and t.kl is not None:
        diff = t.log_qz - t.log_pz  # [k, B]: a Monte Carlo estimate of the KL
        mc, err = diff.mean(0), diff.std(0) / math.sqrt(len(diff))
        off = (t.kl - mc).abs()
        if (off > 5 * err + 1e-3).any():
            i = int((off - 5 * err).argmax())
            fail(f"the closed-form kl ({t.kl[i].item():.4f} at x #{i}) differs from E_q[log q(z|x) - log p(z)] "
                 f"({mc[i].item():.4f} +- {err[i].item():.4f})")
        elbo = t.log_px_z.mean(0) - t.kl
        if (elbo > log_p + math.log(NORM_FACTOR)).any():
            fail("the ELBO E_q[log p(x|z)] - KL exceeds the estimate of log p(x): it is no lower bound")
