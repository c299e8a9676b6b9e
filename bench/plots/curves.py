"""The figures the harness logs with every run: its curves (``figures/curves.png``, from the run's
own history, ``bench.train.RunResult.history``), samples and reconstructions. Matplotlib only:
they are drawn in every worker, where seaborn's import would cost seconds."""

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


def run_images(model, ds, tmp: Path, split: str = "test") -> list[str]:
    """A run's samples and reconstructions drawn into ``tmp`` (their file names): for images PNG
    grids (``samples.png``: 64 sample means; ``reconstructions.png``: 32 images of ``split``
    beside their reconstructions), for vectors scatter plots (:func:`_vector_figures`). A search
    trial draws from ``split = "val"``: it never reads the test split."""
    import torch

    data = ds.val if split == "val" else ds.test
    with torch.no_grad():
        if len(ds.x_shape) == 3:  # images
            model.eval()
            # nearest-neighbour upscaling so that 8x8 digits are legible in the UI (28x28 stays 1:1)
            scale = max(1, 32 // ds.x_shape[-1])

            def grid(images, name: str) -> str:
                images = torch.nn.functional.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest")
                save_grid(images, tmp / name)
                return name

            names = [grid(model.sample(64, mean=True), "samples.png")]
            x = data[:32]
            recon = model.reconstruct(x).reshape(len(x), *ds.x_shape)
            names.append(grid(torch.stack([x.reshape(len(x), *ds.x_shape), recon], 1).flatten(0, 1), "reconstructions.png"))
            return names
        # vectors: scatter plots of model samples against test data, reconstructions against data
        return _vector_figures(model, data[:500], tmp)


def save_grid(images, path: Path, nrow: int = 8, padding: int = 2, pad_value: float = 0.5) -> None:
    """``images: [N, C, H, W]`` in [0, 1] as one PNG, ``nrow`` per row with ``padding`` pixels
    of ``pad_value`` between them (torchvision's ``save_image`` layout, without importing
    torchvision: it costs seconds in every worker)."""
    import torch
    from PIL import Image

    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = img
    pixels = (grid.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
    Image.fromarray(pixels.squeeze(-1).numpy() if c == 1 else pixels.numpy()).save(path)


def _vector_figures(model, x, tmp: Path) -> list[str]:
    """``samples.png``: 500 model samples over the test data in the first two coordinates;
    ``reconstructions.png``: every coordinate's reconstruction against its value."""
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
