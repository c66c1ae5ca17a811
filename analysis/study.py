"""
A multi-seed study: train every (variant, seed) pair, evaluate each run, and compare the variants.

    ./run_study.sh config/study_cpu.py [--norms softmax,symax] [--gates headwise,...] [--optimizers adamw,muon]
                   [--seeds 0,1,2] [--sweep key=a,b,c ...] [--name NAME] [--jobs N] [--rerun] [--key=value ...]
    python -m analysis.study CONFIG ...                                  (the same; run_study.sh only calls this)

What a study compares is a *variant*: an attn_norm with an output gate (attn_gate, normalizers/gates.py) and an
optimizer. --norms defaults to every registered normalizer (normalizers.NORMALIZERS), in the registry's order; the
first of them is the baseline. --gates (default: none) adds, per gate listed, the baseline with that gate; the other
variants keep the config's attn_gate ('none' unless it sets one). --optimizers (default: the config's optimizer) is
one more axis: every variant is trained with each optimizer listed. A variant's name is its attn_norm, then its gate
unless none and its optimizer unless adamw (analysis.variant_name, as in every report): softmax, softmax+headwise,
sink+muon, softmax+headwise+muon. --attn_gate=... thus gates every variant; --optimizer=... is
--optimizers with one (the two are refused together); neither attn_gate nor optimizer may be swept. --seeds defaults
to 0,1,2. A config file may set these for its study, with `study_norms`, `study_gates`, `study_optimizers`,
`study_seeds`, `study_sweep` and `study_jobs` (see STUDY_SETTINGS); the command line overrides them. Every other
assignment in it is a train.py setting.

Each run trains with `python train.py --key=value ...`, its settings resolved here (the config file, then the
overrides, then the variant's attn_norm, attn_gate and optimizer, seed, out_dir and the swept values) into
study/<name>/runs/<label>/ (name: the config file's stem; label: <variant>[-<key>=<value>...]-s<seed>); train.log
starts with the command. The study adds always_save_checkpoint=True, so that the checkpoint is the model at
max_iters (the runs are compared at equal steps) and a finished run can be told from an unfinished one. Then, in one
process per run: exact val perplexity (analysis.perplexity), model_stats on train.py's probe batch if the last eval
did not log them (log_stats=False), post-training quantization (analysis.quantize), and with wandb_log the run's
final numbers into its wandb summary. Finally study/<name>/report.md: mean ± std over seeds per variant, bar charts,
per-layer curves, each variant's difference to the baseline under the same optimizer (with two optimizers, two
baselines) and, with several optimizers, each variant's difference to itself under the first optimizer (the
optimizer's effect), with 95% confidence intervals and Holm-corrected p-values, and per_run/report.md
(analysis.report).

Sweeps: `--sweep learning_rate=1e-3,2e-3,4e-3` (any train.py setting but those a variant sets; several --sweep make a
grid). Stage 1 trains every (variant, grid point) on the first seed and picks, per variant, the point with the
lowest exact val loss; stage 2 trains the other seeds at each variant's point. The report shows the sweep table and
flags a choice at the edge of the grid.

Runs go to a pool of workers: --jobs per visible GPU's share (CUDA_VISIBLE_DEVICES set per run, round robin; default
one run per GPU) when the config's device is cuda, else --jobs CPU processes (default: one per core) sharing the
cores (OMP_NUM_THREADS = cores / jobs; for small models one thread per run beats many threads per run). With
wandb_log=True every run logs to the wandb group named after the study, tagged with its attn_norm, optimizer and
seed (by train.py), its attn_gate=<gate> unless none, and its swept values.

A re-run skips finished runs (checkpoint at max_iters, evaluation complete) and resumes interrupted ones (train.py's
init_from=auto), but only where the run was trained with the settings asked for now: a run directory whose
checkpoint holds other settings (but for UNCHECKED_KEYS) stops the study with an error before anything runs. Use a
new --name for new settings, or --rerun to delete those runs and train them again.
"""

import argparse
import copy
import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import to_rgb

import configurator
import normalizers
import runtime
from analysis import quantize, read_metrics, report, variant_name
from analysis.plots import LEGEND_COLUMNS, color, figure, fmt, in_registry_order, scale
from checkpoint import CKPT_NAME, CheckpointError, checkpoint_iter, load_checkpoint
from configurator import ConfigError
from normalizers.gates import GATES
from train import OPTIMIZERS, TrainConfig

# Set per run by the study, not by --key=value (wandb_tags may be given: the study adds its tags to them).
STUDY_KEYS = ("attn_norm", "seed", "out_dir", "wandb_run_name", "wandb_group")
# Set per variant, by the study setting named here: a sweep of them would contradict the variants' names. Unlike
# STUDY_KEYS, --key=value may set them, as the default for the whole study (see study_axes).
VARIANT_KEYS = {"attn_gate": "--gates", "optimizer": "--optimizers"}
# Settings that change neither what a run learns nor what the report shows of it: a run trained with other values
# of these still counts as trained with the settings asked for. (attn_impl picks between exact paths of the same
# function; train.py's resume ignores it too.) Every other setting must match, device and dtype included.
UNCHECKED_KEYS = {"out_dir", "compile", "attn_impl", "log_interval", "keep_checkpoints", "init_from",
                  "always_save_checkpoint", "max_nonfinite_steps", "wandb_log", "wandb_project", "wandb_run_name",
                  "wandb_group", "wandb_tags"}
# Study settings a config file may hold, with what the command line calls them.
STUDY_SETTINGS = {"study_norms": "--norms", "study_gates": "--gates", "study_optimizers": "--optimizers",
                  "study_seeds": "--seeds", "study_sweep": "--sweep", "study_jobs": "--jobs",
                  "study_max_tokens": "--max_tokens",
                  "study_settings": "(config file only)"}
REPO = Path(__file__).resolve().parents[1]
STEPS = ("train", "perplexity", "stats", "quantize", "wandb")
QUANT_ARGS = ("max_tokens", "calib_batches")
MAX_TOKENS = 32768  # val tokens scored per quantized variant, unless --max_tokens or study_max_tokens
WANDB_SUMMARY = ["val_ppl"] + [f"delta_ppl_{name}" for name in quantize.VARIANTS]


def fmt_time(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ---- the study's settings and its runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """What a study compares: an attn_norm with an output gate and an optimizer; name: analysis.variant_name()."""
    norm: str
    gate: str
    optimizer: str
    name: str
    settings: tuple = ()  # ((setting, value), ...): this variant's own values (study_settings), e.g. a tuned rate


def study_variants(norms, gates, optimizers, study_gate):
    """The study's variants, optimizer by optimizer: the norms in the registry's order with study_gate, the first of
    them (the baseline) followed by itself with each of gates."""
    norms = in_registry_order(dict.fromkeys(norms))
    pairs = [(norm, study_gate) for norm in norms]
    pairs[1:1] = [(norms[0], gate) for gate in gates]
    return [Variant(norm, gate, optimizer, variant_name(norm, gate, optimizer))
            for optimizer in optimizers for norm, gate in pairs]


@dataclass(frozen=True)
class Run:
    variant: Variant
    seed: int
    point: tuple = ()  # ((setting, value), ...): this run's values of the swept settings

    @property
    def label(self):
        return "-".join([self.variant.name, *(f"{key}={value}" for key, value in self.point), f"s{self.seed}"])


def point_name(point):
    return ", ".join(f"{key}={value}" for key, value in point)


def load_settings(config, overrides):
    """The config file's train.py settings with the --key=value overrides applied (a TrainConfig), and its study
    settings ({study_*: value})."""
    scope = configurator.exec_config_file(config)
    study = {key: scope.pop(key) for key in list(scope) if key.startswith("study_")}
    unknown = sorted(set(study) - set(STUDY_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown study setting {', '.join(unknown)} in {config}; valid: {', '.join(STUDY_SETTINGS)}")
    cfg = TrainConfig()
    for key, value in scope.items():
        configurator.set_key(cfg, key, value, config)
    for override in overrides:
        key, _, value = override[2:].partition("=")
        configurator.set_key(cfg, key, value, "the command line")
    return cfg, study


def typed(cfg, key, value, source):
    """value as the setting's type (a command-line string parsed), type-checked like any setting."""
    scratch = copy.copy(cfg)
    configurator.set_key(scratch, key, value, source)
    return getattr(scratch, key)


def listed(text, study, key, default):
    """A study axis: the comma-separated command-line value, else the config file's study setting, else default."""
    return text.split(",") if text else list(study.get(key, default))


def study_axes(args, study, cfg, overrides):
    """(variants, seeds, grid points) from the command line, else the config file's study settings, else defaults.
    The variants' gate and first optimizer default to cfg's, so --attn_gate=... gates every variant; --optimizer=...
    and --optimizers would contradict each other and are refused together."""
    given = {o[2:].partition("=")[0] for o in overrides}
    norms = listed(args.norms, study, "study_norms", normalizers.NORMALIZERS)
    for norm in norms:
        if norm not in normalizers.NORMALIZERS:
            raise ConfigError(f"unknown attn_norm {norm!r} in --norms; registered: {', '.join(normalizers.NORMALIZERS)}")
    gates = list(dict.fromkeys(listed(args.gates, study, "study_gates", [])))
    for gate in gates:
        if gate not in GATES:
            raise ConfigError(f"unknown attn_gate {gate!r} in --gates; registered: {', '.join(GATES)}")
        if gate == cfg.attn_gate:
            raise ConfigError(f"--gates {gate}: every variant already has attn_gate={gate}; list only other gates")
    if "optimizer" in given and (args.optimizers or "study_optimizers" in study):
        raise ConfigError("optimizer is both set (--optimizer=...) and studied (--optimizers or study_optimizers): "
                          "give one of them, e.g. --optimizers muon")
    optimizers = list(dict.fromkeys(listed(args.optimizers, study, "study_optimizers", [cfg.optimizer])))
    try:
        seeds = [int(s) for s in listed(args.seeds, study, "study_seeds", [0, 1, 2])]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if args.sweep:
        sweep, source = {}, "the command line"
        for text in args.sweep:
            key, sep, values = text.partition("=")
            if not sep or not values:
                raise ConfigError(f"--sweep {text}: write --sweep key=a,b,c")
            sweep[key] = values.split(",")
    else:
        sweep, source = study.get("study_sweep", {}), args.config
    for key, values in sweep.items():
        if key in STUDY_KEYS:
            raise ConfigError(f"--sweep {key}: {key} is set by the study (--norms, --seeds, --name)")
        if key in VARIANT_KEYS:
            raise ConfigError(f"--sweep {key}: {key} is set per variant: list its values in {VARIANT_KEYS[key]}")
        if key in given:
            raise ConfigError(f"{key} is both set (--{key}=...) and swept (--sweep {key}=...): give one of them")
        sweep[key] = list(dict.fromkeys(typed(cfg, key, value, source) for value in values))
    points = [tuple(zip(sweep, values)) for values in itertools.product(*sweep.values())]
    variants = study_variants(norms, gates, optimizers, cfg.attn_gate)
    overridden = given | (set(sweep) if args.sweep else set())
    return with_own_settings(variants, study.get("study_settings", {}), cfg, overridden,
                             set() if args.sweep else set(sweep), args.config), seeds, points


def with_own_settings(variants, own, cfg, overridden, swept, source):
    """The variants with their own settings from study_settings = {variant name: {setting: value}}: what a sweep
    chose for each (a quick study keeps its full study's tuned learning rates this way). Names of variants this
    study does not train (--norms picked others) are passed over; a setting given on the command line (--key=...
    or --sweep key=...) overrides every variant's own; one swept in the same config file contradicts it."""
    if not isinstance(own, dict) or not all(isinstance(settings, dict) for settings in own.values()):
        raise ConfigError(f"study_settings in {source} must be a dict {{variant name: {{setting: value}}}}")
    for name in own:
        norm, *rest = name.split("+")
        if norm not in normalizers.NORMALIZERS or any(part not in (*GATES, *OPTIMIZERS) for part in rest):
            raise ConfigError(f"study_settings names {name!r}, not a variant: write <attn_norm>[+<attn_gate>]"
                              f"[+<optimizer>], e.g. softmax+headwise+muon")
    typed_own = {}
    for name, settings in own.items():
        for key, value in settings.items():
            if key in STUDY_KEYS or key in VARIANT_KEYS:
                raise ConfigError(f"study_settings[{name!r}] sets {key}, which the study sets itself")
            if key in swept:
                raise ConfigError(f"{key} is both swept (study_sweep) and set per variant (study_settings) in "
                                  f"{source}: give one of them")
            if key not in overridden:
                typed_own.setdefault(name, []).append((key, typed(cfg, key, value, source)))
    return [dataclasses.replace(v, settings=tuple(typed_own.get(v.name, ()))) for v in variants]


def run_config(cfg, run, run_dir):
    """The TrainConfig of one run: the study's settings with the run's own. In wandb, the runs of a study share a
    group named after it; train.py tags each with its attn_norm, optimizer and seed, the study adds its gate (unless
    none) and its swept values."""
    cfg = copy.copy(cfg)
    variant = run.variant
    gate_tag = [f"attn_gate={variant.gate}"] if variant.gate != "none" else []
    tags = ",".join(filter(None, [cfg.wandb_tags, *gate_tag, *(f"{key}={value}" for key, value in run.point)]))
    settings = {"attn_norm": variant.norm, "attn_gate": variant.gate, "optimizer": variant.optimizer,
                "seed": run.seed, "out_dir": str(run_dir), "always_save_checkpoint": True,
                "wandb_run_name": run.label, "wandb_group": run_dir.parents[1].name, "wandb_tags": tags,
                **dict(variant.settings), **dict(run.point)}  # both typed by study_axes
    for key, value in settings.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


def train_argv(cfg):
    """train.py's arguments for cfg: every setting that differs from TrainConfig's default."""
    defaults = dataclasses.asdict(TrainConfig())
    return [f"--{key}={value}" for key, value in dataclasses.asdict(cfg).items() if value != defaults[key]]


def changed_settings(run_dir, cfg):
    """{setting: (value the run in run_dir was trained with, value asked for)} for every setting that differs,
    but for UNCHECKED_KEYS; {} for a run without a checkpoint. A setting the checkpoint does not hold (one added to
    TrainConfig after the run was trained) counts as its default."""
    if not (run_dir / CKPT_NAME).exists():
        return {}
    saved, defaults = load_checkpoint(run_dir)["config"], dataclasses.asdict(TrainConfig())
    return {key: (saved.get(key, defaults[key]), value) for key, value in dataclasses.asdict(cfg).items()
            if key not in UNCHECKED_KEYS and saved.get(key, defaults[key]) != value}


def stale_message(stale, study_dir):
    """One line: which runs were trained with which other settings, and the two ways on."""
    settings = {}
    for changed in stale.values():
        settings.update(changed)
    labels = [run.label for run in stale]
    which = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
    what = ", ".join(f"{key}={there!r} there, {now!r} now" for key, (there, now) in settings.items())
    return (f"{len(labels)} run(s) in {study_dir}/runs ({which}) were trained with other settings than asked for "
            f"({what}): give these settings a new --name, or add --rerun to delete those runs and train them again")


# ---- one run: what is left to do, and doing the evaluation steps ----------------------------------------


def read_json(path):
    return json.loads(path.read_text()) if path.exists() else {}


def has_stats(record):
    return any(key.startswith("act_kurtosis_tensor/") for key in record)


def pending_steps(run_dir, max_iters, wandb_log):
    """The steps of STEPS a run still needs; [] when it is finished."""
    if not (run_dir / CKPT_NAME).exists() or checkpoint_iter(run_dir) != max_iters:
        return [step for step in STEPS if step != "wandb" or wandb_log]
    ev, evals = read_json(run_dir / "eval.json"), read_metrics(run_dir)["eval"]
    steps = []
    if ev.get("iter") != max_iters or "val_ppl" not in ev:
        steps.append("perplexity")
    if not (evals and evals[-1]["iter"] == max_iters and has_stats(evals[-1])) and not ev.get("stats"):
        steps.append("stats")
    if ev.get("quant_iter") != max_iters or any(key not in ev for key in quantize.EVAL_KEYS):
        steps.append("quantize")
    if wandb_log and ev.get("wandb_summary_iter") != max_iters:
        steps.append("wandb")
    return steps


def write_wandb_summary(run_dir, iters):
    """The run's final numbers (WANDB_SUMMARY from eval.json) into the summary of the wandb run train.py logged, so
    that the project's run table compares a study. The run's id is read from the run file train.py wrote."""
    import wandb
    from analysis.perplexity import update_json

    files = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))
    if not files:
        raise SystemExit(f"error: {run_dir} has no wandb run files although it was trained with wandb_log=True")
    run_id = files[-1].stem.removeprefix("run-")
    config, ev = read_metrics(run_dir)["config"], read_json(run_dir / "eval.json")
    run = wandb.init(project=config["wandb_project"], id=run_id, resume="allow", dir=str(run_dir),
                     name=config["wandb_run_name"] or None, group=config.get("wandb_group") or None)
    run.summary.update({key: ev[key] for key in WANDB_SUMMARY})
    run.finish()
    update_json(run_dir / "eval.json", {"wandb_summary_iter": iters})
    print(f"val PPL and quantization ΔPPL of {run_dir} written to the summary of wandb run {run_id}")


def evaluate_run(run_dir, device, max_tokens, calib_batches):
    """The evaluation steps a trained run still needs, in this process (`--evaluate RUN_DIR`)."""
    from analysis import perplexity
    from analysis.perplexity import update_json
    from analysis.stats import model_stats, probe_batch
    from checkpoint import load_model
    from prepare_data import load_meta

    run_dir = Path(run_dir)
    iters = checkpoint_iter(run_dir)
    steps = pending_steps(run_dir, iters, read_metrics(run_dir)["config"].get("wandb_log", False))
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
    if "wandb" in steps:
        write_wandb_summary(run_dir, iters)


# ---- the pool of workers, and progress --------------------------------------------------------------------


def worker_envs(device, jobs, n_runs):
    """One environment overlay per worker: a GPU each for cuda (round robin: jobs > GPUs puts several runs on
    one GPU), else a share of the CPU cores."""
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(max(1, min(jobs or len(gpus), n_runs)))]
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
    """Run cmd, copying its output to log_path (after the command itself) and to the console line by line;
    raises if it fails."""
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                       env=env) as proc:
        log.write(f"$ {shlex.join(cmd)}\n")
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


@dataclass
class Job:
    label: str
    dir: Path
    steps: list
    train_argv: list


def run_all(jobs, args, device, progress):
    """Train and evaluate every Job on the worker pool; returns the labels of the runs that failed."""
    envs = worker_envs(device, args.jobs, len(jobs))
    free = list(range(len(envs)))
    free_lock = threading.Lock()
    failed = []

    def work(k, job):
        with free_lock:
            slot = free.pop()
        # The runs read data/ where the study runs (run_study.sh: the repository), the code from the repository.
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **envs[slot], "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
        where = ", ".join(f"{key}={value}" for key, value in envs[slot].items()) or device
        prefix = f"[{job.label} {k}/{len(jobs)}] "
        t0 = time.time()
        progress.print(f"{prefix}start ({where}): {', '.join(job.steps)}\n", force_status=True)
        try:
            if "train" in job.steps:
                stream([sys.executable, str(REPO / "train.py"), *job.train_argv], env, job.dir / "train.log", prefix, progress,
                       job.label)
            eval_device = "cuda" if device.startswith("cuda") else device  # the worker's one visible GPU
            stream([sys.executable, "-m", "analysis.study", "--evaluate", str(job.dir), "--eval_device", eval_device,
                    *[f"--{a}={getattr(args, a)}" for a in QUANT_ARGS]], env, job.dir / "eval.log", prefix,
                   progress, job.label)
            progress.finish(job.label)
            progress.print(f"{prefix}finished in {fmt_time(time.time() - t0)}\n", force_status=True)
        except RuntimeError as e:
            failed.append(job.label)
            progress.print(f"{prefix}FAILED: {e}\n", force_status=True)
        finally:
            with free_lock:
                free.append(slot)

    with ThreadPoolExecutor(len(envs)) as pool:
        list(pool.map(work, range(1, len(jobs) + 1), jobs))
    return failed


def execute(runs, configs, study_dir, args, title):
    """Train and evaluate the runs that are not finished; returns the labels of those that failed."""
    jobs, iters = [], {}
    for run in runs:
        cfg, run_dir = configs[run], study_dir / "runs" / run.label
        run_dir.mkdir(parents=True, exist_ok=True)
        steps = pending_steps(run_dir, cfg.max_iters, cfg.wandb_log)
        if not steps:
            print(f"skip {run.label}: finished ({run_dir})")
            continue
        started = "train" in steps and (run_dir / CKPT_NAME).exists()  # an interrupted run: counts from there
        done = (checkpoint_iter(run_dir) if started else 0) if "train" in steps else cfg.max_iters
        iters[run.label] = (done, cfg.max_iters)
        jobs.append(Job(run.label, run_dir, steps, train_argv(cfg)))
    print(f"{title}study {study_dir}: {len(runs)} runs, {len(jobs)} to do, {len(runs) - len(jobs)} finished")
    if not jobs:
        return []
    return run_all(jobs, args, configs[runs[0]].device, Progress(iters))


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


def rows_by_variant(run_dirs):
    """{variant: [(run, row)]} from {variant: [its runs' directories]}, the variants without runs left out; row:
    report.summary() merged with eval.json."""
    runs = {run["dir"]: run for run in load_study_runs([d for dirs in run_dirs.values() for d in dirs])}
    return {variant: [(runs[d], {**report.summary(runs[d]), **runs[d]["eval_json"]}) for d in dirs]
            for variant, dirs in run_dirs.items() if dirs}


def values(rows, key):
    return np.array([row.get(key, math.nan) for _, row in rows], dtype=float)


def mean_std(x):
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def table(by_variant, metrics):
    head = ["variant", "seeds"] + [h for h, _ in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, rows in by_variant.items():
        cells = [variant.name, str(len(rows))]
        for _, key in metrics:
            m, s = mean_std(values(rows, key))
            cells.append(f"{fmt(m, 4)} ± {fmt(s, 2)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def welch(a, b, level=0.95):
    """mean(a) − mean(b), its confidence interval (Welch–Satterthwaite t interval) and Welch's t-test p-value;
    the interval and p-value are NaN where undefined (a single seed, or no variance at all)."""
    from scipy import stats as scipy_stats  # here: its second of import time would slow every run's --evaluate

    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scipy_stats.ttest_ind(a, b, equal_var=False)
        ci = result.confidence_interval(level)
    return diff, float(ci.low), float(ci.high), float(result.pvalue)


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values, in the given order: the k-th smallest of m becomes
    max over j ≤ k of min(1, (m − j + 1)·p_(j)). NaN (untestable) entries stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    testable = np.flatnonzero(np.isfinite(p))
    adjusted, running = np.full(len(p), math.nan), 0.0
    for rank, i in enumerate(testable[np.argsort(p[testable], kind="stable")]):
        running = max(running, min(1.0, (len(testable) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def comparisons(variants):
    """The study's two sets of (variant, reference) pairs. Against the baseline: every variant against the first
    one's attn_norm and gate under the same optimizer. The optimizer's effect: every variant under a later
    optimizer against itself under the first ([] with one optimizer)."""
    by_settings = {(v.norm, v.gate, v.optimizer): v for v in variants}
    first = variants[0]
    against_baseline = [(v, by_settings[first.norm, first.gate, v.optimizer]) for v in variants
                        if (v.norm, v.gate) != (first.norm, first.gate)]
    optimizer_effect = [(v, by_settings[v.norm, v.gate, first.optimizer]) for v in variants
                        if v.optimizer != first.optimizer]
    return against_baseline, optimizer_effect


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


def style(variant, optimizers):
    """Its normalizer's colour (plots.color), lighter for each optimizer after the first, and its gate's hatch and
    dash."""
    rgb = np.array(to_rgb(color(variant.norm)))
    lighter = optimizers.index(variant.optimizer) / len(optimizers)
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


def write_study_report(study_dir, variants, run_dirs, header, sweep=None):
    """study_dir/report.md with its PNGs, and per_run/report.md (analysis.report) for the runs one by one.
    variants: the study's, in order (the first is the baseline); run_dirs: {variant: [its finished runs]}."""
    by_variant = rows_by_variant(run_dirs)
    runs = [run for rows in by_variant.values() for run, _ in rows]
    first, optimizers = variants[0], list(dict.fromkeys(v.optimizer for v in variants))
    styles = {variant: style(variant, optimizers) for variant in variants}
    against_baseline, optimizer_effect = comparisons(variants)
    cfg = runs[0]["config"]
    seeds = sorted({run["config"]["seed"] for run in runs})
    ev = runs[0]["eval_json"]
    batch = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    names = ("" if all(v.name == v.norm for v in by_variant) else
             f" A variant's name is its attn_norm, then its attn_gate and optimizer where they differ from "
             f"attn_gate={first.gate} and optimizer={first.optimizer}.")
    lines = [f"# attnorm study: {study_dir.name}", "", *header, *settings_lines([run["config"] for run in runs]), "",
             f"{len(runs)} runs: variant ∈ {{{', '.join(v.name for v in by_variant)}}} × seed ∈ "
             f"{{{', '.join(map(str, seeds))}}}; {cfg['dataset']}, {cfg['n_layer']} layers × {cfg['n_embd']} wide, "
             f"{cfg['n_head']} heads, block {cfg['block_size']}, batch {batch}, {cfg['max_iters']} iterations "
             f"({cfg['max_iters'] * batch * cfg['block_size']:,} tokens) per run. Runs: "
             f"`{study_dir}/runs/<variant>-s<seed>/`.{names}", ""]
    if sweep:
        lines += ["## Sweep", "", sweep_section(sweep), ""]
    metrics = MODEL_METRICS + QUANT_METRICS
    baselines = ", ".join(f"**{v.name}** under {v.optimizer}" for v in variants
                          if (v.norm, v.gate) == (first.norm, first.gate))
    lines += ["## Mean ± std over seeds", "",
              "At the end of training (std: sample std over seeds). *val PPL*: exact, over the whole val split "
              "(`analysis.perplexity`). Kurtosis (three definitions, see `analysis/stats.py`) and *sink* (mean "
              "attention weight on token 0): mean over layers and activation points/matrices; *max |act|*: the "
              "largest over all of them; on train.py's probe batch.", "", table(by_variant, MODEL_METRICS), "",
              f"Post-training quantization (`analysis.quantize`): PPL over the first {ev['quant_tokens']:,} val "
              f"tokens, fp and the PPL lost (ΔPPL = PPL quantized − PPL fp) to int8 weights per tensor or per "
              f"channel with int8 activations calibrated by min-max or the {ev['quant_percentile']}th percentile on "
              f"{ev['quant_calib_batches']} training batches (W8A8), int8 weights alone (W8) and int4 weights alone "
              f"(W4), both per channel. Every nn.Linear is quantized, lm_head included; lm_head is tied to wte, so "
              f"the embedding reads the quantized matrix too.", "", table(by_variant, QUANT_METRICS), "",
              "## Which differences exceed seed noise", "",
              noise_section(by_variant, metrics, against_baseline,
                            f"Each variant against the baseline with the same optimizer ({baselines}: the first "
                            f"registered normalizer in the study, with attn_gate={first.gate})."), ""]
    if optimizer_effect:
        lines += ["## The optimizer's effect", "",
                  noise_section(by_variant, metrics, optimizer_effect,
                                f"The optimizer as a control: each variant under {', '.join(optimizers[1:])} against "
                                f"itself under {first.optimizer}."), ""]
    lines += ["## Plots", ""]
    figures = [("bars_model.png", fig_bars(by_variant, styles, MODEL_METRICS, "Mean ± std over seeds (dots: seeds)")),
               ("bars_quantization.png",
                fig_bars(by_variant, styles, QUANT_METRICS, "Quantization: PPL fp and PPL lost"))]
    for optimizer in optimizers:  # a figure per optimizer: every variant in one would be too many lines
        subset = {v: rows for v, rows in by_variant.items() if v.optimizer == optimizer}
        if not subset:
            continue
        suffix = "" if optimizer == first.optimizer else f"-{optimizer}"
        under = f" ({optimizer})" if len(optimizers) > 1 else ""
        figures += [(f"layers_{group}{suffix}.png", fig_layers(
            subset, styles, group, f"Per layer, mean ± std over seeds{under}: {report.DESCRIPTIONS[group]}"))
            for group in LAYER_GROUPS]
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
                                usage="%(prog)s CONFIG [--norms A,B] [--gates G,H] [--optimizers adamw,muon] "
                                      "[--seeds 0,1] [--sweep key=a,b] [--name NAME] [--rerun] [--key=value ...]")
    p.add_argument("config", nargs="?", help="a train.py config file, e.g. config/study_cpu.py")
    p.add_argument("--norms", help="comma-separated attn_norms (default: every registered normalizer)")
    p.add_argument("--gates", help="comma-separated attn_gates, each one more variant: the baseline (the first "
                                   "attn_norm) with that gate (default: none)")
    p.add_argument("--optimizers", help="comma-separated optimizers, each variant trained with each (default: the "
                                        "config's optimizer)")
    p.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--sweep", action="append", metavar="KEY=A,B,...",
                   help="a train.py setting to tune per variant on the first seed; repeat for a grid")
    p.add_argument("--name", help="study/<name>/ (default: the config file's name)")
    p.add_argument("--study_root", default="study", help="where studies live (default: study)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per GPU, or one per CPU core)")
    p.add_argument("--rerun", action="store_true", help="delete and retrain runs trained with other settings")
    p.add_argument("--max_tokens", type=int, help=f"val tokens scored per quantized variant (default: {MAX_TOKENS})")
    p.add_argument("--calib_batches", type=int, default=8, help="training batches to calibrate activations on")
    p.add_argument("--evaluate", metavar="RUN_DIR", help="(used by the study) evaluate one trained run")
    p.add_argument("--eval_device", default="cpu", help="with --evaluate: the device to evaluate on")
    args, overrides = p.parse_known_args(argv)
    if args.evaluate:
        return evaluate_run(args.evaluate, args.eval_device, args.max_tokens or MAX_TOKENS, args.calib_batches)
    if not args.config:
        p.error("a config file is required, e.g. config/study_cpu.py")
    bad = [o for o in overrides if not re.fullmatch(r"--\w+=.*", o) or o[2:].split("=")[0] in STUDY_KEYS]
    if bad:
        p.error(f"{' '.join(bad)}: train.py settings are given as --key=value; {', '.join(STUDY_KEYS)} are set by "
                f"the study (--norms, --seeds, --name)")

    import prepare_data
    t0 = time.time()
    study_dir = Path(args.study_root) / (args.name or Path(args.config).stem)
    try:
        base, study = load_settings(args.config, overrides)
        variants, seeds, points = study_axes(args, study, base, overrides)
        args.jobs = args.jobs if args.jobs is not None else study.get("study_jobs")
        args.max_tokens = args.max_tokens or study.get("study_max_tokens", MAX_TOKENS)
        if args.jobs is not None and args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        # Every run the study may train (stage 2 trains a subset of the grid's later seeds), checked up front.
        configs = {run: run_config(base, run, study_dir / "runs" / run.label)
                   for run in (Run(v, s, point) for v in variants for point in points for s in seeds)}
        stale = {run: changed for run, cfg in configs.items()
                 if (changed := changed_settings(study_dir / "runs" / run.label, cfg))}
    except (ConfigError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    if stale and not args.rerun:
        sys.exit(f"error: {stale_message(stale, study_dir)}")
    for run, changed in stale.items():
        shutil.rmtree(study_dir / "runs" / run.label)
        print(f"rerun {run.label}: deleted, it was trained with " +
              ", ".join(f"{key}={there!r}" for key, (there, _) in changed.items()))
    if not prepare_data.is_prepared(Path("data") / base.dataset):
        if base.dataset not in prepare_data.OFFLINE_DATASETS:
            sys.exit(f"error: dataset {base.dataset!r} is not prepared: run  python prepare_data.py {base.dataset}")
        try:
            prepare_data.prepare(base.dataset)
        except prepare_data.PREPARE_ERRORS as e:
            sys.exit(f"error: preparing data/{base.dataset} failed: {e}")

    sweep = None
    if len(points) == 1:  # nothing to choose: every run at once
        chosen = {variant: points[0] for variant in variants}
        failed = execute(list(configs), configs, study_dir, args, "")
    else:
        stage1 = [Run(v, seeds[0], point) for v in variants for point in points]
        failed = execute(stage1, configs, study_dir, args, "stage 1 (sweep): ")
        losses = {v: {point: math.nan if Run(v, seeds[0], point).label in failed else read_json(
            study_dir / "runs" / Run(v, seeds[0], point).label / "eval.json").get("val_loss", math.nan)
            for point in points} for v in variants}
        chosen = {v: min((p for p in points if math.isfinite(by_point[p])), key=by_point.get)
                  for v, by_point in losses.items() if any(map(math.isfinite, by_point.values()))}
        sweep = {"seed": seeds[0], "points": points, "losses": losses, "chosen": chosen}
        for variant, point in chosen.items():
            print(f"sweep: {variant.name} at {point_name(point)}")
        stage2 = [Run(v, s, point) for v, point in chosen.items() for s in seeds[1:]]
        failed += execute(stage2, configs, study_dir, args, "stage 2: ") if stage2 else []
    finished = {v: [study_dir / "runs" / run.label for run in (Run(v, s, chosen[v]) for s in seeds)
                    if run.label not in failed] for v in variants if v in chosen}
    if any(finished.values()):
        envs = worker_envs(base.device, args.jobs, len(configs))
        threads = f", OMP_NUM_THREADS={envs[0]['OMP_NUM_THREADS']} each" if "OMP_NUM_THREADS" in envs[0] else ""
        header = [f"- command: `./run_study.sh {shlex.join(argv)}`",
                  f"- device: {runtime.device_description(base.device)}; up to {len(envs)} runs at a time{threads}",
                  f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                  f"- wall time: {fmt_time(time.time() - t0)} for this invocation (runs already finished were "
                  f"skipped; data preparation included, this report not)"]
        own = [f"{v.name}: {point_name(v.settings)}" for v in variants if v.settings]
        header += [f"- each variant's own settings (study_settings in the config file): {'; '.join(own)}"] if own else []
        path = write_study_report(study_dir, variants, finished, header, sweep)
        print(f"\nreport: {path}\nplots:  {study_dir}/*.png and {study_dir}/per_run/*.png\n"
              f"total time {fmt_time(time.time() - t0)}")
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; see their train.log / eval.log")


if __name__ == "__main__":
    main()
