"""Reliability: runs survive SIGKILL and restarts bit for bit, checkpoints are atomic and safe to load, NaN steps
are skipped, and every bad input stops with one line that names the problem and the fix.

Everything runs on CPU in subprocesses (the real entry points: train.py, sample.py, prepare_data.py,
run_training.sh) or in-process where a fault has to be injected (NaN losses). Outputs go to pytest's tmp dirs;
nothing touches the network. Kills land at random moments: the seed is printed, so a failure can be replayed
with RELIABILITY_SEED=<seed>. docs/troubleshooting.md lists the bad inputs of BAD_INPUTS.
"""
import concurrent.futures
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import prepare_data
import train
from checkpoint import CheckpointError, load_checkpoint
from model import GPT

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CPU_CONFIG = str(REPO / "config" / "shakespeare_char" / "cpu.py")
# A 2-layer, 32-wide char model: an iteration takes milliseconds on one CPU thread.
TINY = [CPU_CONFIG, "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--eval_iters=2", "--log_stats=False", "--log_interval=1", "--always_save_checkpoint=True",
        "--device=cpu", "--dtype=float32", "--compile=False"]
# One thread: the same reduction order in every process (bit-identical runs), and no oversubscribed CI cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SEED = int(os.environ.get("RELIABILITY_SEED", random.randrange(2**32)))


def seeded_rng(offset):
    """The random kill times of one test; the seed is printed, so a failure shows how to replay it."""
    print(f"RELIABILITY_SEED={SEED}")
    return random.Random(SEED + offset)


def train_cmd(*args):
    return [PY, str(REPO / "train.py"), *TINY, *args]


def ckpt_iter(out_dir):
    """iter_num of out_dir/ckpt.pt, or None while there is none (a reader never sees a torn one)."""
    try:
        return load_checkpoint(out_dir)["iter_num"]
    except CheckpointError:
        if (Path(out_dir) / "ckpt.pt").exists():
            raise
        return None


def events(out_dir, kind=None):
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if kind is None or e["event"] == kind]


def last_per_iter(out_dir, kind):
    """{iter: the last record of this kind}: a resumed run recomputes the iterations after its checkpoint."""
    return {e["iter"]: {k: v for k, v in e.items() if k not in ("ms_per_iter", "tokens_per_s", "mfu", "stats_s")}
            for e in events(out_dir, kind)}


def assert_same_tensors(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_same_tensors(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{what} differs"
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


def wait_for(predicate, proc=None, timeout=180, poll=0.02):
    """Poll until predicate() is truthy (returns it), or proc exits, or the safety timeout (not a timing test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value or (proc is not None and proc.poll() is not None):
            return value
        time.sleep(poll)
    raise AssertionError(f"gave up waiting after {timeout}s")


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training on one thread, as in the subprocesses: tiny models only lose to thread wake-ups, and
    spinning OpenMP workers crawl on a busy 2-core CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory whose data/shakespeare_char is freshly prepared (train.py reads data/<dataset>)."""
    root = tmp_path_factory.mktemp("work")
    prepare_data.prepare("shakespeare_char", root / "data")
    return root


@pytest.fixture(scope="module")
def tiny_ckpt(work):
    """A finished 10-iteration run: its out_dir holds ckpt.pt at iter 10."""
    out = work / "tiny"
    subprocess.run(train_cmd("--max_iters=10", "--eval_interval=5", f"--out_dir={out}"), cwd=work, env=ENV,
                   check=True, capture_output=True, timeout=300)
    assert ckpt_iter(out) == 10
    return out


# ------------------------------------------------------------------------------------------------------------
# Exact resume: SIGKILL at random moments, resume with the same command, compare with an uninterrupted run.

RESUME_ARGS = ["--dropout=0.1", "--eval_interval=5", "--max_iters=80", "--warmup_iters=10", "--lr_decay_iters=80",
               "--gradient_accumulation_steps=2", "--keep_checkpoints=3", "--log_stats=True"]


def test_sigkill_and_resume_is_bit_identical(work, tmp_path):
    rng = seeded_rng(0)
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_log = open(tmp_path / "uninterrupted.log", "w")
    reference = subprocess.Popen(train_cmd(*RESUME_ARGS, f"--out_dir={ref}"), cwd=work, env=ENV,
                                 stdout=ref_log, stderr=subprocess.STDOUT)
    kills, killed_at = 0, []
    # three runs, each killed at a random moment after it wrote a checkpoint of its own (at a random one of
    # iterations 5..60) and before the end (80): a short random delay, whatever the machine's speed
    for target in sorted(rng.sample(range(5, 61, 5), 3)):
        proc = subprocess.Popen(train_cmd(*RESUME_ARGS, f"--out_dir={run}"), cwd=work, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = max(target, (ckpt_iter(run) or 0) + 5)  # a checkpoint this process writes
        wait_for(lambda: (ckpt_iter(run) or 0) >= target, proc)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        killed_at.append(ckpt_iter(run))
    final = subprocess.run(train_cmd(*RESUME_ARGS, f"--out_dir={run}"), cwd=work, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert reference.wait(timeout=300) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]
    ref_log.close()
    print(f"SIGKILLs: {kills}, checkpoint iterations at the kills: {killed_at}")
    assert kills == 3, "a run finished before it could be killed"

    a, b = load_checkpoint(ref), load_checkpoint(run)
    assert a["iter_num"] == b["iter_num"] == 80
    assert_same_tensors(a["model"], b["model"], "parameters")
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer state")
    train_a, train_b = last_per_iter(ref, "train"), last_per_iter(run, "train")
    assert sorted(train_a) == list(range(1, 81))
    assert train_a == train_b, "a logged training loss differs after the resume"
    assert last_per_iter(ref, "eval") == last_per_iter(run, "eval")
    assert [e["event"] for e in events(run) if e["event"] in ("start", "resume")] == ["start"] + ["resume"] * 3
    # keep_checkpoints=3: exactly the last three, identical to the uninterrupted run's
    kept = sorted(p.name for p in run.glob("ckpt*.pt"))
    assert kept == sorted(p.name for p in ref.glob("ckpt*.pt")) == ["ckpt-00000070.pt", "ckpt-00000075.pt", "ckpt.pt"]
    for name in kept:
        assert_same_tensors(load_checkpoint(ref / name)["model"], load_checkpoint(run / name)["model"], name)
    assert not list(run.glob(".ckpt*")), "temp files of killed saves were left behind"


# ------------------------------------------------------------------------------------------------------------
# Atomic checkpoints: a helper process saves real checkpoints in a loop from forked children that the test
# SIGKILLs at random moments (forking saves the ~2 s torch import per kill).

SAVER = r'''
import os, signal, sys
import torch
torch.set_num_threads(1)  # no thread pool: forking is safe
sys.path.insert(0, sys.argv[1])
import checkpoint
src, out_dir, keep = sys.argv[2], sys.argv[3], int(sys.argv[4])
state = torch.load(src, weights_only=True)

def crash_before(k):
    """SIGKILL this process right before its k-th file-system step (fsync, link, rename, unlink, copy)."""
    count = [0]
    def wrap(fn):
        def wrapped(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped
    for name in ("fsync", "link", "replace", "rename", "unlink"):
        setattr(os, name, wrap(getattr(os, name)))
    checkpoint.shutil.copyfile = wrap(checkpoint.shutil.copyfile)

def run_child(fn):
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.read(go_r, 1)  # start once the parent has announced this child
            fn()
        finally:
            os._exit(0)
    print(f"child {pid}", flush=True)
    os.write(go_w, b"x")
    os.close(go_r), os.close(go_w)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)

def save_forever(i):
    while True:
        state["iter_num"] = i
        checkpoint.save_checkpoint(state, out_dir, keep)
        os.write(1, f"saved {i}\n".encode())
        i += 1

def save_once(i, k):
    if k:
        crash_before(k)
    state["iter_num"] = i
    checkpoint.save_checkpoint(state, out_dir, keep)

for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "ballast":  # megabytes of extra tensor data: a longer save, so random kills land inside it
        state["ballast"] = torch.randn(int(args[0]) * 2**18)
        print("ok", flush=True)
    elif cmd == "loop":
        run_child(lambda: save_forever(int(args[0])))
    elif cmd == "once":
        run_child(lambda: save_once(int(args[0]), int(args[1])))
'''


class Saver:
    def __init__(self, tmp_path, src, out_dir, keep):
        script = tmp_path / "saver.py"
        script.write_text(SAVER)
        self.proc = subprocess.Popen([PY, str(script), str(REPO), str(src), str(out_dir), str(keep)], env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self):
        line = self.proc.stdout.readline()
        assert line, "the saver process died"
        return line.split()

    def until_exit(self):
        """(exit code of the child, iterations it reported as saved)"""
        saved = []
        while True:
            word, value = self.read()
            if word == "exit":
                return int(value), saved
            assert word == "saved", word
            saved.append(int(value))

    def once(self, i, crash_before=0):
        self.send(f"once {i} {crash_before}")
        assert self.read()[0] == "child"
        return self.until_exit()[0]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def check_checkpoints(out_dir, keep):
    """The on-disk state any kill may leave: ckpt.pt loads, and the kept ones are the keep-1 before it (plus,
    mid-save, the one being rotated). Returns ckpt.pt's iteration."""
    it = load_checkpoint(out_dir)["iter_num"]  # raises if torn or missing
    kept = {int(p.name[5:13]): p for p in out_dir.glob("ckpt-*.pt")}
    assert set(range(it - keep + 1, it)) <= set(kept) <= set(range(it - keep, it + 1)), (it, sorted(kept))
    for i, path in kept.items():
        assert load_checkpoint(path)["iter_num"] == i
    return it


def resume_works(ckpt, work, tmp_path, monkeypatch):
    """train.py resumes from a copy of ckpt and trains one more iteration."""
    it = load_checkpoint(ckpt)["iter_num"]
    out = Path(tempfile.mkdtemp(prefix=f"resume-{it}-", dir=tmp_path))
    shutil.copy(ckpt, out / "ckpt.pt")
    monkeypatch.chdir(work)
    train.main(TINY + [f"--out_dir={out}", "--init_from=resume", f"--max_iters={it + 1}", "--eval_interval=1000"])
    assert ckpt_iter(out) == it + 1
    assert events(out)[0]["event"] == "resume"


def test_random_sigkills_during_saves(work, tiny_ckpt, tmp_path, monkeypatch, capsys):
    rng, keep, out = seeded_rng(1), 3, tmp_path / "ckpts"
    out.mkdir()
    saver = Saver(tmp_path, tiny_ckpt / "ckpt.pt", out, keep)
    try:
        saver.send("ballast 8")
        assert saver.read() == ["ok"]
        for i in (97, 98, 99):
            assert saver.once(i) == 0
        kills, torn_window, it = 0, 0, 99
        for _ in range(25):
            saver.send(f"loop {it + 1}")
            pid = int(saver.read()[1])
            time.sleep(rng.uniform(0.0, 0.3))
            torn_window += any(out.glob(".ckpt.pt.tmp-*"))  # a half-written checkpoint exists right now
            os.kill(pid, signal.SIGKILL)
            code, saved = saver.until_exit()
            assert code == -signal.SIGKILL
            kills += 1
            last_complete = saved[-1] if saved else it
            it = check_checkpoints(out, keep)
            assert it in (last_complete, last_complete + 1), "a completed checkpoint was lost"
            resume_works(out / "ckpt.pt", work, tmp_path, monkeypatch)
        # a save that completes leaves exactly the last `keep` checkpoints and no temp files
        assert saver.once(it + 1) == 0
        assert sorted(p.name for p in out.iterdir()) == [f"ckpt-{it - 1:08d}.pt", f"ckpt-{it:08d}.pt", "ckpt.pt"]
    finally:
        saver.close()
    with capsys.disabled():
        print(f"\n{kills} SIGKILLs during saves ({torn_window} while a checkpoint was half written): "
              f"all left a loadable ckpt.pt")
    assert kills >= 20


def test_crash_before_every_step_of_a_save(tiny_ckpt, tmp_path):
    """Deterministic complement to the random kills: SIGKILL before each file-system step of save_checkpoint in
    turn (fsync, link, rename, fsync of the directory, unlink of the oldest), then check the disk."""
    keep, out = 3, tmp_path / "ckpts"
    saver = Saver(tmp_path, tiny_ckpt / "ckpt.pt", out, keep)
    outcomes = []
    try:
        for k in range(1, 50):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for i in (98, 99, 100):
                assert saver.once(i) == 0
            code = saver.once(101, crash_before=k)
            it = check_checkpoints(out, keep)
            if code == 0:  # k is past the last step: the save completed
                assert it == 101 and sorted(p.name for p in out.iterdir()) == [
                    "ckpt-00000099.pt", "ckpt-00000100.pt", "ckpt.pt"]
                break
            assert code == -signal.SIGKILL
            outcomes.append(it)
    finally:
        saver.close()
    print(f"crash points: {len(outcomes)}; ckpt.pt afterwards: {outcomes}")
    assert 100 in outcomes and 101 in outcomes, "the crash points did not straddle the commit"


def test_keep_checkpoints_counts_a_resaved_iteration_once(tmp_path):
    """A resumed run saves its first iteration again: that must replace ckpt.pt, not push out an older one."""
    from checkpoint import save_checkpoint
    state = {"model": {"w": torch.ones(3)}, "model_args": {}, "config": {}}
    for it in (10, 15, 20, 20):
        save_checkpoint({**state, "iter_num": it}, tmp_path, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000010.pt", "ckpt-00000015.pt", "ckpt.pt"]
    for it in (25, 30):
        save_checkpoint({**state, "iter_num": it}, tmp_path, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000020.pt", "ckpt-00000025.pt", "ckpt.pt"]
    assert load_checkpoint(tmp_path)["iter_num"] == 30


# ------------------------------------------------------------------------------------------------------------
# Elastic restarts: 2 gloo workers under torchrun (run_training.sh); SIGKILL one worker, then the other.


def worker_pids(agent_pid):
    """PIDs of torchrun's worker processes (its children), with their RANK."""
    children = []
    tasks = Path(f"/proc/{agent_pid}/task")
    for task in tasks.iterdir() if tasks.exists() else []:
        try:
            children += map(int, (task / "children").read_text().split())
        except OSError:
            pass
    ranks = {}
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = pid
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_torchrun_restarts_after_a_worker_is_killed(tmp_path):
    rng = seeded_rng(2)
    out = tmp_path / "elastic"
    env = {**ENV, "NPROC": "2", "MAX_RESTARTS": "2"}
    cmd = ["bash", str(REPO / "run_training.sh"), *TINY, "--gradient_accumulation_steps=2", "--eval_interval=5",
           "--max_iters=60", f"--out_dir={out}"]
    log = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    restarts = []
    try:
        for victim_rank in (1, 0):  # a plain worker, then rank 0 (the one that writes checkpoints)
            before = ckpt_iter(out) or 0
            # a checkpoint written by the current group, then whatever workers run now
            wait_for(lambda: (ckpt_iter(out) or 0) > before, proc)
            time.sleep(rng.uniform(0.0, 0.1))
            workers = wait_for(lambda: len(w := worker_pids(proc.pid)) == 2 and w, proc)
            assert proc.poll() is None and sorted(workers) == [0, 1], (tmp_path / "torchrun.log").read_text()[-3000:]
            os.kill(workers[victim_rank], signal.SIGKILL)
            restarts.append((victim_rank, ckpt_iter(out)))
            # torchrun notices, stops the group and starts a new one (new PIDs)
            wait_for(lambda: (w := worker_pids(proc.pid)) and workers[victim_rank] not in w.values()
                     and w.keys() == {0, 1}, proc)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # a failed test leaves nothing running: torchrun starts its workers in their
            for pid in worker_pids(proc.pid).values():  # own sessions, so kill them by PID first
                os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "torchrun.log").read_text()
    assert rc == 0, output[-3000:]
    print(f"workers killed (rank, checkpoint iter at the kill): {restarts}")
    assert load_checkpoint(out)["iter_num"] == 60
    resumes = events(out, "resume")
    assert len(resumes) == 2 and all(e["world_size"] == 2 for e in resumes), output[-3000:]
    # each new group continued from a checkpoint: its first record is at that checkpoint's iteration
    for (_, killed_at), resume in zip(restarts, resumes):
        assert resume["iter"] >= killed_at and resume["iter"] % 5 == 0
    assert sorted(last_per_iter(out, "train")) == list(range(1, 61))


# ------------------------------------------------------------------------------------------------------------
# Safe loading


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def write_malicious(path, marker, raw_pickle=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model": Payload(marker), "model_args": {}, "config": {}, "iter_num": 0}
    if raw_pickle:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("raw_pickle", [False, True], ids=["torch.save", "raw-pickle"])
def test_malicious_checkpoint_is_refused(tmp_path, raw_pickle):
    path, marker = tmp_path / "out" / "ckpt.pt", tmp_path / "marker"
    write_malicious(path, marker, raw_pickle)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path.parent)
    assert not marker.exists()
    # the payload is live: an unsafe load runs it
    pickle.loads(path.read_bytes()) if raw_pickle else torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_checkpoint_holds_plain_types_only(tiny_ckpt):
    ckpt = torch.load(tiny_ckpt / "ckpt.pt", weights_only=True)  # the strict unpickler accepts it
    def plain(value):  # JSON's types: what meta.json holds (meta's prepared_with is a dict, its files a list)
        if isinstance(value, dict):
            return all(type(k) is str and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(map(plain, value))
        return type(value) in (str, int, float, bool, type(None))

    for section in ("config", "model_args", "meta"):
        for key, value in ckpt[section].items():
            # None: a setting whose value is derived (sigmoid_bias = -log T, muon_lr = learning_rate)
            assert plain(value), f"ckpt[{section!r}][{key!r}] is a {type(value)}"
    config = ckpt["config"]
    assert config["n_layer"] == 2 and config["attn_norm"] == "softmax" and config["out_dir"].endswith("tiny")


# ------------------------------------------------------------------------------------------------------------
# Non-finite guard (in-process: NaN losses injected at chosen iterations)


@pytest.fixture
def nan_at(monkeypatch):
    """nan_at(iters) makes the training loss NaN at those iterations (gradient_accumulation_steps=1: one
    training forward per iteration) and returns the parameters seen at each iteration's forward."""
    params = {}

    def install(bad):
        forward, calls = GPT.forward, iter(range(10**6))

        def nan_forward(self, idx, targets=None):
            logits, loss = forward(self, idx, targets)
            if self.training:
                i = next(calls)
                params[i] = [p.detach().clone() for p in self.parameters()]
                if i in bad:
                    loss = loss * float("nan")
            return logits, loss
        monkeypatch.setattr(GPT, "forward", nan_forward)
        return params
    return install


def test_nonfinite_steps_are_skipped(work, tmp_path, monkeypatch, nan_at):
    monkeypatch.chdir(work)
    params = nan_at({3, 4, 8})
    out = tmp_path / "out"
    train.main(TINY + ["--max_iters=12", "--eval_interval=5", "--max_nonfinite_steps=3", f"--out_dir={out}"])
    skipped = [(e["iter"], e["in_a_row"]) for e in events(out, "nonfinite")]
    assert skipped == [(3, 1), (4, 2), (8, 1)]
    for i in (3, 4, 8):  # a skipped step leaves the weights as they were
        assert_same_tensors(params[i], params[i + 1], f"parameters after skipped iter {i}")
    assert not all(torch.equal(a, b) for a, b in zip(params[5], params[6])), "normal steps must train"
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 12 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert all(np.isfinite(e["loss"]) for e in events(out, "train"))


def test_persistent_nan_stops_and_keeps_the_last_good_checkpoint(work, tmp_path, monkeypatch, nan_at):
    monkeypatch.chdir(work)
    nan_at(set(range(7, 100)))
    out = tmp_path / "out"
    with pytest.raises(train.TrainingError, match=r"3 non-finite steps in a row at iter 9: lower learning_rate"):
        train.main(TINY + ["--max_iters=20", "--eval_interval=5", "--max_nonfinite_steps=3", f"--out_dir={out}"])
    assert [(e["iter"], e["in_a_row"]) for e in events(out, "nonfinite")] == [(7, 1), (8, 2), (9, 3)]
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 5 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_nonfinite_parameters_are_never_saved(work, tmp_path, monkeypatch):
    """Weights that turn NaN despite a finite loss (here: poisoned right after iteration 4's update) are not
    written over the last good checkpoint."""
    monkeypatch.chdir(work)
    step, calls = torch.optim.AdamW.step, iter(range(10**6))

    def poisoning_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        if next(calls) == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result
    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    out = tmp_path / "out"
    with pytest.raises(train.TrainingError, match="parameters are not finite at iter 6; refusing to overwrite"):
        train.main(TINY + ["--max_iters=20", "--eval_interval=3", f"--out_dir={out}"])
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 3 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


# ------------------------------------------------------------------------------------------------------------
# Prepared data: an interrupted prepare_data.py leaves nothing train.py accepts; a re-run completes it.


def test_interrupted_prepare_data_is_never_accepted(work, tmp_path, monkeypatch):
    rng = seeded_rng(3)
    reference = work / "data" / "shakespeare_char"
    ref_bytes = {f: (reference / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json")}
    monkeypatch.chdir(tmp_path)  # train.load_dataset reads data/<dataset> from here
    target = tmp_path / "data" / "shakespeare_char"
    cfg = train.TrainConfig(dataset="shakespeare_char", block_size=32)

    def accepted():
        try:
            train.load_dataset(cfg)
        except train.ConfigError as e:
            assert "not prepared" in str(e), e
            return False
        assert {f: (target / f).read_bytes() for f in ref_bytes} == ref_bytes, "train.py accepted partial data"
        return True

    cmd = [PY, str(REPO / "prepare_data.py"), "shakespeare_char", "--out_dir", str(tmp_path / "data")]
    start = time.monotonic()
    subprocess.run(cmd + ["--out_dir", str(tmp_path / "probe")], env=ENV, check=True, capture_output=True)
    duration = time.monotonic() - start
    kills = 0
    for n in range(8):
        had_data = accepted()
        proc = subprocess.Popen(cmd + (["--force"] if n >= 4 else []), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert accepted() or not had_data, "a killed --force rebuild lost the complete data that was there"
        if n == 3:  # the second half kills --force rebuilds over complete data
            subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)  # a re-run completes it
    assert accepted()
    leftovers = sorted(p.name for p in target.parent.iterdir() if p.name != "shakespeare_char")
    print(f"prepare_data.py SIGKILLs: {kills}; leftover dirs from killed runs: {leftovers}")
    assert kills >= 4


# ------------------------------------------------------------------------------------------------------------
# Bad inputs: each one exits non-zero with `error: <what is wrong and what to do>`, without a traceback.
# Listed for users in docs/troubleshooting.md. Each case runs in its own directory `d` whose
# data/shakespeare_char is the prepared dataset; {d} in arguments is replaced by that directory.


def copy_dataset(d, name="bad"):
    dst = d / "data" / name
    shutil.copytree(d / "data" / "shakespeare_char", dst)
    return dst


def edit_meta(d, **changes):
    dst = copy_dataset(d)
    meta = json.loads((dst / "meta.json").read_text())
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    (dst / "meta.json").write_text(json.dumps(meta))


def truncate(path, n_bytes):
    path.write_bytes(path.read_bytes()[:-n_bytes])


def put_token(path, value):
    ids = np.fromfile(path, dtype=np.uint16)
    ids[len(ids) // 2] = value
    ids.tofile(path)


def empty_val(d):
    dst = copy_dataset(d)
    (dst / "val.bin").write_bytes(b"")
    meta = json.loads((dst / "meta.json").read_text())
    meta["val_tokens"] = 0
    (dst / "meta.json").write_text(json.dumps(meta))


def with_ckpt(d, tiny, name="ckpt.pt"):
    (d / "out").mkdir(exist_ok=True)
    shutil.copy(tiny / "ckpt.pt", d / "out" / name)


def truncated_ckpt(d, tiny):
    (d / "out").mkdir()
    data = (tiny / "ckpt.pt").read_bytes()
    (d / "out" / "ckpt.pt").write_bytes(data[: len(data) // 2])


def other_vocab_data(d, tiny):
    with_ckpt(d, tiny)
    dst = copy_dataset(d)
    meta = json.loads((dst / "meta.json").read_text())
    meta["chars"] += "~"
    meta["vocab_size"] += 1
    (dst / "meta.json").write_text(json.dumps(meta))


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def unchanged(rel):
    """A check that a file the failed run must not touch is still there, byte for byte."""
    def check(d, before):
        assert md5(d / rel) == before[rel], f"{rel} was modified"
    check.files = [rel]
    return check


def no_marker(d, before):
    assert not (d / "marker").exists(), "the malicious checkpoint's code ran"


def fused_unavailable_norm():
    import normalizers
    return next((n for n in normalizers.NORMALIZERS if normalizers.unavailable_reason(n, "cpu", 0.1)), None)


_FUSED_NORM = fused_unavailable_norm()
NO_CUDA = not torch.cuda.is_available()
DDP_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}  # what torchrun sets for a 2-process worker

# (id, program, arguments, words the error must contain, setup(d, tiny) or None, extra: env / check / skip)
BAD_INPUTS = [
    # --- train.py: settings ---
    ("unknown-key", "train", ["--n_layers=2"], ["unknown config key 'n_layers'", "did you mean 'n_layer'"], None,
     {"fresh": True}),
    ("wrong-type", "train", ["--n_layer=two"], ["--n_layer=two", "expected an int"], None, {}),
    ("float-for-int", "train", ["--max_iters=1e3"], ["max_iters must be an int", "1000.0"], None, {}),
    ("bad-bool", "train", ["--compile=maybe"], ["--compile=maybe", "expected true or false"], None, {}),
    ("override-without-equals", "train", ["--n_layer", "2"], ["--n_layer", "overrides are written --key=value"],
     None, {}),
    ("missing-config-file", "train!", ["config/nope.py"], ["config file config/nope.py not found"], None, {}),
    ("config-syntax-error", "train!", ["{d}/bad.py"], ["config file", "bad.py, line 2", "syntaxerror"],
     lambda d, t: (d / "bad.py").write_text("n_layer = 2\nn_head = = 2\n"), {}),
    ("config-runtime-error", "train!", ["{d}/bad.py"], ["bad.py, line 1", "nameerror", "plain assignments"],
     lambda d, t: (d / "bad.py").write_text("n_layer = layers * 2\n"), {}),
    ("config-unknown-key", "train!", ["{d}/bad.py"], ["unknown config key 'n_layers'", "bad.py"],
     lambda d, t: (d / "bad.py").write_text("n_layers = 2\n"), {}),
    ("n_embd-not-divisible", "train", ["--n_embd=30", "--n_head=4"], ["n_embd (30) must be divisible by n_head (4)"],
     None, {}),
    ("diff-odd-n_head", "train", ["--attn_norm=diff", "--n_head=3", "--n_embd=48"], ["diff", "n_head must be even"],
     None, {}),
    ("unknown-pos_emb", "train", ["--pos_emb=alibi"], ["pos_emb must be one of learned, rope, none", "'alibi'"], None,
     {}),
    ("rope-odd-head-width", "train", ["--pos_emb=rope", "--n_embd=36", "--n_head=4"],
     ["pos_emb='rope'", "head width n_embd/n_head must be even", "36/4 = 9"], None, {}),
    ("unknown-attn_norm", "train", ["--attn_norm=sparsemax"], ["unknown attn_norm 'sparsemax'", "softmax1"], None, {}),
    ("unknown-attn_impl", "train", ["--attn_impl=turbo"], ["unknown attn_impl 'turbo'", "reference"], None, {}),
    ("fused-unavailable", "train", [f"--attn_norm={_FUSED_NORM}", "--attn_impl=fused", "--attn_dropout=0.1"],
     ["attn_impl=fused cannot run", "attn_impl=auto"], None, {"skip": _FUSED_NORM is None}),
    ("zero-lr", "train", ["--learning_rate=0"], ["learning_rate must be > 0"], None, {}),
    ("negative-lr", "train", ["--learning_rate=-0.001"], ["learning_rate must be > 0"], None, {}),
    ("zero-batch", "train", ["--batch_size=0"], ["batch_size must be > 0"], None, {}),
    ("negative-batch", "train", ["--batch_size=-4"], ["batch_size must be > 0"], None, {}),
    ("eval_interval-0", "train", ["--eval_interval=0"], ["eval_interval must be > 0"], None, {}),
    ("keep_checkpoints-0", "train", ["--keep_checkpoints=0"], ["keep_checkpoints must be > 0"], None, {}),
    ("negative-max_iters", "train", ["--max_iters=-1"], ["max_iters must be >= 0"], None, {}),
    ("dropout-1", "train", ["--dropout=1.0"], ["dropout must be in [0, 1)"], None, {}),
    ("beta1-above-1", "train", ["--beta1=1.5"], ["beta1 must be in [0, 1)"], None, {}),
    ("bad-dtype", "train", ["--dtype=float8"], ["dtype='float8' is not one of", "bfloat16"], None, {}),
    ("bad-device", "train", ["--device=tpu"], ["device='tpu'", "use cpu, cuda"], None, {}),
    ("cuda-without-gpu", "train", ["--device=cuda"], ["no cuda gpu", "--device=cpu"], None, {"skip": not NO_CUDA}),
    ("bad-init_from", "train", ["--init_from=latest"], ["init_from='latest' is not one of", "resume"], None, {}),
    ("grad-accum-vs-world-size", "train", ["--gradient_accumulation_steps=3"],
     ["gradient_accumulation_steps (3) must be a multiple of the number of processes (2)"], None, {"env": DDP_ENV}),
    # --- train.py: data ---
    ("missing-dataset", "train", ["--dataset=nosuch"], ["dataset 'nosuch' is not prepared", "prepare_data.py nosuch"],
     None, {}),
    ("block_size-beyond-data", "train", ["--block_size=200000"], ["val split has 111540 tokens", "lower block_size"],
     None, {}),
    ("train.bin-odd-size", "train", ["--dataset=bad"], ["train.bin holds 2007707 bytes", "--force"],
     lambda d, t: truncate(copy_dataset(d) / "train.bin", 1), {}),
    ("train.bin-truncated", "train", ["--dataset=bad"], ["train.bin holds 2007706 bytes", "1003854 uint16 tokens"],
     lambda d, t: truncate(copy_dataset(d) / "train.bin", 2), {}),
    ("val.bin-missing", "train", ["--dataset=bad"], ["val.bin holds 0 bytes",
                                                     "prepare_data.py --text file ... --name bad --force"],
     lambda d, t: (copy_dataset(d) / "val.bin").unlink(), {}),
    ("token-id-beyond-vocab", "train", ["--dataset=bad"], ["val.bin holds token ids >= vocab_size 65", "--force"],
     lambda d, t: put_token(copy_dataset(d) / "val.bin", 65), {}),
    ("meta-not-json", "train", ["--dataset=bad"], ["meta.json is damaged", "jsondecodeerror", "--force"],
     lambda d, t: truncate(copy_dataset(d) / "meta.json", 20), {}),
    ("meta-missing-key", "train", ["--dataset=bad"], ["meta.json is damaged", "train_tokens"],
     lambda d, t: edit_meta(d, train_tokens=None), {}),
    ("meta-float-dtype", "train", ["--dataset=bad"], ["does not fit token dtype float32"],
     lambda d, t: edit_meta(d, dtype="float32"), {}),
    ("meta-vocab-too-big", "train", ["--dataset=bad"], ["vocab_size 70000 does not fit token dtype uint16"],
     lambda d, t: edit_meta(d, vocab_size=70000), {}),
    ("meta-chars-vs-vocab", "train", ["--dataset=bad"], ["lists 64 characters but vocab_size 65"],
     lambda d, t: edit_meta(d, chars="\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxy"), {}),
    ("empty-val-split", "train", ["--dataset=bad"], ["val split has 0 tokens", "too few"],
     lambda d, t: empty_val(d), {}),
    # --- train.py: out_dir and checkpoints ---
    ("out_dir-under-a-file", "train", ["--out_dir={d}/file/out"], ["cannot create out_dir", "not a directory",
                                                                    "choose another --out_dir"],
     lambda d, t: (d / "file").write_text("x"), {}),
    ("resume-without-checkpoint", "train", ["--init_from=resume", "--out_dir={d}/out"],
     ["init_from=resume but there is no", "ckpt.pt", "init_from=scratch or auto"], None, {}),
    ("scratch-over-checkpoint", "train", ["--init_from=scratch", "--out_dir={d}/out"],
     ["exists and init_from=scratch would overwrite it", "new out_dir"], with_ckpt,
     {"check": unchanged("out/ckpt.pt")}),
    ("only-older-checkpoints", "train", ["--out_dir={d}/out"], ["holds older checkpoints (ckpt-00000005.pt)",
                                                               "but no ckpt.pt"],
     lambda d, t: with_ckpt(d, t, "ckpt-00000005.pt"), {"check": unchanged("out/ckpt-00000005.pt")}),
    ("resume-other-architecture", "train", ["--n_layer=3", "--out_dir={d}/out"],
     ["was trained with a different model", "n_layer=2 there, 3 now", "another out_dir"], with_ckpt,
     {"check": unchanged("out/ckpt.pt")}),
    ("resume-other-attn_norm", "train", ["--attn_norm=softmax1", "--out_dir={d}/out"],
     ["different model", "attn_norm='softmax' there, 'softmax1' now"], with_ckpt, {"check": unchanged("out/ckpt.pt")}),
    ("resume-other-vocab", "train", ["--dataset=bad", "--out_dir={d}/out"],
     ["different model", "vocab_size=65 there, 66 now"], other_vocab_data, {}),
    ("truncated-checkpoint", "train", ["--out_dir={d}/out"], ["is not a readable checkpoint", "truncated or corrupt",
                                                             "move it away to start over"], truncated_ckpt, {}),
    ("truncated-checkpoint-with-older", "train", ["--out_dir={d}/out"],
     ["is not a readable checkpoint", "copy ckpt-00000005.pt over it"],
     lambda d, t: truncated_ckpt(d, t) or with_ckpt(d, t, "ckpt-00000005.pt"), {}),
    ("not-a-checkpoint", "train", ["--out_dir={d}/out"], ["is not an attnorm checkpoint", "missing"],
     lambda d, t: torch.save({"weights": torch.ones(2)}, (d / "out").mkdir() or d / "out" / "ckpt.pt"), {}),
    ("malicious-checkpoint-auto", "train", ["--out_dir={d}/out"], ["could run code", "refused"],
     lambda d, t: write_malicious(d / "out" / "ckpt.pt", d / "marker"), {"check": no_marker, "fresh": True}),
    ("malicious-checkpoint-resume", "train", ["--init_from=resume", "--out_dir={d}/out"], ["could run code"],
     lambda d, t: write_malicious(d / "out" / "ckpt.pt", d / "marker", raw_pickle=True), {"check": no_marker}),
    ("persistent-nan", "train", ["--out_dir={d}/out", "--learning_rate=1e9", "--decay_lr=False", "--max_iters=40",
                                 "--max_nonfinite_steps=3", "--resume_changes=learning_rate,decay_lr"],
     ["3 non-finite steps in a row at iter 13", "lower learning_rate", "last good checkpoint"],
     with_ckpt, {"check": unchanged("out/ckpt.pt")}),
    # --- sample.py ---
    ("sample-no-checkpoint", "sample", ["{d}/nowhere"], ["no checkpoint at", "train one first"], None, {}),
    ("sample-missing-start-file", "sample", ["{d}/out", "--start=FILE:{d}/prompt.txt"], ["no such file"],
     with_ckpt, {}),
    ("sample-start-file-not-utf8", "sample", ["{d}/out", "--start=FILE:{d}/prompt.txt"], ["is not utf-8 text"],
     lambda d, t: with_ckpt(d, t) or (d / "prompt.txt").write_bytes(b"\xff\xfe ROMEO"), {}),
    ("sample-char-not-in-vocab", "sample", ["{d}/out", "--start=ROMEO€"], ["'€'", "not in this model's vocabulary"],
     with_ckpt, {}),
    ("sample-empty-prompt", "sample", ["{d}/out", "--start="], ["the prompt is empty"], with_ckpt, {}),
    ("sample-zero-samples", "sample", ["{d}/out", "--num_samples=0"], ["num_samples", "must be >= 1"], None, {}),
    ("sample-truncated-checkpoint", "sample", ["{d}/out"], ["not a readable checkpoint"], truncated_ckpt, {}),
    ("sample-malicious-checkpoint", "sample", ["{d}/out"], ["could run code", "refused"],
     lambda d, t: write_malicious(d / "out" / "ckpt.pt", d / "marker"), {"check": no_marker}),
    # --- prepare_data.py ---
    ("prepare-unknown-dataset", "prepare", ["shakespear"], ["unknown dataset 'shakespear'", "choose one of"], None, {}),
    ("prepare-no-dataset", "prepare", [], ["name a dataset"], None, {}),
    ("prepare-missing-file", "prepare", ["--text", "{d}/nope.txt", "--name", "x"], ["nope.txt: no such file"],
     None, {}),
    ("prepare-empty-file", "prepare", ["--text", "{d}/empty.txt", "--name", "x"], ["empty.txt is empty"],
     lambda d, t: (d / "empty.txt").write_text(""), {}),
    ("prepare-unsupported-file", "prepare", ["--text", "{d}/a.csv", "--name", "x"], ["unsupported file type"],
     lambda d, t: (d / "a.csv").write_text("text\nhello\n"), {}),
    ("prepare-text-without-name", "prepare", ["--text", "{d}/a.txt"], ["needs --name"],
     lambda d, t: (d / "a.txt").write_text("hello"), {}),
    ("prepare-bad-val_fraction", "prepare", ["shakespeare_char", "--val_fraction=1.5"],
     ["val_fraction must be between 0 and 1"], None, {}),
    # --- run_training.sh ---
    ("run_training-no-config", "run", [], ["no config file given", "usage"], None, {}),
    ("run_training-missing-config", "run", ["config/nope.py"], ["config file 'config/nope.py' not found"], None, {}),
    ("run_training-bad-override", "run", [CPU_CONFIG, "--n_layrs=2"], ["unknown config key 'n_layrs'"], None, {}),
    ("run_training-unprepared-dataset", "run", [CPU_CONFIG, "--dataset=nosuch_dataset"],
     ["dataset 'nosuch_dataset' is not prepared", "prepare_data.py nosuch_dataset"], None, {}),
]


# train.py and sample.py cases run in forked children of one Python that has imported torch once: each child
# runs the script as __main__ (runpy) with its own argv, cwd, env and stdout/stderr, and exits as the
# interpreter would (SystemExit text to stderr with status 1, a traceback with status 1). A fresh interpreter
# per case would cost ~2 s of imports each. prepare_data.py, run_training.sh and the cases marked "fresh" run in
# fresh processes.
FORKER = r"""
import json, os, runpy, sys, traceback
import torch
torch.set_num_threads(1)  # no thread pool: forking is safe
sys.path.insert(0, sys.argv[1])
import checkpoint, kernels, model, prepare_data, train  # noqa: F401  (imported once, shared by the children)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = job["argv"]
        sys.path[0] = os.path.dirname(job["argv"][0])
        code = 0
        try:
            runpy.run_path(job["argv"][0], run_name="__main__")
        except SystemExit as e:
            if isinstance(e.code, str):
                sys.stderr.write(e.code + "\n")
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


def command(program, args, d):
    args = [a.replace("{d}", str(d)) for a in args]
    if program == "train":  # the tiny config plus the case's overrides; a 2-iteration run if one were accepted
        return train_cmd(f"--out_dir={d}/out", "--max_iters=2", *args)
    return {"train!": [PY, str(REPO / "train.py")],  # only the case's arguments (config file cases)
            "sample": [PY, str(REPO / "sample.py"), "--max_new_tokens=5", "--num_samples=1"],
            "prepare": [PY, str(REPO / "prepare_data.py"), "--out_dir", str(d / "prepared")],
            "run": ["bash", str(REPO / "run_training.sh")]}[program] + args


@pytest.fixture(scope="module")
def bad_input_results(work, tiny_ckpt, tmp_path_factory):
    """{case id: (CompletedProcess, case dir, md5 of the files its check guards)} for every case of BAD_INPUTS."""
    root = tmp_path_factory.mktemp("bad")
    cases = [c for c in BAD_INPUTS if not c[5].get("skip")]
    jobs = {}
    for name, program, args, _, setup, extra in cases:
        d = root / name
        (d / "data").mkdir(parents=True)
        (d / "data" / "shakespeare_char").symlink_to(work / "data" / "shakespeare_char")
        if setup:
            setup(d, tiny_ckpt)
        before = {f: md5(d / f) for f in getattr(extra.get("check"), "files", [])}
        fresh = program in ("prepare", "run") or extra.get("fresh", False)
        jobs[name] = (command(program, args, d), d, extra.get("env", {}), before, fresh)

    def fresh_process(name):
        cmd, d, env, _, _ = jobs[name]
        proc = subprocess.run(cmd, cwd=d, env={**ENV, **env}, capture_output=True, text=True, timeout=300)
        (d / "stderr.txt").write_text(proc.stderr)  # kept for debugging, like the forked cases' output
        return proc

    def forked(names):
        forker = root / "forker.py"
        forker.write_text(FORKER)
        proc = subprocess.Popen([PY, str(forker), str(REPO)], env=ENV, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        results = {}
        for name in names:
            cmd, d, env, _, _ = jobs[name]
            out, err = d / "stdout.txt", d / "stderr.txt"
            proc.stdin.write(json.dumps({"argv": cmd[1:], "cwd": str(d), "env": env, "stdout": str(out),
                                         "stderr": str(err)}) + "\n")
            proc.stdin.flush()
            code = int(proc.stdout.readline())
            results[name] = subprocess.CompletedProcess(cmd, code, out.read_text(), err.read_text())
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        return results

    fresh = [n for n in jobs if jobs[n][4]]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        in_forks = pool.submit(forked, [n for n in jobs if not jobs[n][4]])
        results = dict(zip(fresh, pool.map(fresh_process, fresh)))
        results.update(in_forks.result())
    return {name: (results[name], jobs[name][1], jobs[name][3]) for name in jobs}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(case, bad_input_results):
    name, program, args, words, _, extra = case
    if extra.get("skip"):
        pytest.skip("not applicable on this machine")
    proc, d, before = bad_input_results[name]
    stderr = proc.stderr
    assert proc.returncode != 0, f"accepted: {proc.stdout[-2000:]}"
    assert "Traceback" not in stderr + proc.stdout, stderr
    error = [line for line in stderr.splitlines() if "error: " in line]
    assert error, stderr
    for word in words:
        assert word.lower() in stderr.lower(), f"{word!r} not in the error: {stderr[-2000:]}"
    if extra.get("check"):
        extra["check"](d, before)


def test_bad_input_table_is_documented():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    missing = [c[0] for c in BAD_INPUTS if f"`{c[0]}`" not in doc]
    assert not missing, f"add these to docs/troubleshooting.md: {missing}"
    assert len(BAD_INPUTS) >= 25
