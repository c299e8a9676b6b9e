"""An example vaebench plugin package (entry points in its pyproject.toml):

* ``shared-sigma`` (``variant.SharedSigmaVAE``): a VAE whose q has one variance for all inputs;
* ``vr-half`` (``objective.vr_half``): the Renyi (VR) bound at alpha = 1/2;
* ``bars`` (``dataset.bars``): 8x8 images of random horizontal and vertical bars.
"""
