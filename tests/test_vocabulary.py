"""One vocabulary: the metric reference ``docs/metrics.md`` is what ``bench.vocabulary`` generates
(its table lists the same names with the same "when"); every name a real run logs (the per-objective gradient patterns, per-layer active
units, the codebook, AIS, the warm-up, a trainable objective's own group) is registered; and the
lookup of patterns tells names apart (power checks: near-miss names are not registered)."""

from __future__ import annotations

import re

import pytest

import variants
from bench import config, metrics, train, vocabulary
from bench import data as datasets
from tests.conftest import ROOT

REFERENCE = ROOT / vocabulary.REFERENCE


def _reference_table(text: str) -> dict[str, tuple[str, str]]:
    """{metric name: (its "when" cell, its "what" cell)} from the reference's table."""
    out = {}
    for line in text.split("## The metric reference", 1)[1].split("\n## ", 1)[0].splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            (name,) = re.findall(r"`([^`]+)`", cells[0])
            out[name] = (cells[1], cells[3])
    return out


def test_the_metric_reference_is_generated_from_the_vocabulary():
    committed = REFERENCE.read_text()
    assert vocabulary.render_reference(committed) == committed, (
        f"{vocabulary.REFERENCE} is out of date with bench/vocabulary.py: run `python -m bench.vocabulary --write`")


def test_the_reference_lists_every_entry_with_its_when_and_what():
    table = _reference_table(REFERENCE.read_text())
    assert sorted(table) == sorted(vocabulary.METRICS)
    for name, (when, what) in table.items():
        m = vocabulary.METRICS[name]
        assert when == m.when and len(what) > 20, name
        assert m.doc or m.same_as, f"{name}: no doc in bench/vocabulary.py"


def test_a_stale_reference_is_caught():
    committed = REFERENCE.read_text()
    stale = committed.replace("| `test/elbo` | final |", "| `test/elbo` | every epoch |")
    assert stale != committed and vocabulary.render_reference(stale) == committed
    dropped = re.sub(r"\| `test/kl` \|.*\n", "", committed)
    assert dropped != committed and vocabulary.render_reference(dropped) == committed
    with pytest.raises(ValueError, match="markers"):
        vocabulary.render_reference(committed.replace(vocabulary.END, ""))


def test_the_reference_command_writes_the_file(tmp_path, capsys):
    page = tmp_path / "metrics.md"
    page.write_text(f"# head\n\n{vocabulary.BEGIN}\nSTALE LINE\n{vocabulary.END}\n\ntail\n")
    assert vocabulary.main(["--write", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# head\n") and text.endswith(f"{vocabulary.END}\n\ntail\n") and "STALE LINE" not in text
    assert vocabulary.reference_markdown() in text
    capsys.readouterr()
    vocabulary.main([])
    assert capsys.readouterr().out == vocabulary.reference_markdown()


def test_gradient_statistics_are_those_metrics_computes():
    assert set(vocabulary.GRADIENT_STATS) == set(metrics.GRADIENT_STATS)


@pytest.mark.parametrize("name, entry", [
    ("test/log_px", "test/log_px"),
    ("grad/encoder_snr", "grad/<group>_snr"),
    ("grad/objective_var", "grad/<group>_var"),
    ("grad/decoder_snr_lo", "grad/<group>_snr_lo"),
    ("test/active_units_l2", "test/active_units_l<layer>"),
    ("grad/score-function/k16/encoder_snr_floor", "grad/<objective>/k<k>/<group>_<stat>"),
])
def test_lookup_resolves_names_and_patterns(name, entry):
    m = vocabulary.lookup(name)
    assert m is not None and m.name == entry
    assert vocabulary.METRICS[entry].when == m.when
    if entry.startswith("grad/<objective>"):  # read as its tail: an SNR floor is no score
        assert m.direction == vocabulary.METRICS["grad/<group>_snr_floor"].direction == vocabulary.NEITHER


@pytest.mark.parametrize("name", [
    "test/logpx", "grad/encoder_snrs", "grad/hidden_snr", "grad/iwae/k/encoder_snr", "grad/iwae/k4/encoder_mean",
    "grad/Iwae/k4/encoder_snr", "test/active_units_lx", "val/elbo/", "gap/approximation_gap", "",
])
def test_near_misses_are_not_registered(name):
    assert vocabulary.lookup(name) is None
    with pytest.raises(KeyError, match="bench/vocabulary.py"):
        vocabulary.get(name)


def test_labels_directions_and_formatting():
    assert vocabulary.head("test/log_px") == "log p(x) [nats] ↑"
    assert vocabulary.head("gap/amortization") == "amort. gap [nats] ↓"
    assert vocabulary.head("test/kl") == "KL [nats]"  # a description, not a score
    assert vocabulary.label_of("test/active_units_l2") == "active units, layer 2"
    assert vocabulary.label_of("grad/decoder_snr") == "decoder gradient SNR"
    assert vocabulary.label_of("grad/iwae/k4/encoder_var") == "iwae k=4: encoder gradient variance"
    assert vocabulary.fmt("perf/train_examples_per_s", 23103.2) == "23,103"
    assert vocabulary.fmt("test/elbo", -24.031) == "-24.03"
    names = ["grad/objective_snr", "grad/decoder_snr", "grad/encoder_snr", "grad/encoder_snr_lo"]
    assert vocabulary.expand(vocabulary.METRICS["grad/<group>_snr"], names) == names[2:0:-1] + names[:1]


def test_registering_twice_or_with_an_unknown_placeholder_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        vocabulary.metric("test/elbo", "x", "nats", vocabulary.HIGHER, 2, "final")
    with pytest.raises(ValueError, match="unknown placeholder <seed>"):
        vocabulary.metric("test/by_seed_<seed>", "x", "nats", vocabulary.HIGHER, 2, "final")
    assert "test/by_seed_<seed>" not in vocabulary.METRICS


TINY = {"epochs": 2, "batch_size": 100, "latent_dim": 2, "hidden": [8], "train_size": 100, "test_size": 20,
        "val_k": 2, "eval_k": 8, "gap_epochs": [1], "gap_size": 4, "gap_steps": 2, "gap_k": 8, "grad_epochs": [1],
        "grad_draws": 3, "grad_batch": 4, "grad_fit_steps": 1, "threads": 1}


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.mark.parametrize("variant, over", [
    ("vanilla", {"grad_objectives": ["iwae", "score-function"], "grad_ks": [1, 3], "ais_size": 3, "bdmc_size": 2,
                 "ais_chains": 2, "ais_steps": 3, "kl_warmup_epochs": 1}),
    ("ladder", {}),
    ("vq-vae", {"variant_options": {"n_codes": 4, "channels": 4}}),
    ("bernoulli", {"objective": "nvil", "grad_objectives": ["relax"], "grad_ks": [1]}),
], ids=["vanilla+ais+warmup+grad-objectives", "ladder", "vq-vae", "bernoulli+trainable"])
def test_every_name_a_run_logs_is_registered(digits, variant, over, recwarn):
    cfg = config.RunConfig(variant=variant, **{**TINY, **over})
    vcls = variants.get(variant)
    cfg.objective, cfg.k = cfg.objective or vcls.default_objective, vcls.default_k
    logged: set[str] = set()
    result = train.run(cfg, digits, lambda m, step: logged.update(m))
    assert not [w for w in recwarn if issubclass(w.category, train.UnregisteredMetric)]
    assert logged and vocabulary.unregistered(logged) == []
    assert set(result.history) == logged  # the result carries every logged series
    assert [s for s, _ in result.history["val/elbo"]] == [1, 2]
    assert result.history["test/elbo"] == [(2, result.final["test/elbo"])]


def test_an_unregistered_name_is_a_warning_that_names_it():
    log = train.recording(lambda m, s: None, {})
    with pytest.warns(train.UnregisteredMetric, match="test/made_up"):
        log({"test/made_up": 1.0, "test/elbo": -3.0}, 1)
