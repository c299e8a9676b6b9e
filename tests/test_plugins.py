"""Plugins (``variants.plugins``, ``bench.plugins``, ``npz:`` datasets): entry points faked with a
dist-info directory on sys.path, plugin modules written to a temporary directory, every clash and
import failure a clear message; workers import the modules a job carries. The end-to-end runs of
the example package (``examples/vaebench-example``) in an environment of their own are the slow
tier's (``tests/test_plugins_e2e.py``)."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import variants
from bench import cli, data, objectives
from bench.errors import ConfigError, DatasetUnavailable
from bench.plugins import Plugins, import_modules
from bench.suite import load_suite
from tests.conftest import ROOT
from variants.plugins import PluginError

REGISTRIES = (variants.registry.PROVENANCE, objectives.registry.PROVENANCE, data.PROVENANCE)

LAB = '''
"""A plugin module: a variant, an objective and a dataset."""
import numpy as np

from bench.objectives import Estimate, register as register_objective
from variants.vanilla import VanillaVAE


class LabVAE(VanillaVAE):
    """The vanilla networks under another name."""


@register_objective("lab-bound", modes=("reparam",))
def lab_bound(model, x, k=1, params=None):
    """The ELBO again (mean log-weight)."""
    log_w = model.terms(x, k, params=params, mode="reparam").log_w
    return Estimate(value=log_w.mean(0).detach(), surrogate=-log_w.mean())


def lab_data(data_dir):
    rng = np.random.default_rng(0)
    return rng.random((120, 16)).astype(np.float32), rng.random((30, 16)).astype(np.float32), (16,), "lab"
'''


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """The registries, their sources and entry-point lists restored afterwards, and the modules
    imported from this test's directory forgotten."""
    saved = [(p, dict(p.registry), dict(p.sources)) for p in REGISTRIES]
    extra = (set(data._CONTINUOUS_ONLY), dict(data._FIXED_VAL))
    modules = set(sys.modules)
    for p in REGISTRIES:
        p.refresh()
    yield monkeypatch
    for p, registry, sources in saved:
        p.registry.clear()
        p.registry.update(registry)
        p.sources.clear()
        p.sources.update(sources)
        p.refresh()
    data._CONTINUOUS_ONLY.clear()
    data._CONTINUOUS_ONLY.update(extra[0])
    data._FIXED_VAL.clear()
    data._FIXED_VAL.update(extra[1])
    for m in set(sys.modules) - modules:
        if str(getattr(sys.modules[m], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[m]


def site(tmp: Path, dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str], monkeypatch) -> Path:
    """A directory on sys.path with ``DIST-0.0.dist-info`` (its entry points) and module files."""
    tmp.mkdir(parents=True, exist_ok=True)
    info = tmp / f"{dist}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{n} = {v}\n" for n, v in eps.items()) for group, eps in entry_points.items()))
    for name, text in modules.items():
        (tmp / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp))
    importlib.invalidate_caches()
    for p in REGISTRIES:
        p.refresh()
    return tmp


LAB_EPS = {"vaebench.variants": {"lab-vae": "mylab_plugin:LabVAE"},
           "vaebench.objectives": {"lab-bound": "mylab_plugin:lab_bound"},
           "vaebench.datasets": {"lab-data": "mylab_plugin:lab_data"}}


def test_entry_points_are_listed_without_import_and_loaded_on_first_use(tmp_path, clean):
    site(tmp_path / "site", "mylab", LAB_EPS, {"mylab_plugin": LAB}, clean)
    assert "lab-vae" in variants.available() and "lab-bound" in objectives.available() and "lab-data" in data.available()
    assert "mylab_plugin" not in sys.modules  # listed, not imported
    model = variants.build("lab-vae", x_shape=(16,), latent_dim=2, hidden=(8,))
    assert "mylab_plugin" in sys.modules and type(model).name == "lab-vae"
    assert variants.source("lab-vae") == "entry point mylab:mylab_plugin"
    assert objectives.source("lab-bound") == "entry point mylab:mylab_plugin"  # registered by its decorator
    assert objectives.applies_to("lab-bound", variants.get("lab-vae"))
    ds = data.load("lab-data", binarization="none")
    assert data.source("lab-data") == "entry point mylab:mylab_plugin" and ds.x_shape == (16,)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (100, 20, 30)
    assert variants.source("vanilla") == "built-in" and data.source("digits") == "built-in"


def test_an_entry_point_with_a_built_in_name_is_an_error_naming_both(tmp_path, clean):
    site(tmp_path / "site", "mylab", {"vaebench.variants": {"vanilla": "mylab_plugin:LabVAE"}}, {"mylab_plugin": LAB}, clean)
    with pytest.raises(PluginError, match=r"variant 'vanilla': entry point mylab:mylab_plugin \(mylab_plugin:LabVAE\) "
                                          r"registers a built-in name, held by built-in \(variants\.vanilla\.VanillaVAE\)"):
        variants.available()
    assert variants.get("vanilla").__module__ == "variants.vanilla"  # resolving a built-in never consults plugins


def test_two_distributions_with_one_name_are_an_error_naming_both(tmp_path, clean):
    site(tmp_path / "a", "mylab", LAB_EPS, {"mylab_plugin": LAB}, clean)
    site(tmp_path / "b", "otherlab", {"vaebench.variants": {"lab-vae": "otherlab_plugin:LabVAE"}},
         {"otherlab_plugin": LAB}, clean)
    with pytest.raises(PluginError, match=r"'lab-vae' comes from two entry points: entry point (otherlab|mylab):\S+ .* and "
                                          r"entry point (mylab|otherlab):"):
        variants.available()


def test_a_plugin_module_that_takes_a_built_in_or_an_entry_points_name_is_a_config_error(tmp_path, clean):
    site(tmp_path / "site", "mylab", LAB_EPS, {"mylab_plugin": LAB}, clean)
    (tmp_path / "site" / "hijack.py").write_text(
        "from variants import register\nfrom variants.vanilla import VanillaVAE\n\n"
        "@register('vanilla')\nclass Mine(VanillaVAE):\n    pass\n")
    with pytest.raises(ConfigError, match=r"--plugin: plugin module 'hijack' failed to import: PluginError: variant "
                                          r"'vanilla': plugin module hijack \(hijack\.Mine\) registers a built-in name, held "
                                          r"by built-in \(variants\.vanilla\.VanillaVAE\)"):
        import_modules(["hijack"], "--plugin")
    (tmp_path / "site" / "twin.py").write_text(
        "from variants import register\nfrom variants.vanilla import VanillaVAE\n\n"
        "@register('lab-vae')\nclass Twin(VanillaVAE):\n    pass\n")
    with pytest.raises(ConfigError, match=r"variant 'lab-vae': plugin module twin \(twin\.Twin\) registers a name that "
                                          r"entry point mylab:mylab_plugin \(mylab_plugin:LabVAE\) provides"):
        import_modules(["twin"], "--plugin")


def test_entry_points_that_fail_to_import_or_do_not_register_are_clear_errors(tmp_path, clean):
    site(tmp_path / "site", "mylab", {"vaebench.variants": {"broken": "nowhere_module:X"},
                                      "vaebench.objectives": {"bare": "mylab_plugin:lab_data"}}, {"mylab_plugin": LAB}, clean)
    with pytest.raises(PluginError, match=r"variant 'broken': entry point mylab:nowhere_module \(nowhere_module:X\) failed "
                                          r"to import: ModuleNotFoundError: No module named 'nowhere_module'"):
        variants.get("broken")
    with pytest.raises(PluginError, match=r"objective 'bare': .* did not register 'bare' when imported; decorate it"):
        objectives.spec("bare")


def test_suite_plugins_key_and_plugin_flag_import_modules_and_record_their_paths(tmp_path, clean):
    (tmp_path / "labmod.py").write_text(LAB + "\nfrom variants import register\nregister('lab-vae')(LabVAE)\n"
                                        "from bench.data import register as register_data\nregister_data('lab-data')(lab_data)\n")
    (tmp_path / "other.py").write_text("X = 1\n")
    clean.syspath_prepend(str(tmp_path))
    suite = tmp_path / "s.toml"
    suite.write_text('plugins = ["labmod"]\n[defaults]\nbinarization = "none"\n[[grid]]\nvariants = ["lab-vae"]\n'
                     'objectives = ["lab-bound", "elbo"]\ndatasets = ["lab-data"]\n')
    s = load_suite(str(suite), plugins=["other"])
    assert [(r.variant, r.objective, r.dataset) for r in s.runs] == [("lab-vae", "lab-bound", "lab-data"),
                                                                      ("lab-vae", "elbo", "lab-data")]
    assert s.plugins == Plugins(("other", "labmod"), (str(tmp_path.resolve()),))
    assert variants.source("lab-vae") == "plugin module labmod"
    suite.write_text('plugins = ["labmod", "no_such_module"]\n[[grid]]\nvariants = ["vanilla"]\n')
    with pytest.raises(ConfigError, match=r"s\.toml plugins: plugin module 'no_such_module' failed to import: "
                                          r"ModuleNotFoundError: No module named 'no_such_module'"):
        load_suite(str(suite))


def test_a_worker_imports_the_plugins_its_job_carries_from_the_drivers_paths(tmp_path, clean):
    """A fresh process elsewhere (its own working directory), given only the pickled Plugins."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "labmod.py").write_text(LAB + "\nfrom variants import register\nregister('lab-vae')(LabVAE)\n")
    clean.syspath_prepend(str(tmp_path / "mods"))
    plugins = import_modules(["labmod"], "--plugin")
    assert plugins.paths == (str((tmp_path / "mods").resolve()),)
    code = ("import pickle, sys; from bench.plugins import ensure; ensure(pickle.loads(sys.stdin.buffer.read())); "
            "import variants; print(variants.source('lab-vae'))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(plugins), cwd=tmp_path, env=env,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().strip() == "plugin module labmod"


def test_cli_plugin_that_fails_to_import_exits_2_without_a_traceback(tmp_path, capsys, clean):
    (tmp_path / "badmod.py").write_text("raise RuntimeError('the lab server is down')\n")
    clean.syspath_prepend(str(tmp_path))
    rc = cli.main(["run", "--suite", str(ROOT / "tests" / "suites" / "tiny.toml"), "--plugin", "badmod",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'never.db'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "error: --plugin: plugin module 'badmod' failed to import: RuntimeError: the lab server is down" in err
    assert not (tmp_path / "never.db").exists()


def test_bench_list_shows_where_each_name_comes_from(tmp_path, capsys, clean):
    site(tmp_path / "site", "mylab", LAB_EPS, {"mylab_plugin": LAB}, clean)
    (tmp_path / "site" / "labmod2.py").write_text(
        "from variants import register\nfrom variants.vanilla import VanillaVAE\n\n"
        "@register('lab-vae-2')\nclass Two(VanillaVAE):\n    pass\n")
    assert cli.main(["list", "--plugin", "labmod2"]) == 0
    out = capsys.readouterr().out
    line = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()}
    assert line["lab-vae"].endswith("[entry point mylab:mylab_plugin]")
    assert line["lab-vae-2"].endswith("[plugin module labmod2]")
    assert line["lab-bound"].endswith("[entry point mylab:mylab_plugin]")
    assert line["lab-data"].endswith("[entry point mylab:mylab_plugin]")
    assert "[" not in line["vanilla"] and line["digits"].strip() == "digits"


# -- npz datasets ----------------------------------------------------------------------------------
def write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_dataset_with_named_splits(tmp_path):
    rng = np.random.default_rng(0)
    train, val, test = (rng.random((n, 3, 5)).astype(np.float32) for n in (40, 10, 12))
    ds = data.load(write_npz(tmp_path / "d.npz", train=train, val=val, test=test), binarization="none")
    assert ds.x_shape == (1, 3, 5) and ds.train.shape == (40, 15) and ds.val.shape == (10, 15)
    assert torch.equal(ds.val, torch.as_tensor(val.reshape(10, 15)))  # the file's val split, as it is
    assert torch.equal(ds.test, torch.as_tensor(test.reshape(12, 15)))
    assert ds.source.startswith(str((tmp_path / "d.npz").resolve())) and "sha256" in ds.source
    flat = data.load(write_npz(tmp_path / "f.npz", train=train.reshape(40, 15), test=test.reshape(12, 15)))
    assert flat.x_shape == (15,) and (len(flat.train), len(flat.val)) == (34, 6)  # no val: 1/6 of train, shuffled
    assert set(np.unique(flat.test.numpy())) <= {0.0, 1.0}  # the default protocol binarizes


@pytest.mark.parametrize("arrays, message", [
    ({"train": np.zeros((4, 3))}, r"must hold the arrays train and test .*missing test"),
    ({"train": np.zeros((4, 3)), "test": np.zeros((2, 3)), "extra": np.zeros(2)}, r"unknown extra"),
    ({"train": np.full((4, 3), 2.0), "test": np.zeros((2, 3))}, r"train must hold values in \[0, 1\].*got values in \[2, 2\]"),
    ({"train": np.zeros((4, 3, 2, 2)), "test": np.zeros((2, 3, 2, 2))}, r"train must be .* \[N, D\] or \[N, H, W\].*\[4, 3, 2, 2\]"),
    ({"train": np.zeros((4, 3)), "test": np.zeros((2, 4))}, r"the splits' example shapes differ: train \[3\], test \[4\]"),
])
def test_npz_dataset_errors_say_what_is_wrong(tmp_path, arrays, message):
    with pytest.raises(DatasetUnavailable, match=message):
        data.load(write_npz(tmp_path / "bad.npz", **arrays))


def test_npz_dataset_in_a_suite_is_resolved_to_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "d.npz", train=np.zeros((12, 4)), test=np.zeros((3, 4)))
    (tmp_path / "s.toml").write_text('[[grid]]\nvariants = ["vanilla"]\ndatasets = ["npz:d.npz"]\n')
    (run,) = load_suite(str(tmp_path / "s.toml")).runs
    assert run.dataset == f"npz:{tmp_path.resolve() / 'd.npz'}"
    assert data.source(run.dataset) == "file"
