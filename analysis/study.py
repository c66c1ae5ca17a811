"""
A multi-seed study: train every (attn_norm, seed) pair, evaluate each run, and compare the attn_norms.

    ./run_study.sh config/study_cpu.py --norms softmax,softmax1,symax,diff --seeds 0,1,2 [--name NAME] [--key=value]
    python -m analysis.study CONFIG ...                                  (the same; run_study.sh only calls this)

Each run trains with `python train.py CONFIG [--key=value ...] --attn_norm=N --seed=S --out_dir=DIR` into
study/<name>/runs/<attn_norm>-s<seed>/ (name: the config file's stem). --always_save_checkpoint=True is added, so
that the checkpoint is the model at max_iters (the runs are compared at equal steps) and a finished run can be told
from an unfinished one. Then, in one process per run: exact val perplexity (analysis.perplexity), model_stats on
train.py's probe batch if the last eval did not log them (log_stats=False), and post-training quantization
(analysis.quantize). Finally study/<name>/report.md: mean ± std over seeds per attn_norm, with bar charts, per-layer
curves, a test of which differences exceed seed noise, and per_run/report.md (analysis.report) for each run.

Runs go to a pool of workers: one per visible GPU (CUDA_VISIBLE_DEVICES set per run) when the config's device is
cuda, else --jobs CPU processes (default: one per core) sharing the cores (OMP_NUM_THREADS = cores / jobs; for
small models one thread per run beats many threads per run). A re-run skips finished runs (checkpoint at max_iters
and eval.json complete) and resumes interrupted ones (train.py's init_from=auto).
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats

from analysis import quantize, read_metrics, report
from checkpoint import CKPT_NAME

STUDY_KEYS = ("attn_norm", "seed", "out_dir")  # set per run by the study, not by --key=value
TRAIN_STEPS = ("train", "perplexity", "stats", "quantize")
QUANT_ARGS = ("max_tokens", "calib_batches")


def fmt_time(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ---- one run: what is left to do, and doing the evaluation steps ----------------------------------------


def read_json(path):
    return json.loads(path.read_text()) if path.exists() else {}


def has_stats(record):
    return any(key.startswith("act_kurtosis_tensor/") for key in record)


def pending_steps(run_dir, max_iters):
    """The steps of TRAIN_STEPS a run still needs; [] when it is finished."""
    ckpt = run_dir / CKPT_NAME
    if not ckpt.exists() or torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["iter_num"] != max_iters:
        return list(TRAIN_STEPS)
    ev = read_json(run_dir / "eval.json")
    steps = []
    if ev.get("iter") != max_iters or "val_ppl" not in ev:
        steps.append("perplexity")
    evals = read_metrics(run_dir)["eval"]
    if not (evals and evals[-1]["iter"] == max_iters and has_stats(evals[-1])) and not ev.get("stats"):
        steps.append("stats")
    if ev.get("quant_iter") != max_iters or any(key not in ev for key in quantize.EVAL_KEYS):
        steps.append("quantize")
    return steps


def evaluate_run(run_dir, device, max_tokens, calib_batches):
    """The evaluation steps a trained run still needs, in this process (`--evaluate RUN_DIR`)."""
    from analysis import perplexity
    from analysis.perplexity import update_json
    from checkpoint import load_model
    from analysis.stats import model_stats, probe_batch
    from prepare_data import load_meta

    run_dir = Path(run_dir)
    iters = torch.load(run_dir / CKPT_NAME, map_location="cpu", weights_only=True, mmap=True)["iter_num"]
    steps = pending_steps(run_dir, iters)
    if "perplexity" in steps:
        perplexity.main([str(run_dir), "--device", device])
    if "stats" in steps:  # on the probe train.py uses: the first 8 block_size windows of val
        model, ckpt = load_model(run_dir, device)
        meta = load_meta(Path("data") / ckpt["config"]["dataset"])
        T = ckpt["model_args"]["block_size"]
        val = np.memmap(Path("data") / ckpt["config"]["dataset"] / "val.bin", dtype=meta["dtype"], mode="r")
        probe = probe_batch(val, T).to(device)
        update_json(run_dir / "eval.json", {"stats": model_stats(model, probe)})
        print(f"model_stats of {run_dir} written to eval.json")
    if "quantize" in steps:
        quantize.main([str(run_dir), "--device", device, "--max_tokens", str(max_tokens),
                       "--calib_batches", str(calib_batches)])


# ---- the pool of workers, and progress --------------------------------------------------------------------


def worker_envs(device, jobs, n_runs):
    """One environment overlay per worker: a GPU each for cuda, else a share of the CPU cores."""
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        return [{"CUDA_VISIBLE_DEVICES": g} for g in gpus[: jobs or None]]
    if device != "cpu":  # mps: one device
        return [{}]
    cores = len(os.sched_getaffinity(0))
    jobs = max(1, min(jobs or cores, n_runs))
    return [{"OMP_NUM_THREADS": str(max(1, cores // jobs))}] * jobs


class Progress:
    """Prints what each worker's processes print, prefixed with the run, and every `every` seconds the overall
    fraction done (training iterations; a run's evaluation counts as its last iteration), elapsed time and ETA."""

    def __init__(self, runs, every=30.0):
        self.runs, self.every = runs, every  # runs: {label: (iters done, max_iters)}
        self.start_fraction = self.fraction()
        self.t0 = self.last = time.time()
        self.lock = threading.Lock()

    def fraction(self):
        return sum(done / total for done, total in self.runs.values()) / len(self.runs)

    def update(self, label, iters):
        total = self.runs[label][1]
        self.runs[label] = (min(iters, total - 1), total)  # the last iteration is the evaluation's

    def finish(self, label):
        self.runs[label] = (self.runs[label][1], self.runs[label][1])

    def status(self):
        elapsed, f = time.time() - self.t0, self.fraction()
        rate = (f - self.start_fraction) / elapsed if elapsed > 0 else 0
        eta = fmt_time((1 - f) / rate) if rate > 0 else "?"
        done = sum(d == t for d, t in self.runs.values())
        return f"{100 * f:.0f}% ({done}/{len(self.runs)} runs done), elapsed {fmt_time(elapsed)}, ETA {eta}"

    def print(self, text, force_status=False):
        with self.lock:
            sys.stdout.write(text)
            if force_status or time.time() - self.last > self.every:
                sys.stdout.write(f"---- study: {self.status()}\n")
                self.last = time.time()
            sys.stdout.flush()


def stream(cmd, env, log_path, prefix, progress, label):
    """Run cmd, copying its output to log_path and to the console line by line; raises if it fails."""
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                       env=env) as proc:
        for raw in proc.stdout:
            # A progress bar redraws its line with \r: keep what a terminal would end up showing.
            line = raw.rstrip(b"\r\n").rsplit(b"\r", 1)[-1].decode(errors="replace") + "\n"
            log.write(line)
            m = re.match(r"iter (\d+):", line)
            if m:
                progress.update(label, int(m.group(1)))
            progress.print(prefix + line)
    if proc.returncode:
        raise RuntimeError(f"{label}: `{shlex.join(cmd)}` exited with {proc.returncode} (log: {log_path})")


def run_all(jobs, train_argv, args, device, progress):
    """Train and evaluate every run of jobs ({label: (run_dir, steps)}) on the worker pool;
    returns the labels of the runs that failed."""
    envs = worker_envs(device, args.jobs, len(jobs))
    free = list(range(len(envs)))
    free_lock = threading.Lock()
    failed = []

    def work(k, label):
        run_dir, steps = jobs[label]
        with free_lock:
            slot = free.pop()
        env = {**os.environ, **envs[slot], "PYTHONUNBUFFERED": "1"}
        where = ", ".join(f"{key}={value}" for key, value in envs[slot].items()) or device
        prefix = f"[{label} {k}/{len(jobs)}] "
        t0 = time.time()
        progress.print(f"{prefix}start ({where}): {', '.join(steps)}\n", force_status=True)
        try:
            if "train" in steps:
                stream([sys.executable, "train.py", *train_argv(label)], env, run_dir / "train.log", prefix,
                       progress, label)
            eval_device = "cuda" if device.startswith("cuda") else device  # the worker's one visible GPU
            stream([sys.executable, "-m", "analysis.study", "--evaluate", str(run_dir), "--eval_device", eval_device,
                    *[f"--{a}={getattr(args, a)}" for a in QUANT_ARGS]], env, run_dir / "eval.log", prefix,
                   progress, label)
            progress.finish(label)
            progress.print(f"{prefix}finished in {fmt_time(time.time() - t0)}\n", force_status=True)
        except RuntimeError as e:
            failed.append(label)
            progress.print(f"{prefix}FAILED: {e}\n", force_status=True)
        finally:
            with free_lock:
                free.append(slot)

    with ThreadPoolExecutor(len(envs)) as pool:
        list(pool.map(work, range(1, len(jobs) + 1), jobs))
    return failed


# ---- the study report -------------------------------------------------------------------------------------

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
    (f"ΔPPL {name.replace('_', ' ')}", f"delta_ppl_{name}") for name in quantize.VARIANTS]
LAYER_GROUPS = report.KURTOSIS + ("act_absmax", "attn_sink")
ALPHA = 0.05


def load_study_runs(run_dirs):
    """report.load_runs(), with the model_stats the study computed (log_stats=False) as the last eval's."""
    runs = report.load_runs(run_dirs)
    for run in runs:
        if run["eval"] and not has_stats(run["eval"][-1]):
            run["eval"][-1].update(run["eval_json"].get("stats", {}))
    return runs


def group_by_norm(runs, norms):
    """{attn_norm: [(run, row)]} in the order of norms; row: report.summary() merged with eval.json."""
    by_norm = {n: [] for n in norms}
    for run in runs:
        by_norm[run["config"]["attn_norm"]].append((run, {**report.summary(run), **run["eval_json"]}))
    return {n: rows for n, rows in by_norm.items() if rows}


def values(rows, key):
    return np.array([row.get(key, math.nan) for _, row in rows], dtype=float)


def mean_std(x):
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def table(by_norm, metrics):
    head = ["attn_norm", "seeds"] + [h for h, _ in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for norm, rows in by_norm.items():
        cells = [norm, str(len(rows))]
        for _, key in metrics:
            m, s = mean_std(values(rows, key))
            cells.append(f"{report._fmt(m, 4)} ± {report._fmt(s, 2)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def welch(a, b):
    """Welch's t-test p-value (scipy), NaN when it is undefined (a single seed, or no variance at all)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def noise_section(by_norm, metrics):
    """Each attn_norm against the first (the baseline) on each metric: difference of means, Welch p-value, and a
    plain list of what is within seed noise."""
    base, others = list(by_norm)[0], list(by_norm)[1:]
    if not others:
        return "Only one attn_norm: nothing to compare."
    lines = [f"Each attn_norm against **{base}**: difference of the means over seeds and the p-value of Welch's "
             f"t-test (`scipy.stats.ttest_ind(equal_var=False)`, n = seeds per attn_norm). **Bold**: p < {ALPHA}, a "
             f"difference beyond seed noise. With 2-3 seeds the test only detects differences several times the "
             f"seed-to-seed spread, and with {len(metrics)} metrics × {len(others)} comparisons about "
             f"{ALPHA * len(metrics) * len(others):.1f} false positives are expected at p < {ALPHA} by chance.", "",
             "| metric | " + " | ".join(others) + " |", "|" + "---|" * (len(others) + 1)]
    within = {n: [] for n in others}
    for heading, key in metrics:
        cells = []
        for norm in others:
            a, b = values(by_norm[norm], key), values(by_norm[base], key)
            diff, p = float(np.mean(a) - np.mean(b)), welch(a, b)
            cell = f"{diff:+.3g} (p = {p:.2g})" if math.isfinite(p) else f"{diff:+.3g} (p: n/a)"
            if p < ALPHA:
                cell = f"**{cell}**"
            else:
                within[norm].append(heading)
            cells.append(cell)
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    lines.append("")
    for norm, headings in within.items():
        if headings:
            lines.append(f"- **{norm}** vs {base}: within seed noise (p ≥ {ALPHA} or untestable) on "
                         f"{', '.join(headings)}.")
    return "\n".join(lines)


def fig_bars(by_norm, metrics, title):
    """A panel per metric: a bar per attn_norm at the mean over seeds, ± std as error bar, a dot per seed."""
    ncols = min(4, len(metrics))
    fig, axes = report._figure([], math.ceil(len(metrics) / ncols), ncols, 2.6, 2.2, title)  # no legend: x labels
    for ax, (heading, key) in zip(axes.flat, metrics):
        for x, (norm, rows) in enumerate(by_norm.items()):
            v = values(rows, key)
            m, s = mean_std(v)
            color = report.NORM_COLORS.get(norm)
            ax.bar(x, m, yerr=0 if math.isnan(s) else s, color=color, alpha=0.6, capsize=4)
            ax.plot(np.full(len(v), x), v, "o", color="k", ms=3)
        ax.set_xticks(range(len(by_norm)), list(by_norm), fontsize=8, rotation=30)
        ax.set_title(heading.replace("\\", ""), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    return fig


def fig_layers(by_norm, group):
    """group at the last eval against the layer, a panel per activation point or matrix: mean over seeds per
    attn_norm, the band ± std."""
    runs = [run for rows in by_norm.values() for run, _ in rows]
    parts, _ = report._layout(runs, group)  # the embeddings (wte, wpe) have no layer axis: left out here
    ncols = min(3, len(parts))
    fig, axes = report._figure(list(by_norm), math.ceil(len(parts) / ncols), ncols, 3.0, 2.3,
                               f"Per layer, mean ± std over seeds: {report.DESCRIPTIONS[group]}")
    for ax, (part, by_layer) in zip(axes.flat, parts.items()):
        layers = sorted(by_layer)
        for norm, rows in by_norm.items():
            v = np.array([[report.final(run, f"{group}/{by_layer[i]}") for i in layers] for run, _ in rows])
            m, s = v.mean(0), v.std(0, ddof=1) if len(v) > 1 else np.zeros(len(layers))
            ax.plot(layers, m, marker="o", ms=3, color=report.NORM_COLORS.get(norm), label=norm)
            ax.fill_between(layers, m - s, m + s, color=report.NORM_COLORS.get(norm), alpha=0.2)
        report._scale(ax, [y for line in ax.lines for y in line.get_ydata()])
        ax.set(title=part or report.SHORT[group], xticks=layers, xlabel="layer")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(parts):]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=len(by_norm), frameon=False)
    return fig


def device_description(device):
    if device.startswith("cuda"):
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return f"CPU {models[0] if models else platform.processor()}, {len(os.sched_getaffinity(0))} cores, no GPU used"


def write_study_report(study_dir, run_dirs, norms, header):
    """study_dir/report.md with its PNGs, and per_run/report.md (analysis.report) for the runs one by one."""
    runs = load_study_runs(run_dirs)
    by_norm = group_by_norm(runs, norms)
    cfg = runs[0]["config"]
    seeds = sorted({run["config"]["seed"] for run in runs})
    ev = runs[0]["eval_json"]
    batch = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    lines = [f"# attnorm study: {study_dir.name}", "", *header, "",
             f"{len(runs)} runs: attn_norm ∈ {{{', '.join(by_norm)}}} × seed ∈ {{{', '.join(map(str, seeds))}}}; "
             f"{cfg['dataset']}, {cfg['n_layer']} layers × {cfg['n_embd']} wide, {cfg['n_head']} heads, block "
             f"{cfg['block_size']}, batch {batch}, {cfg['max_iters']} iterations "
             f"({cfg['max_iters'] * batch * cfg['block_size']:,} tokens) per run. Runs: "
             f"`{study_dir}/runs/<attn_norm>-s<seed>/`.", "",
             "## Mean ± std over seeds", "",
             "At the end of training (std: sample std over seeds). *val PPL*: exact, over the whole val split "
             "(`analysis.perplexity`). Kurtosis (three definitions, see `analysis/stats.py`) and *sink* (mean "
             "attention weight on token 0): mean over layers and activation points/matrices; *max |act|*: the "
             "largest over all of them; on train.py's probe batch.", "", table(by_norm, MODEL_METRICS), "",
             f"Post-training quantization (`analysis.quantize`): PPL over the first {ev['quant_tokens']:,} val "
             f"tokens, fp and the PPL lost (ΔPPL = PPL quantized − PPL fp) to int8 weights per tensor or per channel "
             f"with int8 activations calibrated by min-max or the {ev['quant_percentile']}th percentile on "
             f"{ev['quant_calib_batches']} training batches (W8A8), int8 weights alone (W8) and int4 weights alone "
             f"(W4), both per channel. Every nn.Linear is quantized, lm_head included; lm_head is tied to wte, so the "
             f"embedding reads the quantized matrix too.", "", table(by_norm, QUANT_METRICS), "",
             "## Which differences exceed seed noise", "", noise_section(by_norm, MODEL_METRICS + QUANT_METRICS), "",
             "## Plots", ""]
    figures = [("bars_model.png", fig_bars(by_norm, MODEL_METRICS, "Mean ± std over seeds (dots: seeds)")),
               ("bars_quantization.png", fig_bars(by_norm, QUANT_METRICS, "Quantization: PPL fp and PPL lost"))]
    figures += [(f"layers_{group}.png", fig_layers(by_norm, group)) for group in LAYER_GROUPS]
    for filename, fig in figures:
        fig.savefig(study_dir / filename, dpi=80)
        lines += [f"![{filename}]({filename})", ""]
    per_run = report.write_report([run["dir"] for run in runs], study_dir / "per_run")
    lines += ["## Each run", "", f"Loss curves, statistics over training and a row per run: "
              f"[per_run/report.md]({per_run.relative_to(study_dir)}).", ""]
    path = study_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---- main ---------------------------------------------------------------------------------------------------


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False,  # --seed=1 is train.py's key, not short for --seeds
                                usage="%(prog)s CONFIG [--norms A,B] [--seeds 0,1] [--name NAME] [--key=value ...]")
    p.add_argument("config", nargs="?", help="a train.py config file, e.g. config/study_cpu.py")
    p.add_argument("--norms", default="softmax,softmax1,symax,diff", help="comma-separated attn_norms")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--name", help="study/<name>/ (default: the config file's name)")
    p.add_argument("--study_root", default="study", help="where studies live (default: study)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per GPU, or one per CPU core)")
    p.add_argument("--max_tokens", type=int, default=32768, help="val tokens scored per quantized variant")
    p.add_argument("--calib_batches", type=int, default=8, help="training batches to calibrate activations on")
    p.add_argument("--evaluate", metavar="RUN_DIR", help="(used by the study) evaluate one trained run")
    p.add_argument("--eval_device", default="cpu", help="with --evaluate: the device to evaluate on")
    args, overrides = p.parse_known_args(argv)
    if args.evaluate:
        return evaluate_run(args.evaluate, args.eval_device, args.max_tokens, args.calib_batches)
    if not args.config:
        p.error("a config file is required, e.g. config/study_cpu.py")
    bad = [o for o in overrides if not re.fullmatch(r"--\w+=.*", o) or o[2:].split("=")[0] in STUDY_KEYS]
    if bad:
        p.error(f"{' '.join(bad)}: train.py settings are given as --key=value; attn_norm, seed and out_dir are "
                f"set by the study (--norms, --seeds, --name)")
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be >= 1")

    import prepare_data
    from train import ConfigError, load_config
    t0 = time.time()
    norms, seeds = args.norms.split(","), [int(s) for s in args.seeds.split(",")]
    study_dir = Path(args.study_root) / (args.name or Path(args.config).stem)
    run_dirs = {f"{n}-s{s}": study_dir / "runs" / f"{n}-s{s}" for s in seeds for n in norms}

    def train_argv(label):
        norm, seed = label.rsplit("-s", 1)
        return [args.config, *overrides, f"--attn_norm={norm}", f"--seed={seed}", f"--out_dir={run_dirs[label]}",
                "--always_save_checkpoint=True"]

    try:
        configs = {label: load_config(train_argv(label)) for label in run_dirs}
        for cfg in configs.values():
            cfg.validate()
    except ConfigError as e:
        sys.exit(f"error: {e}")
    cfg = next(iter(configs.values()))
    if not prepare_data.is_prepared(Path("data") / cfg.dataset):
        if cfg.dataset not in prepare_data.OFFLINE_DATASETS:
            sys.exit(f"error: dataset {cfg.dataset!r} is not prepared: run  python prepare_data.py {cfg.dataset}")
        prepare_data.prepare(cfg.dataset)

    jobs, iters = {}, {}
    for label, run_dir in run_dirs.items():
        run_dir.mkdir(parents=True, exist_ok=True)
        steps = pending_steps(run_dir, configs[label].max_iters)
        done = 0 if "train" in steps else configs[label].max_iters
        if "train" in steps and (run_dir / CKPT_NAME).exists():  # an interrupted run: counts from its checkpoint
            done = torch.load(run_dir / CKPT_NAME, map_location="cpu", weights_only=True, mmap=True)["iter_num"]
        iters[label] = (done, configs[label].max_iters)
        if steps:
            jobs[label] = (run_dir, steps)
        else:
            print(f"skip {label}: finished ({run_dir})")
    print(f"study {study_dir}: {len(run_dirs)} runs, {len(jobs)} to do, {len(run_dirs) - len(jobs)} finished")

    failed = []
    if jobs:
        progress = Progress({label: iters[label] for label in jobs})
        failed = run_all(jobs, train_argv, args, cfg.device, progress)
    finished = [run_dirs[label] for label in run_dirs if label not in failed]
    if finished:
        wall = time.time() - t0
        header = [f"- command: `./run_study.sh {shlex.join(argv)}`",
                  f"- device: {device_description(cfg.device)}",
                  f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                  f"- wall time: {fmt_time(wall)} for this invocation ({len(jobs) - len(failed)} runs trained or "
                  f"evaluated, {len(run_dirs) - len(jobs)} already finished; data preparation included, this report "
                  f"not)"]
        path = write_study_report(study_dir, finished, norms, header)
        print(f"\nreport: {path}\nplots:  {study_dir}/*.png and {study_dir}/per_run/*.png\n"
              f"total time {fmt_time(time.time() - t0)}")
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; see their train.log / eval.log")


if __name__ == "__main__":
    main()
