"""IWAE (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders").

The vanilla networks trained with the k-sample importance-weighted bound

    L_k(x) = E_{z_1..z_k ~ q} [ log (1/k) sum_j p(x, z_j) / q(z_j | x) ],   L_1 = ELBO <= L_k <= log p(x).

A variant here is a preset of networks x objective: same model as ``vanilla``, default objective
``iwae`` with ``k = 5`` (the paper uses 1, 5 and 50; set ``k`` in the suite).
"""

from __future__ import annotations

from variants.registry import register
from variants.vanilla import VanillaVAE


@register("iwae")
class IWAE(VanillaVAE):
    default_objective = "iwae"
    default_k = 5
