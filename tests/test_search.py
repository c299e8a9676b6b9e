"""Tuning on equal terms (``bench.run.search``, ``bench.tuning``, a suite's ``[search]`` table).

The arithmetic against known answers and brute force; the ``[search]`` table's refusals; and the
tiny searched suite (``tests/suites/search.toml``: two cells, a three-point learning-rate grid,
successive halving at epochs 1, 3, 4) run end to end and read back from the MLflow store and the
Optuna studies: the budget spent per cell, trials that never touch the test split, the rung
decisions equal to the rule applied to the logged scores, the selected setting retrained with the
final seeds, a second invocation that runs nothing, and (slow tier) a search killed with SIGKILL
that finishes with the same numbers without running a trial twice.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from bench import cli
from bench.errors import ConfigError
from bench.store.checkpoints import epoch_of_checkpoint
from bench.suite import load_suite
from bench.tuning import expected_max, hyperband_brackets, promoted, rungs
from tests.conftest import ROOT
from tests.runs import TIMINGS, wait_for

SEARCH = ROOT / "tests" / "suites" / "search.toml"
LRS = {3e-4, 3e-3, 3e-2}


# -- the arithmetic ---------------------------------------------------------------------------------
def test_rungs_and_hyperband_brackets():
    assert rungs(27, 1, 3) == [1, 3, 9, 27]
    assert rungs(4, 1, 3) == [1, 3, 4]
    assert rungs(10, 0, 3) == [1, 3, 9, 10]  # first rung by default epochs // eta^2
    assert rungs(5, 5, 3) == [5]
    # Li et al. (2018) with R = 27 epochs, eta = 3: n_s = 27, 12, 6, 4 trials starting at 1, 3, 9, 27
    assert hyperband_brackets(49, 27, 1, 3) == [(27, 1), (12, 3), (6, 9), (4, 27)]
    for budget in (1, 5, 24, 100):
        brackets = hyperband_brackets(budget, 27, 1, 3)
        assert sum(n for n, _ in brackets) == budget and all(n >= 1 for n, _ in brackets)


def test_promoted_keeps_the_best_share_ties_to_the_earlier_and_nonfinite_last():
    scores = {0: -3.0, 1: -1.0, 2: -2.0, 3: float("nan"), 4: -5.0, 5: -2.0}
    assert promoted(scores, 3) == [1, 2]  # 6 // 3 = 2 go on; -2.0 twice: the earlier trial
    assert promoted(scores, 3, higher=False) == [0, 4]
    assert promoted({7: float("nan"), 8: -100.0}, 3) == [8]  # at least one goes on, a finite one first


def test_expected_max_known_answer_and_brute_force():
    # three scores: E[max of 1] = 2, E[max of 2] = (1 + 3*2 + 5*3) / 9, E[max of n] -> 3
    got = expected_max([1.0, 2.0, 3.0], 40)
    assert got[0][0] == pytest.approx(2.0) and got[1][0] == pytest.approx(22 / 9)
    assert got[-1][0] == pytest.approx(3.0, abs=1e-6) and got[-1][1] == pytest.approx(0.0, abs=1e-3)
    assert expected_max([1.0, 2.0, 3.0], 2, higher=False)[1][0] == pytest.approx(14 / 9)
    # against the definition: the mean best of n draws with replacement (fixed seed, 20,000 repetitions)
    rng = random.Random(0)
    scores = [rng.gauss(0, 1) for _ in range(12)]
    formula = expected_max(scores, 6)
    for n in (1, 3, 6):
        sims = [max(rng.choice(scores) for _ in range(n)) for _ in range(20_000)]
        mean = sum(sims) / len(sims)
        sd = math.sqrt(sum((s - mean) ** 2 for s in sims) / len(sims))
        assert abs(mean - formula[n - 1][0]) < 4 * sd / math.sqrt(len(sims)), n
        assert formula[n - 1][1] == pytest.approx(sd, rel=0.05)
    # power: the best of n without replacement (a plausible slip) differs by far more than the tolerance
    assert abs(sum(sorted(scores)[-3:]) / 3 - formula[2][0]) > 0.2


# -- settings a run does not read ------------------------------------------------------------------
def test_the_temperature_is_unread_exactly_where_no_sample_is_relaxed():
    from bench.config import RunConfig, unread_options
    from variants import get

    schedule = {"tau0", "tau_min", "anneal_rate", "anneal_every"}
    cat, bern = get("gumbel-softmax"), get("bernoulli")

    def unread(variant, objective, grad=()):
        return unread_options(RunConfig(variant=variant, objective=objective, grad_objectives=list(grad)), get(variant))

    assert unread("gumbel-softmax", "nvil") == schedule | {"prior_tau"} == set(cat.mode_options)
    assert unread("bernoulli", "disarm") == schedule | {"prior_tau"} == set(bern.mode_options)
    assert unread("gumbel-softmax", "st-gumbel") == {"prior_tau"}  # the straight-through sample reads tau
    assert unread("gumbel-softmax", "concrete") == set()  # the relaxed prior reads prior_tau
    assert unread("gumbel-softmax", "nvil", grad=["gumbel-softmax"]) == set()  # measured on a relaxed sample
    assert unread("vanilla", "elbo") == set()


def _train(objective: str, anneal_rate: float) -> dict:
    from bench.config import RunConfig
    from bench.data import load
    from bench.train import run

    cfg = RunConfig(variant="gumbel-softmax", objective=objective, dataset="digits", k=1, epochs=2, batch_size=50,
                    hidden=[16], train_size=200, test_size=40, val_k=2, eval_k=4, gap_size=4, gap_steps=3, gap_k=4,
                    grad_draws=2, grad_batch=8, lr=3e-3, device="cpu",
                    variant_options={"n_latent": 4, "n_classes": 3, "anneal_rate": anneal_rate, "anneal_every": 1})
    return {m: v for m, v in run(cfg, load("digits"), lambda *a: None).history.items() if not m.startswith(TIMINGS)}


def test_a_run_that_does_not_read_the_temperature_computes_the_same_numbers_bit_for_bit():
    """The claim behind one run for trials that differ only in unread settings: the score function
    trained with tau annealed hard (to tau_min after a few steps) or not at all gives every logged
    number equal; the power check, straight-through Gumbel-softmax, reads tau and differs."""
    a, b = _train("nvil", 0.0), _train("nvil", 0.5)
    assert sorted(a) == sorted(b) and {"train/loss", "val/elbo", "test/elbo", "test/log_px"} <= set(a)
    assert a == b
    st0, st1 = _train("st-gumbel", 0.0), _train("st-gumbel", 0.5)
    assert st0["train/loss"] != st1["train/loss"]


# -- the [search] table -----------------------------------------------------------------------------
BASE = """
[defaults]
epochs = 2
[[grid]]
variants = ["vanilla"]
"""


@pytest.mark.parametrize("table, message", [
    ('metric = "test/log_px"\n[search.space]\nlr = [1e-3]', "is not a validation metric"),
    ('metric = "val/nope"\n[search.space]\nlr = [1e-3]', "must name a validation metric (val/elbo)"),
    ('metric = "val/elbo"\nsampler = "grid"\ntrials = 3\n[search.space]\nlr = [1e-3, 1e-2]', "the grid has 2 points"),
    ('metric = "val/elbo"\nsampler = "grid"\n[search.space]\nlr = { low = 1e-4, high = 1e-2 }', "needs a list"),
    ('metric = "val/elbo"\nsampler = "tpe"\n[search.space]\nlr = [1e-3]', "trials (the budget per cell) is needed"),
    ('metric = "val/elbo"\ntrials = 2\nfinal_seeds = [0, 1000]\n[search.space]\nlr = [1e-3]', "is also a final seed"),
    ('metric = "val/elbo"\ntrials = 2\n[search.space]\nseed = [1, 2]', "unknown key(s) seed"),
    ('metric = "val/elbo"\ntrials = 2\n[search.space]\nlr = [1e-3, 1e-3]', "listed twice"),
    ('metric = "val/elbo"\ntrials = 2\npruner = "asha"\n[search.space]\nlr = [1e-3]', "pruner must be one of"),
    ('metric = "val/elbo"\ntrials = 2\ntrial_epochs = 3\n[search.space]\nlr = [1e-3]', "more than the runs' epochs"),
])
def test_the_search_table_refuses_what_it_cannot_run(tmp_path, table, message):
    path = tmp_path / "s.toml"
    path.write_text(BASE + "[search]\n" + table + "\n")
    with pytest.raises(ConfigError) as e:
        load_suite(str(path))
    assert message in str(e.value)


def test_a_searched_grid_has_no_seeds_and_seeds_override_the_final_seeds(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace('["vanilla"]', '["vanilla"]\nseeds = [0]') + '[search]\nmetric = "val/elbo"\n'
                    'sampler = "grid"\n[search.space]\nlr = [1e-3]\n')
    with pytest.raises(ConfigError, match="the grid has no seeds"):
        load_suite(str(path))
    suite = load_suite(str(SEARCH), {"seeds": [4, 5]})
    assert suite.search.final_seeds == [4, 5] and {r.seed for r in suite.runs} == {1000}


def test_the_cli_refuses_a_test_metric_without_a_traceback(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SEARCH.read_text().replace('metric = "val/elbo"', 'metric = "test/elbo"'))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not a validation metric" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store is touched


# -- the tiny searched suite end to end ------------------------------------------------------------
def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("search")
    return client.search_runs([exp.experiment_id], max_results=1000)


def _history(uri: str, run_id: str, metric: str = "val/elbo") -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, metric)}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, _empty_store):
    """The tiny searched suite, uninterrupted, ``--jobs 1``: (directory, tracking URI)."""
    root = tmp_path_factory.mktemp("searched")
    shutil.copy(_empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert cli.main(["run", "--suite", str(SEARCH), "--tracking-uri", uri]) == 0
    return root, uri


@pytest.mark.slow
def test_each_cell_spends_its_budget_on_validation_and_retrains_the_selected_setting(searched):
    import optuna

    root, uri = searched
    runs = [r for r in _runs(uri) if r.data.tags.get("vaebench.role") == "child"]
    cells = {r.data.tags["vaebench.search.cell"] for r in runs}
    assert cells == {"vanilla/elbo/digits", "iwae/iwae/digits"}
    for cell in cells:
        trials = [r for r in runs if r.data.tags["vaebench.search.cell"] == cell
                  and "vaebench.search.selected" not in r.data.tags]
        finals = [r for r in runs if r.data.tags["vaebench.search.cell"] == cell
                  and r.data.tags.get("vaebench.search.selected") == "true"]
        # the budget: the three grid points, once each, trained with the trial seed on validation only
        assert sorted(r.data.tags["vaebench.search.trial"] for r in trials) == ["0", "1", "2"]
        assert {float(r.data.params["lr"]) for r in trials} == LRS
        for r in trials:
            assert r.data.params["evaluate"] == "validation" and r.data.params["seed"] == "1000"
            assert not [m for m in r.data.metrics if m.startswith("test/")]
        # successive halving, eta = 3: at epoch 1 the best of three goes on (to 3, then 4); the other two
        # stop there, the decision the rule makes on the logged scores at epoch 1
        at1 = {int(r.data.tags["vaebench.search.trial"]): _history(uri, r.info.run_id)[1] for r in trials}
        (winner,) = promoted(at1, 3)
        for r in trials:
            n = int(r.data.tags["vaebench.search.trial"])
            if n == winner:
                assert r.info.status == "FINISHED" and sorted(_history(uri, r.info.run_id)) == [1, 2, 3, 4]
                assert "vaebench.search.pruned" not in r.data.tags
            else:
                assert r.info.status == "KILLED" and r.data.tags["vaebench.search.pruned"] == "1"
                assert sorted(_history(uri, r.info.run_id)) == [1]
        best = next(r for r in trials if int(r.data.tags["vaebench.search.trial"]) == winner)
        # the final runs: the selected setting with each final seed, evaluated on the test split
        assert sorted(int(r.data.params["seed"]) for r in finals) == [0, 1]
        for r in finals:
            assert r.info.status == "FINISHED" and r.data.params["lr"] == best.data.params["lr"]
            assert r.data.tags["vaebench.search.trial"] == str(winner) and r.data.params["evaluate"] == "test"
            assert {"test/elbo", "test/log_px"} <= set(r.data.metrics)
        # the study beside the store: one complete trial (its value the run's score at epoch 4), two pruned
        study = optuna.load_study(study_name=best.data.tags["vaebench.search.study"],
                                  storage=f"sqlite:///{root / 'mlflow-optuna.db'}")
        states = sorted(t.state.name for t in study.trials)
        assert states == ["COMPLETE", "PRUNED", "PRUNED"]
        (done,) = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert done.number == winner and done.value == _history(uri, best.info.run_id)[4]
        assert study.user_attrs["selected_trial"] == winner


@pytest.mark.slow
def test_a_second_invocation_runs_nothing(searched):
    root, uri = searched
    before = sorted(r.info.run_id for r in _runs(uri) if r.data.tags.get("vaebench.role") == "child")
    assert cli.main(["run", "--suite", str(SEARCH), "--tracking-uri", uri]) == 0
    after = _runs(uri)
    assert sorted(r.info.run_id for r in after if r.data.tags.get("vaebench.role") == "child") == before
    last = max((r for r in after if r.data.tags.get("vaebench.role") == "parent"), key=lambda r: r.info.start_time)
    assert last.data.tags["vaebench.search.stage"] == "final" and last.data.tags["vaebench.n_reused"] == "4"


@pytest.mark.slow
def test_a_search_killed_with_sigkill_finishes_with_the_same_numbers(tmp_path, store, searched):
    """kill -9 of the driver's process group while a rung is training; the same command again
    completes the search: every trial has one run, the studies hold three trials a cell, and the
    final runs' metrics equal the uninterrupted search's bit for bit (the timings aside)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "hooks"), str(ROOT)]),
        "VAEBENCH_TEST_CHECKPOINT_PAUSE_S": "0.3"}
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(SEARCH), "--tracking-uri", store]
    with open(tmp_path / "first.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)

    def second_rung_running():
        runs = [r for r in _runs(store) if r.data.tags.get("vaebench.role") == "child"] if _exists(store) else []
        return any(r.info.status == "RUNNING" and epoch_of_checkpoint(r.data.tags) == 2 for r in runs)

    try:
        wait_for(second_rung_running, "a trial training its second rung", timeout=240,
                 proc=_Proc(proc, tmp_path / "first.txt"))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the report of a search under way: no final runs yet, the trials begun and pruned so far
    from bench.plots.report import draw

    draw("search", tmp_path / "partial", store)
    readme = (tmp_path / "partial" / "search" / "README.md").read_text()
    assert "the search of 'search' has no final runs yet" in readme and "## Tuning" in readme
    for cell in ("vanilla/elbo/digits", "iwae/iwae/digits"):  # the first rung decided: 3 trials begun, 2 pruned
        assert f"| {cell} | 3 | 2 | 0 | not selected yet | — |" in readme
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = [r for r in _runs(store) if r.data.tags.get("vaebench.role") == "child"]
    keys = [r.data.tags["vaebench.run_key"] for r in runs]
    assert len(keys) == len(set(keys)) == 10  # 3 trials and 2 final runs a cell, none twice
    ref = {r.data.tags["vaebench.run_key"]: r for r in _runs(searched[1])
           if r.data.tags.get("vaebench.search.selected") == "true"}
    finals = [r for r in runs if r.data.tags.get("vaebench.search.selected") == "true"]
    assert sorted(r.data.tags["vaebench.run_key"] for r in finals) == sorted(ref)
    for r in finals:
        for m, v in r.data.metrics.items():
            if not m.startswith(TIMINGS):
                assert v == ref[r.data.tags["vaebench.run_key"]].data.metrics[m], m


@pytest.mark.slow
def test_shorter_trials_select_on_their_last_epoch_and_the_final_runs_train_the_full_length(tmp_path, store):
    """``trial_epochs = 1`` with ``epochs = 2``: each trial trains one epoch, the selected setting is
    the best ``val/elbo`` at epoch 1, and its final run trains two; without the key the study's
    identity (hence its name) is what it was before the key existed."""
    path = tmp_path / "short.toml"
    text = SEARCH.read_text().replace("epochs = 4", "epochs = 2").replace('variants = ["vanilla", "iwae"]',
                                                                       'variants = ["vanilla"]')
    text = text.replace('pruner = "successive-halving"\nmin_epochs = 1\nreduction_factor = 3\nfinal_seeds = [0, 1]',
                        'trial_epochs = 1\nfinal_seeds = [0]')
    path.write_text(text)
    assert "trial_epochs" not in load_suite(str(SEARCH)).search.identity()
    assert load_suite(str(path)).search.identity()["trial_epochs"] == 1
    assert cli.main(["run", "--suite", str(path), "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("short").experiment_id], max_results=100)
            if r.data.tags.get("vaebench.role") == "child"]
    trials = [r for r in runs if "vaebench.search.selected" not in r.data.tags]
    (final,) = [r for r in runs if r.data.tags.get("vaebench.search.selected") == "true"]
    assert len(trials) == 3 and {float(r.data.params["lr"]) for r in trials} == LRS
    scores = {}
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.params["epochs"] == "1"
        assert sorted(_history(store, r.info.run_id)) == [1]
        scores[r.data.params["lr"]] = _history(store, r.info.run_id)[1]
    assert final.data.params["lr"] == max(scores, key=scores.get)
    assert final.data.params.get("epochs", "2") == "2" and sorted(_history(store, final.info.run_id)) == [1, 2]


def _exists(uri: str) -> bool:
    client = MlflowClient(uri)
    return client.get_experiment_by_name("search") is not None


class _Proc:
    """A Popen with its stderr file, as ``wait_for`` reads it."""

    def __init__(self, proc, log):
        self.proc, self.log = proc, log

    def poll(self):
        return self.proc.poll()

    @property
    def returncode(self):
        return self.proc.returncode

    @property
    def stderr(self):
        return self.log.read_text()


def test_search_storage_is_beside_the_store():
    from bench.run.search import study_storage

    assert study_storage("sqlite:////x/y/mlflow.db", None) == "sqlite:////x/y/mlflow-optuna.db"
    assert study_storage("http://h:5000", "postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.slow
def test_the_report_shows_each_cells_tuning_and_compare_pairs_tuned_cells(searched, tmp_path):
    from bench.plots.compare import compare
    from bench.plots.figures import Context, _every_trial_scores, tuning_curve
    from bench.plots.report import draw
    from bench.plots.store import load_runs, load_trials

    root, uri = searched
    written = draw("search", tmp_path, uri)
    readme = (tmp_path / "search" / "README.md").read_text()
    finals = [r for r in _runs(uri) if r.data.tags.get("vaebench.search.selected") == "true"]
    for cell in ("vanilla/elbo/digits", "iwae/iwae/digits"):
        lr = next(r.data.params["lr"] for r in finals if r.data.tags["vaebench.search.cell"] == cell)
        assert f"| {cell} | 3 | 2 | 0 | lr={float(lr):.3g} |" in readme
    runs_csv = (tmp_path / "search" / "runs.csv").read_text().splitlines()
    assert len(runs_csv) == 1 + 4  # the final runs; the trials are not results
    # one completed trial a cell: no curve of the trials trained to the end, but every trial (the
    # pruned ones too) has its score at the first rung, epoch 1: the expected best over those
    assert tmp_path / "search" / "tuning.png" in written and "two or more completed trials" not in readme
    ctx = Context("search", load_runs("search", uri)[0], uri, [], trials=load_trials("search", uri))
    first, epochs = _every_trial_scores(ctx, ctx.trials, "val/elbo")
    assert epochs == {1} and sorted(first) == ["iwae/iwae/digits", "vanilla/elbo/digits"]
    for cell, scores in first.items():
        trials = [r for r in _runs(uri) if r.data.tags.get("vaebench.search.cell") == cell
                  and "vaebench.search.selected" not in r.data.tags]
        assert len(trials) == 3 and sorted(scores) == sorted(_history(uri, r.info.run_id)[1] for r in trials)
    fig = tuning_curve(ctx)
    assert [ax.get_title() for ax in fig.axes] == ["digits: every trial, at epoch 1"]
    # two invocations of the final runs (a rerun reuses them): paired by cell and seed
    assert cli.main(["run", "--suite", str(SEARCH), "--tracking-uri", uri]) == 0
    c = compare(MlflowClient(uri), "search")
    assert c.coords == ["cell", "seed"] and len(c.runs["run_id_a"].unique()) == 4
    assert (c.runs["diff"].dropna() == 0).all()


@pytest.mark.slow
def test_trials_that_differ_only_in_unread_settings_are_one_run_and_share_its_fate(tmp_path, store):
    """``tests/suites/search-unread.toml``: lr x the temperature's anneal rate, successive halving at
    epochs 1 and 3. The score function (nvil) does not read the temperature: its four trials are
    two runs, each serving two trials, promoted or pruned together; straight-through Gumbel-
    softmax reads it: four runs. The report counts both."""
    import optuna

    from bench.plots.report import draw

    path = ROOT / "tests" / "suites" / "search-unread.toml"
    assert cli.main(["run", "--suite", str(path), "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("search-unread").experiment_id],
                                          max_results=100) if r.data.tags.get("vaebench.role") == "child"]
    trials = {cell: [r for r in runs if r.data.tags["vaebench.search.cell"] == cell
                     and "vaebench.search.selected" not in r.data.tags]
              for cell in ("gumbel-softmax/nvil/digits", "gumbel-softmax/st-gumbel/digits")}
    st = trials["gumbel-softmax/st-gumbel/digits"]
    assert len(st) == 4 and sorted(r.data.tags["vaebench.search.trials"] for r in st) == ["0", "1", "2", "3"]
    assert {r.data.params["option.anneal_rate"] for r in st} == {"0.0", "0.5"}
    nvil = trials["gumbel-softmax/nvil/digits"]
    assert len(nvil) == 2 and {r.data.params["lr"] for r in nvil} == {"0.001", "0.03"}
    assert not [r for r in nvil if "option.anneal_rate" in r.data.params]  # the cell's value (none): not read
    served = {r.info.run_id: [int(n) for n in r.data.tags["vaebench.search.trials"].split()] for r in nvil}
    assert sorted(n for ns in served.values() for n in ns) == [0, 1, 2, 3] and all(len(ns) == 2 for ns in served.values())
    study = optuna.load_study(study_name=nvil[0].data.tags["vaebench.search.study"],
                              storage=f"sqlite:///{tmp_path / 'mlflow-optuna.db'}")
    by_number = {t.number: t for t in study.trials}
    for r in nvil:
        ns = served[r.info.run_id]
        assert len({by_number[n].params["lr"] for n in ns}) == 1  # the same lr, both anneal rates
        assert len({by_number[n].params["option.anneal_rate"] for n in ns}) == 2
        states = {by_number[n].state.name for n in ns}
        if r.info.status == "FINISHED":  # the promoted run: both its trials complete, with its score at epoch 3
            assert states == {"COMPLETE"} and sorted(_history(store, r.info.run_id)) == [1, 2, 3]
            assert {by_number[n].value for n in ns} == {_history(store, r.info.run_id)[3]}
            winner = min(ns)
        else:  # pruned at the first rung, both its trials with it
            assert states == {"PRUNED"} and r.data.tags["vaebench.search.pruned"] == "1"
    (final,) = [r for r in runs if r.data.tags["vaebench.search.cell"] == "gumbel-softmax/nvil/digits"
                and r.data.tags.get("vaebench.search.selected") == "true"]
    assert final.data.tags["vaebench.search.trial"] == str(winner) and "option.anneal_rate" not in final.data.params
    draw("search-unread", tmp_path / "report", store)
    readme = (tmp_path / "report" / "search-unread" / "README.md").read_text()
    assert f"| gumbel-softmax/nvil/digits | 4 (2 runs) | 2 | 0 | lr={float(final.data.params['lr']):.3g}, " \
           "option.anneal_rate=(not read) |" in readme
    assert "| gumbel-softmax/st-gumbel/digits | 4 | 3 | 0 | lr=" in readme
