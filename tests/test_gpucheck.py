"""``python -m bench.gpucheck`` (``nox -s gpu``), on CPU: without CUDA the default invocation is one
line and exit code 2; a part that raises is recorded and the next one runs; ``--device cpu --quick``
runs every part at a tiny size through the same plumbing (subprocesses, time limits, the MLflow
store, the JSON and the Markdown) and the JSON has every figure's key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpucheck

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_the_default_invocation_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main(["--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no CUDA device" in err and "--device cpu --quick" in err
    assert not (tmp_path / "gpu").exists()  # nothing run, nothing written


def test_without_cuda_the_command_line_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine with one
    p = subprocess.run([sys.executable, "-m", "bench.gpucheck", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("gpucheck: no CUDA device") and "Traceback" not in p.stderr


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def boom(self, limit):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpucheck.Check, "test_gpu", boom)
    rc = gpucheck.main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--parts", "test_gpu,seeds8_mps"])
    assert rc == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["parts"]["test_gpu"]["status"] == "failed" and "illegal memory" in report["parts"]["test_gpu"]["error"]
    assert report["parts"]["seeds8_mps"]["status"] == "skipped"
    assert set(report["figures"]) == set(gpucheck.FIGURES)
    assert "illegal memory" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_quick_cpu_mode_runs_every_part_and_writes_every_figure(tmp_path):
    """Every part at a tiny size on CPU (141 s on the 2 shared cores at a load average of 5-8,
    2026-12-05; most of it the subprocesses' imports of torch and MLflow):
    the parts that can run on CPU run and give their figures; cuda-graph and MPS are skipped with
    their reasons, compile for time."""
    p = subprocess.run([sys.executable, "-m", "bench.gpucheck", "--out", str(tmp_path), "--device", "cpu", "--quick"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["parts"]) == list(gpucheck.PARTS)
    assert set(report["figures"]) == set(gpucheck.FIGURES)
    for key in ("device", "torch", "cuda", "total_seconds"):
        assert key in report
    status = {k: r["status"] for k, r in report["parts"].items()}
    assert status == {**dict.fromkeys(gpucheck.PARTS, "ok"), "smoke_cuda_graph": "skipped",
                      "smoke_compile": "skipped", "seeds8_mps": "skipped"}, report
    f = report["figures"]
    assert f["test_gpu.failed"] == 0 and f["test_gpu.passed"] >= 1
    assert f["throughput.eager.examples_per_s"] > 0 and f["throughput.cuda-graph.examples_per_s"] is None
    assert report["parts"]["throughput"]["modes"]["cuda-graph"]["status"] == "skipped"
    assert f["log_px_5000.images_per_s"] > 0 and f["log_px_5000.mean_log_px"] < 0
    # seeds8 (2 seeds in the quick mode): each run's throughput from the store, summed
    assert f["seeds8.one_run_examples_per_s"] > 0 and f["seeds8.eight_runs_examples_per_s_total"] > 0
    assert f["seeds8.total_over_one"] == pytest.approx(f["seeds8.eight_runs_examples_per_s_total"]
                                                       / f["seeds8.one_run_examples_per_s"])
    assert f["smoke_eager.finished"] == f["smoke_eager.runs"] == 1 and f["smoke_eager.suite_seconds"] > 0
    assert "cuda" in report["parts"]["smoke_cuda_graph"]["reason"].lower()
    assert f["peak_gpu_memory_mb"] is None  # a CPU run measures no GPU memory
    md = (tmp_path / "gpu_check.md").read_text()
    assert "# GPU check (quick" in md and "`throughput.eager.examples_per_s`" in md and "torch" in md
