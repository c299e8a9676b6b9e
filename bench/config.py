"""Run configuration and suites.

A suite is a TOML file (``bench/suites/<name>.toml``, or any path)::

    description = "one line"
    [defaults]                     # RunConfig keys shared by every run
    epochs = 5
    [[grid]]                       # every combination of the lists is one child run
    variants = ["vanilla", "iwae"] # or "*" for every registered variant (minus `exclude`)
    exclude = ["linear-gaussian"]  # optional, with "*"
    objectives = ["elbo"]          # optional; default: each variant's default objective
    datasets = ["digits"]
    seeds = [0, 1, 2]
    [grid.set]                     # optional RunConfig keys for this grid only
    k = 5
    [variant_options.planar-flow]  # keyword options passed to variants.build for that variant
    flow_length = 8
    [objective_options.rebar]      # keyword options of a trainable objective (bench.objectives)
    learn_temperature = false
    [published]                    # optional: a paper's numbers, shown beside ours by `bench plots`
    citation = "Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR"
    table = "Table 1, MNIST"
    protocol = "what the paper did: data, binarization, training length, evaluation"
    note = "how the numbers were converted (the paper's NLL is stored as log p(x) = -NLL)"
    rows = [{ variant = "iwae", k = 5, dataset = "mnist", "test/log_px" = -85.54 }]

A published row matches the runs whose config has every non-metric key's value (any RunConfig
key: ``variant``, ``objective``, ``k``, ``dataset``, ...); its metric keys (names with a ``/``)
are the paper's numbers in our metric's own units and sign (higher is better for bounds).

Precedence, lowest first: RunConfig defaults, the suite's ``[defaults]``, the grid's ``set``, the
command line's ``--set key=value``. On the command line ``variants=``, ``objectives=`` and
``datasets=`` keep only the runs of those names, and ``seeds=`` replaces the seeds.
Everything is checked before any run starts: an unknown key or a wrong type is an error naming
the valid keys.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import ConfigError

SUITES_DIR = Path(__file__).parent / "suites"


@dataclass
class RunConfig:
    """One child run. Metric conventions: nats per example, higher is better.

    ``objective = ""`` and ``k = 0`` mean the variant's default objective and k.

    ``eval_chunk``: how many log-weights one pass of the evaluations (``test/log_px``, the
    validation ELBO, the gaps; latent draws for AIS and BDMC) holds. ``0`` sizes it for the device
    (``bench.metrics.pass_bytes``: about 32 MiB of tensors a pass on CPU; on CUDA a quarter of the
    free memory shared among the runs on the GPU, at most 4 GiB); a positive value is used as given.

    ``step_mode``: how each training step (forward, backward, Adam) runs. ``"eager"`` (default):
    plain PyTorch. ``"compile"``: the objective's forward and backward compiled by ``torch.compile``
    (inductor; on CPU it needs a C++ compiler), eager's random streams kept, so the numbers equal
    eager's up to float rounding. ``"cuda-graph"`` (CUDA only): the whole step captured once per
    batch shape in a CUDA graph after 3 eager warm-up steps and replayed (one launch instead of
    about a hundred), Adam ``capturable``. Both refuse objectives with parameters of their own
    (NVIL, REBAR, RELAX: eager only). See ``bench.train.make_step``.

    ``prior``: ``p(z)`` of the Gaussian latent (two-layer variants: of the top layer).
    ``"standard"`` is ``N(0, I)``, the variant's own code unchanged; ``"mog"`` a learned mixture of
    ``prior_components`` diagonal Gaussians; ``"vamp"`` the VampPrior (Tomczak & Welling 2018) with
    ``prior_components`` pseudo-inputs (``variants.priors``). A learned prior has no closed-form
    KL: the ELBO uses ``log p(z) - log q(z | x)`` at the sample.
    """

    variant: str = "vanilla"
    objective: str = ""
    dataset: str = "digits"
    seed: int = 0
    k: int = 0  # samples per example in the training objective
    latent_dim: int = 16
    prior: str = "standard"  # standard (N(0, I)) | mog | vamp: p(z) of the (top) Gaussian latent (variants.priors)
    prior_components: int = 0  # mixture components / VampPrior pseudo-inputs; 0 = the prior's default (mog 10, vamp 500)
    hidden: list[int] = field(default_factory=lambda: [200, 200])
    activation: str = "tanh"
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | burda (bench.schedules.LR_SCHEDULES)
    adam_eps: float = 1e-8  # Adam's epsilon (torch's default; Burda et al. 2016 use 1e-4)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    step_mode: str = "eager"  # eager | compile (torch.compile) | cuda-graph (CUDA only): how the training step runs
    threads: int = 0  # torch CPU threads; 0 = leave torch's default (recorded either way)
    binarization: str = "dynamic"  # dynamic | static | none (continuous, Gaussian likelihood)
    train_size: int = 0  # 0 = the whole training split (a prefix otherwise: reduced suites)
    val_size: int = 0  # 0 = the dataset's validation split (MNIST: the last 10,000 training images)
    init_decoder_bias: bool = False  # start the decoder's output bias at the training mean's logits
    test_size: int = 0  # 0 = the whole test split
    val_k: int = 5  # samples per example for the per-epoch validation ELBO
    eval_k: int = 1000  # samples per example for the test log-likelihood (5000 in the papers)
    eval_chunk: int = 0  # log-weights (AIS: latent draws) per evaluation pass; 0 = sized for the device
    gap_epochs: list[int] = field(default_factory=list)  # gaps after these epochs; final always
    gap_size: int = 100  # fixed test subset for the gaps
    gap_steps: int = 1000  # step budget of the local (per-datapoint) optimization
    gap_k: int = 0  # samples for log p(x) in the gaps; 0 = eval_k
    grad_epochs: list[int] = field(default_factory=list)  # gradient stats after these; final always
    grad_objectives: list[str] = field(default_factory=list)  # extra objectives measured
    grad_ks: list[int] = field(default_factory=list)  # k values for grad_objectives; [] = [k]
    grad_draws: int = 50
    grad_batch: int = 64
    grad_fit_steps: int = 100  # a trainable grad_objective's own parameters are fitted this long first
    kl_warmup_epochs: int = 0  # KL weight 0 -> 1 linearly over this many epochs (per step); 0 = off
    ais_size: int = 0  # first test examples scored by AIS (test/log_px_ais); 0 = off
    ais_chains: int = 16  # AIS chains per example (plus 4 pilot chains that tune the HMC step)
    ais_steps: int = 500  # AIS intermediate distributions (sigmoid schedule), for BDMC too
    bdmc_size: int = 0  # points simulated from the model for BDMC (test/bdmc_gap); 0 = off
    gap_log_px: str = "iwae"  # iwae | max-iwae-ais: the gaps' log p(x), per example
    data_dir: str = ""  # where downloaded / user-provided datasets live; "" = ./data
    variant_options: dict = field(default_factory=dict)
    objective_options: dict = field(default_factory=dict)  # objective name -> its keyword options

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow (lists joined by commas, options as key.option)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "variant_options":
                out.update({f"option.{k}": str(x) for k, x in v.items()})
            elif f.name == "objective_options":
                out.update({f"objective_option.{o}.{k}": str(x) for o, opts in v.items() for k, x in opts.items()})
            elif isinstance(v, list):
                out[f.name] = ",".join(map(str, v))
            else:
                out[f.name] = str(v)
        return out

    @property
    def run_name(self) -> str:
        return f"{self.variant}/{self.objective}/{self.dataset}/seed{self.seed}"


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
SETTABLE = sorted(
    k for k in FIELDS if k not in ("variant", "objective", "dataset", "seed", "variant_options", "objective_options")
)
GRID_KEYS = ("variants", "objectives", "datasets", "seeds")
_HINTS = typing.get_type_hints(RunConfig)


# the keys a published row may select runs by: every RunConfig field but the option tables (which
# the params record per option, ``option.<name>``)
MATCHABLE = sorted(k for k in FIELDS if k not in ("variant_options", "objective_options"))


def coerce(key: str, value, *, source: str):
    """Check ``value`` (from TOML or a ``key=value`` string) against the type of ``key``: a list
    of int or str, or a bool, int, float or str (the types of the settable RunConfig fields)."""
    t = _HINTS[key]
    if typing.get_origin(t) is list:
        (item,) = typing.get_args(t)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list of {item.__name__}, got {value!r}")
        return [_scalar(key, item, v, source) for v in value]
    return _scalar(key, t, value, source)


def _scalar(key: str, t: type, value, source: str):
    if isinstance(value, str) and t is not str and source != "--set":
        raise ConfigError(f"{source}: {key} must be {t.__name__}, got the string {value!r}")
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{source}: {key} must be {t.__name__}, got {value!r}")


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["epochs=3", "hidden=64,64"]`` -> typed dict; grid keys stay lists of strings."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        if key in GRID_KEYS:
            vals = [v.strip() for v in raw.split(",") if v.strip()]
            out[key] = [_scalar(key, int, v, "--set") for v in vals] if key == "seeds" else vals
        elif key in SETTABLE:
            out[key] = coerce(key, raw, source="--set")
        else:
            raise ConfigError(
                f"--set: unknown key {key!r}; valid keys: {', '.join(SETTABLE + list(GRID_KEYS))}"
            )
    return out


@dataclass
class PublishedRow:
    """One published result: the run config it belongs to and the paper's numbers."""

    match: dict[str, object]  # RunConfig keys and values a run must have (variant, k, dataset, ...)
    values: dict[str, float]  # metric name -> the paper's number in the metric's convention

    def matches(self, params: dict[str, str]) -> bool:
        """``params``: a run's MLflow params (strings, as :meth:`RunConfig.params` writes them)."""
        return all(params.get(k) == param_str(v) for k, v in self.match.items())


@dataclass
class Published:
    """A suite's ``[published]`` table: a paper's numbers to compare ours with."""

    citation: str
    table: str
    protocol: str
    note: str
    rows: list[PublishedRow]


def param_str(value) -> str:
    """A config value as :meth:`RunConfig.params` records it (lists joined by commas)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    runs: list[RunConfig]
    published: Published | None = None


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return SUITES_DIR / f"{name_or_path}.toml"


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def _check_keys(table: dict, valid, where: str) -> None:
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")


def _read_suite_file(name_or_path: str) -> tuple[Path, dict]:
    path = suite_path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"no suite {name_or_path!r} (looked for {path}); available suites: {', '.join(available_suites())}"
        )
    try:
        return path, tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read suite file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"suite file {path} is not valid TOML: {e}") from None


def parse_published(table, where: str) -> Published:
    """Validate a suite's ``[published]`` table (see the module docstring)."""
    where = f"{where} [published]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(table, ("citation", "table", "protocol", "note", "rows"), where)
    for key in ("citation", "table", "protocol"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string (say where the numbers come from)")
    rows = table.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{where}: rows must be a non-empty array of tables")
    out = []
    for i, row in enumerate(rows, 1):
        rwhere = f"{where} row {i}"
        values = {k: v for k, v in row.items() if "/" in k}
        match = {k: v for k, v in row.items() if "/" not in k}
        _check_keys(match, MATCHABLE, f"{rwhere} (a key without '/' selects runs by their config)")
        if not values:
            raise ConfigError(f"{rwhere}: no metric (a key with '/', e.g. \"test/log_px\" = -85.54)")
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{rwhere}: {k} must be a number, got {v!r}")
        match = {k: v if k in ("variant", "objective", "dataset") else coerce(k, v, source=rwhere)
                 for k, v in match.items()}
        out.append(PublishedRow(match=match, values={k: float(v) for k, v in values.items()}))
    return Published(citation=table["citation"].strip(), table=table["table"].strip(),
                     protocol=table["protocol"].strip(), note=str(table.get("note", "")).strip(), rows=out)


def load_published(name_or_path: str) -> Published | None:
    """The ``[published]`` table of a suite file, or None (no such suite file, or no table)."""
    if not suite_path(name_or_path).is_file():
        return None
    path, doc = _read_suite_file(name_or_path)
    return parse_published(doc["published"], str(path)) if "published" in doc else None


def load_suite(name_or_path: str, overrides: dict[str, object] | None = None) -> Suite:
    """Read a suite and expand it into run configs with the overrides applied (all validated)."""
    import variants
    from bench import data as datasets
    from bench import objectives

    overrides = dict(overrides or {})
    path, doc = _read_suite_file(name_or_path)
    where = str(path)
    _check_keys(doc, ("description", "defaults", "grid", "variant_options", "objective_options", "published"), where)
    published = parse_published(doc["published"], where) if "published" in doc else None
    base: dict[str, object] = {}
    for key, value in doc.get("defaults", {}).items():
        _check_keys({key: 0}, SETTABLE, f"{where} [defaults]")
        base[key] = coerce(key, value, source=f"{where} [defaults]")
    options = doc.get("variant_options", {})
    for vname, opts in options.items():
        if vname not in variants.available():
            _unknown_variant(vname, where)
        if not isinstance(opts, dict):
            raise ConfigError(f"{where} [variant_options.{vname}] must be a table")
    objective_options = doc.get("objective_options", {})
    for oname, opts in objective_options.items():
        if oname not in objectives.available():
            valid = ", ".join(objectives.available())
            raise ConfigError(f"{where} [objective_options.{oname}]: unknown objective; valid: {valid}")
        if not isinstance(opts, dict):
            raise ConfigError(f"{where} [objective_options.{oname}] must be a table")
    grids = doc.get("grid", [])
    if not grids:
        raise ConfigError(f"{where}: a suite needs at least one [[grid]]")

    filters = {k: overrides.pop(k) for k in ("variants", "objectives", "datasets") if k in overrides}
    seeds_override = overrides.pop("seeds", None)
    runs: list[RunConfig] = []
    for i, g in enumerate(grids):
        gwhere = f"{where} [[grid]] #{i + 1}"
        _check_keys(g, (*GRID_KEYS, "exclude", "set"), gwhere)
        names = g.get("variants", [])
        if names == "*":
            names = [v for v in variants.available() if v not in _names(g, "exclude", [], gwhere)]
        names = _names({"variants": names}, "variants", [], gwhere)
        for v in names:
            if v not in variants.available():
                _unknown_variant(v, gwhere)
        dsets = _names(g, "datasets", ["digits"], gwhere)
        for d in dsets:
            if d not in datasets.available():
                raise ConfigError(f"{gwhere}: unknown dataset {d!r}; valid: {', '.join(datasets.available())}")
        seeds = seeds_override if seeds_override is not None else _ints(g, "seeds", [0], gwhere)
        local = dict(base)
        for key, value in g.get("set", {}).items():
            _check_keys({key: 0}, SETTABLE, f"{gwhere} set")
            local[key] = coerce(key, value, source=f"{gwhere} set")
        local.update(overrides)
        for v, d, s in itertools.product(names, dsets, seeds):
            vcls = variants.get(v)
            for o in _names(g, "objectives", [], gwhere) or [vcls.default_objective]:
                try:
                    objectives.check_applies(o, vcls)
                except (objectives.UnknownObjectiveError, objectives.NotApplicableError) as e:
                    raise ConfigError(f"{gwhere}: {e}") from None
                cfg = RunConfig(variant=v, objective=o, dataset=d, seed=s, **local)
                cfg.variant_options = dict(options.get(v, {}))
                cfg.objective_options = {name: dict(opts) for name, opts in objective_options.items()}
                if cfg.k == 0:
                    cfg.k = vcls.default_k
                runs.append(cfg)
    for key, names in filters.items():
        attr = key[:-1]
        known = {getattr(r, attr) for r in runs}
        missing = sorted(set(names) - known)
        if missing:
            raise ConfigError(
                f"--set {key}=: {', '.join(missing)} not in suite {path.stem!r} (it has: {', '.join(sorted(known))})"
            )
        runs = [r for r in runs if getattr(r, attr) in names]
    for r in runs:
        _validate(r, where)
    return Suite(name=path.stem, path=path, description=str(doc.get("description", "")), runs=runs,
                 published=published)


def _names(table: dict, key: str, default: list[str], where: str) -> list[str]:
    """``table[key]`` as a list of names (a TOML array of strings)."""
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of names (an array of strings), got {value!r}")
    return value


def _ints(table: dict, key: str, default: list[int], where: str) -> list[int]:
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of integers, got {value!r}")
    return value


def _unknown_variant(name: str, where: str):
    import variants

    raise ConfigError(f"{where}: unknown variant {name!r}; valid variants: {', '.join(variants.available())}")


def _validate(cfg: RunConfig, where: str) -> None:
    """Values the types do not catch; ``where`` (the suite file) starts every message."""
    from bench import objectives
    from bench.schedules import LR_SCHEDULES
    from variants.nets import ACTIVATIONS

    choices = {
        "binarization": ("dynamic", "static", "none"),
        "activation": tuple(ACTIVATIONS),
        "lr_schedule": tuple(LR_SCHEDULES),
        "gap_log_px": ("iwae", "max-iwae-ais"),
        "step_mode": ("eager", "compile", "cuda-graph"),
    }
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(valid)}, got {getattr(cfg, key)!r}")
    positive = ("epochs", "batch_size", "k", "latent_dim", "val_k", "eval_k", "gap_size", "grad_draws", "grad_batch")
    for key in (*positive, "ais_chains", "ais_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.eval_chunk < 0:
        raise ConfigError(f"{where}: eval_chunk must be >= 0 (0 = sized for the device), got {cfg.eval_chunk}")
    if cfg.step_mode != "eager":
        from bench.train import step_mode_unsupported

        why = step_mode_unsupported(cfg)
        if why:
            raise ConfigError(f"{where}: {cfg.run_name}: {why}")
    for key in ("ais_size", "bdmc_size"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{where}: {key} must be >= 0, got {getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise ConfigError(f"{where}: lr must be > 0, got {cfg.lr}")
    if not cfg.adam_eps > 0:
        raise ConfigError(f"{where}: adam_eps must be > 0, got {cfg.adam_eps}")
    if cfg.val_size < 0:
        raise ConfigError(f"{where}: val_size must be >= 0 (0 = the dataset's split), got {cfg.val_size}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"{where}: device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    from variants import priors

    if cfg.prior_components < 0:
        raise ConfigError(f"{where}: prior_components must be >= 0 (0 = the prior's default), got {cfg.prior_components}")
    if cfg.prior == "standard" and cfg.prior_components:
        raise ConfigError(f"{where}: prior_components = {cfg.prior_components} needs prior = 'mog' or 'vamp' "
                          "(the standard prior N(0, I) has no components)")
    import variants

    why = priors.unsupported(variants.get(cfg.variant), cfg.prior, cfg.variant_options)
    if why:
        raise ConfigError(f"{where}: {cfg.run_name}: {why}")
    for o in cfg.grad_objectives:
        if o not in objectives.available():
            raise ConfigError(f"{where}: grad_objectives: unknown objective {o!r}; valid: {', '.join(objectives.available())}")
    if cfg.kl_warmup_epochs < 0 or cfg.grad_fit_steps < 0:
        raise ConfigError(f"{where}: kl_warmup_epochs and grad_fit_steps must be >= 0")
    if cfg.kl_warmup_epochs and not objectives.spec(cfg.objective).warmup:
        with_warmup = [o for o in objectives.available() if objectives.spec(o).warmup]
        raise ConfigError(
            f"{where}: kl_warmup_epochs = {cfg.kl_warmup_epochs} but objective {cfg.objective!r} has no "
            "separate KL term to warm up (IWAE-type bounds such as iwae, dreg and vimco weight the whole "
            f"log-weight inside a log-mean-exp); objectives with warm-up: {', '.join(with_warmup)}"
        )
    for name, opts in cfg.objective_options.items():
        try:
            objectives.build(name, **opts)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where} [objective_options.{name}]: {e}") from None
