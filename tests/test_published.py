"""Published numbers: a suite's ``[published]`` table is validated, and ``bench plots`` puts the
paper's number and ours − published beside ours (README, summary.csv, published.png); a suite
without the table is unchanged. The store is synthetic, with known values, as in test_plots."""

from __future__ import annotations

import re
import textwrap
import tomllib

import pandas as pd
import pytest

pytest.importorskip("mlflow")
from mlflow import MlflowClient

from bench import plots
from bench.errors import ConfigError
from bench.suite import available_suites, load_published, load_suite, parse_published
from tests.test_plots import LOG_PX, PNG_MAGIC, _child

SUITE = """
description = "test"
[[grid]]
variants = ["vanilla"]
datasets = ["digits"]
"""
PUBLISHED = """
[published]
citation = "Somebody et al. (2016), A Paper"
table = "Table 1"
protocol = "dynamic binarization, 3,280 epochs, L_5000"
note = "the paper's NLL is stored as log p(x) = -NLL"
rows = [
  { variant = "vanilla", objective = "elbo", k = 5, dataset = "digits", "test/log_px" = -30.5, "test/kl" = 4.0 },
  { variant = "iwae", objective = "iwae", k = 5, "test/log_px" = -29.25 },
  { variant = "iwae", objective = "iwae", k = 50, "test/log_px" = -28.0 },
]
"""


def suite_file(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_published_table_is_parsed_and_keyed_by_run_config(tmp_path):
    suite = load_suite(str(suite_file(tmp_path, SUITE + PUBLISHED)))
    pub = suite.published
    assert pub.citation.startswith("Somebody") and pub.table == "Table 1" and len(pub.rows) == 3
    row = pub.rows[0]
    assert row.match == {"variant": "vanilla", "objective": "elbo", "k": 5, "dataset": "digits"}
    assert row.values == {"test/log_px": -30.5, "test/kl": 4.0}
    run = suite.runs[0].params() | {"k": "5", "objective": "elbo"}
    assert row.matches(run) and not row.matches(run | {"k": "1"}) and not pub.rows[1].matches(run)
    assert load_published(str(tmp_path / "s.toml")).rows == pub.rows
    assert load_suite(str(suite_file(tmp_path, SUITE))).published is None


@pytest.mark.parametrize("broken, says", [
    ('citation = ""\ntable = "T"\nprotocol = "p"\nrows = [{variant = "v", "test/log_px" = 1.0}]', "citation must be a non-empty"),
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = []', "rows must be a non-empty array"),
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = [{variant = "v"}]', "no metric"),
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = [{varaint = "v", "test/log_px" = 1.0}]', "unknown key.*varaint"),
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = [{k = "five", "test/log_px" = 1.0}]', "k must be int"),
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = [{k = 5, "test/log_px" = "-85"}]', "must be a number"),
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = [{k = 5, "test/log_px" = 1.0}]\ncolour = 1', "unknown key.*colour"),
    # the option tables are recorded per option (option.<name>): a row cannot select by the table
    ('citation = "c"\ntable = "T"\nprotocol = "p"\nrows = [{variant_options = {n_codes = 8}, "test/log_px" = 1.0}]',
     "unknown key.*variant_options"),
])
def test_a_broken_published_table_is_one_clear_error(tmp_path, broken, says):
    with pytest.raises(ConfigError, match=says):
        load_suite(str(suite_file(tmp_path, SUITE + "[published]\n" + broken)))


@pytest.fixture(scope="module")
def ks_store(tmp_path_factory):
    """vanilla/elbo (k=5, 2 seeds: log p(x) -30, -32) and iwae/iwae at k = 5 (-28.5, -29.5) and
    k = 50 (one seed, -28.5), the known values of test_plots."""
    root = tmp_path_factory.mktemp("pub")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("pub", artifact_location=(root / "art").as_uri())
    pid = client.create_run(exp, run_name="p", tags={"vaebench.role": "parent"}).info.run_id
    scratch = root / "scratch"
    scratch.mkdir()
    for (variant, objective), values in LOG_PX.items():
        for seed in range(len(values)):
            _child(client, exp, pid, variant, objective, seed, scratch, k=5)
    _child(client, exp, pid, "iwae", "iwae", 0, scratch, k=50)
    return uri


def test_the_report_and_csv_put_published_beside_ours(ks_store, tmp_path, capsys):
    published = parse_published(tomllib.loads(PUBLISHED)["published"], "test")
    paths = plots.draw("pub", tmp_path, ks_store, published=published)
    assert "published.png" in {p.name for p in paths}
    assert (tmp_path / "pub" / "published.png").read_bytes()[:8] == PNG_MAGIC
    readme = (tmp_path / "pub" / "README.md").read_text()
    assert "## Published numbers" in readme and "Somebody et al. (2016), A Paper, Table 1" in readme
    assert "ours − published" in readme and "positive difference means ours is higher" in readme
    assert "](published.png)" in readme

    def row(variant, objective, metric):
        pat = rf"^\| {re.escape(variant)} \| {re.escape(objective)} \| digits \| {re.escape(metric)} \| (.+?) \| (.+?) \| (.+?) \|$"
        m = re.search(pat, readme, re.MULTILINE)
        assert m, (variant, objective, metric)
        return m.groups()

    # vanilla: mean -31 ± 1.41 against -30.5: ours − published = -0.50
    assert row("vanilla", "elbo", "log p(x) [nats] ↑") == ("-31.00 ± 1.41", "-30.50", "-0.50")
    assert row("vanilla", "elbo", "KL [nats]") == ("5.00 ± 0.00", "4.00", "+1.00")
    # iwae at k = 5 and k = 50 are told apart by k: -29 against -29.25 and -28.5 against -28
    assert row("iwae", "iwae (k=5)", "log p(x) [nats] ↑") == ("-29.00 ± 0.71", "-29.25", "+0.25")
    assert row("iwae", "iwae (k=50)", "log p(x) [nats] ↑") == ("-28.50", "-28.00", "-0.50")

    summary = pd.read_csv(tmp_path / "pub" / "summary.csv").set_index(["variant", "objective"])
    assert summary.loc[("vanilla", "elbo"), "test/log_px published"] == pytest.approx(-30.5)
    assert summary.loc[("vanilla", "elbo"), "test/log_px ours-published"] == pytest.approx(-0.5)
    assert summary.loc[("iwae", "iwae (k=5)"), "test/log_px ours-published"] == pytest.approx(0.25)
    assert pd.isna(summary.loc[("iwae", "iwae (k=5)"), "test/kl published"])  # not in the table


def test_unmatched_and_ambiguous_published_rows_are_reported(ks_store, tmp_path, capsys):
    published = parse_published(tomllib.loads(textwrap.dedent("""
        [published]
        citation = "c"
        table = "T"
        protocol = "p"
        rows = [
          { variant = "iwae", "test/log_px" = -1.0 },
          { variant = "iwae", dataset = "digits", "test/log_px" = -2.0 },
          { variant = "ladder", "test/log_px" = -3.0 },
        ]
    """))["published"], "test")
    plots.draw("pub", tmp_path, ks_store, published=published)
    err = capsys.readouterr().err
    assert "published rows 1, 2 all match iwae/iwae (k=5)/digits: the table is ambiguous" in err
    assert "have no run in the store (variant=iwae; variant=iwae, dataset=digits; variant=ladder)" in err


def test_a_suite_without_published_numbers_is_unchanged(ks_store, tmp_path):
    names = {p.name for p in plots.draw("pub", tmp_path, ks_store)}  # no suite file named "pub"
    assert "published.png" not in names
    assert "Published" not in (tmp_path / "pub" / "README.md").read_text()
    assert not any("published" in c for c in pd.read_csv(tmp_path / "pub" / "summary.csv").columns)


def test_the_reproduction_suites_published_tables_load():
    """Every committed suite validates, and the reproduction suites key each published row to a
    run of their grid (a typo in a key would leave a published number without its run)."""
    for name in available_suites():
        suite = load_suite(name)
        if suite.published is None:
            continue
        for i, row in enumerate(suite.published.rows, 1):
            assert any(row.matches(r.params()) for r in suite.runs), f"{name}: published row {i} matches no run"
