"""run_study.sh --launcher slurm (analysis/slurm.py) without a cluster: the same jobs through submitit's local
executor (analysis.slurm.CLUSTER = "local"), each a process tree on this machine that a test can signal or kill as
Slurm would. Submission of the pending runs only, collection by a later invocation, a failing job, a timed-out job
that requeues and resumes, a killed job that the next invocation submits again and that resumes, two processes per
run with torchrun's environment. The sbatch script a real cluster gets is checked through a stand-in sbatch."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import argparse

import pytest

from analysis import slurm, study
from checkpoint import checkpoint_iter
from test_study import TINY
from train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
HARNESS = ("import sys; from analysis import slurm, study; slurm.CLUSTER = 'local'; slurm.POLL_S = 0.5; "
           "study.main(sys.argv[1:])")


class Study:
    """One invocation of the study, in its own session (its jobs outlive it with --no-wait, as Slurm's would)."""

    def __init__(self, workdir, root, *args, config=REPO / "config/study_cpu.py", harness=True, env=None):
        cmd = ([sys.executable, "-c", HARNESS] if harness else [sys.executable, "-m", "analysis.study"])
        cmd += [str(config), "--study_root", str(root), "--launcher", "slurm", *TINY, *args]
        n = len(list(root.glob("invocation-*.out"))) if root.exists() else 0
        root.mkdir(parents=True, exist_ok=True)
        out, err = root / f"invocation-{n}.out", root / f"invocation-{n}.err"
        env = {**(env or os.environ), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with open(out, "w") as stdout, open(err, "w") as stderr:  # not pipes: the jobs would hold them open
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
            self.rc = proc.wait(timeout=600)
        self.session, self.out, self.err = proc.pid, out.read_text(), err.read_text()


def wait_for(condition, what, timeout=120):
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def ckpt_iter(run_dir):
    try:
        return checkpoint_iter(run_dir)
    except Exception:  # not written yet
        return -1


def events(run_dir, event):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def test_no_wait_then_a_later_invocation_submits_only_pending_runs_and_collects(tmp_path, workdir):
    root = tmp_path / "studies"
    first = Study(workdir, root, "--norms", "softmax", "--seeds", "0", "--name", "s", "--no-wait")
    assert first.rc == 0, first.out + first.err
    assert "submitted softmax-s0: job " in first.out and "run the same command again" in first.out
    study_dir = root / "s"
    assert not (study_dir / "report.md").exists()
    wait_for(lambda: len(list((study_dir / "slurm").glob("*_result.pkl"))) == 1, "the first job")

    both = ["--norms", "softmax,softmax1", "--seeds", "0", "--name", "s"]
    second = Study(workdir, root, *both)
    assert second.rc == 0, second.out + second.err
    assert "skip softmax-s0: finished" in second.out and "(1 to submit, 0 in jobs submitted before)" in second.out
    assert "submitted softmax1-s0" in second.out and "submitted softmax-s0" not in second.out
    assert re.search(r"---- study: 1 done, 0 running, 0 pending, 0 failed; 100% of the iterations, .* ETA",
                     second.out), second.out
    report = (study_dir / "report.md").read_text()
    assert "| softmax | 1 |" in report and "| softmax1 | 1 |" in report and "Slurm jobs of 1 node(s)" in report
    assert (study_dir / "runs/softmax-s0/train.log").read_text().count("$ ") == 1  # trained once

    submitted = sorted((study_dir / "slurm").glob("*_submitted.pkl"))
    third = Study(workdir, root, *both, "--no-wait")  # all done: nothing submitted, the report written again
    assert third.rc == 0 and "2 runs, 0 to do" in third.out and "report: " in third.out, third.out + third.err
    assert sorted((study_dir / "slurm").glob("*_submitted.pkl")) == submitted


def test_a_failing_job_is_one_error_line_naming_the_run_and_its_log(tmp_path, workdir):
    # A learning rate that makes the first step non-finite: train.py stops with an error, so the job fails.
    failing = Study(workdir, tmp_path, "--norms", "softmax", "--seeds", "0", "--name", "f", "--learning_rate=1e9",
                    "--max_nonfinite_steps=1")
    assert failing.rc == 1 and "Traceback" not in failing.err, failing.out + failing.err
    errors = [line for line in failing.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: 1 run(s) failed: softmax-s0 (log: {tmp_path}/f/runs/softmax-s0/train.log)"], failing.err
    assert "[softmax-s0] FAILED: job " in failing.out and "_0_log.err" in failing.out  # the job's own log, too
    assert "non-finite" in (tmp_path / "f/runs/softmax-s0/train.log").read_text()


def test_a_timed_out_job_requeues_and_a_killed_one_is_submitted_again_both_resume(tmp_path, workdir):
    # With a time limit of 10 minutes or less, submitit counts any USR2 as the time limit's (it then requeues only
    # a job that can checkpoint; a preempted one is requeued anyway): the stricter case.
    args = ["--norms", "softmax", "--seeds", "0", "--name", "k", "--max_iters=150", "--lr_decay_iters=150",
            "--slurm_time=10"]
    first = Study(workdir, tmp_path, *args, "--no-wait")
    assert first.rc == 0, first.out + first.err
    run_dir = tmp_path / "k/runs/softmax-s0"
    wait_for(lambda: ckpt_iter(run_dir) >= 10, "a checkpoint")
    job_log = next((tmp_path / "k/slurm").glob("*_0_log.out"))
    pid = int(re.search(r"\(pid (\d+)\)", job_log.read_text()).group(1))
    os.kill(pid, signal.SIGUSR2)  # what Slurm sends before it stops a job at its time limit (or preempts it)
    wait_for(lambda: job_log.read_text().count("(pid ") == 2, "the requeued job")
    wait_for(lambda: len(events(run_dir, "resume")) == 1, "the requeued job to resume")
    resumed = events(run_dir, "resume")[0]["iter"]
    wait_for(lambda: ckpt_iter(run_dir) > resumed, "a checkpoint after the requeue")
    os.killpg(first.session, signal.SIGKILL)  # the job dies with everything in it (scancel, a lost node)
    time.sleep(1)
    killed_at = ckpt_iter(run_dir)
    assert 0 < resumed < killed_at < 150

    second = Study(workdir, tmp_path, *args)
    assert second.rc == 0, second.out + second.err
    assert "(1 to submit, 0 in jobs submitted before)" in second.out and "report: " in second.out
    assert [r["iter"] for r in events(run_dir, "resume")] == [resumed, killed_at]
    assert ckpt_iter(run_dir) == 150 and "val_ppl" in json.loads((run_dir / "eval.json").read_text())


def test_two_processes_per_run_get_torchruns_environment(tmp_path, workdir):
    # On CPU two "GPUs" per node are two train.py processes joined by gloo, as two GPUs would be by NCCL.
    two = Study(workdir, tmp_path, "--norms", "softmax", "--seeds", "0", "--name", "d", "--slurm_gpus_per_node=2",
                "--gradient_accumulation_steps=2")
    assert two.rc == 0, two.out + two.err
    run_dir = tmp_path / "d/runs/softmax-s0"
    assert events(run_dir, "start")[0]["world_size"] == 2
    assert (run_dir / "train.rank1.log").exists() and "val_ppl" in json.loads((run_dir / "eval.json").read_text())


class StillQueued:
    """A job of an earlier invocation that Slurm still holds."""
    job_id, state = "77", "PENDING"

    def done(self):
        return False


def test_a_run_whose_job_is_still_queued_is_not_submitted_again(tmp_path, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    variant = study.study_variants(["softmax"], [], ["adamw"], "none")[0]
    run, study_dir = study.Run(variant, 0), tmp_path / "q"
    configs = {run: study.run_config(TrainConfig(device="cpu", dtype="float32"), run, study_dir / "runs" / run.label)}
    (study_dir / "slurm").mkdir(parents=True)
    slurm.write_record(study_dir / "slurm/jobs.pkl", {run.label: StillQueued()})
    args = argparse.Namespace(no_wait=True, max_tokens=64, calib_batches=2)
    settings = {name: default for name, (_, default, _) in slurm.SETTINGS.items()} | {"gpus_per_node": 0}
    with pytest.raises(slurm.JobsRunning):  # and no executor: this machine has no Slurm to submit to
        slurm.execute([run], configs, study_dir, args, "", settings)
    assert "1 to do (0 to submit, 1 in jobs submitted before)" in capsys.readouterr().out


def fake_slurm(bin_dir, sbatch):
    """srun (submitit looks for it) and an sbatch whose body is `sbatch` (shell), first on PATH."""
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", sbatch)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_the_sbatch_script_asks_for_the_studys_resources(tmp_path, workdir):
    env = fake_slurm(tmp_path / "bin", f'cp "$1" {tmp_path}/script.sh; echo "Submitted batch job 4242"')
    config = tmp_path / "study_cluster.py"  # slurm settings in a config file, one of them overridden
    config.write_text((REPO / "config/study_cpu.py").read_text() + "\nstudy_slurm_partition = 'gpu'\n"
                      "study_slurm_account = 'lab'\nstudy_slurm_time = 90\n")
    sub = Study(workdir, tmp_path, "--norms", "softmax,softmax1", "--seeds", "0", "--name", "c", "--no-wait",
                "--slurm_time=30", "--slurm_qos=high", "--slurm_constraint=h100", "--slurm_nodes=2",
                "--slurm_gpus_per_node=4", "--gradient_accumulation_steps=8", "--slurm_sbatch=--mem=64G --exclusive",
                "--device=cuda", "--dtype=bfloat16", "--jobs", "1", config=config, harness=False, env=env)
    assert sub.rc == 0, sub.out + sub.err
    script = (tmp_path / "script.sh").read_text()
    for flag in ("--array=0-1%1", "--partition=gpu", "--account=lab", "--time=30", "--qos=high",
                 "--constraint=h100", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--mem=64G",
                 "--exclusive"):
        assert f"#SBATCH {flag}\n" in script, (flag, script)
    assert "submitted softmax-s0: job 4242_0" in sub.out and "submitted softmax1-s0: job 4242_1" in sub.out


REFUSE = "echo 'sbatch: error: invalid partition specified: gpu' >&2; exit 1"


ERRORS = [
    pytest.param(None, ["--launcher", "slurm"], "--launcher slurm: no Slurm here (", id="slurm-without-slurm"),
    pytest.param(REFUSE, ["--launcher", "slurm", "--slurm_partition=gpu"],
                 "sbatch refused the study's jobs (sbatch: error: invalid partition specified: gpu): check the "
                 "slurm settings", id="slurm-sbatch-refuses"),
    pytest.param(None, ["--launcher", "local", "--slurm_partition=gpu", "--no-wait"],
                 "--slurm_partition, --no-wait only apply to --launcher slurm", id="slurm-settings-without-slurm"),
    pytest.param(None, ["--slurm_nodes=0"], "--slurm_nodes must be >= 1, got 0", id="slurm-no-nodes"),
    pytest.param(None, ["--slurm_sbatch=mem=64G"], "--slurm_sbatch: 'mem=64G' is not a long sbatch flag",
                 id="slurm-bad-sbatch-flags"),
    pytest.param(None, ["--device=cuda", "--slurm_gpus_per_node=0"], "device=cuda but --slurm_gpus_per_node=0",
                 id="slurm-cuda-without-gpus"),
    pytest.param(None, ["--slurm_gpus_per_node=2"], "gradient_accumulation_steps (1) must be a multiple of the "
                 "number of processes (2)", id="slurm-processes-and-accumulation"),
]


@pytest.mark.parametrize("sbatch, args, message", ERRORS)
def test_slurm_errors_are_one_line(tmp_path, workdir, sbatch, args, message):
    env = fake_slurm(tmp_path / "bin", sbatch) if sbatch else None
    refused = Study(workdir, tmp_path, "--norms", "softmax", "--seeds", "0", *args, harness=False, env=env)
    assert refused.rc != 0 and refused.err.strip().splitlines() == [refused.err.strip()], refused.err
    assert refused.err.startswith(f"error: {message}"), refused.err
    assert not (tmp_path / "study_cpu/runs/softmax-s0/train.log").exists()  # nothing ran


def test_errors_are_documented():
    doc = (REPO / "docs/troubleshooting.md").read_text()
    missing = [case.id for case in ERRORS if f"| `{case.id}` |" not in doc]
    assert not missing, f"add these to docs/troubleshooting.md: {missing}"
