"""End to end: the CLI runs a tiny suite into a real MLflow store and the test reads it back;
bad input gets one clear message, a non-zero exit and an untouched store."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench import cli, train
from bench.suite import available_suites, load_suite
from tests.conftest import ROOT, TINY, run_cli

FINAL = [
    "test/elbo", "test/log_px", "test/kl", "test/recon", "test/active_units",
    "gap/log_px", "gap/elbo_amortized", "gap/elbo_local", "gap/approximation", "gap/amortization",
    "grad/encoder_var", "grad/encoder_snr", "grad/decoder_var", "grad/decoder_snr",
    "perf/train_examples_per_s", "perf/eval_examples_per_s", "perf/train_seconds", "perf/peak_mem_mb",
]
PARAMS = ["variant", "objective", "dataset", "k", "seed", "latent_dim", "epochs", "batch_size", "lr",
          "device", "binarization", "eval_k"]


def children(client, exp_id):
    return client.search_runs([exp_id], "tags.`vaebench.role` = 'child'")


@pytest.mark.slow
def test_cli_runs_a_suite_into_the_store(tmp_path, store):
    proc = run_cli("run", "--suite", str(TINY), "--tracking-uri", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`vaebench.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    for tag in ("git_commit", "torch_version", "device_name"):
        assert parent.data.tags[tag]
    kids = children(client, exp.experiment_id)
    names = sorted(r.info.run_name for r in kids)
    assert names == ["iwae/iwae/digits/seed0", "linear-gaussian/elbo/linear-gaussian/seed0", "vanilla/elbo/digits/seed0"]
    for r in kids:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for p in PARAMS:
            assert p in r.data.params, p
        assert r.data.params["device"] == "cpu" and r.data.params["eval_k"] == "64"
        m = r.data.metrics
        for key in FINAL:
            assert key in m and math.isfinite(m[key]), (r.info.run_name, key)
        # the IWAE estimate with 64 samples is a tighter bound than the 2-sample ELBO estimate
        assert m["test/log_px"] >= m["test/elbo"] - 0.5, r.info.run_name
        assert m["gap/approximation"] > -0.5 and m["gap/amortization"] > -0.5
        hist = client.get_metric_history(r.info.run_id, "val/elbo")
        assert [h.step for h in hist] == [1, 2]
        assert len(client.get_metric_history(r.info.run_id, "gap/log_px")) == 2  # epoch 1 and final
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.json", "model.pt", "figures", "samples.png", "reconstructions.png"} <= arts
        png = Path(client.download_artifacts(r.info.run_id, "samples.png", str(tmp_path / r.info.run_id)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    oracle = [r for r in kids if r.data.params["variant"] == "linear-gaussian"][0].data.metrics
    # 64 importance samples of a 2-epoch pPCA: the IWAE estimate is below log p(x), within 1 nat
    assert oracle["test/exact_log_px"] - 1.0 < oracle["test/log_px"] <= oracle["test/exact_log_px"] + 0.05
    assert r.data.params["k"] in ("1", "5")
    iw = [r for r in kids if r.info.run_name.startswith("iwae")][0]
    assert iw.data.params["k"] == "5" and iw.data.params["objective"] == "iwae"
    assert "test/elbo" in proc.stderr  # the summary table


def cli_main(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "variants=nope"], "nope"),
        (["--set", "epochz=3"], "unknown key 'epochz'; valid keys:"),
        (["--set", "epochs=three"], "epochs must be int, got 'three'"),
        (["--set", "lr=fast"], "lr must be float"),
        (["--set", "binarization=sometimes"], "binarization must be one of"),
        (["--set", "epochs"], "expects key=value"),
    ],
)
def test_bad_overrides_fail_before_the_store_exists(tmp_path, new_store, capsys, args, message):
    code, err = cli_main(["run", "--suite", str(TINY), "--tracking-uri", new_store, *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_bad_suite_files(tmp_path, new_store, capsys):
    store = new_store
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults\nepochs = 2\n")
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "not valid TOML" in err
    bad.write_text('[[grid]]\nvariants = ["vanila"]\n')
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "unknown variant 'vanila'" in err and "vanilla" in err
    bad.write_text('[defaults]\nepochs = "2"\n[[grid]]\nvariants = ["vanilla"]\n')
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "epochs must be int" in err
    bad.write_text('[[grid]]\nvariants = ["gumbel-softmax"]\nobjectives = ["elbo"]\n')
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "objective 'elbo'" in err and "gumbel-softmax" in err
    bad.write_text('[[grid]]\nvariants = "vanilla"\n')
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "variants must be a list of names" in err
    bad.write_text('[[grid]]\nvariants = ["vanilla"]\nseeds = 0\n')
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "seeds must be a list of integers" in err
    bad.write_bytes(b"\xff\xfe\x00binary")
    code, err = cli_main(["run", "--suite", str(bad), "--tracking-uri", store], capsys)
    assert code == 2 and "cannot read suite file" in err
    code, err = cli_main(["run", "--suite", "no-such-suite", "--tracking-uri", store], capsys)
    assert code == 2 and "no suite 'no-such-suite'" in err and "smoke" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_missing_dataset_offline_is_a_clear_error(tmp_path, new_store):
    store = new_store
    """MNIST is not on disk and this machine has no route to its mirrors: exit 2, how to get it."""
    suite = tmp_path / "mnist.toml"
    suite.write_text('[[grid]]\nvariants = ["vanilla"]\ndatasets = ["mnist"]\n')
    proc = run_cli("run", "--suite", str(suite), "--tracking-uri", store, "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    if proc.returncode == 0:
        pytest.skip("this machine could download MNIST")
    assert proc.returncode == 2, proc.stderr
    assert "error: dataset 'mnist' is not on disk" in proc.stderr and "Traceback" not in proc.stderr
    assert "train-images-idx3-ubyte" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_nan_loss_marks_the_run_failed_and_the_suite_goes_on(tmp_path, store, capsys, monkeypatch):
    real_run = train.run

    def exploding(cfg, data, log, on_epoch=None, **kw):
        if cfg.variant == "iwae":
            cfg.lr = 1e30  # Adam steps of 1e30 overflow the network within the first epoch
        return real_run(cfg, data, log, on_epoch, **kw)

    monkeypatch.setattr(train, "run", exploding)
    code, err = cli_main(["run", "--suite", str(TINY), "--tracking-uri", store, "--set", "variants=vanilla,iwae",
                          "--set", "epochs=1"], capsys)
    assert code == 1
    assert "training bound is nan" in err.lower() or "non-finite" in err.lower()
    client = MlflowClient(store)
    kids = {r.info.run_name: r for r in children(client, client.get_experiment_by_name("tiny").experiment_id)}
    assert kids["iwae/iwae/digits/seed0"].info.status == "FAILED"
    assert "error" in kids["iwae/iwae/digits/seed0"].data.tags
    assert kids["vanilla/elbo/digits/seed0"].info.status == "FINISHED"


def test_interrupt_marks_runs_killed_and_keeps_finished_ones(tmp_path, store, capsys, monkeypatch):
    real_run = train.run

    def interrupted(cfg, data, log, on_epoch=None, **kw):
        if cfg.variant == "iwae":
            log({"val/elbo": -1.0}, 1)
            raise KeyboardInterrupt
        return real_run(cfg, data, log, on_epoch, **kw)

    monkeypatch.setattr(train, "run", interrupted)
    code, err = cli_main(["run", "--suite", str(TINY), "--tracking-uri", store, "--set", "epochs=1"], capsys)
    assert code == 130 and "interrupted" in err
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny").experiment_id
    kids = {r.info.run_name: r for r in children(client, exp)}
    assert kids["vanilla/elbo/digits/seed0"].info.status == "FINISHED"
    assert "test/log_px" in kids["vanilla/elbo/digits/seed0"].data.metrics
    assert kids["iwae/iwae/digits/seed0"].info.status == "KILLED"
    assert kids["iwae/iwae/digits/seed0"].data.metrics["val/elbo"] == -1.0
    (parent,) = client.search_runs([exp], "tags.`vaebench.role` = 'parent'")
    assert parent.info.status == "KILLED"


def test_list_names_everything(capsys):
    code, out = cli.main(["list"]), capsys.readouterr().out
    assert code == 0
    for name in ("vanilla", "iwae", "planar-flow", "iaf", "hierarchical", "ladder", "gumbel-softmax",
                 "linear-gaussian", "elbo", "dreg", "stl", "score-function", "vimco", "reinforce",
                 "st-gumbel", "digits", "fashion-mnist", "smoke", "standard"):
        assert name in out


def test_every_shipped_suite_expands_to_valid_runs():

    for name in available_suites():
        suite = load_suite(name)
        assert suite.runs and suite.description, name


def test_a_grids_set_carries_its_own_variant_and_objective_options(tmp_path, new_store, capsys):
    """``option.NAME`` / ``objective_option.NAME`` in ``[grid.set]`` override the suite's option
    tables for that grid's runs only; an option the variant does not have is refused before any run."""
    suite = tmp_path / "opts.toml"
    suite.write_text(
        '[variant_options.gumbel-softmax]\nn_latent = 4\nanneal_rate = 1e-5\n'
        '[objective_options.rebar]\nlearn_temperature = false\n'
        '[[grid]]\nvariants = ["gumbel-softmax"]\nobjectives = ["gumbel-softmax"]\n'
        '[grid.set]\nlr = 3e-3\n"option.anneal_rate" = 1e-4\n"option.anneal_every" = 500\n'
        '[[grid]]\nvariants = ["gumbel-softmax"]\nobjectives = ["gumbel-softmax"]\n'
        '[[grid]]\nvariants = ["bernoulli"]\nobjectives = ["rebar"]\n'
        '[grid.set]\n"objective_option.eta" = 0.5\n'
    )
    first, second, third = load_suite(str(suite)).runs
    assert first.lr == 3e-3 and first.variant_options == {"n_latent": 4, "anneal_rate": 1e-4, "anneal_every": 500}
    assert second.variant_options == {"n_latent": 4, "anneal_rate": 1e-5}
    assert third.objective_options["rebar"] == {"learn_temperature": False, "eta": 0.5}
    suite.write_text('[[grid]]\nvariants = ["gumbel-softmax"]\n[grid.set]\n"option.bogus" = 3\n')
    code, err = cli_main(["run", "--suite", str(suite), "--tracking-uri", new_store], capsys)
    assert code == 2 and "does not accept option(s) bogus" in err and "anneal_rate" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["plots", "ui"])
def test_plots_and_ui_refuse_a_missing_store_without_creating_one(tmp_path, new_store, capsys, command):
    code, err = cli_main([command, "--tracking-uri", new_store], capsys)
    assert code == 2 and "no MLflow store at" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_a_crashing_run_is_failed_with_its_traceback_and_the_suite_goes_on(store, capsys, monkeypatch):
    """A bug (or an exhausted device) in one run: that run is FAILED with the error as a tag, its
    traceback is printed (it is not a user mistake), the other runs finish, the exit code is 1."""
    real_run = train.run

    def crashing(cfg, data, log, on_epoch=None, **kw):
        if cfg.variant == "vanilla":
            log({"val/elbo": -50.0}, 1)
            raise RuntimeError("simulated out of memory")
        return real_run(cfg, data, log, on_epoch, **kw)

    monkeypatch.setattr(train, "run", crashing)
    code, err = cli_main(["run", "--suite", str(TINY), "--tracking-uri", store, "--set", "variants=vanilla,iwae",
                          "--set", "epochs=1"], capsys)
    assert code == 1 and "Traceback" in err and "simulated out of memory" in err
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny").experiment_id
    kids = {r.info.run_name: r for r in children(client, exp)}
    bad = kids["vanilla/elbo/digits/seed0"]
    assert bad.info.status == "FAILED" and bad.data.tags["error"] == "RuntimeError: simulated out of memory"
    assert bad.data.metrics["val/elbo"] == -50.0  # what was logged before the crash stays
    assert kids["iwae/iwae/digits/seed0"].info.status == "FINISHED"
    (parent,) = client.search_runs([exp], "tags.`vaebench.role` = 'parent'")
    assert parent.info.status == "FAILED"


def test_the_cli_and_the_mnist_fetch_import_without_torch():
    """CI fetches MNIST with the system Python before anything is installed: ``bench.cli`` and its
    parser must not import torch (or anything that does) at module level. Power: a module-level
    ``import variants`` fails here."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from bench import cli, fetch; cli.parser()\n"
            "try:\n    import variants\nexcept ImportError:\n    print('blocked')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "blocked"


def test_a_refused_ray_connection_names_token_authentication_when_a_token_exists(tmp_path, monkeypatch):
    """``ray start`` enables token authentication when ``~/.ray/auth_token`` exists, a driver given an
    address only under ``RAY_AUTH_MODE=token``: the error says so then, and only then."""
    import types

    from bench.errors import BenchError
    from bench.run.executors import RayTasks

    def refuse(address=None, **kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False, init=refuse))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(BenchError) as plain:
        RayTasks("127.0.0.1:6379", 1)
    assert "cannot connect to the Ray cluster at 127.0.0.1:6379" in str(plain.value)
    assert "RAY_AUTH_MODE" not in str(plain.value)  # no token here: no hint
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x")
    with pytest.raises(BenchError, match="try RAY_AUTH_MODE=token"):
        RayTasks("127.0.0.1:6379", 1)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(BenchError) as with_token:
        RayTasks("127.0.0.1:6379", 1)
    assert "RAY_AUTH_MODE" not in str(with_token.value)


def test_without_an_address_ray_starts_a_cluster_of_its_own(monkeypatch):
    """No ``--ray-address``: ``ray.init(address="local")``, a new local cluster for the invocation,
    never a cluster a ``ray start`` left on the machine (``ray.init()`` would join it, or wait on a
    dead one, through ``/tmp/ray/ray_current_cluster``: seen with a stale file)."""
    import types

    from bench.run.executors import RayTasks

    seen = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda address=None, **kw: seen.append(address),
                                 remote=lambda **kw: (lambda fn: fn))
    monkeypatch.setitem(sys.modules, "ray", fake)
    RayTasks(None, 1)
    RayTasks("ray://head:10001", 1)
    assert seen == ["local", "ray://head:10001"]
