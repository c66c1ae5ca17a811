"""
Analysis of attnorm runs: outlier and attention statistics, perplexity, and the comparison report.

    stats.py               model_stats(): kurtosis, outliers and attention sinks, logged by train.py at every eval
    perplexity.py          exact perplexity / bits per character of a checkpoint over a whole split
    quantize.py            post-training fake quantization (W8A8 down to W8A4, W8, W4) and the perplexity it costs
    hellaswag.py           HellaSwag accuracy as build-nanogpt scores it (also during training: hellaswag_interval)
    lm_eval.py             EleutherAI's lm-evaluation-harness over a checkpoint (optional: requirements-eval.txt)
    report.py              report.md and plots comparing runs; kurtosis_curves.ipynb draws the same figures
    study.py               the multi-seed study behind run_study.sh: its variants, seeds, sweeps, settings checks
    launch.py              how the study's runs are launched: a run's job, the pool of local workers, progress
    slurm.py               run_study.sh --launcher slurm: each run a Slurm job through submitit
    run_steps.py           one study run: the steps it still needs, and its evaluation
    significance.py        the study's comparisons: Welch's t interval and test, Holm's correction
    study_report.py        the study's report.md: mean ± std tables, comparisons, sweep table, figures
    plots.py               what the reports share: registry order and colours, number format, figure grid

This module only reads files (no torch, no matplotlib), because train.py imports the package at startup.
"""

import json
from pathlib import Path

# The activation points model_stats taps in every block, in the order they occur in the residual stream.
POINTS = ("attn_in", "attn_out", "attn_branch", "mlp_in", "mlp_hidden", "mlp_out", "resid")


def _parse_line(line):
    """One metrics.jsonl line as a dict, or None if it is blank or torn.

    A process killed in the middle of a write leaves a partial line with no newline, and the resumed run then
    appends its first record to that same line. train.py writes every record as {"iter": ..., ...}, so the
    record after the torn part starts at the last '{"iter"' and is recovered from there.
    """
    line = line.strip()
    for start in (0, line.rfind('{"iter"')):
        if start < 0:
            break
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        return record if isinstance(record, dict) else None
    return None


def variant_name(attn_norm, attn_gate="none", optimizer="adamw", block="gpt2"):
    """What a run compares, as "<attn_norm>[+<attn_gate>][+<optimizer>][+<block>]": the gate unless none, the
    optimizer unless adamw, the block (model.block_name) unless gpt2 (their defaults), so that a plain run is named by
    its attn_norm alone. Reports and studies share it."""
    return "+".join([attn_norm] + [attn_gate] * (attn_gate != "none") + [optimizer] * (optimizer != "adamw") +
                    [block] * (block != "gpt2"))


def read_metrics(run_dir):
    """A run directory's metrics.jsonl (and eval.json, if the perplexity tool wrote one) as a dict:

        dir        the run directory (Path)
        config     every TrainConfig key, from the last "start"/"resume" record
        attention  which attention path the run took (train.py's description)
        block      its block's name (model.block_name; gpt2 for runs logged before blocks were named)
        train, eval, nonfinite   lists of records, sorted by iter
        eval_json  the contents of eval.json, or {}
        variant    variant_name() of its settings
        label      "<variant> s<seed>", the run's name in tables and legends

    A run that crashed and resumed from its last checkpoint logs some iterations twice; the record written
    last for each (event, iter) is the one kept, since it belongs to the run's surviving history.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run's out_dir?")
    latest, start = {}, {}
    with open(path) as f:
        for line in f:
            record = _parse_line(line)
            if record is None or "event" not in record:
                continue
            if record["event"] in ("start", "resume"):
                start = record
            else:
                latest[(record["event"], record["iter"])] = record
    events = {}
    for (event, _), record in sorted(latest.items(), key=lambda item: item[0]):
        events.setdefault(event, []).append(record)
    eval_path = run_dir / "eval.json"
    config = start.get("config", {})
    block = start.get("block", "gpt2")
    variant = variant_name(config.get("attn_norm", "?"), config.get("attn_gate", "none"),
                           config.get("optimizer", "adamw"), block)
    return {
        "dir": run_dir,
        "config": config,
        "attention": start.get("attention"),
        "block": block,
        "train": events.get("train", []),
        "eval": events.get("eval", []),
        "nonfinite": events.get("nonfinite", []),
        "eval_json": json.loads(eval_path.read_text()) if eval_path.exists() else {},
        "variant": variant,
        "label": f"{variant} s{config.get('seed', '?')}",
    }
