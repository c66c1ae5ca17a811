"""
The study's runs as Slurm jobs, through submitit (`./run_study.sh CONFIG --launcher slurm`).

Every pending (variant, seed) run is one job of an array (submitit's executor.batch()), with the resources
SETTINGS ask for: slurm_nodes × slurm_gpus_per_node processes, each a train.py started with the environment torchrun
would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: submitit.helpers.TorchDistributedEnvironment),
then the run's evaluation steps in the same job (rank 0). A job reads its run's state when it starts, so a job that
Slurm preempts or stops at its time limit is requeued by submitit (RunJob is Checkpointable) and resumes from the
run's checkpoint (train.py's init_from=auto).

The jobs' submitit files and logs go to study/<name>/slurm/, and the jobs to study/<name>/slurm/jobs.pkl: a later
run_study.sh with the same name waits for the jobs still queued or running instead of submitting their runs again,
collects what finished, and submits again the runs whose job ended before the run did (a failed, cancelled or
killed job; the run resumes from its checkpoint). With --no-wait the study returns once its jobs are submitted.
Everything a job reads or writes is on paths the study and every node must share: the repository (the code and
data/) and study/<name>/.
"""

import contextlib
import io
import os
import pickle
import shlex
import sys
import time

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from analysis import read_metrics
from analysis.launch import (Progress, eval_args, evaluate_command, pending_jobs, quant_settings, run_env, stream,
                             train_command)
from configurator import ConfigError

CLUSTER = "slurm"  # submitit's executor; the tests run the same jobs through its "local" one
# The study's Slurm settings: (type, default, what it is). --slurm_<name> on the command line, study_slurm_<name>
# in a config file; the command line wins.
SETTINGS = {
    "partition": (str, None, "the partition the jobs run in (default: the cluster's)"),
    "account": (str, None, "the account the jobs are charged to"),
    "qos": (str, None, "the jobs' quality of service"),
    "constraint": (str, None, "the node features a job needs, e.g. h100"),
    "time": (int, 240, "minutes a job may run; a run that needs longer is requeued and resumes from its checkpoint "
                       "(up to 3 times)"),
    "nodes": (int, 1, "nodes per run"),
    "gpus_per_node": (int, None, "GPUs per node per run, one train.py process each (default: 1 for device=cuda, "
                                 "else 0: one process)"),
    "cpus_per_task": (int, None, "CPU cores per train.py process (default: the cluster's)"),
    "sbatch": (str, "", "more sbatch flags, as sbatch takes them, e.g. '--mem=64G --exclusive'"),
}
POLL_S = 5.0  # how often the study looks at its jobs while it waits
INCOMPLETE = ("PENDING", "REQUEUED", "UNKNOWN", "CONFIGURING")  # not running yet (submitit's state names)


class JobsRunning(Exception):
    """Raised with --no-wait once the study's jobs are submitted: the runs go on without it."""


def settings(args, study, device):
    """The Slurm settings {name: value} from the command line (args.slurm_<name>), else the config file's
    study_slurm_<name>, else the default; checked."""
    values = {}
    for name, (kind, default, _) in SETTINGS.items():
        given = getattr(args, f"slurm_{name}")
        value = given if given is not None else study.get(f"study_slurm_{name}", default)
        if value is not None and type(value) is not kind:
            raise ConfigError(f"study_slurm_{name} must be a {kind.__name__}, got {value!r}")
        values[name] = value
    if values["gpus_per_node"] is None:
        values["gpus_per_node"] = 1 if device.startswith("cuda") else 0
    for name, least in (("time", 1), ("nodes", 1), ("gpus_per_node", 0), ("cpus_per_task", 1)):
        if values[name] is not None and values[name] < least:
            raise ConfigError(f"--slurm_{name} must be >= {least}, got {values[name]}")
    if device.startswith("cuda") and values["gpus_per_node"] == 0:
        raise ConfigError("device=cuda but --slurm_gpus_per_node=0: ask for at least one GPU per node, or train "
                          "on device=cpu")
    sbatch_flags(values["sbatch"])
    return values


def sbatch_flags(text):
    """'--mem=64G --exclusive' as {"mem": "64G", "exclusive": True} (submitit's additional_parameters)."""
    flags = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if not key.startswith("--") or len(key) < 3:
            raise ConfigError(f"--slurm_sbatch: {word!r} is not a long sbatch flag: write them as sbatch takes them, "
                              f"e.g. '--mem=64G --exclusive'")
        flags[key[2:]] = value if sep else True
    return flags


def world_size(slurm):
    return slurm["nodes"] * max(1, slurm["gpus_per_node"])


def executor(folder, slurm, name, jobs):
    """A submitit executor for the study's jobs: one task per GPU (or one on CPU) on each of the nodes; jobs: how
    many of an array may run at a time (None: as many as Slurm lets run)."""
    try:
        ex = submitit.AutoExecutor(folder, cluster=CLUSTER)
    except RuntimeError as e:  # submitit: no srun on this machine
        raise ConfigError(f"--launcher slurm: no Slurm here ({e}): run run_study.sh on a machine of the cluster, "
                          f"or use --launcher local") from None
    gpus = slurm["gpus_per_node"]
    ex.update_parameters(name=name, timeout_min=slurm["time"], nodes=slurm["nodes"], tasks_per_node=max(1, gpus),
                         gpus_per_node=gpus, cpus_per_task=slurm["cpus_per_task"],
                         slurm_partition=slurm["partition"], slurm_account=slurm["account"],
                         slurm_qos=slurm["qos"], slurm_constraint=slurm["constraint"],
                         slurm_additional_parameters=sbatch_flags(slurm["sbatch"]) or None,
                         slurm_array_parallelism=jobs)
    return ex


class RunJob(submitit.helpers.Checkpointable):
    """One run in a Slurm job: train.py on every task (with torchrun's environment when there are several), then
    the evaluation steps on rank 0. What is left is read when the job starts: a requeued job resumes."""

    def __init__(self, job, eval_device, eval_args):
        self.job, self.eval_device, self.eval_args = job, eval_device, eval_args

    def __call__(self):
        env = submitit.JobEnvironment()
        overlay = {}
        if env.num_tasks > 1:
            dist = submitit.helpers.TorchDistributedEnvironment()
            overlay = {"MASTER_ADDR": dist.master_addr, "MASTER_PORT": str(dist.master_port),
                       "RANK": str(dist.rank), "WORLD_SIZE": str(dist.world_size),
                       "LOCAL_RANK": str(dist.local_rank), "LOCAL_WORLD_SIZE": str(dist.local_world_size)}
        job, rank = self.job, env.global_rank
        steps = job.steps_left()
        print(f"{job.label}: job {env.job_id}, task {rank}/{env.num_tasks} on {env.hostname} (pid {os.getpid()}): "
              f"{', '.join(steps) or 'nothing left'}", flush=True)
        if "train" in steps:  # every rank logs; rank 0 to train.log, the others beside it
            log = job.dir / ("train.log" if rank == 0 else f"train.rank{rank}.log")
            stream(train_command(job), run_env(overlay), log, job.label, sys.stdout.write)
        if rank == 0 and steps:
            stream(evaluate_command(job, self.eval_device, self.eval_args), run_env(), job.dir / "eval.log",
                   job.label, sys.stdout.write)


def read_record(path):
    """{label: submitit job} of the study's earlier submissions."""
    return pickle.loads(path.read_bytes()) if path.exists() else {}


def write_record(path, record):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(pickle.dumps(record))
    os.replace(tmp, path)  # a study killed while it writes keeps the previous record


def log_of(job):
    """The log that says why a run's job ended before the run did: train.log if training was not done, else
    eval.log."""
    return job.dir / ("train.log" if "train" in job.steps_left() else "eval.log")


def iteration(job):
    """The last training iteration the run logged (0 before its first)."""
    if not (job.dir / "metrics.jsonl").exists():
        return 0
    train = read_metrics(job.dir)["train"]
    return train[-1]["iter"] if train else 0


def execute(runs, configs, study_dir, args, title, slurm):
    """Submit the runs that are neither finished nor in a job still queued or running, as one array; then wait
    for every job of these runs and return {label: its log} of the runs whose job ended before they were done
    (with args.no_wait: raise JobsRunning instead of waiting)."""
    folder = study_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "jobs.pkl"
    record = read_record(record_path)
    jobs, iters = pending_jobs(runs, configs, study_dir, quant_settings(args))
    queued = {job.label for job in jobs if job.label in record and not record[job.label].done()}
    submit = [job for job in jobs if job.label not in queued]
    print(f"{title}study {study_dir}: {len(runs)} runs, {len(jobs)} to do ({len(submit)} to submit, {len(queued)} "
          f"in jobs submitted before), {len(runs) - len(jobs)} finished")
    if not jobs:
        return {}
    if submit:
        device = configs[runs[0]].device
        ex = executor(folder, slurm, study_dir.name, args.jobs)
        eval_device = "cuda" if device.startswith("cuda") else device  # each rank 0's first visible GPU
        try:
            with contextlib.redirect_stderr(io.StringIO()), ex.batch():  # submitit prints sbatch's complaint too
                submitted = [ex.submit(RunJob(job, eval_device, eval_args(args))) for job in submit]
        except (FailedJobError, FailedSubmissionError) as e:
            complaint = " ".join(str(e).split()) or "no message"
            raise ConfigError(f"sbatch refused the study's jobs ({complaint}): check the slurm settings "
                              f"(--slurm_partition, --slurm_account, ... or study_slurm_* in the config file)") from None
        record.update({job.label: s for job, s in zip(submit, submitted)})
        write_record(record_path, record)
        for job, s in zip(submit, submitted):
            print(f"submitted {job.label}: job {s.job_id}, log {s.paths.stdout}")
    if args.no_wait:
        raise JobsRunning(f"{len(jobs)} run(s) in Slurm jobs; run the same command again to wait for them, collect "
                          f"them and write the report (logs: {folder})")
    return wait(jobs, {job.label: record[job.label] for job in jobs}, Progress(iters))


def wait(jobs, submitted, progress):
    """Wait for the jobs, printing a progress line when the counts change and every progress.every seconds;
    returns {label: log} of the runs whose job ended before they were done."""
    failed, finished, last = {}, set(), None
    while len(finished) + len(failed) < len(jobs):
        counts = {"running": 0, "pending": 0}
        for job in jobs:
            if job.label in finished or job.label in failed:
                continue
            s = submitted[job.label]
            if not s.done():
                counts["pending" if s.state.upper() in INCOMPLETE else "running"] += 1
                progress.update(job.label, iteration(job))
            elif job.steps_left():
                failed[job.label] = log_of(job)
                print(f"[{job.label}] FAILED: job {s.job_id} ended ({s.state}) before the run was done; log: "
                      f"{failed[job.label]}, the job's: {s.paths.stderr}")
            else:
                finished.add(job.label)
                progress.finish(job.label)
        percent, timing = progress.timing()
        line = (f"---- study: {len(finished)} done, {counts['running']} running, {counts['pending']} pending, "
                f"{len(failed)} failed; {percent} of the iterations, {timing}")
        state = (len(finished), len(failed), counts["running"], counts["pending"])
        if state != last or time.time() - progress.last > progress.every:
            print(line, flush=True)
            last, progress.last = state, time.time()
        if len(finished) + len(failed) < len(jobs):
            time.sleep(POLL_S)
    return failed

