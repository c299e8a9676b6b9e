"""Bars: 8x8 binary images, each row and each column a bar (all ones) with probability 1/8
(the classic "bars" test of binary latent-variable models, e.g. Hinton et al. 1995's
wake-sleep paper): 16 independent binary causes, which a 16-unit binary latent can describe
exactly.

A loader as ``bench.data.register`` wants it: ``bars(data_dir) -> (train_pool [N, 64], test
[M, 64], x_shape, source)`` with values in [0, 1]. Fixed seeds: the same images on every machine.
Registered by its entry point ``bars`` (no decorator needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE, P_BAR, N_POOL, N_TEST = 8, 1 / 8, 1500, 300


def draw(n: int, seed: int) -> np.ndarray:
    """``n`` images ``[n, 64]``: pixel (r, c) is on if row r or column c is a bar."""
    rng = np.random.default_rng(seed)
    rows = rng.random((n, SIZE, 1)) < P_BAR
    cols = rng.random((n, 1, SIZE)) < P_BAR
    return (rows | cols).reshape(n, SIZE * SIZE).astype(np.float32)


def bars(data_dir: Path):
    return draw(N_POOL, seed=1995), draw(N_TEST, seed=1996), (1, SIZE, SIZE), "vaebench_example.dataset (synthetic)"
