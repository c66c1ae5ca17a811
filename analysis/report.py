"""
Compare training runs: a markdown table and plots of loss, kurtosis, outliers and attention sinks.

    python -m analysis.report out/shakespeare_char-4x128-softmax-s1337 out/*-softmax1-* --out out/report

Reads each run's metrics.jsonl (the statistics train.py logs at every eval, see analysis/stats.py) and the
eval.json that analysis.perplexity writes, if there is one, and writes OUT/report.md with the PNGs it shows.
--out is required: no default directory, so a report never lands in the repository (or wherever the command
happens to run) unasked. analysis/kurtosis_curves.ipynb draws the same figures from the same functions.
Runs are listed, coloured and grouped as the normalizer registry says (normalizers.NORMALIZERS).
"""

import argparse
import math
import re
import statistics
from pathlib import Path

from matplotlib.lines import Line2D

from analysis import POINTS, read_metrics
from analysis.plots import LEGEND_COLUMNS, color, figure, fmt, in_registry_order, mean_std_cell, scale

# What each statistic is, for titles and the report's legend (analysis/stats.py has the formulas).
DESCRIPTIONS = {
    "weight_kurtosis": "weight kurtosis: Fisher excess over the whole matrix (normal = 0)",
    "act_kurtosis_tensor": "activation kurtosis, whole tensor: Fisher excess over all B·T·C values (normal = 0)",
    "act_kurtosis_sample": "activation kurtosis per sequence: Pearson, unbiased std, mean over sequences "
                           "(Bondarenko et al. 2023; normal = 3)",
    "act_kurtosis_token": "activation kurtosis per token across channels: Pearson, mean over tokens "
                          "(Kaul et al. 2025; normal = 3)",
    "act_absmax": "max |activation|",
    "act_top10": "10th largest |activation|",
    "act_top100": "100th largest |activation|",
    "act_median": "median |activation|",
    "attn_sink": "attention sink: mean weight on the first token",
    "attn_quiet": "quiet mass: 1 − Σ weights (softmax: 0; diff: λ)",
    "attn_entropy": "attention entropy in nats, of |weights| renormalised to sum 1",
    "attn_sink_dormant": "weight on BOS at dormant queries (not at a Bigram-Backcopy trigger)",
    "attn_sink_active": "weight on BOS at active queries (at a trigger, where the copy happens)",
    "bos_resid_ratio": "first token's residual norm / the median token's",
    "bos_value_ratio": "first token's value norm / the median token's",
}
KURTOSIS = ("weight_kurtosis", "act_kurtosis_tensor", "act_kurtosis_sample", "act_kurtosis_token")
MAGNITUDES = ("act_absmax", "act_top10", "act_top100", "act_median")
ATTENTION = ("attn_sink", "attn_quiet", "attn_entropy")
SHORT = {"weight_kurtosis": "weight kurtosis", "act_kurtosis_tensor": "kurtosis: tensor",
         "act_kurtosis_sample": "kurtosis: sample", "act_kurtosis_token": "kurtosis: token", "act_absmax": "max |x|",
         "act_top10": "10th largest |x|", "act_top100": "100th largest |x|", "act_median": "median |x|",
         "attn_sink": "sink", "attn_quiet": "quiet mass", "attn_entropy": "entropy (nats)",
         "attn_sink_dormant": "BOS weight, dormant", "attn_sink_active": "BOS weight, active",
         "bos_resid_ratio": "BOS resid. / median", "bos_value_ratio": "BOS value / median"}
SEED_STYLES = ("-", "--", ":", "-.")
# The sink statistics of analysis/stats.py a run's summary() gives per layer (mean and max over layers)
SINKS = ("attn_sink_dormant", "attn_sink_active", "attn_quiet_dormant", "bos_resid_ratio", "bos_value_ratio")


def load_runs(run_dirs):
    """read_metrics() of each run directory in the registry's order of their attn_norms (stable within one),
    labels made unique (the directory name is added to repeats)."""
    runs = [read_metrics(d) for d in run_dirs]
    order = in_registry_order(dict.fromkeys(run["config"].get("attn_norm") for run in runs))
    runs.sort(key=lambda run: order.index(run["config"].get("attn_norm")))
    labels = [r["label"] for r in runs]
    for run in runs:
        if labels.count(run["label"]) > 1:
            run["label"] += f" ({run['dir'].name})"
    return runs


# ---- reading the statistics out of the eval records ---------------------------------------------------------


def split_name(name):
    """'h.3.mlp_hidden' -> (3, 'mlp_hidden'); 'h.3' -> (3, ''); 'wte' -> (None, 'wte')."""
    m = re.fullmatch(r"h\.(\d+)(?:\.(.+))?", name)
    return (int(m.group(1)), m.group(2) or "") if m else (None, name)


def names(runs, group):
    """The statistic names under group ('h.0.attn_out', ..., 'wte') across runs, in logging order."""
    keys = {}
    for run in runs:
        for record in run["eval"]:
            keys.update(dict.fromkeys(record))
    return [key[len(group) + 1:] for key in keys if key.startswith(group + "/")]


def series(run, key):
    """(iters, values) of one statistic over a run's evals."""
    points = [(r["iter"], r[key]) for r in run["eval"] if key in r]
    return [i for i, _ in points], [v for _, v in points]


def final(run, key):
    """A statistic at the run's last eval that logged it (NaN if none did)."""
    values = series(run, key)[1]
    return values[-1] if values else math.nan


def layout(runs, group):
    """The per-layer names of group as {part: {layer: name}} ('' is the part of attention's per-layer keys),
    and the names outside any layer (wte, wpe)."""
    parts, other = {}, []
    for name in names(runs, group):
        layer, part = split_name(name)
        if layer is None:
            other.append(name)
        else:
            parts.setdefault(part, {})[layer] = name
    order = {p: i for i, p in enumerate(POINTS)}  # the residual stream's order, not the hooks' firing order
    return dict(sorted(parts.items(), key=lambda kv: order.get(kv[0], -1))), other


# ---- figures ----------------------------------------------------------------------------------------------


def _style(runs):
    """Line style per run: the color names the attn_norm, the dash the seed."""
    seen, styles = {}, {}
    for run in runs:
        norm = run["config"].get("attn_norm")
        styles[run["label"]] = {"color": color(norm), "linestyle": SEED_STYLES[seen.get(norm, 0) % 4]}
        seen[norm] = seen.get(norm, 0) + 1
    return styles


def _finish(fig, axes, runs, styles, marker=None):
    """Hide empty axes, label the x axis under each column's lowest plot, and add the legend."""
    for col in axes.T:
        used = [ax for ax in col if ax.lines]
        for ax in col:
            if not ax.lines:
                ax.axis("off")
        if used:  # shared x axes show tick labels only on the last row, which may be empty in this column
            used[-1].xaxis.set_tick_params(labelbottom=True)
    handles = [Line2D([], [], marker=marker, **styles[r["label"]]) for r in runs]
    fig.legend(handles, [r["label"] for r in runs], loc="lower center", ncol=min(len(runs), LEGEND_COLUMNS),
               frameon=False)


def fig_loss(runs, title="Loss"):
    """Train and val loss over iterations, a color per run."""
    fig, axes = figure(len(runs), 1, 1, 7, 3.5, title)
    ax, styles = axes[0, 0], _style(runs)
    for run in runs:
        style = styles[run["label"]]
        ax.plot([r["iter"] for r in run["train"]], [r["loss"] for r in run["train"]], alpha=0.4, lw=1, **style)
        ax.plot(*series(run, "val_loss"), marker="o", ms=3, **style)
    ax.set(xlabel="iteration", ylabel="loss (nats/token)")
    ax.grid(alpha=0.3)
    _finish(fig, axes, runs, styles)
    return fig


def fig_curves(runs, groups, title=None):
    """Statistics over training: a row per activation point or matrix (per group for attention), a column per
    layer, a line per run; the matrices outside the layers (wte, wpe) get a row of their own."""
    rows, other = [], []
    for group in groups:
        parts, outside = layout(runs, group)
        rows += [(group, part, by_layer) for part, by_layer in parts.items()]
        other += [(group, name) for name in outside]
    n_layers = max((max(by_layer) + 1 for _, _, by_layer in rows), default=0)
    fig, axes = figure(len(runs), len(rows) + bool(other), max(n_layers, len(other), 1), 2.7, 2.0,
                        title or DESCRIPTIONS.get(groups[0], groups[0]), sharex=True, sharey="row")
    styles = _style(runs)
    cells = [(r, layer, group, by_layer[layer]) for r, (group, _, by_layer) in enumerate(rows) for layer in by_layer]
    cells += [(len(rows), c, group, name) for c, (group, name) in enumerate(other)]
    for r, c, group, name in cells:
        ax = axes[r, c]
        for run in runs:
            ax.plot(*series(run, f"{group}/{name}"), lw=1.2, **styles[run["label"]])
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for r, ax_row in enumerate(axes):  # the row shares its y axis: one scale for all of its values
        scale(ax_row[0], [v for ax in ax_row for line in ax.lines for v in line.get_ydata()])
        ax_row[0].set_ylabel(rows[r][1] or SHORT[rows[r][0]] if r < len(rows) else "embeddings")
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    _finish(fig, axes, runs, styles)
    return fig


def fig_final(runs, groups, title=None):
    """Statistics at the last eval against the layer: a panel per activation point or matrix, a row per group
    (one row in all when each group has one panel), a line per run."""
    panels = []
    for group in groups:
        parts, outside = layout(runs, group)
        panels.append([(group, part, by_layer) for part, by_layer in parts.items()])
        if outside:  # wte, wpe: points on a categorical axis
            panels[-1].append((group, "embeddings", {name: name for name in outside}))
    if all(len(row) == 1 for row in panels):
        panels = [[row[0] for row in panels]]
    fig, axes = figure(len(runs), len(panels), max(map(len, panels)), 3.0, 2.5,
                        title or "At the last eval: " + DESCRIPTIONS.get(groups[0], groups[0]))
    styles = _style(runs)
    for r, row in enumerate(panels):
        for c, (group, part, by_layer) in enumerate(row):
            ax, xs = axes[r, c], list(by_layer)
            categorical = isinstance(xs[0], str)
            for run in runs:
                ys = [final(run, f"{group}/{by_layer[x]}") for x in xs]
                ax.plot(xs, ys, marker="o", ms=4, lw=0 if categorical else 1.2, **styles[run["label"]])
            scale(ax, [v for line in ax.lines for v in line.get_ydata()])
            ax.set_title(part or SHORT[group], fontsize=9)
            if not categorical:
                ax.set_xticks(xs)
                ax.set_xlabel("layer")
            ax.grid(alpha=0.3)
        if len(groups) > 1 and len(row) > 1:
            axes[r, 0].set_ylabel(SHORT[row[0][0]])
    _finish(fig, axes, runs, styles, marker="o")
    return fig


def figures(runs):
    """(file name, caption, Figure) for every plot of the report, in order; statistics that no run logged
    (train.py with log_stats=False) are skipped."""
    plots = [("loss.png", "Loss: train (thin lines) and train.py's val estimate (markers).", fig_loss, None)]
    plots += [(f"curves_{group}.png", f"Over training: {DESCRIPTIONS[group]}.", fig_curves, [group])
              for group in KURTOSIS + ("act_absmax",)]
    plots += [
        ("curves_attention.png", "Over training: attention sink (weight on token 0), quiet mass (1 − Σ weights) "
         "and entropy (nats).", fig_curves, ATTENTION),
        ("curves_sinks.png", "Over training: the weight on BOS at dormant and active queries (Bigram-Backcopy), "
         "and the first token's residual and value norms over the median token's.", fig_curves,
         ("attn_sink_dormant", "attn_sink_active", "bos_resid_ratio", "bos_value_ratio")),
        ("final_weight_kurtosis.png", "Weight kurtosis per layer at the last eval (Fisher excess; normal = 0).",
         fig_final, KURTOSIS[:1]),
        ("final_act_kurtosis.png", "Activation kurtosis per layer at the last eval, by definition: tensor (excess; "
         "normal = 0), sample and token (Pearson; normal = 3).", fig_final, KURTOSIS[1:]),
        ("final_act_magnitudes.png", "Max, 10th and 100th largest, and median |activation| per layer at the last "
         "eval.", fig_final, MAGNITUDES),
        ("final_attention.png", "Attention sink, quiet mass and entropy per layer at the last eval.", fig_final,
         ATTENTION),
    ]
    for filename, caption, plot, groups in plots:
        if groups is None:
            yield filename, caption, plot(runs, caption)
            continue
        groups = [group for group in groups if names(runs, group)]
        if groups:
            yield filename, caption, plot(runs, groups, caption)


# ---- tables -----------------------------------------------------------------------------------------------


def summary(run):
    """The numbers of a run's table row: final loss and mean / max over layers (and points) of each group."""
    last = run["eval"][-1] if run["eval"] else {}
    exact = run["eval_json"].get("val_loss")
    # None: not evaluated (shown '–'); a NaN loss stays NaN (a diverged run, shown 'NaN')
    row = {"iter": last.get("iter"), "val_loss": exact if exact is not None else last.get("val_loss"),
           "val_exact": exact is not None, "bpc": run["eval_json"].get("bpc"), "stats_s": last.get("stats_s")}
    # exp overflows past 709: a diverged run's PPL is inf, not an OverflowError
    loss = row["val_loss"]
    row["val_ppl"] = None if loss is None else math.inf if loss > 709 else math.exp(loss)
    for group in KURTOSIS + ("act_absmax", "attn_sink", "attn_quiet") + SINKS:
        values = [v for key, v in last.items() if key.startswith(group + "/")]
        row[f"{group}_mean"] = statistics.fmean(values) if values else None
        row[f"{group}_max"] = max(values, default=None)
    # outliers against the typical size, as in the massive-activations papers: max |x| / median |x| per point
    ratios = [v / last[key.replace("act_absmax", "act_median")] for key, v in last.items()
              if key.startswith("act_absmax/") and last.get(key.replace("act_absmax", "act_median"), 0) > 0]
    row["act_ratio_max"] = max(ratios, default=None)
    row["sink_rate"] = last.get("sink_rate")
    dormant = row["attn_quiet_dormant_mean"]
    row["attn_mass_dormant_mean"] = None if dormant is None else 1 - dormant
    # Bigram-Backcopy: copy accuracy over the whole val split where the perplexity tool scored it, else the probe's
    row["copy_acc"] = run["eval_json"].get("copy_acc", last.get("copy_acc"))
    bayes = run["eval_json"].get("bayes_loss")
    row["excess_loss"] = None if loss is None or bayes is None else loss - bayes  # over the task's floor
    row.update({key: v for key, v in last.items() if key.startswith("hellaswag_")})  # hellaswag_interval's
    return row


COLUMNS = [  # (header, summary key(s)) after the val loss: one key is shown as is, two as "mean / max"
    ("val PPL", "val_ppl"), ("bpc", "bpc"),
    ("weight kurt. mean / max", ("weight_kurtosis_mean", "weight_kurtosis_max")),
    ("act. kurt. tensor mean / max", ("act_kurtosis_tensor_mean", "act_kurtosis_tensor_max")),
    ("act. kurt. sample mean / max", ("act_kurtosis_sample_mean", "act_kurtosis_sample_max")),
    ("act. kurt. token mean / max", ("act_kurtosis_token_mean", "act_kurtosis_token_max")),
    ("max \\|act\\|", "act_absmax_max"), ("max \\|act\\| / median", "act_ratio_max"),
    ("sink mean / max", ("attn_sink_mean", "attn_sink_max")), ("quiet mean", "attn_quiet_mean"),
    ("sink rate", "sink_rate"), ("BOS value / median", "bos_value_ratio_mean"), ("copy acc.", "copy_acc"),
]


def summary_table(runs):
    """One markdown row per run, at its last eval."""
    head = ["run", "attn_norm", "seed", "iter", "val loss"] + [h for h, _ in COLUMNS] + ["stats s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        s = summary(run)
        cells = [run["label"], str(run["config"].get("attn_norm")), str(run["config"].get("seed")), str(s["iter"]),
                 fmt(s["val_loss"], 4) + ("" if s["val_exact"] else "\\*")]
        for _, key in COLUMNS:
            cells.append(" / ".join(fmt(s[k]) for k in key) if isinstance(key, tuple) else fmt(s[key], 4))
        cells.append(fmt(s["stats_s"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(runs):
    """Mean ± std over the runs (seeds) of each variant (attn_norm, with its gate and optimizer unless the
    defaults), or '' when no variant has two runs."""
    by_variant = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(summary(run))
    if max(len(rows) for rows in by_variant.values()) < 2:
        return ""
    keys = [("val loss", "val_loss")] + [(h.replace(" mean / max", " mean"), k[0]) for h, k in COLUMNS[2:6]] + [
        ("max \\|act\\|", "act_absmax_max"), ("sink mean", "attn_sink_mean"), ("quiet mean", "attn_quiet_mean")]
    lines = ["| variant | runs | " + " | ".join(h for h, _ in keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for variant, rows in by_variant.items():
        cells = [variant, str(len(rows))]
        cells += [mean_std_cell([row[key] for row in rows]) for _, key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = """\
Each row is a run at its last eval. *val loss* is the exact loss over the whole val split from `eval.json`
(`python -m analysis.perplexity RUN_DIR`) where there is one, else train.py's estimate over `eval_iters`
random batches, marked \\*; *val PPL* = exp(val loss); *bpc* = bits per character (from `eval.json` only).
*mean / max* are over every layer and every matrix (weights) or activation point (activations).

Kurtosis, in three definitions (the literature's "kurtosis" means any of them; formulas in `analysis/stats.py`):
- **weight kurt.**: Fisher excess kurtosis of the whole weight matrix, m4 / m2² − 3 with biased moments, the number
  `scipy.stats.kurtosis(w.ravel(), fisher=True, bias=True)` gives; q, k and v of `c_attn` separately; normal = 0.
- **act. kurt. tensor**: the same over all B·T·C values of an activation; normal = 0. Raised by a few massive tokens.
- **act. kurt. sample**: Pearson kurtosis m4 / s⁴ (s: unbiased std) of each sequence's T·C values, averaged over
  sequences, as in Bondarenko et al. 2023 ("Quantizable Transformers"); normal = 3.
- **act. kurt. token**: Pearson kurtosis m4 / m2² of each token's C channels, averaged over tokens, as in Kaul et
  al. 2025 ("From Attention to Activation"); normal = 3. Raised by outlier channels.

Activation points per layer: `attn_in` (`ln_1`'s output), `attn_out` (heads' output, input of `attn.c_proj`),
`attn_branch` (attention's output), `mlp_in` (`ln_2`'s output), `mlp_hidden` (after GELU, or SwiGLU's
silu(gate)·up), `mlp_out` (MLP's output), `resid` (residual stream after the block), on a
fixed probe batch of val sequences. **max |act|** is the largest |activation| anywhere; **max |act| / median** the
largest ratio of max |activation| to median |activation| at one point (massive activations: hundreds or more).
Attention, over queries 1..T−1: **sink** = mean weight on the first token (mean and max over layers; uniform
causal attention puts (H_T − 1)/(T − 1) on it, H_T the harmonic number: 0.059 at T = 64, 0.035 at T = 128, 0.020 at T = 256, so only
a sink well above that is one); **quiet** = 1 − Σ weights (0 for softmax, λ for diff);
entropy of |weights| renormalised to sum 1 (in the plots). **sink rate**: the fraction of heads whose sink exceeds
0.3 (Gu et al. 2025); **BOS value / median**: the first token's value norm over the median token's (mean over
layers and heads; a sink's "value-state drain" is far below 1); **copy acc.**: on a Bigram-Backcopy dataset, how
often the most likely token after a trigger is the copy (over the whole val split where `eval.json` has it).
**stats s**: seconds model_stats took at that eval.
"""


def write_report(run_dirs, out_dir):
    """OUT/report.md and its PNGs for the runs in run_dirs; returns the report's path."""
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# attnorm runs", ""]
    for run in runs:
        lines.append(f"- **{run['label']}**: `{run['dir']}`, {len(run['eval'])} evals, "
                     f"attention {run['attention']}" + (f", {len(run['nonfinite'])} skipped non-finite steps"
                                                        if run["nonfinite"] else ""))
    lines += ["", "## Summary", "", summary_table(runs), ""]
    by_seed = seeds_table(runs)
    if by_seed:
        lines += ["Mean ± std over the runs of each variant (attn_norm, +gate unless none, +optimizer unless adamw):", "", by_seed, ""]
    lines += [LEGEND, "## Plots", ""]
    for filename, caption, fig in figures(runs):
        fig.savefig(out_dir / filename, dpi=100)
        lines += [f"{caption}", "", f"![{caption}]({filename})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="training runs' out_dirs (holding metrics.jsonl)")
    p.add_argument("--out", required=True, help="directory for report.md and the plots (created if missing)")
    args = p.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise SystemExit(f"error: --out {args.out} is a file, not a directory: give a directory for report.md and "
                         f"its plots")
    try:
        print(f"wrote {write_report(args.run_dirs, args.out)}")
    except (FileNotFoundError, NotADirectoryError) as e:  # a run without metrics.jsonl; --out under a file
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
