"""
How a study's runs are launched (analysis.study): what a run's job is (train.py, then the evaluation steps in one
process), and the local launcher: a pool of local workers, a GPU or a share of the CPU cores each, with the runs'
output on the console and a progress line. analysis.slurm launches the same jobs on a Slurm cluster.
"""

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.run_steps import pending_steps
from checkpoint import CKPT_NAME, checkpoint_iter
from train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
QUANT_ARGS = ("max_tokens", "calib_batches")  # the study's options its --evaluate step is given


def fmt_time(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def train_argv(cfg):
    """train.py's arguments for cfg: every setting that differs from TrainConfig's default."""
    defaults = dataclasses.asdict(TrainConfig())
    return [f"--{key}={value}" for key, value in dataclasses.asdict(cfg).items() if value != defaults[key]]


def worker_envs(device, jobs, n_runs):
    """One environment overlay per worker: a GPU each for cuda (round robin: jobs > GPUs puts several runs on
    one GPU), else a share of the CPU cores. Every worker also gets its share of the cores for OpenMP threads and
    torch.compile's compile workers: by default each process takes them all (15 runs on one 16-core GPU machine
    would start 15 × 16 of each)."""
    cores = len(os.sched_getaffinity(0))
    share = lambda n: {"OMP_NUM_THREADS": str(max(1, cores // n)),  # noqa: E731
                       "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, cores // n))}
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        n = max(1, min(jobs or len(gpus), n_runs))
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], **share(n)} for i in range(n)]
    if device != "cpu":  # mps: one device
        return [{}]
    jobs = max(1, min(jobs or cores, n_runs))
    return [share(jobs)] * jobs


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

    def timing(self):
        """The fraction done in percent, the time elapsed and the ETA at the rate since the start."""
        elapsed, f = time.time() - self.t0, self.fraction()
        rate = (f - self.start_fraction) / elapsed if elapsed > 0 else 0
        eta = fmt_time((1 - f) / rate) if rate > 0 else "?"
        return f"{100 * f:.0f}%", f"elapsed {fmt_time(elapsed)}, ETA {eta}"

    def status(self):
        percent, timing = self.timing()
        done = sum(d == t for d, t in self.runs.values())
        return f"{percent} ({done}/{len(self.runs)} runs done), {timing}"

    def print(self, text, force_status=False):
        with self.lock:
            sys.stdout.write(text)
            if force_status or time.time() - self.last > self.every:
                sys.stdout.write(f"---- study: {self.status()}\n")
                self.last = time.time()
            sys.stdout.flush()


def run_env(overlay=None):
    """A run's environment: this one with overlay, unbuffered output, and the code from the repository (the runs
    read data/ where the study runs: run_study.sh runs it in the repository)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **(overlay or {}), "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}


def train_command(job):
    return [sys.executable, str(REPO / "train.py"), *job.train_argv]


def evaluate_command(job, device, eval_args):
    """The run's evaluation steps in one process on device; eval_args: ["--max_tokens=...", ...] (QUANT_ARGS)."""
    return [sys.executable, "-m", "analysis.study", "--evaluate", str(job.dir), "--eval_device", device, *eval_args]


def stream(cmd, env, log_path, label, echo):
    """Run cmd, copying its output to log_path (after the command itself) and each line to echo; raises if it
    fails. Whatever stops this process while cmd runs (a signal's exception, Ctrl-C) stops cmd too."""
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                       env=env) as proc:
        log.write(f"$ {shlex.join(cmd)}\n")
        try:
            for raw in proc.stdout:
                # A progress bar redraws its line with \r: keep what a terminal would end up showing.
                line = raw.rstrip(b"\r\n").rsplit(b"\r", 1)[-1].decode(errors="replace") + "\n"
                log.write(line)
                echo(line)
        except BaseException:
            proc.kill()
            raise
    if proc.returncode:
        raise RuntimeError(f"{label}: `{shlex.join(cmd)}` exited with {proc.returncode} (log: {log_path})")


@dataclass
class Job:
    label: str
    dir: Path
    steps: list
    train_argv: list
    max_iters: int
    wandb_log: bool
    quant: dict  # the quantization settings asked for (quant_settings)

    def steps_left(self):
        """The steps still pending now (a job may start long after it was planned)."""
        return pending_steps(self.dir, self.max_iters, self.wandb_log, self.quant)


def quant_settings(args):
    """{setting: value} of QUANT_ARGS: what a run's quantization must have been done with to count as done."""
    return {a: getattr(args, a) for a in QUANT_ARGS}


def eval_args(args):
    return [f"--{a}={v}" for a, v in quant_settings(args).items()]


def run_all(jobs, args, device, progress):
    """Train and evaluate every Job on the worker pool; returns {label: its log} of the runs that failed."""
    envs = worker_envs(device, args.jobs, len(jobs))
    free = list(range(len(envs)))
    free_lock = threading.Lock()
    failed = {}

    def work(k, job):
        with free_lock:
            slot = free.pop()
        env = run_env(envs[slot])
        where = ", ".join(f"{key}={value}" for key, value in envs[slot].items()) or device
        prefix = f"[{job.label} {k}/{len(jobs)}] "

        def echo(line):
            m = re.match(r"iter (\d+):", line)
            if m:
                progress.update(job.label, int(m.group(1)))
            progress.print(prefix + line)

        t0 = time.time()
        progress.print(f"{prefix}start ({where}): {', '.join(job.steps)}\n", force_status=True)
        log = job.dir / "train.log"
        try:
            if "train" in job.steps:
                stream(train_command(job), env, log, job.label, echo)
            eval_device = "cuda" if device.startswith("cuda") else device  # the worker's one visible GPU
            log = job.dir / "eval.log"
            stream(evaluate_command(job, eval_device, eval_args(args)), env, log, job.label, echo)
            progress.finish(job.label)
            progress.print(f"{prefix}finished in {fmt_time(time.time() - t0)}\n", force_status=True)
        except RuntimeError as e:
            failed[job.label] = log
            progress.print(f"{prefix}FAILED: {e}\n", force_status=True)
        finally:
            with free_lock:
                free.append(slot)

    with ThreadPoolExecutor(len(envs)) as pool:
        list(pool.map(work, range(1, len(jobs) + 1), jobs))
    return failed


def pending_jobs(runs, configs, study_dir, quant):
    """A Job for each of the runs that is not finished, and {label: (iterations done, max_iters)} of those (an
    interrupted run counts from its checkpoint, an evaluation alone as its last iteration)."""
    jobs, iters = [], {}
    for run in runs:
        cfg, run_dir = configs[run], study_dir / "runs" / run.label
        run_dir.mkdir(parents=True, exist_ok=True)
        steps = pending_steps(run_dir, cfg.max_iters, cfg.wandb_log, quant)
        if not steps:
            print(f"skip {run.label}: finished ({run_dir})")
            continue
        started = "train" in steps and (run_dir / CKPT_NAME).exists()  # an interrupted run: counts from there
        done = (checkpoint_iter(run_dir) if started else 0) if "train" in steps else cfg.max_iters
        iters[run.label] = (done, cfg.max_iters)
        jobs.append(Job(run.label, run_dir, steps, train_argv(cfg), cfg.max_iters, cfg.wandb_log, quant))
    return jobs, iters


def execute(runs, configs, study_dir, args, title):
    """Train and evaluate the runs that are not finished on a pool of local workers; returns {label: its log} of
    those that failed."""
    jobs, iters = pending_jobs(runs, configs, study_dir, quant_settings(args))
    print(f"{title}study {study_dir}: {len(runs)} runs, {len(jobs)} to do, {len(runs) - len(jobs)} finished")
    if not jobs:
        return {}
    return run_all(jobs, args, configs[runs[0]].device, Progress(iters))
