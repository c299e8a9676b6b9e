"""The per-run figure the harness logs with every run (``figures/curves.png``), from the run's own
history (``bench.train.RunResult.history``). Matplotlib only: it is drawn in every worker, where
seaborn's import would cost seconds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import vocabulary

History = dict[str, list[tuple[int, float]]]


def run_figure(history: History, path: Path) -> None:
    """``history`` maps a metric name to ``[(epoch, value), ...]``. Panels, each drawn when present:
    the bounds (the training bound, i.e. minus ``train/loss``, and ``val/elbo``: overfitting shows
    as the two parting), and the gaps (``gap/approximation``, ``gap/amortization`` at the gap
    epochs). An empty history writes a figure that says so."""
    bounds = [(k, sign, label) for k, sign, label in
              (("train/loss", -1.0, "training bound (−train/loss)"), ("val/elbo", 1.0, "val/elbo")) if history.get(k)]
    gaps = [(k, 1.0, k) for k in ("gap/approximation", "gap/amortization") if history.get(k)]
    panels = [p for p in ((bounds, f"bound [nats per example] ({vocabulary.get('val/elbo').better})"),
                          (gaps, f"gap [nats per example] ({vocabulary.get('gap/approximation').better})")) if p[0]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.4), squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no per-epoch metrics logged", ha="center", va="center")
        axes[0][0].axis("off")
    for ax, (lines, ylabel) in zip(axes[0], panels):
        for key, sign, label in lines:
            pts = sorted(history[key])
            ax.plot([p[0] for p in pts], [sign * p[1] for p in pts], marker="o" if len(pts) < 20 else None, ms=3,
                    label=label)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
