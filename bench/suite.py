"""A suite file: its grid expanded into run configs, its options, and its ``[published]`` numbers.

A suite is a TOML file (``bench/suites/<name>.toml``, or any path)::

    description = "one line"
    plugins = ["mylab.vaes"]       # optional: modules to import first (they register variants,
                                   # objectives, datasets; bench.plugins)
    [defaults]                     # RunConfig keys shared by every run
    epochs = 5
    [[grid]]                       # every combination of the lists is one child run
    variants = ["vanilla", "iwae"] # or "*" for every registered variant (minus `exclude`)
    exclude = ["linear-gaussian"]  # optional, with "*"
    objectives = ["elbo"]          # optional; default: each variant's default objective
    datasets = ["digits"]          # or "npz:path/to/file.npz" (bench.data.read_npz; relative to
                                   # the working directory)
    seeds = [0, 1, 2]
    [grid.set]                     # optional RunConfig keys for this grid only, and its values of
    k = 5                          # variant options (option.NAME) and objective options
                                   # (objective_option.NAME), over [variant_options], [objective_options]
    [variant_options.planar-flow]  # keyword options passed to variants.build for that variant
    flow_length = 8
    [objective_options.rebar]      # keyword options of a trainable objective (bench.objectives)
    learn_temperature = false
    [search]                       # optional: tune each cell on validation (bench.run.search)
    metric = "val/elbo"            # what selects: a validation metric (a test metric is refused)
    trials = 24                    # the budget per cell (variant x objective x dataset x grid set)
    sampler = "grid"               # grid | random | tpe
    pruner = "none"                # none | successive-halving | hyperband (epochs as the resource)
    final_seeds = [0, 1, 2]        # the selected setting retrained with these: the cell's result
    seed = 1000                    # the trials' training seed (not one of final_seeds; the grid has none)
    [search.space]                 # RunConfig keys, variant options (option.NAME), objective options
    lr = [1e-4, 3e-4, 1e-3]        # (objective_option.NAME): a list, or { low, high, log } (not grid)
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

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

import variants
from bench import data as datasets
from bench import objectives
from bench.config import FIELDS, GRID_KEYS, PLACEMENT, SETTABLE, RunConfig, coerce, validate
from bench.errors import ConfigError
from bench.plugins import Plugins, import_modules

SUITES_DIR = Path(__file__).parent / "suites"


# the keys a published row may select runs by: every RunConfig field but the option tables (which
# the params record per option, ``option.<name>``)
MATCHABLE = sorted(k for k in FIELDS if k not in ("variant_options", "objective_options"))


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


SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "successive-halving", "hyperband")
# not searchable: what a run is (the cell's coordinates), where it runs, and the search's own switch
UNSEARCHABLE = ("seed", "evaluate", "epochs", *PLACEMENT)


@dataclass
class SearchSpec:
    """A suite's ``[search]`` table (see the module docstring and ``bench.run.search``).

    ``space``: parameter name -> a list of values (categorical; the grid's axis) or a range
    ``(low, high, log)`` of floats or ints. A name is a RunConfig key, ``option.NAME`` (an option
    of the cell's variant) or ``objective_option.NAME`` (of the cell's objective)."""

    metric: str
    trials: int
    sampler: str
    pruner: str
    final_seeds: list[int]
    space: dict[str, list | tuple]
    seed: int = 1000  # the trials' training seed and the samplers' (never one of final_seeds)
    min_epochs: int = 0  # the pruners' smallest resource (0: epochs // reduction_factor**2, at least 1)
    reduction_factor: int = 3  # successive halving keeps the best 1/reduction_factor at each rung
    trial_epochs: int = 0  # the trials' training length (0: the suite's epochs); the final runs train `epochs`

    def identity(self) -> dict:
        """What makes a study: every setting but the budget (more trials continue one study) and
        the final seeds (they do not change the trials)."""
        return {"metric": self.metric, "sampler": self.sampler, "pruner": self.pruner, "seed": self.seed,
                "min_epochs": self.min_epochs, "reduction_factor": self.reduction_factor,
                "space": {k: list(v) for k, v in sorted(self.space.items())}} | (
                    {"trial_epochs": self.trial_epochs} if self.trial_epochs else {})

    def grid_size(self) -> int:
        n = 1
        for v in self.space.values():
            n *= len(v)
        return n


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    runs: list[RunConfig]
    published: Published | None = None
    search: SearchSpec | None = None
    plugins: Plugins = Plugins()  # the modules imported for it (--plugin and the file's plugins), for the workers


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


def parse_search(table, where: str) -> SearchSpec:
    """Validate a suite's ``[search]`` table (see :class:`SearchSpec`)."""
    from bench import vocabulary

    where = f"{where} [search]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(table, ("metric", "trials", "sampler", "pruner", "final_seeds", "space", "seed", "min_epochs",
                        "reduction_factor", "trial_epochs"), where)
    metric = table.get("metric")
    if not isinstance(metric, str) or vocabulary.lookup(metric) is None:
        valid = [n for n in vocabulary.METRICS if n.startswith("val/")]
        raise ConfigError(f"{where}: metric must name a validation metric ({', '.join(valid)}), got {metric!r}")
    if not metric.startswith("val/"):
        raise ConfigError(f"{where}: metric = {metric!r} is not a validation metric: a setting selected on the "
                          "test split makes the test numbers of the selected runs optimistic. Select on validation "
                          "(e.g. \"val/elbo\"); the test metrics are measured on the final runs")
    sampler, pruner = table.get("sampler", "tpe"), table.get("pruner", "none")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if pruner not in PRUNERS:
        raise ConfigError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    space_table = table.get("space")
    if not isinstance(space_table, dict) or not space_table:
        raise ConfigError(f"{where}: a [search.space] table with at least one parameter is needed")
    space: dict[str, list | tuple] = {}
    for name, values in space_table.items():
        pwhere = f"{where} space.{name}"
        option = name.startswith(("option.", "objective_option."))
        if not option:
            _check_keys({name: 0}, [k for k in SETTABLE if k not in UNSEARCHABLE],
                        f"{where} space (or option.NAME, objective_option.NAME)")
        if isinstance(values, list):
            if not values:
                raise ConfigError(f"{pwhere}: an empty list")
            values = values if option else [coerce(name, v, source=pwhere) for v in values]
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"{pwhere}: a value is listed twice: {values}")
            space[name] = values
        elif isinstance(values, dict):
            _check_keys(values, ("low", "high", "log"), pwhere)
            low, high, log = values.get("low"), values.get("high"), values.get("log", False)
            kinds = {type(low), type(high)}
            if not (kinds <= {int, float}) or not low < high or not isinstance(log, bool) or (log and low <= 0):
                raise ConfigError(f"{pwhere}: a range is {{ low = L, high = H, log = false }} with numbers L < H "
                                  f"(L > 0 with log = true), got {values}")
            if sampler == "grid":
                raise ConfigError(f"{pwhere}: sampler = 'grid' needs a list of values, not a range")
            if not option:
                low, high = coerce(name, low, source=pwhere), coerce(name, high, source=pwhere)
            space[name] = (low, high, log)
        else:
            raise ConfigError(f"{pwhere}: a list of values or a range {{ low, high, log }}, got {values!r}")

    def integer(key, default, least):
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ConfigError(f"{where}: {key} must be an integer >= {least}, got {v!r}")
        return v

    grid = 1
    for v in space.values():
        grid *= len(v) if isinstance(v, list) else 0
    if "trials" in table:
        trials = integer("trials", None, 1)
    elif sampler == "grid":
        trials = grid  # every point of the grid
    else:
        raise ConfigError(f"{where}: trials (the budget per cell) is needed with sampler = {sampler!r}")
    if sampler == "grid" and trials > grid:
        raise ConfigError(f"{where}: trials = {trials} but the grid has {grid} points: a grid trial would repeat one")
    seeds = _ints(table, "final_seeds", [0], where)
    if not seeds:
        raise ConfigError(f"{where}: final_seeds must list at least one seed")
    seed = integer("seed", 1000, 0)
    _check_seeds(seed, seeds, where)
    return SearchSpec(metric=metric, trials=trials, sampler=sampler, pruner=pruner, final_seeds=seeds, space=space,
                      seed=seed, min_epochs=integer("min_epochs", 0, 0),
                      reduction_factor=integer("reduction_factor", 3, 2),
                      trial_epochs=integer("trial_epochs", 0, 0))


def _check_seeds(seed: int, final_seeds: list[int], where: str) -> None:
    if seed in final_seeds:
        raise ConfigError(f"{where}: the trials' seed {seed} is also a final seed: the selected setting's run with that "
                          "seed would repeat the trial it was selected on (same data order, same initialization), "
                          "and its test score would share the selection's luck. Choose a trial seed outside final_seeds")


def load_published(name_or_path: str) -> Published | None:
    """The ``[published]`` table of a suite file, or None (no such suite file, or no table)."""
    if not suite_path(name_or_path).is_file():
        return None
    path, doc = _read_suite_file(name_or_path)
    return parse_published(doc["published"], str(path)) if "published" in doc else None


def load_suite(name_or_path: str, overrides: dict[str, object] | None = None, plugins: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read a suite and expand it into run configs with the overrides applied (all validated).
    ``plugins`` (``--plugin``) and then the file's ``plugins`` are imported before any name is
    checked."""
    overrides = dict(overrides or {})
    path, doc = _read_suite_file(name_or_path)
    where = str(path)
    _check_keys(doc, ("description", "plugins", "defaults", "grid", "variant_options", "objective_options", "published",
                      "search"),
                where)
    loaded = import_modules(plugins, "--plugin")
    file_plugins = doc.get("plugins", [])
    if not isinstance(file_plugins, list):
        raise ConfigError(f"{where}: plugins must be a list of module names, got {file_plugins!r}")
    loaded = import_modules(file_plugins, f"{where} plugins", loaded)
    published = parse_published(doc["published"], where) if "published" in doc else None
    search = parse_search(doc["search"], where) if "search" in doc else None
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
    if "datasets" in filters:
        filters["datasets"] = [_absolute_npz(d) for d in filters["datasets"]]
    seeds_override = overrides.pop("seeds", None)
    if search is not None and seeds_override is not None:  # a searched suite's seeds are its final runs'
        search.final_seeds, seeds_override = list(seeds_override), None
        _check_seeds(search.seed, search.final_seeds, "--set seeds")
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
        dsets = [_absolute_npz(d) for d in _names(g, "datasets", ["digits"], gwhere)]
        for d in dsets:
            if not datasets.known(d):
                raise ConfigError(f"{gwhere}: unknown dataset {d!r}; valid: {', '.join(datasets.available())}, "
                                  "or npz:PATH (a file of named splits)")
        if search is not None and "seeds" in g:
            raise ConfigError(f"{gwhere}: with a [search] table the grid has no seeds: the trials train with "
                              "[search] seed and the selected setting with final_seeds")
        seeds = seeds_override if seeds_override is not None else _ints(g, "seeds", [0], gwhere)
        if search is not None:
            seeds = [search.seed]  # a cell: the trials' seed
        local, grid_options, grid_objective_options = dict(base), {}, {}
        for key, value in g.get("set", {}).items():
            if key.startswith("option."):  # this grid's value of a variant option
                grid_options[key.removeprefix("option.")] = value
                continue
            if key.startswith("objective_option."):
                grid_objective_options[key.removeprefix("objective_option.")] = value
                continue
            _check_keys({key: 0}, SETTABLE, f"{gwhere} set (or option.NAME, objective_option.NAME)")
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
                cfg.variant_options = {**options.get(v, {}), **grid_options}
                cfg.objective_options = {name: dict(opts) for name, opts in objective_options.items()}
                if grid_objective_options:
                    cfg.objective_options[o] = {**cfg.objective_options.get(o, {}), **grid_objective_options}
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
        validate(r, where)
        if search is not None and search.trial_epochs > r.epochs:
            raise ConfigError(f"{where} [search]: trial_epochs = {search.trial_epochs} is more than the runs' epochs = "
                              f"{r.epochs}: the trials select a setting on a shorter training than the final runs', "
                              "not a longer one")
    return Suite(name=path.stem, path=path, description=str(doc.get("description", "")), runs=runs,
                 published=published, search=search, plugins=loaded)


def _absolute_npz(name: str) -> str:
    """``npz:PATH`` with PATH made absolute (from the working directory), so that every worker
    reads the same file; other names unchanged."""
    if not name.startswith(datasets.NPZ):
        return name
    return datasets.NPZ + str(Path(name.removeprefix(datasets.NPZ)).expanduser().resolve())


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
    raise ConfigError(f"{where}: unknown variant {name!r}; valid variants: {', '.join(variants.available())}")
