"""
What the run report (analysis.report) and the study report (analysis.study_report) share in how they draw and print:
each normalizer's colour and place in the order (from the registry), number formatting, the figure grid, the
y scale. matplotlib's Figure is used directly (no pyplot): reports render off-screen, without a GUI backend.
"""

import math

import numpy as np
from matplotlib.figure import Figure

import normalizers

LEGEND_COLUMNS = 6
UNREGISTERED_COLOR = "tab:gray"  # a run of a normalizer that is no longer registered still gets drawn


def color(attn_norm):
    """The normalizer's colour in every plot: its spec's .color."""
    spec = normalizers.NORMALIZERS.get(attn_norm)
    return spec.color if spec else UNREGISTERED_COLOR


def in_registry_order(attn_norms):
    """attn_norms sorted as the registry lists them (its first is the baseline); unregistered ones last."""
    order = {name: i for i, name in enumerate(normalizers.NORMALIZERS)}
    return sorted(attn_norms, key=lambda name: order.get(name, len(order)))


def fmt(x, digits=3):
    """A table cell: `digits` significant digits, scientific from 10⁴; '–' for a missing value (None), 'NaN' for a
    value that is not a number (a diverged run's loss: not the same as a run that was not evaluated)."""
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.2e}"


def mean_std_cell(values, digits=3):
    """'mean ± std' over seeds (sample std) of a table's cell: '–' where a run lacks the value (None) and for the
    std of one run; NaN where a run's value is NaN."""
    if not values or any(v is None for v in values):
        return "–"
    x = np.asarray(values, dtype=float)
    return f"{fmt(float(np.mean(x)), digits)} ± {fmt(float(np.std(x, ddof=1)) if len(x) > 1 else None, 2)}"


def figure(legend_entries, nrows, ncols, cell_w, cell_h, title, **subplots_kw):
    """A Figure with a grid of axes, the title on top and room for a legend of legend_entries below. The margins
    are fixed in inches: matplotlib's layout engines would cost seconds per figure."""
    legend_rows = math.ceil(legend_entries / LEGEND_COLUMNS)
    left, right, top, bottom = 0.9, 0.25, 0.8, 0.65 + 0.25 * legend_rows
    w, h = ncols * cell_w + left + right, nrows * cell_h + top + bottom
    fig = Figure(figsize=(w, h))
    fig.suptitle(title, y=1 - 0.1 / h, va="top", wrap=True)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots_kw, gridspec_kw=dict(
        left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, wspace=0.3, hspace=0.5))
    return fig, axes


def scale(ax, values):
    """Log scale where positive values span two decades or more; symlog where signed ones reach 100."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return
    lo, hi = min(values), max(values)
    if lo > 0 and hi >= 100 * lo:
        ax.set_yscale("log")
    elif max(-lo, hi) >= 100:
        ax.set_yscale("symlog", linthresh=1)
