"""benchmarks/gpu_session.sh, the one command a GPU session runs, as a dry run on CPU (GPU_SESSION_DRY_RUN=1) on a
machine without datasets, wandb and nbformat (the GPU machine has none of them), and its benchmarks keeping every
row they measured when a time limit stops them."""
import subprocess
import sys
import tarfile

import pytest

from benchmarks import train_throughput
from helpers import REPO, subprocess_env

# Imported by sitecustomize before anything else: these modules cannot be imported, as on the GPU machine.
ABSENT = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"datasets", "wandb", "nbformat"}:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)")
sys.meta_path.insert(0, Absent())
"""


def test_dry_run_without_datasets_wandb_nbformat(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(ABSENT)
    out = tmp_path / "out"
    env = subprocess_env(GPU_SESSION_DRY_RUN="1", GPU_SESSION_SECONDS="400", OUT=str(out))
    env["PYTHONPATH"] = f"{tmp_path / 'site'}:{env['PYTHONPATH']}"
    check = subprocess.run([sys.executable, "-c", "import wandb"], env=env, capture_output=True, text=True)
    assert "absent on the GPU machine" in check.stderr  # the blocker works
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    summary = (out / "summary.md").read_text()
    rows = [line.split("|")[1:-1] for line in summary.splitlines() if line.startswith("| ") and "step" not in line]
    assert [row[0].strip() for row in rows] == ["tests", "attention", "train", "shakespeare_char softmax",
                                                "shakespeare_char softmax1", "shakespeare_char symax"], summary
    assert all(row[1].strip() == "ok" for row in rows), summary + (out / "session.log").read_text()[-3000:]
    limits = [int(row[2]) for row in rows]
    # the first step's share: the budget less a 15 s margin, by its cost over all (90 of 90 + 110 + 220 + 120 s);
    # a later step's is of what is left then, which is more than its share of the budget when earlier steps ended early
    assert abs(limits[0] - (400 - 15) * 90 / 540) <= 5 and min(limits) >= 15 and limits[2] >= (400 - 15) * 220 / 540
    assert "| softmax |" in (out / "train.md").read_text() and "| softmax |" in (out / "attention.md").read_text()
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert sum(name.endswith("metrics.jsonl") for name in tar.getnames()) == 3
    assert r.returncode == 0


def test_train_throughput_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """A run stopped after its first row (a time limit's SIGINT) has written that row."""
    real = train_throughput.measure
    calls = []

    def measure(*args):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_throughput, "measure", measure)
    out = tmp_path / "train.md"
    with pytest.raises(KeyboardInterrupt):
        train_throughput.main(["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--vocab_size", "65",
                               "--iters", "1", "--warmup", "0", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| softmax |")]
    assert len(rows) == 1
