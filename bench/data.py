"""Datasets: fixed train/validation/test splits kept on the device as one tensor each.

Every dataset is ``[N, D]`` float32 (intensities in [0, 1] for images, real values for
``linear-gaussian``) plus its ``x_shape``. Binary data follows a recorded protocol:

* ``dynamic`` (default): the training set is re-binarized, ``x ~ Bernoulli(intensity)``, every
  epoch; validation and test are binarized once with a fixed seed, so every run is scored on the
  same binary images;
* ``static``: the training set is binarized once too (fixed seed); on MNIST the two protocols
  differ by about 2 nats;
* ``none``: the intensities themselves, with a Gaussian likelihood.

Sources: ``digits`` (scikit-learn's 1,797 8x8 digits, shipped with the package: always offline);
``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` IDX files, else ``<data_dir>``, else a
torchvision download); ``mnist`` and ``kmnist`` (``<data_dir>`` or a torchvision download);
``linear-gaussian`` (synthetic, from a fixed probabilistic-PCA model: the oracle's data).
Offline and missing, a loader raises :class:`bench.errors.DatasetUnavailable` saying how to get
the data.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from bench.errors import DatasetUnavailable

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 20160401  # the splits and the evaluation binarization never change with the run seed


@dataclass
class Dataset:
    name: str
    train: Tensor  # [N_train, D]
    val: Tensor  # [N_val, D]
    test: Tensor  # [N_test, D]
    x_shape: tuple[int, ...]
    binarization: str  # dynamic | static | none
    source: str = ""

    @property
    def likelihood(self) -> str:
        return "gaussian" if self.binarization == "none" else "bernoulli"

    def train_epoch(self, generator: torch.Generator) -> Tensor:
        """The training set for one epoch (a fresh binarization under ``dynamic``)."""
        if self.binarization == "dynamic":
            return torch.bernoulli(self.train, generator=generator)
        return self.train


_LOADERS: dict[str, Callable[[Path], tuple[np.ndarray, np.ndarray, tuple[int, ...], str]]] = {}
_CONTINUOUS_ONLY: set[str] = set()


def register(name: str, continuous_only: bool = False):
    """Register ``loader(data_dir) -> (train_pool [N, D], test [M, D], x_shape, source)``."""

    def deco(fn):
        _LOADERS[name] = fn
        if continuous_only:
            _CONTINUOUS_ONLY.add(name)
        return fn

    return deco


def available() -> list[str]:
    return sorted(_LOADERS)


def load(
    name: str,
    *,
    binarization: str = "dynamic",
    data_dir: str | Path = "",
    device: str | torch.device = "cpu",
    n_val: int | None = None,
) -> Dataset:
    """Load ``name`` with fixed splits onto ``device``. ``n_val`` defaults to 1/6 of the pool
    (10,000 of MNIST's 60,000; 250 of the digits' pool)."""
    if name not in _LOADERS:
        raise DatasetUnavailable(f"unknown dataset {name!r}; valid: {', '.join(available())}")
    if name in _CONTINUOUS_ONLY and binarization != "none":
        raise DatasetUnavailable(f"dataset {name!r} is continuous: use binarization = \"none\"")
    data_dir = Path(data_dir or "data")
    pool, test, x_shape, source = _LOADERS[name](data_dir)
    g = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(len(pool), generator=g)
    n_val = n_val if n_val is not None else len(pool) // 6
    pool_t = torch.as_tensor(pool, dtype=torch.float32)[perm]
    train, val = pool_t[n_val:], pool_t[:n_val]
    test_t = torch.as_tensor(test, dtype=torch.float32)
    if binarization != "none":
        train = torch.bernoulli(train, generator=g) if binarization == "static" else train
        val = torch.bernoulli(val, generator=g)
        test_t = torch.bernoulli(test_t, generator=g)
    return Dataset(
        name=name,
        train=train.contiguous().to(device),
        val=val.contiguous().to(device),
        test=test_t.contiguous().to(device),
        x_shape=x_shape,
        binarization=binarization,
        source=source,
    )


# -- loaders ------------------------------------------------------------------------------------
@register("digits")
def _digits(data_dir: Path):
    """scikit-learn's 8x8 digits (1,797 images, 0..16 grey levels scaled to [0, 1]): the last 300
    (in a fixed shuffle) are the test set."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x = x[perm]
    return x[:-300], x[-300:], (1, 8, 8), "sklearn.datasets.load_digits"


def _read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 image file (optionally gzipped) -> ``[N, rows*cols]`` float32 in [0, 1]."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if int.from_bytes(raw[:4], "big") != 2051:
        raise DatasetUnavailable(f"{path} is not an IDX image file")
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32) / 255.0


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for suffix in (".gz", ""):
            p = d / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _torchvision_idx(name: str, tv_class: str, data_dir: Path, extra_dirs: list[Path], hint: str):
    """Train/test IDX files from ``extra_dirs``, ``data_dir`` (flat or torchvision's layout), or a
    torchvision download into ``data_dir``."""
    dirs = [*extra_dirs, data_dir / name, data_dir / tv_class / "raw", data_dir]
    found = [_find_idx(dirs, s) for s in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")]
    if None in found:
        import torchvision  # imported here only: it costs seconds

        try:
            getattr(torchvision.datasets, tv_class)(str(data_dir), train=True, download=True)
            getattr(torchvision.datasets, tv_class)(str(data_dir), train=False, download=True)
        except Exception as e:  # torchvision raises URLError/RuntimeError offline
            raise DatasetUnavailable(
                f"dataset {name!r} is not on disk and could not be downloaded ({type(e).__name__}: "
                f"{str(e)[:200]}).\nTo use it offline, put train-images-idx3-ubyte(.gz) and "
                f"t10k-images-idx3-ubyte(.gz) in {data_dir / name} (or set data_dir); {hint}"
            ) from None
        found = [_find_idx(dirs, s) for s in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")]
        if None in found:
            raise DatasetUnavailable(f"torchvision downloaded {name!r} but its IDX files are not in {data_dir}")
    train, test = (_read_idx_images(p) for p in found)
    return train, test, (1, 28, 28), str(found[0].parent)


@register("fashion-mnist")
def _fashion(data_dir: Path):
    return _torchvision_idx(
        "fashion-mnist", "FashionMNIST", data_dir, [DEBIAN_FASHION_MNIST],
        "on Debian `apt-get install dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist.",
    )


@register("mnist")
def _mnist(data_dir: Path):
    return _torchvision_idx("mnist", "MNIST", data_dir, [], "any machine with a network fills it on first use.")


@register("kmnist")
def _kmnist(data_dir: Path):
    return _torchvision_idx("kmnist", "KMNIST", data_dir, [], "any machine with a network fills it on first use.")


LINEAR_GAUSSIAN = {"x_dim": 16, "latent_dim": 4, "sigma": 0.5, "n_pool": 3000, "n_test": 500}


def linear_gaussian_model(seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor, float]:
    """The fixed generating pPCA model ``(W [16, 4], b [16], sigma)`` of the ``linear-gaussian`` data."""
    g = torch.Generator().manual_seed(seed)
    c = LINEAR_GAUSSIAN
    W = torch.randn(c["x_dim"], c["latent_dim"], generator=g)
    b = 0.5 * torch.randn(c["x_dim"], generator=g)
    return W, b, c["sigma"]


@register("linear-gaussian", continuous_only=True)
def _linear_gaussian(data_dir: Path):
    """``x = W z + b + sigma eps``, ``z, eps ~ N(0, I)``: 3,000 pool + 500 test points in 16 dims."""
    W, b, sigma = linear_gaussian_model()
    g = torch.Generator().manual_seed(SPLIT_SEED + 1)
    n = LINEAR_GAUSSIAN["n_pool"] + LINEAR_GAUSSIAN["n_test"]
    z = torch.randn(n, W.shape[1], generator=g)
    x = z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=g)
    x = x.numpy()
    return x[:-500], x[-500:], (W.shape[0],), f"pPCA d={W.shape[1]} sigma={sigma} seed={SPLIT_SEED}"


def true_log_marginal(x: Tensor) -> Tensor:
    """``log p(x)`` under the generating model of the ``linear-gaussian`` data (a reference value)."""
    W, b, sigma = (t.to(x.device) if torch.is_tensor(t) else t for t in linear_gaussian_model())
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], device=x.device)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


