"""``python -m bench compare`` end to end on a real store: three invocations of the tiny suite
(vanilla, seeds 0-2) written by ``python -m bench run``: A (2 epochs), A' (the same command with
``--fresh``: recomputed, so the same numbers) and B (6 epochs). The changed setting shows as a
difference beyond the seed spread; the identical pair shows none (the power check: the same
machinery, no invented differences). The seed-spread rule is also checked for its size and power
on simulated seeds, and ids are resolved (run ids, prefixes, commits) with known answers.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from bench import cli
from bench.errors import BenchError
from bench.plots import compare
from tests.conftest import TINY, run_cli

RUN = ["--suite", str(TINY), "--set", "variants=vanilla", "--set", "seeds=0,1,2"]
NOT_TIMINGS = ("test/", "gap/", "grad/")


@pytest.fixture(scope="module")
def three(tmp_path_factory, _empty_store):
    """(store URI, directory, [A, A', B] parent run ids)."""
    root = tmp_path_factory.mktemp("compare")
    shutil.copy(_empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for extra in (["--set", "epochs=2"], ["--set", "epochs=2", "--fresh"], ["--set", "epochs=6"]):
        assert cli.main(["run", *RUN, "--tracking-uri", uri, *extra]) == 0
    client = MlflowClient(uri)
    invs = compare.invocations(client, client.get_experiment_by_name("tiny").experiment_id)
    assert len(invs) == 3
    return uri, root, [i.run_id for i in invs]


@pytest.mark.slow
def test_a_changed_setting_is_beyond_the_seed_spread(three, capsys):
    """Default A B: the last two invocations (A' and B); epochs 2 -> 6 raises the test bounds by
    far more than the seeds' spread; the CSV holds every paired run and config."""
    uri, root, (_, a2, b) = three
    csv = root / "ab.csv"
    assert cli.main(["compare", "--suite", "tiny", "--tracking-uri", uri, "--csv", str(csv)]) == 0
    out = capsys.readouterr()
    assert f"`{a2}`" in out.out and f"`{b}`" in out.out
    assert "`epochs` 2 → 6" in out.out
    row = next(line for line in out.out.splitlines() if "`test/elbo ↑`" in line)
    assert "**yes**, B better" in row and "3/3" in row
    frame = pd.read_csv(csv)
    runs, configs = frame[frame["level"] == "run"], frame[frame["level"] == "config"]
    assert set(runs["seed"].astype(int)) == {0, 1, 2}
    assert (runs["run_key_a"] != runs["run_key_b"]).all()  # a setting changed: every key did
    elbo = configs[configs["metric"] == "test/elbo"].iloc[0]
    assert elbo["diff"] > 2.0 and elbo["p"] < 0.05 and elbo["test"] == "paired, 3 seeds"
    per_seed = runs[runs["metric"] == "test/elbo"]
    assert elbo["diff"] == pytest.approx((per_seed["b"] - per_seed["a"]).mean())
    assert str(csv) in out.err


@pytest.mark.slow
def test_identical_invocations_show_no_difference(three, capsys):
    """A and A' (the same command, recomputed): every pair has one run key, every bound, gap and
    gradient statistic is the same number, and nothing is beyond the seed spread."""
    uri, root, (a, a2, _) = three
    csv = root / "aa.csv"
    assert cli.main(["compare", "--suite", "tiny", a, a2[:10], "--tracking-uri", uri, "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "every pair has the same run key" in out and "No setting differs" in out
    frame = pd.read_csv(csv)
    configs = frame[(frame["level"] == "config") & frame["metric"].str.startswith(NOT_TIMINGS)]
    assert len(configs) >= 8 and (configs["diff"] == 0).all()
    assert not configs["beyond_seed_spread"].astype(bool).any()
    runs = frame[frame["level"] == "run"]
    assert (runs["run_id_a"] != runs["run_id_b"]).all()  # recomputed, not reused


@pytest.mark.slow
def test_the_default_csv_path_and_user_errors_through_the_cli(three, capsys):
    """As a user runs it (a subprocess): the CSV under results/<suite>/compare/. A bad id, an
    unknown suite, an unknown metric, one ref only, a suite with one invocation: one line, exit
    code 2, nothing on stdout."""
    uri, root, (a, _, b) = three
    ok = run_cli("compare", "--suite", "tiny", a, b, "--tracking-uri", uri, cwd=root)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("# Suite `tiny`")
    assert (root / "results" / "tiny" / "compare" / f"{a[:8]}-{b[:8]}.csv").is_file()
    client = MlflowClient(uri)
    solo = client.create_experiment("solo")
    client.create_run(solo, run_name="solo 1", tags={"vaebench.role": "parent", "vaebench.suite": "solo"})
    for args, says in ((["--suite", "tiny", "deadbeefcafe", b], "no invocation of this suite has parent run id or git"),
                       (["--suite", "nosuch"], "no suite 'nosuch' in this store"),
                       (["--suite", "tiny", "--metric", "test/made_up"], "not a metric of the vocabulary"),
                       (["--suite", "tiny", a], "two invocations A B"),
                       (["--suite", "solo"], "nothing to compare: suite 'solo' has 1 invocation"),
                       (["--suite", "tiny", a, a], "the same invocation")):
        assert cli.main(["compare", *args, "--tracking-uri", uri]) == 2, args
        out = capsys.readouterr()
        assert out.err.startswith("error: ") and says in out.err and out.err.count("\n") == 1, out.err
        assert out.out == ""


def _inv(run_id: str, t: int, commit: str) -> compare.Invocation:
    return compare.Invocation(run_id, run_id, t, "FINISHED", commit, {}, {})


def test_resolve_run_ids_prefixes_and_commits():
    c1, c2 = "a" * 8 + "1" * 32, "a" * 8 + "2" * 32
    invs = [_inv("0123456789abcdef" * 2, 1, c1), _inv("012345ff" + "0" * 24, 2, c1), _inv("fedcba98" * 4, 3, c2 + "-dirty")]
    assert compare.resolve(invs[0].run_id, invs) is invs[0]
    assert compare.resolve("fedcba", invs) is invs[2]  # a unique prefix of a run id
    assert compare.resolve(c1[:12], invs) is invs[1]  # a commit: its latest invocation
    assert compare.resolve(c2, invs) is invs[2]  # a dirty tree's commit
    for ref, says in (("012345", "start of 2 parent run ids"), ("aaaaaaaa", "matches 2 commits"),
                      ("99999999", "no invocation")):
        with pytest.raises(BenchError, match=says):
            compare.resolve(ref, invs)


def test_the_seed_spread_rule_has_its_size_and_its_power():
    """Seeds simulated from known normals: with no true difference the rule says "beyond" in
    about 5% of configs (both the paired and the Welch form; 2,000 configs: 5% ± 1.5%), and a
    shift of 3 sd at 5 seeds is found almost always (power check). Identical values are never
    beyond it; identical shifts always are."""
    rng = np.random.default_rng(0)
    trials = 2000
    for paired in (True, False):
        null = shift = 0
        for _ in range(trials):
            a = rng.normal(0, 1, 5)
            b = (a + rng.normal(0, 1, 5)) if paired else rng.normal(0, 1, 5)
            seeds_b = range(5) if paired else range(5, 10)
            null += bool(compare.seed_test(dict(enumerate(a)), dict(zip(seeds_b, b)))[2])
            shift += bool(compare.seed_test(dict(enumerate(a)), dict(zip(seeds_b, b + 3.0)))[2])
        assert 0.035 < null / trials < 0.065, (paired, null)
        assert shift / trials > 0.9, (paired, shift)
    assert compare.seed_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})[2] is False
    assert compare.seed_test({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5})[2] is True
    assert compare.seed_test({0: 1.0}, {0: 5.0}) == ("one seed", pytest.approx(math.nan, nan_ok=True), None)
