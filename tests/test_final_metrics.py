"""The final metrics this harness adds on request: AIS (test/log_px_ais), BDMC (test/bdmc_gap),
the gaps' max(IWAE, AIS), per-layer active units; and what a variant they do not apply to gets
(nothing logged, the reason returned), through ``bench.train.run`` on tiny configs."""

from __future__ import annotations

import math

import pytest

import variants
from bench import config, train
from bench import data as datasets
from bench.suite import load_suite

TINY = {
    "epochs": 1, "batch_size": 100, "latent_dim": 3, "hidden": [16], "train_size": 200, "test_size": 30,
    "val_k": 2, "eval_k": 32, "gap_size": 10, "gap_steps": 5, "gap_k": 32, "grad_draws": 4, "grad_batch": 8,
    "ais_size": 12, "ais_chains": 4, "ais_steps": 20, "bdmc_size": 6, "gap_log_px": "max-iwae-ais",
}


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def r_cfg(variant: str, **over) -> config.RunConfig:
    cfg = config.RunConfig(variant=variant, objective="", dataset="digits", **{**TINY, **over})
    vcls = variants.get(variant)
    cfg.objective, cfg.k = vcls.default_objective, vcls.default_k
    return cfg


def run(variant: str, data, **over) -> train.RunResult:
    cfg = r_cfg(variant, **over)
    logged: list[dict[str, float]] = []
    result = train.run(cfg, data, lambda m, step: logged.append(m))
    assert logged[-1] == result.final
    return result


def test_ais_bdmc_and_the_gaps_lower_bound_are_logged(digits):
    r = run("vanilla", digits)
    f = r.final
    assert {"test/log_px_ais", "test/bdmc_gap", "gap/local_no_gain"} <= set(f)
    assert all(math.isfinite(f[k]) for k in ("test/log_px_ais", "test/bdmc_gap"))
    assert f["test/bdmc_gap"] > -0.5  # upper - lower: a bracket (up to Monte Carlo noise)
    assert "ais" not in config.skipped_measurements(r_cfg("vanilla"), variants.get("vanilla"))
    assert {f"grad/encoder_{s}" for s in ("snr_lo", "snr_hi", "snr_floor", "snr_ratio")} <= set(f)
    # with AIS off the gaps are IWAE's and nothing AIS is logged
    off = run("vanilla", digits, ais_size=0, bdmc_size=0, gap_log_px="iwae").final
    assert not {"test/log_px_ais", "test/bdmc_gap"} & set(off)


def test_discrete_latents_skip_ais_with_the_reason(digits):
    r = run("gumbel-softmax", digits, variant_options={"n_latent": 2, "n_classes": 3})
    assert not {"test/log_px_ais", "test/bdmc_gap"} & set(r.final)
    skipped = config.skipped_measurements(r_cfg("gumbel-softmax"), variants.get("gumbel-softmax"))
    assert "discrete" in skipped["ais"]
    assert all(math.isfinite(v) for k, v in r.final.items() if not k.startswith("grad/"))


def test_two_level_variants_log_active_units_per_layer(digits):
    f = run("hierarchical", digits, ais_size=0, bdmc_size=0, gap_log_px="iwae").final
    assert f["test/active_units"] == f["test/active_units_l1"] + f["test/active_units_l2"]
    assert "test/active_units_l1" not in run("vanilla", digits, ais_size=0, bdmc_size=0, gap_log_px="iwae").final


def test_config_checks_the_new_keys(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[defaults]\ngap_log_px = "ais"\n[[grid]]\nvariants = ["vanilla"]\n')
    with pytest.raises(config.ConfigError, match="gap_log_px must be one of iwae, max-iwae-ais"):
        load_suite(str(suite))
    suite.write_text("[defaults]\nais_steps = 0\n[[grid]]\nvariants = [\"vanilla\"]\n")
    with pytest.raises(config.ConfigError, match="ais_steps must be >= 1"):
        load_suite(str(suite))
