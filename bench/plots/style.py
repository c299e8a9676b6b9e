"""Colours and saving: every variant and every estimator keeps one colour in every figure of
every suite; figures are sized for the ~900 px GitHub shows (7-9 inches at 110 dpi)."""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 110
WIDTH = 8.2  # inches: 900 px at DPI

# Fixed colours for the registered variants, so a variant has the same colour in every figure of
# every suite (seaborn's colour-blind palette, Tol's indigo and wine for the two it lacks, none
# lighter than the light blue). Names not listed get a stable colour from a hash of the name.
_FIXED = {
    "vanilla": "#0173b2",
    "iwae": "#de8f05",
    "planar-flow": "#029e73",
    "iaf": "#d55e00",
    "hierarchical": "#332288",
    "ladder": "#56b4e9",
    "gumbel-softmax": "#cc78bc",
    "linear-gaussian": "#949494",
    "bernoulli": "#ca9161",
    "vq-vae": "#882255",
}
_SPARE = ["#117733", "#999933", "#44aa99", "#aa4499", "#661100", "#6699cc", "#888888", "#000000"]

# Estimator colours: by position within the estimator's family (bench.plots.figures.family), so the
# few lines of one panel are always told apart; the same estimator has the same colour everywhere.
_ESTIMATOR = ["#0173b2", "#de8f05", "#029e73", "#aa3377", "#000000", "#56b4e9", "#ca9161", "#949494"]


def variant_colors(names) -> dict[str, str]:
    """Colour of each variant name: fixed for registered names, else stable per name.

    The fallback colour depends only on the name (crc32 into a spare palette), never on which
    other variants a suite holds, so a variant keeps its colour across figures and suites. A
    variant labelled with the settings that set its runs apart (``vanilla (prior=vamp, ...)``,
    ``bench.plots.store.load_runs``) takes the spare palette in the sorted order of the labelled
    names given, so the few settings of one suite never share a colour (a hash of 8 would collide).
    """
    labelled = sorted(n for n in set(names) if n not in _FIXED and " (" in n)
    extra = _SPARE + [c for c in _FIXED.values() if c not in _SPARE]
    out = {n: extra[i % len(extra)] for i, n in enumerate(labelled)}
    return {n: out.get(n) or _FIXED.get(n) or _SPARE[zlib.crc32(n.encode()) % len(_SPARE)] for n in names}


def estimator_color(position: int) -> str:
    return _ESTIMATOR[position % len(_ESTIMATOR)]


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
