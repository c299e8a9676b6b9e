"""``python -m bench compare --suite NAME [A B]``: two invocations of a suite side by side.

An *invocation* is a parent run of the suite's experiment (one ``python -m bench run``). Each
records, in its artifact ``invocation.json``, every run key of the suite with the child run that
holds its numbers and how it got them (``reused``, ``resumed``, ``ran``, ``failed``, ``killed``,
``pending``), and the counts as the tags ``vaebench.n_<outcome>`` (``bench.run.runner``).

``A`` and ``B`` are each a parent run id (or a unique prefix of one) or a git commit (a prefix of
the invocations' ``git_commit`` tag, or any revision ``git rev-parse`` knows here: ``HEAD~1``,
``main``): the latest invocation at that commit. Without them: the suite's last two invocations
(A the older). Only runs whose outcome is ``ran``, ``resumed`` or ``reused`` contribute numbers.

Pairing. A run of A and a run of B are the same result when their *grid coordinates* agree: the
config params that vary among the runs of one invocation (variant, objective, dataset, seed, k,
...). With the same settings, paired runs have the same run key (``vaebench.run_key``); a setting
changed for the whole suite (``--set epochs=6``) changes every key but no coordinate, and is listed
as a setting that differs. Runs without a partner are listed. A searched suite (``bench.run.search``)
pairs its final runs by cell and seed (the tag ``vaebench.search.cell``): a setting selected
differently in A and B is listed as a setting that differs; its rounds of trials are not
invocations to compare.

The difference is always B − A, in the metric's units (``bench.vocabulary``). Where a config
(the coordinates but the seed) has several seeds, the difference of the means is tested against
the spread over seeds, two-sided at 5%:

* seeds present in both (at least 2): a paired t-test on the per-seed differences
  ``d_s = B_s − A_s``: beyond the spread when ``|mean d| > t_{0.975, n−1} sd(d) / sqrt(n)``
  (identical differences with sd 0 are beyond it unless they are 0);
* otherwise, at least 2 seeds on each side: Welch's t-test on the two sets of seeds;
* otherwise (one seed): no verdict.

Output: Markdown on stdout (the invocations, the settings that differ, one table row per config
and metric) and a CSV (``results/<suite>/compare/<A>-<B>.csv`` unless ``--csv``): one row per
paired run (``level = run``) and per config (``level = config``), with both run keys and ids,
the values, the difference and the test. A bad id, an unknown suite or nothing to compare is a
:class:`bench.errors.BenchError` (exit code 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import vocabulary
from bench.config import PLACEMENT
from bench.errors import BenchError
from bench.store import tracking

USED = ("ran", "resumed", "reused")  # outcomes whose run holds final numbers
ALPHA = 0.05
# RunConfig fields that say how or where a run ran, not what it computes (bench.config.PLACEMENT); and
# the params the planner derives from the data (they vary with the dataset, never on their own)
NOT_COORDINATES = {*PLACEMENT, "likelihood", "train_examples", "test_examples", "data_source"}


@dataclass
class Invocation:
    run_id: str
    name: str
    start_time: int
    status: str
    commit: str
    params: dict[str, str]
    tags: dict[str, str]
    runs: list[dict] = field(default_factory=list)  # invocation.json "runs" (+ "params", "metrics")

    @property
    def started(self) -> str:
        return pd.Timestamp(self.start_time, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")

    def counts(self) -> str:
        order = (*USED, *(o for o in tracking.OUTCOMES if o not in USED))
        n = {o: self.tags.get(tracking.TAG_COUNT + o, "") for o in order}
        parts = [f"{v} {o}" for o, v in n.items() if v and v != "0"]
        return f"{len(self.runs)} runs: " + (", ".join(parts) if parts else "none counted")


# -- reading the store ------------------------------------------------------------------------------


def _experiment(client, suite: str):
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise BenchError(f"no suite {suite!r} in this store (its experiments: {', '.join(known) or 'none'}); "
                         "run it first: python -m bench run --suite " + suite)
    return exp


def invocations(client, experiment_id: str) -> list[Invocation]:
    """The suite's invocations (parent runs), oldest first; of a searched suite, the rounds of its
    final runs (a round of trials holds validation numbers only)."""
    out = [Invocation(r.info.run_id, r.info.run_name, r.info.start_time, r.info.status,
                      r.data.tags.get("git_commit", ""), dict(r.data.params), dict(r.data.tags))
           for r in tracking.search_all(client, [experiment_id], tracking.role_filter("parent"))
           if r.data.tags.get(tracking.TAG_SEARCH_STAGE) != "trials"]
    return sorted(out, key=lambda i: i.start_time)


def _read_runs(client, inv: Invocation) -> None:
    """``inv.runs`` from its ``invocation.json`` (or, for a parent without one, its nested
    children), each with the child run's params and final metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            doc = json.loads(Path(client.download_artifacts(inv.run_id, "invocation.json", tmp)).read_text())
            runs = doc.get("runs", [])
        except Exception:  # an older parent: its own children, each counted as ran
            runs = [{"run_key": r.data.tags.get(tracking.TAG_RUN_KEY, r.info.run_id), "run_name": r.info.run_name,
                     "run_id": r.info.run_id, "outcome": "ran" if r.info.status == "FINISHED" else r.info.status.lower()}
                    for r in client.search_runs([client.get_run(inv.run_id).info.experiment_id],
                                                f"tags.`mlflow.parentRunId` = '{inv.run_id}'", max_results=10000)]
    for r in runs:
        run = client.get_run(r["run_id"]) if r.get("run_id") else None
        r["params"] = dict(run.data.params) if run else {}
        if run and tracking.TAG_SEARCH_CELL in run.data.tags:  # a tuned cell: paired by its cell
            r["params"]["cell"] = run.data.tags[tracking.TAG_SEARCH_CELL]
        r["metrics"] = dict(run.data.metrics) if run else {}
        r["status"] = run.info.status if run else "none"
    inv.runs = runs


def _git_revision(ref: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(tracking.REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _listing(invs: list[Invocation], n: int = 8) -> str:
    return "; ".join(f"{i.run_id} ({i.started}, commit {i.commit[:12] or '?'})" for i in invs[-n:][::-1])


def resolve(ref: str, invs: list[Invocation]) -> Invocation:
    """The invocation ``ref`` names: a parent run id or a unique prefix of one, else a git commit
    (the latest invocation whose ``git_commit`` starts with it, or with what ``git rev-parse``
    makes of it)."""
    r = ref.strip().lower()
    by_id = [i for i in invs if i.run_id == r] or ([i for i in invs if i.run_id.startswith(r)] if len(r) >= 6 else [])
    commit = _commits(r, invs) if len(r) >= 4 else []
    if not commit:
        full = _git_revision(ref)
        commit = _commits(full, invs) if full else []
    if by_id and commit and by_id[0].run_id != r:
        raise BenchError(f"{ref!r} is ambiguous: the start of parent run {by_id[0].run_id} and of commit {commit[-1].commit}")
    if len(by_id) == 1:
        return by_id[0]
    if len(by_id) > 1:
        raise BenchError(f"{ref!r} is the start of {len(by_id)} parent run ids: give more of it "
                         f"({', '.join(i.run_id for i in by_id[:5])})")
    if commit:
        shas = sorted({i.commit.removesuffix('-dirty') for i in commit})
        if len(shas) > 1:
            raise BenchError(f"{ref!r} matches {len(shas)} commits ({', '.join(s[:12] for s in shas)}): give more of it")
        return commit[-1]
    raise BenchError(f"no invocation of this suite has parent run id or git commit {ref!r}; "
                     f"the latest: {_listing(invs) or 'none'}")


def _commits(prefix: str, invs: list[Invocation]) -> list[Invocation]:
    return [i for i in invs if i.commit and i.commit.lower().startswith(prefix)]


# -- pairing and statistics ---------------------------------------------------------------------------


def _config_keys() -> list[str]:
    from bench.config import RunConfig

    return [f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_COORDINATES
            and f.name not in ("variant_options", "objective_options")]


def _is_config(name: str, fields: set[str]) -> bool:
    return (name in fields or name.startswith(("option.", "objective_option."))) and name not in NOT_COORDINATES


PRIMARY = ("variant", "objective", "dataset", "seed")


def coordinates(a: list[dict], b: list[dict]) -> list[str]:
    """The grid's axes: variant, objective, dataset, seed, and every other config param that
    varies among the runs of A or of B without being fixed by those four (``k`` in a suite that
    runs k = 1, 5, 50; not ``binarization`` where a dataset's grid sets it)."""
    if all("cell" in r["params"] for r in (*a, *b)):  # tuned cells: the selected settings may differ
        return ["cell", "seed"]
    fields = set(_config_keys())
    out = list(PRIMARY)
    for runs in (a, b):
        keys = sorted({k for r in runs for k in r["params"] if _is_config(k, fields)} - set(out))
        for k in keys:
            by_primary: dict[tuple, set] = {}
            for r in runs:
                by_primary.setdefault(tuple(r["params"].get(p) for p in PRIMARY), set()).add(r["params"].get(k))
            if any(len(v) > 1 for v in by_primary.values()):
                out.append(k)
    return out


def setting_changes(pairs: list[tuple[dict, dict]], coords: list[str]) -> list[tuple[str, str, str, int]]:
    """(param, value in A, value in B, pairs) for every config param that differs within the
    paired runs, per change of value: ``("epochs", "2", "5", 6)``."""
    fields = set(_config_keys())
    out: dict[tuple[str, str, str], int] = {}
    for x, y in pairs:
        for k in sorted(({*x["params"], *y["params"]} & {k for k in {*x["params"], *y["params"]} if _is_config(k, fields)})
                        - set(coords)):
            va, vb = x["params"].get(k, "(unset)"), y["params"].get(k, "(unset)")
            if va != vb:
                out[(k, va, vb)] = out.get((k, va, vb), 0) + 1
    return [(k, va, vb, n) for (k, va, vb), n in out.items()]


def _t_quantile(df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA / 2, df))


def seed_test(a: dict[int, float], b: dict[int, float]) -> tuple[str, float, bool | None]:
    """(rule, p-value, beyond the seed spread?) for the per-seed values ``{seed: value}`` of one
    config in A and in B (see the module docstring); (``"one seed"``, nan, None) without a test."""
    from scipy import stats

    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        d = [b[s] - a[s] for s in common]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
        if sd == 0:
            return f"paired, {len(d)} seeds", (1.0 if mean == 0 else 0.0), mean != 0
        t = mean / (sd / math.sqrt(len(d)))
        p = float(2 * stats.t.sf(abs(t), len(d) - 1))
        return f"paired, {len(d)} seeds", p, abs(t) > _t_quantile(len(d) - 1)
    if len(a) >= 2 and len(b) >= 2:
        va, vb = list(a.values()), list(b.values())
        if max(va) == min(va) and max(vb) == min(vb):
            same = va[0] == vb[0]
            return f"Welch, {len(va)} + {len(vb)} seeds", (1.0 if same else 0.0), not same
        res = stats.ttest_ind(vb, va, equal_var=False)
        return f"Welch, {len(va)} + {len(vb)} seeds", float(res.pvalue), bool(res.pvalue < ALPHA)
    return "one seed", math.nan, None


def _metric_names(a: list[dict], b: list[dict], wanted: list[str] | None) -> list[str]:
    have = {m for r in a + b for m in r["metrics"]}
    if wanted:
        return wanted
    names = [n for m in vocabulary.table_metrics() for n in vocabulary.expand(m, have)]
    return [n for n in names if n in have]


@dataclass
class Comparison:
    suite: str
    a: Invocation
    b: Invocation
    coords: list[str]
    changes: list[tuple[str, str, str, int]]
    runs: pd.DataFrame  # level = run rows
    configs: pd.DataFrame  # level = config rows
    only_a: list[str]
    only_b: list[str]
    unfinished: list[str]

    def frame(self) -> pd.DataFrame:
        return pd.concat([self.runs.assign(level="run"), self.configs.assign(level="config")], ignore_index=True)


def compare(client, suite: str, ref_a: str | None = None, ref_b: str | None = None,
            metrics: list[str] | None = None) -> Comparison:
    """Compare two invocations of ``suite`` in the store of ``client`` (see the module docstring)."""
    for m in metrics or []:
        if vocabulary.lookup(m) is None:
            raise BenchError(f"--metric {m!r} is not a metric of the vocabulary (bench/vocabulary.py)")
    exp = _experiment(client, suite)
    invs = invocations(client, exp.experiment_id)
    if (ref_a is None) != (ref_b is None):
        raise BenchError("give two invocations (A B), or none for the suite's last two")
    if ref_a is None:
        if len(invs) < 2:
            raise BenchError(f"nothing to compare: suite {suite!r} has {len(invs)} invocation(s) in this store; "
                             "run it again (python -m bench run) or name two (A B)")
        a, b = invs[-2], invs[-1]
    else:
        a, b = resolve(ref_a, invs), resolve(ref_b, invs)
    if a.run_id == b.run_id:
        raise BenchError(f"nothing to compare: {ref_a!r} and {ref_b!r} are the same invocation ({a.run_id})")
    for inv in (a, b):
        _read_runs(client, inv)
    unfinished = [f"{side}: {r['run_name']} ({r['outcome']})" for side, inv in (("A", a), ("B", b))
                  for r in inv.runs if r["outcome"] not in USED]
    ra = [r for r in a.runs if r["outcome"] in USED]
    rb = [r for r in b.runs if r["outcome"] in USED]
    if not ra or not rb:
        raise BenchError(f"nothing to compare: {'A' if not ra else 'B'} has no finished run "
                         f"({'; '.join(unfinished) or 'no runs recorded'})")
    coords = coordinates(ra, rb)
    names = _metric_names(ra, rb, metrics)

    def coord(r):
        return tuple(r["params"].get(k, "") for k in coords)

    ia, ib = {coord(r): r for r in ra}, {coord(r): r for r in rb}
    only_a = [ia[c]["run_name"] for c in ia if c not in ib]
    only_b = [ib[c]["run_name"] for c in ib if c not in ia]
    pairs = [(ia[c], ib[c]) for c in ia if c in ib]
    changes = setting_changes(pairs, coords)
    rows = []
    for x, y in pairs:
        c = coord(x)
        base = dict(zip(coords, c)) | {"run_key_a": x["run_key"], "run_key_b": y["run_key"], "run_id_a": x["run_id"],
                                       "run_id_b": y["run_id"], "outcome_a": x["outcome"], "outcome_b": y["outcome"]}
        for n in names:
            va, vb = x["metrics"].get(n, math.nan), y["metrics"].get(n, math.nan)
            rows.append(base | {"metric": n, "a": va, "b": vb, "diff": vb - va})
    runs = pd.DataFrame(rows)
    group = [k for k in coords if k != "seed"]
    crow = []
    if not runs.empty:
        for key, g in runs.groupby([*group, "metric"], sort=False):
            g = g.dropna(subset=["a", "b"], how="all")
            sa = {int(s): v for s, v in zip(g.get("seed", range(len(g))), g["a"]) if not math.isnan(v)}
            sb = {int(s): v for s, v in zip(g.get("seed", range(len(g))), g["b"]) if not math.isnan(v)}
            ma = sum(sa.values()) / len(sa) if sa else math.nan
            mb = sum(sb.values()) / len(sb) if sb else math.nan
            if not sa and not sb:
                continue  # a metric neither side has for this config (the oracle's exact log p(x) elsewhere)
            rule, p, beyond = seed_test(sa, sb) if sa and sb else ("missing", math.nan, None)
            crow.append(dict(zip([*group, "metric"], key)) | {
                "seeds_a": len(sa), "seeds_b": len(sb), "a": ma, "b": mb, "sd_a": _sd(list(sa.values())),
                "sd_b": _sd(list(sb.values())), "diff": mb - ma, "test": rule, "p": p, "beyond_seed_spread": beyond})
    configs = pd.DataFrame(crow)
    return Comparison(suite, a, b, coords, changes, runs, configs, only_a, only_b, unfinished)


def _sd(v: list[float]) -> float:
    if len(v) < 2:
        return math.nan
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


# -- output -------------------------------------------------------------------------------------------


def _value(metric: str, mean: float, sd: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    m = vocabulary.lookup(metric)
    s = m.format(mean) if m else f"{mean:.4g}"
    if n > 1 and not math.isnan(sd):
        s += f" ± {m.format(sd) if m else f'{sd:.2g}'}"
    return s


def _verdict(metric: str, diff: float, beyond, p: float) -> str:
    if beyond is None:
        return "—"
    if not beyond:
        return f"no (p = {p:.2f})"
    m = vocabulary.lookup(metric)
    direction = m.direction if m else vocabulary.NEITHER
    word = ("B higher" if diff > 0 else "B lower") if direction == vocabulary.NEITHER else (
        "B better" if (diff > 0) == (direction == vocabulary.HIGHER) else "B worse")
    return f"**yes**, {word} (p = {p:.2g})"


def markdown(c: Comparison) -> str:
    inv = [("parent run", c.a.run_id, c.b.run_id), ("started", c.a.started, c.b.started),
           ("git commit", c.a.commit or "?", c.b.commit or "?"),
           ("overrides (`--set`)", c.a.params.get("overrides", "-"), c.b.params.get("overrides", "-")),
           ("status", c.a.status, c.b.status), ("runs", c.a.counts(), c.b.counts())]
    out = [f"# Suite `{c.suite}`: two invocations side by side", "",
           "| | A | B |", "|---|---|---|", *(f"| {k} | `{a}` | `{b}` |" if k in ("parent run", "git commit")
                                            else f"| {k} | {a} | {b} |" for k, a, b in inv), ""]
    n_pairs = len({(r["run_id_a"], r["run_id_b"]) for _, r in c.runs.iterrows()}) if not c.runs.empty else 0
    if c.changes:
        out += ["Settings that differ between paired runs: "
                + "; ".join(f"`{k}` {a} → {b}" + ("" if n == n_pairs else f" ({n} of {n_pairs} pairs)")
                            for k, a, b, n in c.changes) + ".", ""]
    else:
        out += ["No setting differs between paired runs" + (" (the code may: see the commits)." if c.a.commit != c.b.commit
                                                             else "."), ""]
    same_keys = not c.runs.empty and (c.runs["run_key_a"] == c.runs["run_key_b"]).all()
    out += [f"Runs are paired by {', '.join(f'`{k}`' for k in c.coords)} (what varies within the suite)"
            + ("; every pair has the same run key." if same_keys else "; their run keys differ where a setting does."), ""]
    for label, names in (("Only in A", c.only_a), ("Only in B", c.only_b), ("Not finished (not compared)", c.unfinished)):
        if names:
            out += [f"{label}: {', '.join(names)}.", ""]
    out += ["How to read this: A and B are the mean ± sd over seeds of each config (the runs with the same "
            "coordinates but the seed); B − A is in the metric's units, and ↑ / ↓ say whether higher or lower is "
            "better. *Beyond seed spread* tests B − A against the spread over seeds, two-sided at 5%: a paired t-test "
            "on the per-seed differences where both have the same seeds (at least 2), else Welch's t-test (at least "
            "2 seeds each); one seed: no test (—). Timings (`perf/*`) also move with the machine's load.", ""]
    if c.configs.empty:
        return "\n".join([*out, "No paired runs to compare."])
    group = [k for k in c.coords if k != "seed"]
    head = [*group, "seeds A/B", "metric", "A", "B", "B − A", "beyond seed spread"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in c.configs.iterrows():
        m = vocabulary.lookup(r["metric"])
        name = f"{r['metric']} {m.arrow}".rstrip() if m else r["metric"]
        diff = "—" if math.isnan(r["diff"]) else (f"{r['diff']:+,.{m.decimals}f}" if m else f"{r['diff']:+.4g}")
        cells = [str(r[k]) for k in group] + [f"{r['seeds_a']}/{r['seeds_b']}", f"`{name}`",
                                              _value(r["metric"], r["a"], r["sd_a"], r["seeds_a"]),
                                              _value(r["metric"], r["b"], r["sd_b"], r["seeds_b"]), diff,
                                              _verdict(r["metric"], r["diff"], r["beyond_seed_spread"], r["p"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(suite: str, tracking_uri: str, ref_a: str | None, ref_b: str | None, csv: str | None, out: str,
         metrics: list[str] | None = None) -> int:
    """``python -m bench compare``: print the Markdown, write the CSV; the exit code."""
    import sys

    from mlflow import MlflowClient

    c = compare(MlflowClient(tracking_uri), suite, ref_a, ref_b, metrics)
    path = Path(csv) if csv else Path(out) / suite / "compare" / f"{c.a.run_id[:8]}-{c.b.run_id[:8]}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    c.frame().to_csv(path, index=False)
    sys.stdout.write(markdown(c))
    print(f"compare: A = {c.a.run_id}, B = {c.b.run_id}; CSV in {path}", file=sys.stderr)
    return 0
