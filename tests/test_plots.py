"""bench.plots on sqlite stores filled with synthetic runs whose metrics are known.

The store follows the harness's layout (one experiment per suite, a parent run, nested child
runs tagged ``vaebench.role=child`` with the harness's params and metrics), so the report's
numbers can be checked against the values put in.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from bench import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# test/log_px of (variant, objective, seed): distinct per group so a wrong grouping shows.
LOG_PX = {
    ("vanilla", "elbo"): [-30.0, -32.0],  # mean -31, sd sqrt(2) = 1.41
    ("iwae", "iwae"): [-28.5, -29.5],  # mean -29, sd 0.71
}


def _child(client, exp_id, parent_id, variant, objective, seed, artifacts_dir, *, status="FINISHED",
           metrics=True, final=True, k=5, extra=None):
    name = f"{variant}/{objective}/digits/seed{seed}"
    run = client.create_run(exp_id, run_name=name, tags={
        "mlflow.parentRunId": parent_id, "vaebench.role": "child", "vaebench.suite": "smoke",
        "git_commit": "abc123", "torch_version": "2.x", "device_name": "test CPU"})
    rid = run.info.run_id
    params = {"variant": variant, "objective": objective, "dataset": "digits", "k": k, "seed": seed,
                  "latent_dim": 4, "epochs": 3, "batch_size": 64, "lr": 1e-3, "device": "cpu",
                  "binarization": "dynamic", "eval_k": 100, "threads": 1} | (extra or {})
    ts = int(time.time() * 1000)
    ms = []
    if metrics:
        for epoch in range(3):
            ms += [Metric("val/elbo", -40.0 + 3 * epoch - seed, ts, epoch),
                   Metric("train/loss", 41.0 - 3 * epoch, ts, epoch)]
    if final:
        lp = LOG_PX[(variant, objective)][seed]
        ms += [Metric("test/log_px", lp, ts, 3), Metric("test/elbo", lp - 2.0, ts, 3),
               Metric("test/kl", 5.0, ts, 3), Metric("test/recon", lp - 7.0, ts, 3),
               Metric("gap/approximation", 1.5, ts, 3), Metric("gap/amortization", 0.5, ts, 3),
               Metric("perf/train_seconds", 10.0 + seed, ts, 3),
               Metric("perf/train_examples_per_s", 1000.0, ts, 3),
               Metric("perf/eval_examples_per_s", 5000.0, ts, 3)]
        for measured, scale in ((objective, 1.0), ("dreg", 3.0)):
            for k in (1, 5, 20):
                f = scale * (1.0 + 0.1 * seed) * (2.0 if variant == "iwae" else 1.0)
                ms += [Metric(f"grad/{measured}/k{k}/encoder_snr", f * k ** -0.5, ts, 3),
                       Metric(f"grad/{measured}/k{k}/encoder_var", 2.0 / (f * k), ts, 3),
                       Metric(f"grad/{measured}/k{k}/decoder_snr", f * k ** 0.5, ts, 3),
                       Metric(f"grad/{measured}/k{k}/decoder_var", 0.5 / (f * k), ts, 3)]
    client.log_batch(rid, metrics=ms, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("mlflow.runName", name)])
    if final:
        import matplotlib.pyplot as plt

        png = artifacts_dir / rid / "samples.png"
        png.parent.mkdir()
        plt.imsave(png, np.random.default_rng(seed).random((16, 16)), cmap="gray")
        client.log_artifact(rid, str(png))
    client.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with suite 'smoke' (2 variants x 2 seeds finished, 1 failed without final metrics,
    1 run killed before any metric) and suite 'empty' (an experiment without runs)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("smoke", artifact_location=(root / "mlartifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name="smoke 2026-01-01 00:00:00",
                               tags={"vaebench.role": "parent", "vaebench.suite": "smoke"})
    pid = parent.info.run_id
    scratch = root / "scratch"
    scratch.mkdir()
    for (variant, objective), values in LOG_PX.items():
        for seed in range(len(values)):
            _child(client, exp, pid, variant, objective, seed, scratch)
    # a FAILED run with curves but no final metrics, and a KILLED one with nothing at all
    _child(client, exp, pid, "planar-flow", "elbo", 0, scratch, status="FAILED", final=False)
    _child(client, exp, pid, "iaf", "dreg", 0, scratch, status="KILLED", metrics=False, final=False)
    client.set_terminated(pid)
    return uri


def _table(readme: str, title: str) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """The head and the rows (by variant, objective) of the report table under ``### title``."""
    lines = readme.split(f"### {title}\n", 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith(("### ", "## ")))
    table = [line for line in lines[:end] if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[(cells[0], cells[1])] = cells
    return head, rows


def test_draw_figures_tables_and_report(store, tmp_path, capsys):
    paths = plots.draw("smoke", tmp_path, store)
    names = {p.name for p in paths}
    figures = {"learning_curves.png", "test_log_likelihood.png", "gaps.png", "gradient_snr.png",
               "gradient_snr_decoder.png", "gradient_variance.png", "throughput.png", "cost_quality.png", "samples.png"}
    assert figures <= names
    assert {"summary.csv", "runs.csv", "README.md"} <= names
    assert "bounds_vs_examples.png" not in names  # no setting sets the smoke runs apart
    for p in paths:
        assert p.parent == tmp_path / "smoke" and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC, p

    readme = (tmp_path / "smoke" / "README.md").read_text()
    head, rows = _table(readme, "Log-likelihood and bounds")
    col = head.index("log p(x) [nats] ↑")
    # mean ± sample sd of the values put in, to the 2 decimals the report prints
    assert rows[("vanilla", "elbo")][col] == "-31.00 ± 1.41"
    assert rows[("iwae", "iwae")][col] == "-29.00 ± 0.71"
    assert rows[("vanilla", "elbo")][3] == "2"  # seeds
    assert rows[("planar-flow", "elbo")][col] == "—"  # failed before the test metrics
    assert "higher is better" in readme.lower()
    gap_head, gap_rows = _table(readme, "Inference gaps (Cremer et al. 2018)")
    assert gap_rows[("iwae", "iwae")][gap_head.index("approx. gap [nats] ↓")] == "1.50 ± 0.00"
    assert "iaf" not in {v for v, _ in gap_rows}  # a run with nothing in this table has no row here
    for fig in figures:
        assert f"]({fig})" in readme
        assert plots.FIGURES[fig].caption in readme  # the caption registered with the figure
    # the store is named without the machine's path; the protocol carries the params' numbers
    assert str(tmp_path.parent) not in readme and "store `sqlite store mlflow.db`" in readme
    assert re.search(r"\| eval_k \| 100 \|", readme) and re.search(r"\| binarization \| dynamic \|", readme)

    import pandas as pd

    summary = pd.read_csv(tmp_path / "smoke" / "summary.csv")
    got = summary.set_index(["variant", "objective"])["test/log_px mean"]
    assert got[("vanilla", "elbo")] == pytest.approx(-31.0)
    assert got[("iwae", "iwae")] == pytest.approx(-29.0)

    # the half-finished runs are reported in the README and on stderr
    err = capsys.readouterr().err
    for text in (readme, err):
        assert "planar-flow/elbo/digits/seed0 is FAILED" in text
        assert "iaf/dreg/digits/seed0 is KILLED and logged nothing: not shown" in text
        assert re.search(r"metric\(s\) test/log_px, .* missing in 1 of 5 run\(s\)", text)


def test_missing_experiment_and_empty_experiment_do_not_crash(store, tmp_path, capsys):
    for suite, says in (("nosuchsuite", "no experiment named 'nosuchsuite'"),
                        ("empty", "has no child runs yet")):
        paths = plots.draw(suite, tmp_path, store)
        assert [p.name for p in paths] == ["README.md"]
        readme = paths[0].read_text()
        assert says in readme and "No runs to report" in readme
        assert says in capsys.readouterr().err


def test_half_finished_only_draws_what_exists(tmp_path, capsys):
    """Only a failed run with learning curves: the curves are drawn, the rest is reported."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("half", artifact_location=(tmp_path / "art").as_uri())
    pid = client.create_run(exp, run_name="half", tags={"vaebench.role": "parent"}).info.run_id
    _child(client, exp, pid, "planar-flow", "elbo", 0, tmp_path, status="FAILED", final=False)
    names = [p.name for p in plots.draw("half", tmp_path / "out", uri)]
    assert names == ["learning_curves.png", "summary.csv", "runs.csv", "README.md"]
    err = capsys.readouterr().err
    assert "gap figure not drawn" in err and "samples figure not drawn" in err


def _suite_store(tmp_path, suite: str):
    """A new sqlite store with an experiment for ``suite``: (uri, client, experiment id, scratch dir)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(suite, artifact_location=(tmp_path / "art").as_uri())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return uri, client, exp, scratch


def test_a_seed_that_did_not_finish_is_counted_where_it_has_values(tmp_path):
    """A suite stopped part-way: two seeds finished, a third killed during training (curves, no
    test metrics), a fourth planned and never started (no metric at all, as a resumable suite
    leaves it). The planned one is not a row; the group's ``seeds`` counts the three that ran, and
    a mean over fewer runs than that says how many it averages."""
    uri, client, exp, scratch = _suite_store(tmp_path, "part")
    pid = client.create_run(exp, run_name="part", tags={"vaebench.role": "parent"}).info.run_id
    for seed in (0, 1):
        _child(client, exp, pid, "iwae", "iwae", seed, scratch)
    _child(client, exp, pid, "iwae", "iwae", 2, scratch, status="KILLED", final=False)
    _child(client, exp, pid, "vanilla", "elbo", 0, scratch, status="KILLED", metrics=False, final=False)
    df, notes = plots.load_runs("part", uri)
    assert sorted(df["seed"]) == [0, 1, 2]
    assert "run vanilla/elbo/digits/seed0 is KILLED and logged nothing: not shown" in notes
    plots.draw("part", tmp_path / "out", uri)
    head, rows = _table((tmp_path / "out" / "part" / "README.md").read_text(), "Log-likelihood and bounds")
    assert set(rows) == {("iwae", "iwae")}
    assert rows[("iwae", "iwae")][3] == "3"
    assert rows[("iwae", "iwae")][head.index("log p(x) [nats] ↑")] == "-29.00 ± 0.71 (n = 2)"


def test_a_rerun_supersedes_older_runs_of_the_same_key(tmp_path):
    """Two invocations of one (variant, objective, dataset, seed): the later FINISHED run is
    reported, a later FAILED one does not displace it, and the README says runs were dropped."""
    uri, client, exp, scratch = _suite_store(tmp_path, "again")
    pid = client.create_run(exp, run_name="first", tags={"vaebench.role": "parent"}).info.run_id
    _child(client, exp, pid, "vanilla", "elbo", 0, scratch)
    LOG_PX[("vanilla", "elbo")][0] = -20.0  # the second invocation's value
    try:
        pid = client.create_run(exp, run_name="second", tags={"vaebench.role": "parent"}).info.run_id
        keep = _child(client, exp, pid, "vanilla", "elbo", 0, scratch)
        pid = client.create_run(exp, run_name="third", tags={"vaebench.role": "parent"}).info.run_id
        _child(client, exp, pid, "vanilla", "elbo", 0, scratch, status="FAILED", final=False)
    finally:
        LOG_PX[("vanilla", "elbo")][0] = -30.0
    df, notes = plots.load_runs("again", uri)
    assert df["run_id"].tolist() == [keep]
    assert df["metrics.test/log_px"].tolist() == [-20.0]
    assert any("2 other run(s)" in n for n in notes)


def test_runs_that_differ_only_in_k_are_distinct_results(tmp_path):
    """Burda et al.'s table compares k = 1, 5, 50 of one (variant, objective): no run displaces
    another, and the objective's label names k."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ks", artifact_location=(tmp_path / "art").as_uri())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pid = client.create_run(exp, run_name="p", tags={"vaebench.role": "parent"}).info.run_id
    for k in (1, 5, 50):
        _child(client, exp, pid, "iwae", "iwae", 0, scratch, k=k)
    _child(client, exp, pid, "vanilla", "elbo", 0, scratch, k=1)
    df, _ = plots.load_runs("ks", uri)
    assert sorted(df["objective"]) == ["elbo", "iwae (k=1)", "iwae (k=5)", "iwae (k=50)"]


def test_runs_the_suite_file_sets_apart_are_distinct_results(tmp_path):
    """The ``priors`` suite trains vanilla/elbo/mnist under three priors (a grid's ``set``): three
    results, labelled by the settings that tell them apart, and a rerun of one of them still
    supersedes its earlier run (without the labels all four would collapse into one row)."""
    uri, client, exp, scratch = _suite_store(tmp_path, "priors")
    assert plots.store.setting_keys("priors")[("vanilla", "elbo", "mnist")] == ["prior", "prior_components"]
    assert plots.store.setting_keys("kingma2014")[("vanilla", "wake-sleep", "mnist")] == ["latent_dim"]
    assert plots.store.setting_keys("smoke")[("vanilla", "elbo", "digits")] == []
    pid = client.create_run(exp, run_name="p", tags={"vaebench.role": "parent"}).info.run_id
    runs = {}
    for prior, n in (("vamp", 500), ("standard", 0), ("mog", 10), ("vamp", 500)):
        runs[prior] = _child(client, exp, pid, "vanilla", "elbo", 0, scratch,
                             extra={"dataset": "mnist", "prior": prior, "prior_components": n,
                                    "train_examples": 100})
    df, notes = plots.load_runs("priors", uri)
    assert sorted(df["variant"]) == ["vanilla (prior=mog, prior_components=10)",
                                     "vanilla (prior=standard, prior_components=0)",
                                     "vanilla (prior=vamp, prior_components=500)"]
    assert runs["vamp"] in df["run_id"].tolist() and any("1 other run(s)" in n for n in notes)
    assert df["setting"].tolist() == [v.split(" (")[1][:-1] for v in df["variant"]]
    assert df["run_name"].tolist() == [f"vanilla/elbo/digits/seed0 ({s})" for s in df["setting"]]
    # the bounds against training examples: one panel per prior (drawn only where settings set runs apart)
    paths = {p.name for p in plots.draw("priors", tmp_path / "out", uri)}
    assert "bounds_vs_examples.png" in paths


def test_labelled_runs_are_ordered_by_their_settings_numbers():
    from bench.plots.store import setting_order

    labels = [f"vanilla (latent_dim={n})" for n in (200, 3, 20, 5, 10)] + ["iwae (latent_dim=50)", "vanilla"]
    assert sorted(labels, key=setting_order) == ["iwae (latent_dim=50)", "vanilla", *[
        f"vanilla (latent_dim={n})" for n in (3, 5, 10, 20, 200)]]
    assert sorted(labels)[2:5] == ["vanilla (latent_dim=10)", "vanilla (latent_dim=20)", "vanilla (latent_dim=200)"]
    assert sorted(["lr=0.0003", "lr=1e-05", "lr=0.003"], key=setting_order) == ["lr=1e-05", "lr=0.0003", "lr=0.003"]
    assert sorted(["latent_dim=20", "latent_dim=3"], key=setting_order) == ["latent_dim=3", "latent_dim=20"]


def test_variant_colours_are_fixed_per_name():
    a = plots.variant_colors(["vanilla", "iwae", "my-new-variant"])
    b = plots.variant_colors(["my-new-variant", "ladder"])
    assert a["my-new-variant"] == b["my-new-variant"]
    assert len({a["vanilla"], a["iwae"], b["ladder"]}) == 3
    # a suite's settings of one variant (the priors suite's six rows) never share a colour
    rows = [f"{v} (prior={p}, prior_components={n})" for v in ("vanilla", "hierarchical")
            for p, n in (("standard", 0), ("mog", 10), ("vamp", 500))]
    assert len(set(plots.variant_colors(rows).values())) == 6


def test_run_figure(tmp_path):
    hist = {"train/loss": [(0, 40.0), (1, 35.0)], "val/elbo": [(0, -41.0), (1, -36.0)],
            "gap/approximation": [(1, 1.0)], "gap/amortization": [(1, 0.5)]}
    plots.run_figure(hist, tmp_path / "curves.png")
    plots.run_figure({}, tmp_path / "empty.png")
    for name in ("curves.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    # bounds and gaps: two panels, twice as wide as the one "nothing logged" panel; no gaps: one
    import matplotlib.image as mpimg

    plots.run_figure({k: v for k, v in hist.items() if not k.startswith("gap/")}, tmp_path / "bounds.png")
    width = {n: mpimg.imread(tmp_path / f"{n}.png").shape[1] for n in ("curves", "empty", "bounds")}
    assert width["curves"] > 1.8 * width["empty"] and width["bounds"] == width["empty"]


def test_the_docs_list_every_registered_figure():
    """The figure table under "The report" (docs/metrics.md) and the figure registry name the same files,
    and every registered figure has a title and a caption of its own."""
    from tests.conftest import ROOT

    section = (ROOT / "docs" / "metrics.md").read_text().split("\n## The report", 1)[1].split("\n## ", 1)[0]
    listed = {n for line in section.splitlines() if line.startswith("| `")
              for n in re.findall(r"`([^`]+\.png)`", line.split("|")[1])}
    assert listed == set(plots.FIGURES)
    captions = [f.caption for f in plots.FIGURES.values()]
    assert all(len(c) > 40 for c in captions) and len(set(captions)) == len(captions)


def test_the_store_is_named_without_paths_or_passwords(tmp_path, monkeypatch):
    from bench.plots.store import store_name

    monkeypatch.chdir(tmp_path)
    assert store_name(f"sqlite:///{tmp_path}/sub/mlflow.db") == "sqlite:///sub/mlflow.db"
    assert store_name("sqlite:////elsewhere/x/mlflow.db") == "sqlite store mlflow.db"
    assert store_name("postgresql+psycopg://vaebench:s3cret@127.0.0.1:5432/mlflow") == "postgresql database mlflow"
    assert store_name("http://127.0.0.1:5000") == "http tracking server"


def test_a_validation_only_suite_reports_its_validation_elbo(tmp_path):
    """Runs made with evaluate = "validation" (an ablation of search trials) have no test metrics:
    the report gives their validation ELBO at the last epoch and the best over the epochs (mean ±
    sd over seeds, the epoch of each seed's best), and does not call their test metrics missing."""
    uri, client, exp, scratch = _suite_store(tmp_path, "valonly")
    pid = client.create_run(exp, run_name="valonly", tags={"vaebench.role": "parent"}).info.run_id
    curves = {0: [-50.0, -41.0, -43.0], 1: [-52.0, -44.0, -42.0]}  # seed 0 peaks at epoch 2, seed 1 at 3
    ts = int(time.time() * 1000)
    for seed, curve in curves.items():
        rid = _child(client, exp, pid, "vanilla", "elbo", seed, scratch, metrics=False, final=False,
                     extra={"evaluate": "validation"})
        client.log_batch(rid, metrics=[Metric("val/elbo", v, ts, e) for e, v in enumerate(curve, 1)]
                         + [Metric(m, 1.0, ts, 3) for m in ("perf/train_seconds", "perf/train_examples_per_s",
                                                            "perf/peak_mem_mb")])
    plots.draw("valonly", tmp_path / "out", uri)
    readme = (tmp_path / "out" / "valonly" / "README.md").read_text()
    head, rows = _table(readme, "Validation ELBO of the validation-only runs")
    row = dict(zip(head, rows[("vanilla", "elbo")]))
    assert row["seeds"] == "2" and row["epochs"] == "3"
    assert row["validation ELBO at the last epoch [nats] ↑"] == "-42.50 ± 0.71"
    assert row["best validation ELBO [nats] ↑"] == "-41.50 ± 0.71"
    assert row["at epoch"] == "2, 3"
    assert "missing in" not in readme  # test/*, gap/*, grad/* are not expected of such runs
