"""
The study's report (analysis.study): study/<name>/report.md with mean ± std tables, the comparisons against the
baseline and the optimizer's effect (analysis.significance), the sweep table, bar charts and per-layer curves, and
per_run/report.md (analysis.report) for the runs one by one.
"""

import dataclasses
import json
import math

import numpy as np
from matplotlib.colors import to_rgb

from analysis import quantize, report
from analysis.plots import LEGEND_COLUMNS, color, figure, fmt, mean_std_cell, scale
from analysis.run_steps import has_stats
from analysis.significance import ALPHA, comparisons, holm, welch
from normalizers.gates import GATES
from train import TrainConfig

# (heading, key in a run's row: report.summary() merged with its eval.json)
MODEL_METRICS = [
    ("val PPL", "val_ppl"),
    ("weight kurt.", "weight_kurtosis_mean"),
    ("act. kurt. tensor", "act_kurtosis_tensor_mean"),
    ("act. kurt. sample", "act_kurtosis_sample_mean"),
    ("act. kurt. token", "act_kurtosis_token_mean"),
    ("max \\|act\\|", "act_absmax_max"),
    ("sink", "attn_sink_mean"),
]
QUANT_METRICS = [("PPL fp (quant. tokens)", "ppl_fp")] + [
    (f"ΔPPL {name.replace('_', ' ')}", f"delta_ppl_{name}") for name in quantize.VARIANTS] + [
    ("min act. bits", "min_act_bits")]
# Shown when the runs logged them (model_stats with sink_rate; a Bigram-Backcopy dataset for the trigger split).
SINK_METRICS = [
    ("sink rate", "sink_rate"),
    ("BOS weight, dormant", "attn_sink_dormant_mean"),
    ("BOS weight, active", "attn_sink_active_mean"),
    ("mass on real keys, dormant", "attn_mass_dormant_mean"),
    ("BOS resid. / median", "bos_resid_ratio_max"),
    ("BOS value / median", "bos_value_ratio_mean"),
    ("copy acc.", "copy_acc"),
    ("loss − Bayes", "excess_loss"),
]
# HellaSwag's accuracies (analysis.hellaswag, or train.py's hellaswag_interval) where a run has them
HELLASWAG_METRICS = [("HellaSwag acc (sum loss)", "hellaswag_acc_sum_loss"),
                     ("HellaSwag acc (mean loss)", "hellaswag_acc_mean_loss")]
LAYER_GROUPS = report.KURTOSIS + ("act_absmax", "attn_sink")


def point_name(point):
    """A grid point ((setting, value), ...) as the report and the study's messages write it."""
    return ", ".join(f"{key}={value}" for key, value in point)


def load_study_runs(run_dirs):
    """report.load_runs(), with the model_stats the study computed (log_stats=False) as the last eval's."""
    runs = report.load_runs(run_dirs)
    for run in runs:
        if run["eval"] and not has_stats(run["eval"][-1]):
            run["eval"][-1].update(run["eval_json"].get("stats", {}))
    return runs


def rows_by_variant(run_dirs):
    """{variant: [(run, row)]} from {variant: [its runs' directories]}, the variants without runs left out; row:
    report.summary() merged with eval.json."""
    runs = {run["dir"]: run for run in load_study_runs([d for dirs in run_dirs.values() for d in dirs])}
    return {variant: [(runs[d], {**report.summary(runs[d]), **runs[d]["eval_json"]}) for d in dirs]
            for variant, dirs in run_dirs.items() if dirs}


def values(rows, key):
    """The runs' values of key as floats (a run without it: NaN, which the figures and tests leave out)."""
    return np.array([math.nan if row.get(key) is None else row[key] for _, row in rows], dtype=float)


def mean_std(x):
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def downstream_metrics(by_variant):
    """(heading, key) of the downstream scores some run has: HellaSwag's and lm-eval's metrics (analysis.lm_eval),
    not their standard errors and counts."""
    keys = dict.fromkeys(key for rows in by_variant.values() for _, row in rows for key in row)
    lm_eval = [(f"lm-eval {key[len('lm_eval_'):]}", key) for key in keys if key.startswith("lm_eval_")
               and "_stderr" not in key and not key.endswith("_samples") and key != "lm_eval_limit"]
    return [(heading, key) for heading, key in HELLASWAG_METRICS if key in keys] + lm_eval


def table(by_variant, metrics):
    head = ["variant", "seeds"] + [h for h, _ in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, rows in by_variant.items():
        cells = [variant.name, str(len(rows))]
        cells += [mean_std_cell([row.get(key) for _, row in rows], 4) for _, key in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)



def noise_section(by_variant, metrics, pairs, what):
    """A table of comparisons, variant − reference for each pair of `pairs` with runs on both sides, on each metric:
    the difference of means with its 95% confidence interval, Welch's p-value and the Holm-corrected one over every
    comparison of the table. what: the sentence that says which comparisons these are."""
    pairs = [(v, ref) for v, ref in pairs if v in by_variant and ref in by_variant]
    if not pairs:
        return "Nothing to compare: no variant has finished runs on both sides."
    rows = [(heading, f"{v.name} − {ref.name}", *welch(values(by_variant[v], key), values(by_variant[ref], key)))
            for heading, key in metrics for v, ref in pairs]
    adjusted = holm([row[-1] for row in rows])
    testable = int(np.isfinite(adjusted).sum())
    lines = [f"{what} Each row: the difference of the means over seeds with its 95% confidence interval "
             f"(Welch–Satterthwaite t interval), the p-value of Welch's t-test "
             f"(`scipy.stats.ttest_ind(equal_var=False)`) and that p-value corrected by Holm–Bonferroni over all "
             f"{testable} comparisons of this table. **Bold**: corrected p < {ALPHA}, a difference beyond seed noise. "
             f"With 2-3 seeds per variant the interval is wide and only differences several times the seed-to-seed "
             f"spread survive correction.", "",
             "| metric | comparison | difference | 95% CI | p (Welch) | p (Holm) |", "|---|---|---|---|---|---|"]
    survivors = []
    for (heading, name, diff, low, high, p), p_holm in zip(rows, adjusted):
        cells = [f"{diff:+.3g}", f"[{low:+.3g}, {high:+.3g}]" if math.isfinite(low) else "n/a",
                 f"{p:.2g}" if math.isfinite(p) else "n/a", f"{p_holm:.2g}" if math.isfinite(p_holm) else "n/a"]
        if p_holm < ALPHA:
            cells = [f"**{cell}**" for cell in cells]
            survivors.append(f"{name}: {heading} {diff:+.3g}")
        lines.append(f"| {heading} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Beyond seed noise after correction: " + ("; ".join(survivors) if survivors else "nothing") + "."]
    return "\n".join(lines)


def sweep_section(sweep):
    """The sweep table (variant × grid point → stage 1's val loss), the point chosen per variant, and a flag where a
    numeric setting's chosen value is the grid's smallest or largest."""
    points, losses, chosen = sweep["points"], sweep["losses"], sweep["chosen"]
    name = {point: point_name(point) for point in points}
    lines = [f"Stage 1 trained every variant at every grid point on seed {sweep['seed']}; the point with the lowest "
             f"exact val loss (`analysis.perplexity`, the whole val split) was chosen per variant (**bold**), "
             f"and stage 2 trained the other seeds there. The tables above compare each variant at its chosen "
             f"point. The val split both chooses and scores, alike for every variant.", "",
             "| variant | " + " | ".join(name[point] for point in points) + " |", "|" + "---|" * (len(points) + 1)]
    for variant, by_point in losses.items():
        cells = [("**{}**" if chosen.get(variant) == point else "{}").format(
            fmt(loss, 4) if math.isfinite(loss) else "failed") for point, loss in by_point.items()]
        lines.append(f"| {variant.name} | " + " | ".join(cells) + " |")
    lines.append("")
    for variant in losses:
        if variant not in chosen:
            lines.append(f"- **{variant.name}**: every point failed; it is left out of the comparison.")
            continue
        lines.append(f"- **{variant.name}**: {name[chosen[variant]]}.")
        for key, value in chosen[variant]:
            grid = {v for point in points for k, v in point if k == key}
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid)
            if numeric and len(grid) > 1 and value in (min(grid), max(grid)):
                end = "smallest" if value == min(grid) else "largest"
                lines[-1] += (f" **At the edge of the grid**: {key}={value} is the {end} value tried, so the best "
                              f"{key} may lie beyond it; widen the grid.")
    return "\n".join(lines)


def settings_lines(configs):
    """The runs' settings: those every run shares and that differ from TrainConfig's defaults, and the keys that
    vary from run to run."""
    defaults = dataclasses.asdict(TrainConfig())
    keys = [key for key in configs[0] if key not in ("out_dir", "wandb_run_name", "wandb_tags")]
    varying = [key for key in keys if len({json.dumps(c.get(key)) for c in configs}) > 1]
    shared = [f"{key}={configs[0][key]}" for key in keys
              if key not in varying and configs[0][key] != defaults.get(key, configs[0][key])]
    return [f"- settings of every run (the rest are train.py's defaults): `{' '.join(shared)}`",
            f"- set per run: {', '.join(varying)}"]


# A variant's look in the plots, by its gate's place in GATES: a hatch for its bars, a dash for its lines.
HATCHES = ("", "//", "\\\\", "xx", "..")
DASHES = ("-", "--", "-.", ":")


def style(variant, contexts):
    """Its normalizer's colour (plots.color), lighter for each (optimizer, block) of contexts after the first, and its
    gate's hatch and dash."""
    rgb = np.array(to_rgb(color(variant.norm)))
    lighter = contexts.index((variant.optimizer, variant.block)) / len(contexts)
    gate = list(GATES).index(variant.gate)
    return {"color": tuple(rgb + (1 - rgb) * lighter), "hatch": HATCHES[gate % len(HATCHES)],
            "linestyle": DASHES[gate % len(DASHES)]}


def fig_bars(by_variant, styles, metrics, title):
    """A panel per metric: a bar per variant at the mean over seeds, ± std as error bar, a dot per seed. The legend
    names the bars: variant names are too long to fit under them."""
    ncols = min(4, len(metrics))
    fig, axes = figure(len(by_variant), math.ceil(len(metrics) / ncols), ncols, 2.6, 2.2, title)
    for ax, (heading, key) in zip(axes.flat, metrics):
        for x, (variant, rows) in enumerate(by_variant.items()):
            v = values(rows, key)
            m, s = mean_std(v)
            ax.bar(x, m, yerr=0 if math.isnan(s) else s, color=styles[variant]["color"],
                   hatch=styles[variant]["hatch"], alpha=0.6, capsize=4, label=variant.name)
            ax.plot(np.full(len(v), x), v, "o", color="k", ms=3)
        ax.set_xticks([])
        ax.set_title(heading.replace("\\", ""), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center",
               ncol=min(len(by_variant), LEGEND_COLUMNS), frameon=False, fontsize=8)
    return fig


def fig_layers(by_variant, styles, group, title):
    """group at the last eval against the layer, a panel per activation point or matrix: mean over seeds per
    variant, the band ± std."""
    runs = [run for rows in by_variant.values() for run, _ in rows]
    parts, _ = report.layout(runs, group)  # the embeddings (wte, wpe) have no layer axis: left out here
    ncols = min(3, len(parts))
    fig, axes = figure(len(by_variant), math.ceil(len(parts) / ncols), ncols, 3.0, 2.3, title)
    for ax, (part, by_layer) in zip(axes.flat, parts.items()):
        layers = sorted(by_layer)
        for variant, rows in by_variant.items():
            look = styles[variant]
            v = np.array([[report.final(run, f"{group}/{by_layer[i]}") for i in layers] for run, _ in rows])
            m, s = v.mean(0), v.std(0, ddof=1) if len(v) > 1 else np.zeros(len(layers))
            ax.plot(layers, m, marker="o", ms=3, color=look["color"], linestyle=look["linestyle"], label=variant.name)
            ax.fill_between(layers, m - s, m + s, color=look["color"], alpha=0.2)
        scale(ax, [y for line in ax.lines for y in line.get_ydata()])
        ax.set(title=part or report.SHORT[group], xticks=layers, xlabel="layer")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(parts):]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center",
               ncol=min(len(by_variant), LEGEND_COLUMNS), frameon=False)
    return fig


SINK_LEGEND = (
    "On train.py's probe batch at the end of training (`analysis/stats.py` defines each; the first token is BOS when "
    "the runs' windows start at one). *sink rate*: the fraction of heads whose mean weight on the first token exceeds "
    "0.3 (Gu et al. 2025). *BOS weight, dormant / active*: the mean weight on it at queries that need not copy / at "
    "the triggers of a Bigram-Backcopy task (mean over layers). *mass on real keys, dormant*: 1 − quiet mass there "
    "(below 1 where a normalizer attends to nothing instead). *BOS resid. / median*: its residual-stream norm over "
    "the other tokens' median (max over layers); *BOS value / median*: the same for its value vectors (mean over "
    "layers and heads; a value-state drain is far below 1). *copy acc.*: how often the most likely next token after "
    "a trigger is the copy, over the whole val split; *loss − Bayes*: the exact val loss above the task's Bayes-optimal "
    "loss.")


def fig_sink_curves(by_variant, styles, keys):
    """keys [(title, eval-record key or layer group)] against the iteration: mean over seeds per variant, ± std."""
    fig, axes = figure(len(by_variant), 1, len(keys), 5.0, 2.6, "Over training, mean ± std over seeds")
    for ax, (title, key) in zip(axes.flat, keys):
        for variant, rows in by_variant.items():
            curves = [[(e["iter"], curve_value(e, key)) for e in run["eval"]] for run, _ in rows]
            iters = [i for i, _ in curves[0]]
            v = np.array([[y for _, y in c] for c in curves if [i for i, _ in c] == iters])
            m, s = v.mean(0), v.std(0, ddof=1) if len(v) > 1 else np.zeros(len(iters))
            look = styles[variant]
            ax.plot(iters, m, color=look["color"], linestyle=look["linestyle"], label=variant.name)
            ax.fill_between(iters, m - s, m + s, color=look["color"], alpha=0.15)
        ax.set(title=title, xlabel="iteration")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center",
               ncol=min(len(by_variant), LEGEND_COLUMNS), frameon=False)
    return fig


def curve_value(record, key):
    """An eval record's value of key, or the mean over layers of the layer group key."""
    if key in record:
        return record[key]
    layers = [v for k, v in record.items() if k.startswith(key + "/")]
    return float(np.mean(layers)) if layers else math.nan


def write_study_report(study_dir, variants, run_dirs, header, sweep=None):
    """study_dir/report.md with its PNGs, and per_run/report.md (analysis.report) for the runs one by one.
    variants: the study's, in order (the first is the baseline); run_dirs: {variant: [its finished runs]}."""
    by_variant = rows_by_variant(run_dirs)
    runs = [run for rows in by_variant.values() for run, _ in rows]
    first, optimizers = variants[0], list(dict.fromkeys(v.optimizer for v in variants))
    blocks = list(dict.fromkeys(v.block for v in variants))
    contexts = list(dict.fromkeys((v.optimizer, v.block) for v in variants))
    styles = {variant: style(variant, contexts) for variant in variants}
    against_baseline, optimizer_effect, block_effect = comparisons(variants)
    cfg = runs[0]["config"]
    seeds = sorted({run["config"]["seed"] for run in runs})
    ev = runs[0]["eval_json"]
    batch = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    names = ("" if all(v.name == v.norm for v in by_variant) else
             f" A variant's name is its attn_norm, then its attn_gate, optimizer and block where they differ from "
             f"attn_gate={first.gate}, optimizer={first.optimizer} and block gpt2.")
    lines = [f"# attnorm study: {study_dir.name}", "", *header, *settings_lines([run["config"] for run in runs]), "",
             f"{len(runs)} runs: variant ∈ {{{', '.join(v.name for v in by_variant)}}} × seed ∈ "
             f"{{{', '.join(map(str, seeds))}}}; {cfg['dataset']}, {cfg['n_layer']} layers × {cfg['n_embd']} wide, "
             f"{cfg['n_head']} heads, block {cfg['block_size']}, batch {batch}, {cfg['max_iters']} iterations "
             f"({cfg['max_iters'] * batch * cfg['block_size']:,} tokens) per run. Runs: "
             f"`{study_dir}/runs/<variant>-s<seed>/`.{names}", ""]
    if sweep:
        lines += ["## Sweep", "", sweep_section(sweep), ""]
    sinks = [(h, key) for h, key in SINK_METRICS if any(row.get(key) is not None and math.isfinite(row[key])
                                                        for rows in by_variant.values() for _, row in rows)]
    downstream = downstream_metrics(by_variant)
    metrics = MODEL_METRICS + QUANT_METRICS + downstream + sinks
    ladder = ", ".join(name.replace("_", " ") for name in quantize.ACT_LADDER.values())
    baselines = ", ".join(f"**{v.name}** under {v.optimizer}" + (f" in the {v.block} block" if len(blocks) > 1 else "")
                          for v in variants if (v.norm, v.gate) == (first.norm, first.gate))
    lines += ["## Mean ± std over seeds", "",
              "At the end of training (std: sample std over seeds). *val PPL*: exact, over the whole val split "
              "(`analysis.perplexity`). Kurtosis (three definitions, see `analysis/stats.py`) and *sink* (mean "
              "attention weight on token 0): mean over layers and activation points/matrices; *max |act|*: the "
              "largest over all of them; on train.py's probe batch.", "", table(by_variant, MODEL_METRICS), "",
              f"Post-training quantization (`analysis.quantize`): PPL over the first {ev['quant_tokens']:,} val "
              f"tokens, fp and the PPL lost (ΔPPL = PPL quantized − PPL fp) to int8 weights per tensor or per "
              f"channel with int8 activations calibrated by min-max or the {ev['quant_percentile']}th percentile on "
              f"{ev['quant_calib_batches']} training batches (W8A8), int8 weights per channel with 6-, 5- and 4-bit "
              f"activations calibrated by min-max (W8A6, W8A5, W8A4), int8 weights alone (W8) and int4 weights "
              f"alone (W4), both per channel. Every nn.Linear is quantized, lm_head included; lm_head is tied to "
              f"wte, so the embedding reads the quantized matrix too. *min act. bits*: the smallest activation width "
              f"reached walking down the ladder {ladder} before a rung loses more than {ev['quant_tolerance']:.1%} of "
              f"the fp PPL (PPL ≤ {1 + ev['quant_tolerance']:g} × PPL fp); '–' where W8A8 already loses more for "
              f"some seed.", "", table(by_variant, QUANT_METRICS), ""]
    if downstream:
        lines += ["Downstream, on the final checkpoint (a run without a score shows –): HellaSwag's val set scored "
                  "completion style as build-nanogpt does (`analysis.hellaswag`: the ending with the lowest summed, "
                  "or mean per token, loss), and lm-evaluation-harness tasks (`analysis.lm_eval`) as "
                  "`<task> <metric>`.", "", table(by_variant, downstream), ""]
    if sinks:
        lines += ["## Attention sinks", "", SINK_LEGEND, "", table(by_variant, sinks), ""]
    lines += ["## Which differences exceed seed noise", "",
              noise_section(by_variant, metrics, against_baseline,
                            f"Each variant against the baseline with the same optimizer and block ({baselines}: the "
                            f"first registered normalizer in the study, with attn_gate={first.gate})."), ""]
    if optimizer_effect:
        lines += ["## The optimizer's effect", "",
                  noise_section(by_variant, metrics, optimizer_effect,
                                f"The optimizer as a control: each variant under {', '.join(optimizers[1:])} against "
                                f"itself under {first.optimizer}."), ""]
    if block_effect:
        lines += ["## The block's effect", "",
                  noise_section(by_variant, metrics, block_effect,
                                f"The block as a control: each variant in the {', '.join(blocks[1:])} block against "
                                f"itself in the {first.block} block (model.BLOCKS)."), ""]
    lines += ["## Plots", ""]
    figures = [("bars_model.png", fig_bars(by_variant, styles, MODEL_METRICS, "Mean ± std over seeds (dots: seeds)")),
               ("bars_quantization.png",
                fig_bars(by_variant, styles, QUANT_METRICS, "Quantization: PPL fp and PPL lost"))]
    if downstream:
        figures.append(("bars_downstream.png", fig_bars(by_variant, styles, downstream, "Downstream accuracy")))
    for optimizer, block in contexts:  # a figure per optimizer and block: every variant in one, too many lines
        subset = {v: rows for v, rows in by_variant.items() if (v.optimizer, v.block) == (optimizer, block)}
        if not subset:
            continue
        suffix = "".join(f"-{name}" for name, first_name in ((optimizer, first.optimizer), (block, first.block))
                         if name != first_name)
        shown = [name for name, axis in ((optimizer, optimizers), (block, blocks)) if len(axis) > 1]
        under = f" ({', '.join(shown)})" if shown else ""
        figures += [(f"layers_{group}{suffix}.png", fig_layers(
            subset, styles, group, f"Per layer, mean ± std over seeds{under}: {report.DESCRIPTIONS[group]}"))
            for group in LAYER_GROUPS]
    if sinks:
        dormant = "attn_sink_dormant" if any(key == "attn_sink_dormant_mean" for _, key in sinks) else "attn_sink"
        figures.append(("curves_sinks.png", fig_sink_curves(by_variant, styles, [
            ("sink rate (heads with BOS weight > 0.3)", "sink_rate"),
            ("BOS weight" + (", dormant queries" if dormant != "attn_sink" else ""), dormant)])))
    for filename, fig in figures:
        fig.savefig(study_dir / filename, dpi=80)
        lines += [f"![{filename}]({filename})", ""]
    per_run = report.write_report([run["dir"] for run in runs], study_dir / "per_run")
    lines += ["## Each run", "", f"Loss curves, statistics over training and a row per run: "
              f"[per_run/report.md]({per_run.relative_to(study_dir)}).", ""]
    path = study_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
