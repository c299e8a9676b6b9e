"""``variants.testing.check_variant``: every built-in variant passes; deliberately broken variants
fail with the message that names their fault (the check's power)."""

from __future__ import annotations

import math
import random

import pytest
import torch

import variants
from variants.base import LogWeightTerms, flat
from variants.testing import check_variant
from variants.vanilla import VanillaVAE


@pytest.mark.parametrize("name", variants.available())
def test_every_built_in_variant_passes(name):
    if name == "linear-gaussian":
        check_variant(variants.get(name), x_shape=(6,), likelihood="gaussian")
    else:
        check_variant(variants.get(name))


# -- broken variants: each breaks one part of the contract --------------------------------------
class Broken(VanillaVAE):
    """The vanilla VAE with ``fault`` applied to its terms."""

    def fault(self, t: LogWeightTerms, x) -> LogWeightTerms:
        return t

    def terms(self, x, k=1, *, params=None, mode="reparam"):
        t = super().terms(x, k, params=params, mode=mode)
        return self.fault(LogWeightTerms(t.log_px_z, t.log_pz, t.log_qz, t.kl), x)


class UnnormalizedQ(Broken):  # log q without its -d/2 log(2 pi): weights too small by (2 pi)^(d/2)
    def fault(self, t, x):
        t.log_qz = t.log_qz + self.latent_dim * 0.5 * math.log(2 * math.pi)
        return t


class UnnormalizedDecoder(Broken):  # log p(x | z) = x log sigmoid(f(z)): the (1 - x) term forgotten
    def fault(self, t, x):
        t.log_px_z = t.log_px_z + (1 - flat(x)).sum(-1) * 0.7
        return t


class Transposed(Broken):  # [B, k] instead of [k, B]
    def fault(self, t, x):
        return LogWeightTerms(t.log_px_z.T, t.log_pz.T, t.log_qz.T, t.kl)


class Unseeded(Broken):  # randomness from Python's generator, not torch's
    def fault(self, t, x):
        t.log_px_z = t.log_px_z + 1e-3 * random.random()
        return t


class WrongKL(Broken):  # twice the closed-form KL
    def fault(self, t, x):
        if t.kl is not None:
            t.kl = 2 * t.kl
        return t


class DetachedDecoder(Broken):  # the decoder's parameters get no gradient
    def fault(self, t, x):
        t.log_px_z = t.log_px_z.detach()
        return t


class IgnoresParams(VanillaVAE):  # q read from the encoder even when free parameters are given
    def terms(self, x, k=1, *, params=None, mode="reparam"):
        return super().terms(x, k, params=None, mode=mode)


class NoActivation(VanillaVAE):
    def __init__(self, x_shape, latent_dim=16, hidden=(200, 200), likelihood="bernoulli"):
        super().__init__(x_shape, latent_dim, hidden, likelihood)


class BadModes(VanillaVAE):
    modes = frozenset({"reparam", "teleport"})
    eval_mode = "score"


class BadModeOptions(VanillaVAE):  # an option the constructor does not take; a mode the class lacks
    mode_options = {"tau": frozenset({"relaxed"}), "latent_dim": frozenset({"teleport"})}


class NotAVAE(torch.nn.Module):
    pass


@pytest.mark.parametrize("cls, message", [
    (UnnormalizedQ, r"sum over every binary x of p_hat\(x\) .* not 1 within a factor 2: log p\(x \| z\) \+ log p\(z\) - "
                    r"log q\(z \| x\) is not a valid log importance weight"),
    (UnnormalizedDecoder, r"not 1 within a factor 2"),
    (Transposed, r"terms\(x, k=4, mode='reparam'\)\.log_px_z has shape \(6, 4\), expected \[k, B\] = \[4, 6\]"),
    (Unseeded, r"log_weights is not deterministic under torch\.manual_seed"),
    (WrongKL, r"the closed-form kl \(.*\) differs from E_q\[log q\(z\|x\) - log p\(z\)\]"),
    (DetachedDecoder, r"the default objective 'elbo' gives no gradient to parameter\(s\) decoder\.net\.0\.weight"),
    (IgnoresParams, r"log_weights\(x, k, params=\.\.\.\) ignores `params`"),
    (NoActivation, r"its constructor must accept the keyword\(s\) activation"),
    (BadModes, r"modes = \['reparam', 'teleport'\]: must be a non-empty subset .*\n- eval_mode = 'score' is not among"),
    (BadModeOptions, r"mode_options names 'tau', which is not a keyword of its constructor\n- mode_options\['tau'\] = "
                     r"\['relaxed'\]: must be a non-empty subset of its modes .*\n- mode_options\['latent_dim'\]"),
    (NotAVAE, r"it must be a subclass of variants\.base\.VAE"),
])
def test_a_broken_variant_fails_with_the_message_naming_its_fault(cls, message):
    with pytest.raises(AssertionError, match=message) as e:
        check_variant(cls)
    assert str(e.value).startswith(f"variant {cls.__name__!r} breaks the contract:\n- ")
