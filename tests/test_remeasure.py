"""``python -m bench remeasure``: a tiny suite run into a temporary store, then its final
measurements recomputed from the stored weights and logged into the same runs (old values kept in
the history, the new one the latest), tagged with the commit, skipped when done, refused for bad
input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import cli, config, data, metrics, objectives, train
from bench.run import remeasure
from bench.store import tracking
from bench.suite import load_suite
from tests.conftest import TINY
from tests.runs import children

SELECT = ["--suite", str(TINY), "--set", "variants=vanilla,iwae", "--set", "epochs=1"]


def _history(client, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.timestamp, m.step, m.value) for m in client.get_metric_history(run_id, key))


def _reloaded(client, run) -> tuple:
    """The run's suite config, its dataset and its model with the stored final weights, rebuilt
    here without bench.run.remeasure."""
    cfg = next(r for r in load_suite(str(TINY), config.parse_overrides(["variants=vanilla,iwae", "epochs=1"])).runs
               if r.run_name == run.info.run_name)
    cfg.device = "cpu"
    ds = data.load(cfg.dataset, binarization=cfg.binarization, data_dir=cfg.data_dir, device="cpu")
    model = train.build_model(cfg, ds)
    with tempfile.TemporaryDirectory() as tmp:
        model.load_state_dict(torch.load(client.download_artifacts(run.info.run_id, "model.pt", tmp), weights_only=True))
    return cfg, ds, model.eval()


@pytest.mark.slow
def test_remeasure_logs_new_final_values_into_the_same_runs(store, capsys):
    assert cli.main(["run", *SELECT, "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    before = {r.info.run_id: r for r in children(store)}
    assert len(before) == 2
    grad_keys = {rid: sorted(k for k in r.data.metrics if k.startswith("grad/")) for rid, r in before.items()}
    assert all(grad_keys.values())
    capsys.readouterr()

    assert cli.main(["remeasure", *SELECT, "--tracking-uri", store, "--measurements", "grad,log_px"]) == 0
    assert "2 to re-measure" in capsys.readouterr().err
    after = {r.info.run_id: r for r in children(store)}
    assert sorted(after) == sorted(before)  # the same runs, no new ones
    commit = tracking.git_commit()
    for rid, run in after.items():
        old = before[rid]
        assert run.info.status == "FINISHED" and run.data.tags["git_commit"] == old.data.tags["git_commit"]
        assert run.data.tags[tracking.TAG_REMEASURED_COMMIT] == commit
        assert run.data.tags[tracking.TAG_REMEASURED_MEASUREMENTS] == "grad,log_px"
        for key in [*grad_keys[rid], "test/log_px"]:
            h = _history(client, rid, key)
            # the old value and the new one, both at the final step, the new one later and the latest
            assert [s for _, s, _ in h] == [1, 1], (key, h)
            assert h[0][2] == old.data.metrics[key] and h[1][0] > h[0][0], key
            assert run.data.metrics[key] == h[1][2], key
        for key in ("test/elbo", "gap/amortization"):  # not asked for: untouched
            assert len(client.get_metric_history(rid, key)) == 1, key

        # the new values are those of a direct call on the reloaded model, seeded with the run's seed
        cfg, ds, model = _reloaded(client, run)
        torch.manual_seed(cfg.seed)
        log_px = metrics.log_likelihood(model, ds.test[: cfg.test_size], k=cfg.eval_k, chunk=cfg.eval_chunk).mean().item()
        assert run.data.metrics["test/log_px"] == log_px
        torch.manual_seed(cfg.seed)
        grad_x = ds.train_epoch(torch.Generator().manual_seed(0))[: cfg.grad_batch]
        stats = metrics.gradient_stats(model, grad_x, objectives.build(cfg.objective), n=cfg.grad_draws, k=cfg.k)
        assert {f"grad/{k}": v for k, v in stats.items()} == {k: run.data.metrics[k] for k in grad_keys[rid]}

    # the report reads the new values
    from bench.plots import store as plot_store

    df, _ = plot_store.load_runs("tiny", store)
    assert sorted(df["metrics.test/log_px"]) == sorted(r.data.metrics["test/log_px"] for r in after.values())

    # done at this commit: skipped; a subset too
    for asked in ("grad,log_px", "grad"):
        assert cli.main(["remeasure", *SELECT, "--tracking-uri", store, "--measurements", asked]) == 0
        assert "0 to re-measure, 2 already re-measured at this commit" in capsys.readouterr().err
    for rid in after:
        assert len(client.get_metric_history(rid, "test/log_px")) == 2

    # bad input: exit code 2, one clear line, nothing written
    assert cli.main(["remeasure", *SELECT, "--tracking-uri", store, "--measurements", "grad,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown measurement(s) nope" in err and "Traceback" not in err
    assert cli.main(["remeasure", "--suite", str(TINY), "--tracking-uri", store, "--set", "epochs=3"]) == 2
    assert "none of its 3 run(s) has a FINISHED run" in capsys.readouterr().err


def test_remeasure_refuses_a_missing_store_and_unknown_suite(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    assert cli.main(["remeasure", "--suite", "smoke", "--tracking-uri", uri]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    Path(tmp_path / "none.db").touch()
    assert cli.main(["remeasure", "--suite", "no-such-suite", "--tracking-uri", uri]) == 2
    assert "no suite 'no-such-suite'" in capsys.readouterr().err
    assert remeasure.parse_measurements("log_px, grad") == ("grad", "log_px")  # the canonical order
