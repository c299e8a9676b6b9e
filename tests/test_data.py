"""Datasets: fixed splits, the binarization protocols, and the loaders' sources."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

from bench import data
from bench.errors import DatasetUnavailable


def test_digits_splits_are_fixed_disjoint_and_complete():
    a = data.load("digits", binarization="none")
    b = data.load("digits", binarization="none")
    assert (len(a.train), len(a.val), len(a.test)) == (1248, 249, 300)
    assert a.x_shape == (1, 8, 8) and a.train.shape[1] == 64
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(a, s), getattr(b, s))
    assert a.train.min() >= 0 and a.train.max() <= 1
    rows = {tuple(r.tolist()) for r in torch.cat([a.train, a.val, a.test])}
    assert len(rows) > 1700  # the 1,797 images, a few of which coincide at 8x8


def test_dynamic_binarization_resamples_the_training_set_every_epoch():
    d = data.load("digits")
    g = torch.Generator().manual_seed(0)
    e1, e2 = d.train_epoch(g), d.train_epoch(g)
    assert set(e1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(e1, e2)
    # E[Bernoulli(p)] = p: the mean over 200 epochs is within 5 sd of the intensities (sd <= 0.5/sqrt(200))
    mean = torch.stack([d.train_epoch(g) for _ in range(200)]).mean(0)
    assert (mean - d.train).abs().max() < 5 * 0.5 / 200**0.5
    # validation and test are binarized once, identically for every run
    assert torch.equal(d.test, data.load("digits").test) and set(d.test.unique().tolist()) == {0.0, 1.0}


def test_static_binarization_is_fixed():
    d = data.load("digits", binarization="static")
    g = torch.Generator().manual_seed(0)
    assert torch.equal(d.train_epoch(g), d.train_epoch(g))
    assert set(d.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(d.train, data.load("digits", binarization="static").train)


def test_linear_gaussian_is_continuous_only():
    assert data.load("linear-gaussian", binarization="none").likelihood == "gaussian"
    with pytest.raises(DatasetUnavailable, match="continuous"):
        data.load("linear-gaussian")


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DatasetUnavailable, match="valid: digits, fashion-mnist"):
        data.load("cifar100")


def write_idx(path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, n, rows, cols))
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def test_mnist_from_a_user_directory_without_network(tmp_path):
    """IDX files the user put in <data_dir>/mnist are read as they are (no download attempted);
    validation is the training file's tail, in file order (MNIST's [50000:] at full size)."""
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (60, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", test)
    d = data.load("mnist", data_dir=tmp_path, binarization="none")
    assert d.x_shape == (1, 28, 28) and (len(d.train), len(d.val), len(d.test)) == (50, 10, 10)
    def as_float(a):
        return torch.as_tensor(a.reshape(len(a), -1) / 255.0, dtype=torch.float32)
    torch.testing.assert_close(d.test, as_float(test))
    torch.testing.assert_close(d.train, as_float(train[:50]))
    torch.testing.assert_close(d.val, as_float(train[50:]))
    assert d.source == str(tmp_path / "mnist")


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_every_protocol_scores_the_identical_binary_test_set(name, tmp_path):
    """Each source split is binarized by its own seeded generator: dynamic and static runs (and
    runs with another validation size) see the same binary test and validation images."""
    if name == "mnist":  # synthetic IDX files: the fixed-tail split of the MNIST route
        rng = np.random.default_rng(1)
        (tmp_path / "mnist").mkdir()
        write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (120, 28, 28)))
        write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)))
    dyn = data.load(name, data_dir=tmp_path)
    static = data.load(name, data_dir=tmp_path, binarization="static")
    fewer_val = data.load(name, data_dir=tmp_path, n_val=7)
    assert set(dyn.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(dyn.test, static.test) and torch.equal(dyn.test, fewer_val.test)
    assert torch.equal(dyn.val, static.val)
    # an image's binary version is fixed per image: with a smaller validation split, the images
    # that moved into the static training set keep the binary values they had in validation
    static7 = data.load(name, data_dir=tmp_path, binarization="static", n_val=7)
    moved = len(dyn.val) - 7
    if name == "digits":  # validation = the head of a fixed shuffle
        assert torch.equal(static7.val, dyn.val[:7]) and torch.equal(static7.train[:moved], dyn.val[7:])
    else:  # validation = the tail of the training file
        assert torch.equal(static7.val, dyn.val[-7:]) and torch.equal(static7.train[-moved:], dyn.val[:-7])
    # power: a different seed for the test draw gives a different binary test set
    other = torch.bernoulli(data.load(name, data_dir=tmp_path, binarization="none").test,
                            generator=torch.Generator().manual_seed(0))
    assert not torch.equal(other, dyn.test)


def test_a_file_that_is_not_idx_is_a_clear_error(tmp_path):
    (tmp_path / "kmnist").mkdir()
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / "kmnist" / stem).write_bytes(b"not an idx file at all")
    with pytest.raises(DatasetUnavailable, match="not an IDX image file"):
        data.load("kmnist", data_dir=tmp_path)


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST.is_dir() and os.environ.get("CI") != "true",
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_is_found_where_debian_installs_it(tmp_path):
    """The real Fashion-MNIST: 60,000 + 10,000 28x28 images, read offline from the Debian package."""
    d = data.load("fashion-mnist", data_dir=tmp_path)
    assert d.source == str(data.DEBIAN_FASHION_MNIST)
    assert (len(d.train), len(d.val), len(d.test)) == (50_000, 10_000, 10_000)
    assert d.x_shape == (1, 28, 28)
    # the mean intensity of Fashion-MNIST's training images is 0.286 (the figure everyone normalizes by)
    assert abs(float(data.load("fashion-mnist", binarization="none").train.mean()) - 0.286) < 0.01
    assert not any(tmp_path.iterdir())  # nothing downloaded
