"""analysis/study.py and run_study.sh: a tiny two-norm study end to end, its re-run, and the seed-noise verdicts."""
import os
import subprocess
from pathlib import Path

from analysis import study

REPO = Path(__file__).resolve().parents[1]

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=30",
        "--lr_decay_iters=30", "--warmup_iters=5", "--eval_interval=15", "--eval_iters=2", "--log_interval=10",
        "--log_stats=False", "--max_tokens=512", "--calib_batches=2"]  # no stats in training: the study's own


def run_study(root):
    cmd = ["./run_study.sh", "config/shakespeare_char/cpu.py", "--norms", "softmax,symax", "--seeds", "0",
           "--name", "tiny", "--study_root", str(root), "--jobs", "2", *TINY]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_tiny_study_completes_and_a_rerun_skips_finished_runs(tmp_path):
    out = run_study(tmp_path)
    study_dir = tmp_path / "tiny"
    report = (study_dir / "report.md").read_text()
    for norm in ("softmax", "symax"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {norm} | 1 |")]
        assert len(rows) == 2, report  # a row in each mean ± std table (model, quantization)
        assert "| – ±" not in rows[0] and "| nan ±" not in rows[0]  # the study's model_stats filled the columns
        assert f"[{norm}-s0" in out  # its progress lines
    assert "report: " in out and "ETA" in out
    pngs = sorted(study_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"bars_model.png", "bars_quantization.png", "layers_act_kurtosis_token.png"}
    for png in pngs + sorted((study_dir / "per_run").glob("*.png")):
        assert png.stat().st_size > 1000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for image in report.split("![")[1:]:  # every image the report shows exists
        assert (study_dir / image.split("(")[1].split(")")[0]).exists()

    checkpoints = sorted(study_dir.glob("runs/*/ckpt.pt"))
    assert len(checkpoints) == 2
    mtimes = [p.stat().st_mtime_ns for p in checkpoints]
    again = run_study(tmp_path)
    assert "skip softmax-s0: finished" in again and "skip symax-s0: finished" in again
    assert "0 to do" in again and "iter " not in again  # train.py never ran
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes
    assert (study_dir / "report.md").exists()


def rows(*xs):
    return [(None, {"m": x}) for x in xs]


def test_noise_section_flags_only_differences_beyond_seed_noise():
    by_norm = {"softmax": rows(1.00, 1.01, 0.99), "far": rows(2.00, 2.01, 1.99), "near": rows(1.00, 1.02, 0.99),
               "single": rows(5.0)}
    text = study.noise_section(by_norm, [("metric m", "m")])
    row = next(line for line in text.splitlines() if line.startswith("| metric m |"))
    far, near, single = row.split(" | ")[1:4]
    assert far.startswith("**+1 (p = ")  # beyond noise: bold
    assert not near.startswith("**") and "p = " in near
    assert "n/a" in single  # one seed: no noise estimate, no verdict
    assert "**near** vs softmax: within seed noise" in text and "**far** vs" not in text


def test_worker_envs_share_the_cores():
    envs = study.worker_envs("cpu", None, n_runs=1)
    assert len(envs) == 1 and int(envs[0]["OMP_NUM_THREADS"]) >= 1
    cores = len(os.sched_getaffinity(0))
    envs = study.worker_envs("cpu", None, n_runs=100)
    assert len(envs) == cores and all(e["OMP_NUM_THREADS"] == "1" for e in envs)
    assert [e["OMP_NUM_THREADS"] for e in study.worker_envs("cpu", 1, n_runs=5)] == [str(cores)]
