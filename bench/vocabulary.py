"""The metric vocabulary: every metric name the harness logs, with its label, unit, direction,
decimals, when it is logged and what it is. One entry per name (or name pattern); the training loop
checks its names against it, the run summary, the tables, the figures and ``bench compare`` format
with it, and the metric reference ``docs/metrics.md`` is generated from it (:func:`reference_markdown`;
``tests/test_vocabulary.py`` fails when the committed file is out of date).

Adding a metric: one :func:`metric` call below, with its ``doc``, plus the code that computes it;
then ``python -m bench.vocabulary --write`` regenerates the reference.

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

import dataclasses
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
    doc: str = ""  # what the number is: a row of the metric reference (docs/metrics.md)

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
            return dataclasses.replace(m, label=tail.label, unit=tail.unit, direction=tail.direction,
                                       decimals=tail.decimals)
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
# ``doc``: what the number is, for the metric reference (docs/metrics.md is generated from it:
# ``python -m bench.vocabulary --write``); Markdown, ``|`` needs no escaping.

# per epoch (step = epoch)
metric("train/loss", "training loss", "nats", LOWER, 3, WHEN_EPOCH,
       doc="minus the training bound (the objective's *value*, averaged over the epoch's batches; never the surrogate)")
metric("val/elbo", "validation ELBO", "nats", HIGHER, 3, WHEN_EPOCH,
       doc="ELBO on the validation split, `val_k` samples per example")
metric("train/examples_per_s", "epoch throughput", "examples/s", HIGHER, 0, WHEN_EPOCH,
       doc="training throughput of that epoch (synchronized)")
metric("train/kl_weight", "KL weight", "", NEITHER, 3, "every epoch, with kl_warmup_epochs > 0", optional=True,
       doc="the KL warm-up weight beta at the epoch's last step (the bound logged is never the weighted one)")

# final: bounds and log-likelihoods
metric("test/log_px", "log p(x)", "nats", HIGHER, 2, WHEN_FINAL, table="bounds", skip="log_px", summary=True,
       doc="IWAE estimate of log p(x) with `eval_k` samples (5000 in the papers), chunked over samples and examples")
metric("test/exact_log_px", "exact log p(x)", "nats", HIGHER, 2, WHEN_FINAL, table="bounds", optional=True,
       doc="the exact log p(x), for variants that have one (the `linear-gaussian` oracle): the estimate's error in "
           "plain sight")
metric("test/log_px_ais", "AIS log p(x)", "nats", HIGHER, 2, "final, when ais_size > 0", table="bounds",
       optional=True, skip="ais",
       doc="log p(x) by annealed importance sampling (Wu et al. 2017) on the first `ais_size` test examples: "
           "`ais_chains` chains from the prior, `ais_steps` intermediate distributions on the sigmoid schedule, HMC "
           "with 10 leapfrog steps, step size adapted toward 0.65 acceptance on 4 extra pilot chains (so the counted "
           "chains' kernels do not depend on their own past) and jittered by ±50%; a stochastic lower bound like "
           "IWAE, usually tighter. Continuous latents only")
metric("test/bdmc_gap", "BDMC gap", "nats", LOWER, 3, "final, when bdmc_size > 0", table="bounds", optional=True,
       skip="ais",
       doc="bidirectional Monte Carlo (Grosse et al. 2015) on `bdmc_size` points simulated from the model: the mean "
           "of reverse AIS from the exact latent (a stochastic upper bound) minus forward AIS (a lower bound), with "
           "the AIS settings above; small means AIS at these settings is tight on data like the model's")
metric("test/elbo", "ELBO", "nats", HIGHER, 2, WHEN_FINAL, table="bounds", summary=True,
       doc="ELBO = E_q log p(x|z) - KL(q(z|x) || p(z)) on the test split (closed-form KL where it exists)")
metric("test/recon", "recon.", "nats", HIGHER, 2, WHEN_FINAL, table="bounds",
       doc="the ELBO's first term, E_q log p(x|z), on the test split")
metric("test/kl", "KL", "nats", NEITHER, 2, WHEN_FINAL, table="bounds",
       doc="the ELBO's second term, KL(q(z|x) || p(z)), on the test split (closed form where it exists; with a "
           "learned prior log q(z|x) - log p(z) at the samples)")

# final: the latent space
metric("test/active_units", "active units", "count", HIGHER, 1, WHEN_FINAL, table="latents", skip="active_units",
       doc="units with Cov_x(E_q[z_u]) > 0.01 (Burda et al. 2016), all stochastic layers together (with a learned "
           "prior, in the prior's scale: Cov_x(E_q[z_u|x]) / Var_p(z_u) > 0.01)")
metric("test/active_units_l<layer>", "active units, layer", "count", HIGHER, 1, WHEN_FINAL, table="latents",
       optional=True, skip="active_units",
       doc="the same per stochastic layer, the layer next to x first (`test/active_units_l1`, "
           "`test/active_units_l2`), for the two-layer variants (`hierarchical`, `ladder`; Burda et al. report "
           "16 + 5 on MNIST)")
metric("test/codebook_perplexity", "codebook perplexity", "codes", HIGHER, 1, WHEN_FINAL, table="latents",
       optional=True,
       doc="VQ-VAE: exp(entropy) of the test set's average code assignment, the effective number of codes used "
           "(1 to K)")

# the gap decomposition
metric("gap/log_px", "gap subset log p(x)", "nats", HIGHER, 2, WHEN_GAPS, skip="gaps",
       doc="Cremer, Li & Duvenaud (2018), on a fixed test subset: log p(x), the IWAE estimate under the better of "
           "the local and the encoder's parameters per example (with `gap_log_px = \"max-iwae-ais\"`: the larger "
           "of it and AIS per example)")
metric("gap/elbo_amortized", "amortized ELBO", "nats", HIGHER, 2, WHEN_GAPS, skip="gaps",
       doc="the ELBO of the encoder's q on the gap subset, with common random numbers shared with `elbo_local`")
metric("gap/elbo_local", "local ELBO", "nats", HIGHER, 2, WHEN_GAPS, skip="gaps",
       doc="the ELBO of free per-datapoint variational parameters optimized with the decoder frozen, started at the "
           "encoder's output (for `iaf` the whole flow per datapoint: a copy of the MADE weights each); per "
           "example the better of the optimized and the encoder's parameters, so `amortization >= 0`")
metric("gap/approximation", "approx. gap", "nats", LOWER, 2, WHEN_GAPS, table="gaps", skip="gaps",
       doc="`log_px - elbo_local`: what the variational family costs at its best per datapoint")
metric("gap/amortization", "amort. gap", "nats", LOWER, 2, WHEN_GAPS, table="gaps", skip="gaps",
       doc="`elbo_local - elbo_amortized`: the encoder's shortfall from the best q of the family per datapoint")
metric("gap/local_no_gain", "no-gain share", "", NEITHER, 2, WHEN_GAPS, table="gaps", skip="gaps",
       doc="share of the gap subset where the local optimization ended no higher than the encoder's parameters "
           "(there `elbo_local = elbo_amortized`); near 1 means the gap's local optimizer, not the encoder, is the "
           "limit")

# gradients of the run's own objective, per parameter group (<group>: encoder, decoder, objective)
metric("grad/<group>_snr", "gradient SNR", "", HIGHER, 3, WHEN_GRAD, table="gradients", skip="grad",
       doc="`grad_draws` gradient draws of the run's objective at fixed parameters on a fixed batch; the SNR "
           "|E g|/sd(g) of the group's parameters (Rainforth et al. 2018; `grad/encoder_snr`, `grad/decoder_snr`). "
           "**`_snr` is the median over the group's live parameters of the per-parameter SNR**, not the mean: a "
           "mean is carried by a few deterministic parameters (sd at float32 rounding of the mean, e.g. the "
           "closed-form KL's logits of near-impossible classes), which read 1e3-1e4 where the typical parameter "
           "sits near 0.1; in the median such a parameter (counted as SNR +inf) moves one rank. The noise of n "
           "draws is removed by an empirical-Bayes deconvolution of the per-parameter t = sqrt(n) mean/std (the "
           "distribution of SNRs over the group fitted by nonparametric maximum likelihood; the median is its "
           "quantile function averaged over the levels 0.4-0.6), so a zero SNR reads near 0, not at the plug-in's "
           "floor (`bench/snr.py` gives the maths and the measured coverage). Read it beside `_snr_ratio` (the "
           "ratio of averages), `_snr_det` and `_snr_dropped`. The group `objective` (`grad/objective_snr`): a "
           "trainable estimator's (NVIL, REBAR, RELAX) own parameters' training gradient")
metric("grad/<group>_snr_lo", "SNR 95% lower", "", HIGHER, 3, WHEN_GRAD, skip="grad",
       doc="lower end of the 95% interval of that median: a jackknife over 10 groups of draws, widened for the "
           "deconvolution's bias measured on Gaussian, skewed, heavy-tailed and rare-event draws, with the dropped "
           "parameters placed at SNR 0 (lower end) and at their largest possible SNR sqrt(3/(n-3)) (upper end), "
           "clipped at 0")
metric("grad/<group>_snr_hi", "SNR 95% upper", "", HIGHER, 3, WHEN_GRAD, skip="grad",
       doc="upper end of that interval (see `_snr_lo`); `inf` where half the live parameters or more are "
           "deterministic")
metric("grad/<group>_snr_floor", "plug-in SNR floor", "", NEITHER, 3, WHEN_GRAD, skip="grad",
       doc="what the plug-in median of |mean|/std reads at zero signal for this n (median |T_{n-1}|/sqrt(n) = "
           "t_{0.75,n-1}/sqrt(n): 0.125 at n = 30): plug-in SNRs near it meant nothing")
metric("grad/<group>_snr_ratio", "squared-SNR ratio", "", HIGHER, 4, WHEN_GRAD, skip="grad",
       doc="mean E[g]^2 / mean Var(g) over parameters, the squared-SNR ratio of averages the official DReG code "
           "reports, with E[g]^2 estimated without bias (mean^2 - var/n; may be slightly negative at zero signal)")
metric("grad/<group>_snr_det", "deterministic share", "", NEITHER, 3, WHEN_GRAD, skip="grad",
       doc="share of the group's live parameters whose gradient is deterministic (sd at most 32 float32 ulps of the "
           "mean, or exactly 0): they count as SNR +inf in the median; at 1/2 or more the median is `inf`")
metric("grad/<group>_snr_dropped", "dropped share", "", NEITHER, 3, WHEN_GRAD, skip="grad",
       doc="share of the group's parameters whose gradient was exactly 0 in every draw (unused parameters, or rare "
           "events that did not happen in n draws): left out of `_snr`, and spread over [0, sqrt(3/(n-3))] in its "
           "interval")
metric("grad/<group>_var", "gradient variance", "", LOWER, 6, WHEN_GRAD, skip="grad",
       doc="the variance of the same draws, averaged over the group's parameters (`grad/encoder_var`, "
           "`grad/decoder_var`, `grad/objective_var`)")
# ... and of every objective in grad_objectives x grad_ks: read as the entry of its tail
metric("grad/<objective>/k<k>/<group>_<stat>", "gradient statistic", "", NEITHER, 3, WHEN_GRAD, skip="grad",
       same_as="grad/<tail>",
       doc="the same statistics for every applicable objective in `grad_objectives` x `grad_ks`, at the same "
           "parameters (a trainable one first fits its own parameters for `grad_fit_steps` steps with the model "
           "frozen)")

# cost
metric("perf/train_examples_per_s", "train", "examples/s", HIGHER, 0, WHEN_FINAL, table="cost", summary=True,
       doc="training examples/s, epoch 1 (warm-up) excluded, evaluation excluded, synchronized on GPU")
metric("perf/eval_examples_per_s", "eval", "examples/s", HIGHER, 0, WHEN_FINAL, table="cost",
       doc="test examples/s of the `test/log_px` evaluation")
metric("perf/train_seconds", "train time", "s", LOWER, 2, WHEN_FINAL, table="cost",
       doc="time in the training loop")
# perf/peak_mem_mb: the run's own peak, reset at its start (bench.metrics.reset_peak_memory) and read at
# its end (peak_memory_mb); the evaluation passes hold their outputs preallocated, so on CPU it measures
# the largest pass, not glibc heap fragmentation accumulated over thousands of passes
metric("perf/peak_mem_mb", "peak mem", "MB", LOWER, 0, WHEN_FINAL, table="cost",
       doc="the run's own peak device memory, reset at its start and read at its end (CUDA: "
           "`max_memory_allocated`; CPU: the process's peak RSS, `VmHWM` reset through `/proc/self/clear_refs`). "
           "The evaluation passes write into preallocated outputs and update their accumulators in place, so the "
           "RSS stays flat: L_1000 of the jang2017 model (random weights, 1 thread, 2-core CPU) held 1.1 GB over "
           "all 10,000 test images (581 s), where the old per-pass lists grew glibc's heap by 2.75 MB a pass, to "
           "9.4 GB after 3,000 images")
metric("perf/suite_seconds", "suite time", "s", LOWER, 1, "the parent run, at the end of an invocation",
       doc="wall time of the invocation's execution (planning excluded)")


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


# -- the metric reference (docs/metrics.md) --------------------------------------------------------
REFERENCE = "docs/metrics.md"
BEGIN = "<!-- generated by `python -m bench.vocabulary --write` from bench/vocabulary.py: do not edit by hand -->"
END = "<!-- end of the generated reference -->"


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: ``|`` escaped."""
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The generated part of the metric reference: the placeholders, one row per entry (name,
    when, unit and direction, what it is) in vocabulary order, and the report's tables with their
    columns and how to read them."""
    stats = ", ".join(f"`{s}`" for s in GRADIENT_STATS)
    out = [
        "`<group>` is `encoder`, `decoder` or `objective` (a trainable estimator's own parameters), "
        f"`<stat>` one of {stats}, `<objective>` a registered objective, `<k>` and `<layer>` numbers. "
        "Nats are per example.",
        "",
        "| name | when | unit | what |",
        "|---|---|---|---|",
    ]
    for m in METRICS.values():
        unit = " ".join(p for p in (m.unit, m.arrow) if p) or "-"
        what = m.doc or f"read as `{m.same_as}`"
        out.append(f"| `{m.name}` | {_cell(m.when)} | {_cell(unit)} | {_cell(what)} |")
    out += ["", "The report's tables (`python -m bench plots`), in order:", ""]
    for t in TABLES.values():
        cols = ", ".join(f"`{m.name}`" for m in table_metrics(t.name))
        out.append(f"* **{t.title}** ({cols}). {t.how_to_read}")
    return "\n".join(out) + "\n"


def render_reference(text: str) -> str:
    """``text`` (the reference file) with the part between :data:`BEGIN` and :data:`END` regenerated;
    a ``ValueError`` if the markers are missing."""
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        raise ValueError(f"{REFERENCE}: the markers of the generated part are missing")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{reference_markdown()}{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.vocabulary [--write [PATH]]``: print the generated reference, or rewrite it
    in place in ``docs/metrics.md`` (run from the repository's root)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m bench.vocabulary", description=main.__doc__)
    ap.add_argument("--write", nargs="?", const=REFERENCE, metavar="PATH",
                    help=f"regenerate the marked part of PATH (default {REFERENCE})")
    args = ap.parse_args(argv)
    if args.write is None:
        print(reference_markdown(), end="")
        return 0
    path = Path(args.write)
    path.write_text(render_reference(path.read_text()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
