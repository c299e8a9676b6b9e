"""The metric vocabulary: every metric name the harness logs, with its label, unit, direction,
decimals and when it is logged. One entry per name (or name pattern); the training loop checks
its names against it, the run summary, the tables, the figures and ``bench compare`` format with
it, and a test holds the README's metric table to it.

Adding a metric: one :func:`metric` call below, plus the code that computes it (and a row of the
README's metric table, which ``tests/test_vocabulary.py`` compares with this registry).

A name may hold placeholders, each standing for one of a fixed set of values (:data:`PLACEHOLDERS`):
``grad/<group>_snr`` covers ``grad/encoder_snr``, ``grad/decoder_snr`` and ``grad/objective_snr``.
:func:`lookup` finds the entry of a concrete name. An entry with ``same_as`` takes its label, unit,
direction and decimals from the entry its name's tail matches: ``grad/<objective>/k<k>/<group>_<stat>``
(``grad/iwae/k4/encoder_snr``) reads as ``grad/<group>_snr``.

Directions: ``HIGHER`` (higher is better: bounds, log-likelihoods, SNRs, throughput), ``LOWER``
(lower is better: KL is not one of them, see below; gaps, variance, time, memory) and ``NEITHER``
(a description, not a score: the KL term, the warm-up weight, the SNR's noise floor).

Tables (:data:`TABLES`): the report's results are several small tables rather than one wide one;
an entry's ``table`` names the one it belongs to, its position in this file its column. A table
shows only the columns some run has.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

HIGHER, LOWER, NEITHER = "higher", "lower", "neither"
ARROWS = {HIGHER: "↑", LOWER: "↓", NEITHER: ""}

# Per-group statistics of a gradient measurement (``bench.metrics.gradient_stats``, ``bench.snr``),
# each logged as grad/<group>_<stat>.
GRADIENT_STATS = ("var", "snr", "snr_lo", "snr_hi", "snr_floor", "snr_ratio", "snr_det", "snr_dropped")
GRADIENT_GROUPS = ("encoder", "decoder", "objective")

# what each placeholder of a name may stand for (a regular expression)
PLACEHOLDERS = {
    "group": "|".join(GRADIENT_GROUPS),
    "stat": "|".join(sorted(GRADIENT_STATS, key=len, reverse=True)),
    "objective": r"[a-z][a-z0-9-]*",  # a registered objective's name
    "k": r"\d+",
    "layer": r"\d+",
}

WHEN_EPOCH = "every epoch"
WHEN_FINAL = "final"
WHEN_GAPS = "gap_epochs and final"
WHEN_GRAD = "grad_epochs and final"


@dataclass(frozen=True)
class Metric:
    """One metric name (or name pattern) of the vocabulary.

    ``label``: short, for a column head or an axis; ``unit``: ``nats`` (per example), ``count``,
    ``examples/s``, ``s``, ``MB``, ``codes`` or ``""``; ``decimals``: digits the tables print;
    ``when``: when it is logged (``step`` = epoch for per-epoch metrics, the last epoch for final
    ones); ``table``: the report table it belongs to (``""``: none); ``optional``: absent from
    most runs by design (a variant or a setting brings it), so its absence is never "missing";
    ``skip``: the measurement whose ``vaebench.skipped.<skip>`` tag explains its absence in a run;
    ``same_as``: the entry whose label, unit, direction and decimals a pattern's names take
    (``<tail>`` is the name's last path component); ``summary``: a column of the run summary.
    """

    name: str
    label: str
    unit: str
    direction: str
    decimals: int
    when: str
    table: str = ""
    optional: bool = False
    skip: str = ""
    same_as: str = ""
    summary: bool = False  # a column of the table ``python -m bench run`` prints at the end

    @property
    def arrow(self) -> str:
        return ARROWS[self.direction]

    @property
    def better(self) -> str:
        return {HIGHER: "higher is better", LOWER: "lower is better", NEITHER: ""}[self.direction]

    def format(self, value: float) -> str:
        return f"{value:,.{self.decimals}f}" if self.unit == "examples/s" else f"{value:.{self.decimals}f}"


METRICS: dict[str, Metric] = {}
_PATTERNS: list[tuple[re.Pattern, Metric]] = []


def _regex(name: str) -> re.Pattern:
    """``name`` with each ``<placeholder>`` as a named group of its values (:data:`PLACEHOLDERS`)."""
    parts = re.split(r"<(\w+)>", name)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            if part not in PLACEHOLDERS:
                raise ValueError(f"metric {name!r}: unknown placeholder <{part}>; known: {', '.join(PLACEHOLDERS)}")
            out.append(f"(?P<{part}>{PLACEHOLDERS[part]})")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z")


def metric(name: str, label: str, unit: str, direction: str, decimals: int, when: str, **kw) -> Metric:
    """Register a metric (a name, or a pattern with ``<placeholders>``)."""
    if name in METRICS:
        raise ValueError(f"metric {name!r} registered twice")
    if direction not in ARROWS:
        raise ValueError(f"metric {name!r}: direction must be one of {', '.join(ARROWS)}")
    m = Metric(name, label, unit, direction, decimals, when, **kw)
    rx = _regex(name) if "<" in name else None  # (an unknown placeholder raises before anything is kept)
    METRICS[name] = m
    if rx is not None:
        _PATTERNS.append((rx, m))
    lookup.cache_clear()
    return m


@functools.lru_cache(maxsize=8192)
def lookup(name: str) -> Metric | None:
    """The registry entry that covers a concrete metric name (``grad/iwae/k4/encoder_snr`` ->
    ``grad/<objective>/k<k>/<group>_<stat>``, read as ``grad/<group>_snr``), or None."""
    m = METRICS.get(name)
    if m is None:
        m = next((m for rx, m in _PATTERNS if rx.match(name)), None)
    if m is not None and m.same_as:
        tail = lookup(m.same_as.replace("<tail>", _tail(m, name)))
        if tail is not None:
            return Metric(m.name, tail.label, tail.unit, tail.direction, tail.decimals, m.when, m.table, m.optional,
                          m.skip, m.same_as, m.summary)
    return m


def _tail(m: Metric, name: str) -> str:
    """For ``grad/<objective>/k<k>/<tail>`` entries: the part of ``name`` after the prefix."""
    return name.rsplit("/", 1)[1]


def unregistered(names) -> list[str]:
    """The names among ``names`` that no entry covers (sorted)."""
    return sorted(n for n in set(names) if lookup(n) is None)


def get(name: str) -> Metric:
    """:func:`lookup` that raises a ``KeyError`` naming the registry for an unknown name."""
    m = lookup(name)
    if m is None:
        raise KeyError(f"metric {name!r} is not in the vocabulary (bench/vocabulary.py)")
    return m


@dataclass(frozen=True)
class Table:
    """One table of the report: its title and a line on how to read it."""

    name: str
    title: str
    how_to_read: str


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("bounds", "Log-likelihood and bounds",
          "Nats per test example, mean ± sd over seeds. Higher is better (↑). log p(x) is the importance-sampled "
          "(IWAE) estimate with `eval_k` samples, a stochastic lower bound; ELBO = recon. − KL; the gap "
          "log p(x) − ELBO is what a tighter bound or a better q could recover. KL is a description, not a score."),
    Table("latents", "Use of the latent space",
          "Active units: latent dimensions whose posterior mean varies with x (Cov_x E_q[z_u] > 0.01, Burda et al. "
          "2016), out of `latent_dim`; few means posterior collapse. Per-layer counts (l1 next to x) for "
          "hierarchical models; codebook perplexity: the effective number of codes a VQ-VAE uses."),
    Table("gaps", "Inference gaps (Cremer et al. 2018)",
          "Nats per example on a fixed test subset, lower is better (↓): approximation gap = log p(x) − ELBO of the "
          "best per-datapoint q in the family, amortization gap = the encoder's shortfall from it. A no-gain share "
          "near 1 means the per-datapoint optimizer did not beat the encoder: the amortization gap is then a "
          "floor set by that optimizer, not a measurement."),
    Table("gradients", "Gradient of the training objective at the final parameters",
          "Signal-to-noise ratio |E g| / sd(g) of the group's parameters (Rainforth et al. 2018): the median over "
          "its coordinates (those whose draws are equal to float32 rounding count as infinite), the sampling noise "
          "of the n draws removed (bench/snr.py), with its 95% interval; higher is better. The figures show every measured estimator "
          "against k."),
    Table("cost", "Cost",
          "Throughput (examples/s, higher is better), training time (s) and peak memory (MB), lower is better: "
          "the run's own peak, from its start (bench.train.run resets the high-water mark there: "
          "/proc/self/clear_refs on Linux, torch.cuda.reset_peak_memory_stats on CUDA) to its end; on CPU "
          "the whole process's peak RSS (VmHWM), on CUDA the tensors' peak (max_memory_allocated). "
          "Timings depend on the machine and its load: compare within one report."),
)}

# -- the vocabulary -------------------------------------------------------------------------------
# per epoch (step = epoch)
metric("train/loss", "training loss", "nats", LOWER, 3, WHEN_EPOCH)
metric("val/elbo", "validation ELBO", "nats", HIGHER, 3, WHEN_EPOCH)
metric("train/examples_per_s", "epoch throughput", "examples/s", HIGHER, 0, WHEN_EPOCH)
metric("train/kl_weight", "KL weight", "", NEITHER, 3, "every epoch, with kl_warmup_epochs > 0", optional=True)

# final: bounds and log-likelihoods
metric("test/log_px", "log p(x)", "nats", HIGHER, 2, WHEN_FINAL, table="bounds", skip="log_px", summary=True)
metric("test/exact_log_px", "exact log p(x)", "nats", HIGHER, 2, WHEN_FINAL, table="bounds", optional=True)
metric("test/log_px_ais", "AIS log p(x)", "nats", HIGHER, 2, "final, when ais_size > 0", table="bounds",
       optional=True, skip="ais")
metric("test/bdmc_gap", "BDMC gap", "nats", LOWER, 3, "final, when bdmc_size > 0", table="bounds", optional=True,
       skip="ais")
metric("test/elbo", "ELBO", "nats", HIGHER, 2, WHEN_FINAL, table="bounds", summary=True)
metric("test/recon", "recon.", "nats", HIGHER, 2, WHEN_FINAL, table="bounds")
metric("test/kl", "KL", "nats", NEITHER, 2, WHEN_FINAL, table="bounds")

# final: the latent space
metric("test/active_units", "active units", "count", HIGHER, 1, WHEN_FINAL, table="latents", skip="active_units")
metric("test/active_units_l<layer>", "active units, layer", "count", HIGHER, 1, WHEN_FINAL, table="latents",
       optional=True, skip="active_units")
metric("test/codebook_perplexity", "codebook perplexity", "codes", HIGHER, 1, WHEN_FINAL, table="latents",
       optional=True)

# the gap decomposition
metric("gap/log_px", "gap subset log p(x)", "nats", HIGHER, 2, WHEN_GAPS, skip="gaps")
metric("gap/elbo_amortized", "amortized ELBO", "nats", HIGHER, 2, WHEN_GAPS, skip="gaps")
metric("gap/elbo_local", "local ELBO", "nats", HIGHER, 2, WHEN_GAPS, skip="gaps")
metric("gap/approximation", "approx. gap", "nats", LOWER, 2, WHEN_GAPS, table="gaps", skip="gaps")
metric("gap/amortization", "amort. gap", "nats", LOWER, 2, WHEN_GAPS, table="gaps", skip="gaps")
metric("gap/local_no_gain", "no-gain share", "", NEITHER, 2, WHEN_GAPS, table="gaps", skip="gaps")

# gradients of the run's own objective, per parameter group (<group>: encoder, decoder, objective)
metric("grad/<group>_snr", "gradient SNR", "", HIGHER, 3, WHEN_GRAD, table="gradients", skip="grad")
metric("grad/<group>_snr_lo", "SNR 95% lower", "", HIGHER, 3, WHEN_GRAD, skip="grad")
metric("grad/<group>_snr_hi", "SNR 95% upper", "", HIGHER, 3, WHEN_GRAD, skip="grad")
metric("grad/<group>_snr_floor", "plug-in SNR floor", "", NEITHER, 3, WHEN_GRAD, skip="grad")
metric("grad/<group>_snr_ratio", "squared-SNR ratio", "", HIGHER, 4, WHEN_GRAD, skip="grad")
metric("grad/<group>_snr_det", "deterministic share", "", NEITHER, 3, WHEN_GRAD, skip="grad")
metric("grad/<group>_snr_dropped", "dropped share", "", NEITHER, 3, WHEN_GRAD, skip="grad")
metric("grad/<group>_var", "gradient variance", "", LOWER, 6, WHEN_GRAD, skip="grad")
# ... and of every objective in grad_objectives x grad_ks: read as the entry of its tail
metric("grad/<objective>/k<k>/<group>_<stat>", "gradient statistic", "", NEITHER, 3, WHEN_GRAD, skip="grad",
       same_as="grad/<tail>")

# cost
metric("perf/train_examples_per_s", "train", "examples/s", HIGHER, 0, WHEN_FINAL, table="cost", summary=True)
metric("perf/eval_examples_per_s", "eval", "examples/s", HIGHER, 0, WHEN_FINAL, table="cost")
metric("perf/train_seconds", "train time", "s", LOWER, 2, WHEN_FINAL, table="cost")
# perf/peak_mem_mb: the run's own peak, reset at its start (bench.metrics.reset_peak_memory) and read at
# its end (peak_memory_mb); the evaluation passes hold their outputs preallocated, so on CPU it measures
# the largest pass, not glibc heap fragmentation accumulated over thousands of passes
metric("perf/peak_mem_mb", "peak mem", "MB", LOWER, 0, WHEN_FINAL, table="cost")
metric("perf/suite_seconds", "suite time", "s", LOWER, 1, "the parent run, at the end of an invocation")


def summary_metrics() -> list[Metric]:
    """The columns of the run summary (``python -m bench run``), in vocabulary order."""
    return [m for m in METRICS.values() if m.summary]


def table_metrics(table: str | None = None) -> list[Metric]:
    """The entries of one report table (or of every table), in report order."""
    return [m for m in METRICS.values() if m.table and (table is None or m.table == table)]


def expand(entry: Metric, names) -> list[str]:
    """The concrete names among ``names`` that ``entry`` covers (the entry's own name if it has
    no placeholder), in a stable order: groups as :data:`GRADIENT_GROUPS` lists them, numbers by
    value."""
    if "<" not in entry.name:
        return [entry.name]
    rx = _regex(entry.name)
    hits = [(n, rx.match(n)) for n in set(names)]

    def order(m: re.Match):
        return tuple((GRADIENT_GROUPS.index(v), "") if k == "group" else (int(v), "") if v.isdigit() else (0, v)
                     for k, v in m.groupdict().items())

    return [n for n, m in sorted(((n, m) for n, m in hits if m), key=lambda t: order(t[1]))]


def label_of(name: str) -> str:
    """A concrete name's label with the values of its placeholders where they tell runs' columns
    apart: ``grad/encoder_snr`` -> ``encoder gradient SNR``, ``test/active_units_l2`` -> ``active units,
    layer 2``."""
    m = entry = get(name)
    if "<" not in entry.name:
        return m.label
    values = _regex(entry.name).match(name).groupdict()
    label = m.label
    if "group" in values and not entry.same_as:
        label = f"{values['group']} {label}"
    if "layer" in values:
        label = f"{label} {values['layer']}"
    if entry.same_as:
        label = f"{values['objective']} k={values['k']}: {label_of('grad/' + _tail(entry, name))}"
    return label


def head(name: str) -> str:
    """A table's column head for a concrete name: ``log p(x) [nats] ↑``."""
    m = get(name)
    return f"{label_of(name)}{f' [{m.unit}]' if m.unit else ''} {m.arrow}".rstrip()


def axis(name: str) -> str:
    """An axis label for a concrete name: ``log p(x) [nats per example] (higher is better)``."""
    m = get(name)
    unit = {"nats": "nats per example"}.get(m.unit, m.unit)
    return f"{label_of(name)}{f' [{unit}]' if unit else ''}{f' ({m.better})' if m.better else ''}"


def fmt(name: str, value: float) -> str:
    """``value`` as the tables print ``name``."""
    return get(name).format(value)
