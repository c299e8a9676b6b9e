"""The VQ-VAE objective (van den Oord et al. 2017) for quantized latents.

``model.terms(x, k, mode="straight-through")`` returns ``variants.vq_vae.VQTerms``: the
log-weight of the point-mass q (``log p(x | z_q) - N log K``, the same for every ``k``) and the
quantization losses ``codebook``, ``commitment`` (``[B]``).
"""

from __future__ import annotations

from bench.objectives.registry import Estimate, register


@register("vq-vae", modes=("straight-through",), latents=("quantized",))
def vq_vae(model, x, k: int = 1, params=None) -> Estimate:
    """VQ-VAE loss: straight-through reconstruction, codebook and commitment terms; logs the bound.

    Surrogate: ``-log p(x | z_e + stop_grad(z_q - z_e)) + ||stop_grad(z_e) - z_q||^2 +
    beta ||z_e - stop_grad(z_q)||^2`` averaged over the batch (``beta = model.commitment``; the
    codebook term is 0 with the EMA codebook, which is not trained by gradients). Value: the
    bound ``log p(x) >= log p(x | z_q) - N log K`` of the deterministic q under the uniform prior.
    The straight-through gradient is not the gradient of that bound (the decoder is evaluated at
    ``z_q``, the encoder gets the decoder's gradient at ``z_q`` as if at ``z_e``).
    """
    t = model.terms(x, 1, params=params, mode="straight-through")
    loss = -t.log_px_z[0] + t.codebook + model.commitment * t.commitment
    return Estimate(value=t.log_w[0].detach(), surrogate=loss.mean())
