"""run_study.sh and analysis/study.py with its launch, significance and study_report: tiny studies end to end (a
re-run, changed settings, --rerun, a sweep, gates and optimizers, wandb offline), the variants and their names, the
statistics against hand-computed cases, the study settings of config files."""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import configurator
from analysis import launch, run_steps, significance, study, study_report
from analysis.plots import fmt
from checkpoint import load_checkpoint
from configurator import ConfigError
from normalizers import NORMALIZERS
from normalizers.gates import GATES
from train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import wandb_run_contents  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=20",
        "--lr_decay_iters=20", "--warmup_iters=5", "--eval_interval=10", "--eval_iters=2", "--log_interval=10",
        "--log_stats=False", "--max_tokens=64", "--calib_batches=2"]  # no stats in training: the study's own


def run_study(root, *args, ok=True, env=None, cwd=None):
    """./run_study.sh (in the repository, on its data/), or with cwd the same study run there, on cwd's data/."""
    study = [sys.executable, "-m", "analysis.study"] if cwd else ["./run_study.sh"]
    cmd = [*study, str(REPO / "config/study_cpu.py"), "--study_root", str(root), "--jobs", "2", *TINY, *args]
    env = {**(env or os.environ), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=cwd or REPO, capture_output=True, text=True, timeout=600, env=env)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def wandb_env(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}
    env.pop("WANDB_API_KEY", None)
    return env


def test_tiny_study_end_to_end_a_rerun_and_changed_settings(tmp_path):
    env = wandb_env(tmp_path)
    first = ["--norms", "softmax,softmax1", "--seeds", "0", "--name", "tiny", "--wandb_log=True"]
    out = run_study(tmp_path, *first, env=env).stdout
    study_dir = tmp_path / "tiny"
    report = (study_dir / "report.md").read_text()
    for norm in ("softmax", "softmax1"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {norm} | 1 |")]
        assert len(rows) == 3, report  # a row in each mean ± std table (model, quantization, attention sinks)
        assert rows[1].split(" | ")[-1].strip(" |").split(" ± ")[0] in ("8", "6", "5", "4", "–")  # min act. bits
        assert "| – ±" not in rows[0] and "| nan ±" not in rows[0]  # the study's model_stats filled the columns
        assert f"[{norm}-s0" in out  # its progress lines
    assert "report: " in out and "ETA" in out
    assert "n_layer=1 " in report and "seed ∈ {0}" in report  # the settings of the runs it shows
    pngs = sorted(study_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"bars_model.png", "bars_quantization.png", "layers_act_kurtosis_token.png"}
    for png in pngs + sorted((study_dir / "per_run").glob("*.png")):
        assert png.stat().st_size > 1000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for image in report.split("![")[1:]:  # every image the report shows exists
        assert (study_dir / image.split("(")[1].split(")")[0]).exists()

    # wandb: one group per study, tags from train.py; the study's evaluation wrote the final numbers to the summary
    for norm in ("softmax", "softmax1"):
        run_dir = study_dir / "runs" / f"{norm}-s0"
        contents = [wandb_run_contents(f) for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]
        assert len({c["run"].run_id for c in contents}) == 1  # training and summary: the same wandb run
        assert all(c["run"].run_group == "tiny" for c in contents)
        assert {norm, "seed=0"} <= set(contents[0]["run"].tags)
        ev = json.loads((run_dir / "eval.json").read_text())
        summary = {k: v for c in contents for k, v in c["summary"].items()}
        for key in run_steps.WANDB_SUMMARY:
            assert summary[key] == ev[key], key

    checkpoints = sorted(study_dir.glob("runs/*/ckpt.pt"))
    mtimes = [p.stat().st_mtime_ns for p in checkpoints]
    again = run_study(tmp_path, *first, env=env).stdout
    assert "skip softmax-s0: finished" in again and "skip softmax1-s0: finished" in again
    assert "0 to do" in again and "iter " not in again  # train.py never ran
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes

    # Other settings: refused before anything runs, in one line that names the setting and both ways on.
    report_before = (study_dir / "report.md").read_text()
    changed = run_study(tmp_path, *first, "--n_layer=2", ok=False, env=env)
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 run(s)"), changed.stderr
    assert "n_layer=1 there, 2 now" in lines[0] and "--name" in lines[0] and "--rerun" in lines[0]
    assert "iter " not in changed.stdout and (study_dir / "report.md").read_text() == report_before
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes


def test_sweep_picks_the_lowest_val_loss_per_variant_and_rerun_retrains(tmp_path, workdir):
    sweep = ["--norms", "softmax", "--name", "sweep", "--sweep", "learning_rate=1e-3,1e-2"]
    out = run_study(tmp_path, *sweep, "--gates", "headwise", "--seeds", "0,1", cwd=workdir).stdout
    runs = tmp_path / "sweep" / "runs"
    report = (tmp_path / "sweep" / "report.md").read_text()
    names, chosen = [], {}
    for variant in ("softmax", "softmax+headwise"):  # each variant picks its own learning rate
        stage1 = {lr: json.loads((runs / f"{variant}-learning_rate={lr}-s0" / "eval.json").read_text())["val_loss"]
                  for lr in ("0.001", "0.01")}
        best = chosen[variant] = min(stage1, key=stage1.get)
        assert f"sweep: {variant} at learning_rate={best}" in out
        names += [f"{variant}-learning_rate={lr}-s0" for lr in stage1] + [f"{variant}-learning_rate={best}-s1"]
        assert json.loads((runs / f"{variant}-learning_rate={best}-s1" / "metrics.jsonl").read_text().splitlines()[
            0])["config"]["learning_rate"] == float(best)
        row = next(line for line in report.splitlines() if line.startswith(f"| {variant} | ") and "**" in line)
        other = next(lr for lr in stage1 if lr != best)
        assert f"**{fmt(stage1[best], 4)}**" in row and f" {fmt(stage1[other], 4)} " in row
        assert f"| {variant} | 2 |" in report  # the comparison: both seeds at the chosen rate
    assert sorted(p.name for p in runs.iterdir()) == sorted(names)
    assert "At the edge of the grid" in report  # two values: the choice is always at an edge

    # --rerun deletes and retrains the runs asked for that were trained with other settings (seed 1 here), and
    # the report describes the runs it shows.
    best = chosen["softmax"]
    sweep[-1] = f"learning_rate={best}"
    rerun = run_study(tmp_path, *sweep, "--seeds", "1", "--n_layer=2", "--rerun", cwd=workdir).stdout
    assert f"rerun softmax-learning_rate={best}-s1: deleted, it was trained with n_layer=1" in rerun
    metrics = (runs / f"softmax-learning_rate={best}-s1" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[0])["config"]["n_layer"] == 2
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "--n_layer=2" in report and "n_layer=2 " in report and "2 layers" in report and "seed ∈ {1}" in report


def comparison_row(report, section, metric, comparison):
    """The cells after the comparison's name in a noise table of the report, under `## section`."""
    text = report.split(f"## {section}\n")[1].split("\n## ")[0]
    row = next(line for line in text.splitlines() if line.startswith(f"| {metric} | {comparison} | "))
    return [cell.strip("* ") for cell in row.strip("|").split(" | ")[2:]]


def test_gates_and_optimizers_train_each_variant_and_compare_it_with_its_own_optimizer(tmp_path, workdir):
    run_study(tmp_path, "--norms", "softmax1,softmax", "--gates", "headwise", "--optimizers", "adamw,muon",
              "--seeds", "0,1", "--name", "variants", cwd=workdir)
    runs = tmp_path / "variants" / "runs"
    variants = {"softmax": ("softmax", "none", "adamw"), "softmax+headwise": ("softmax", "headwise", "adamw"),
                "softmax1": ("softmax1", "none", "adamw"), "softmax+muon": ("softmax", "none", "muon"),
                "softmax+headwise+muon": ("softmax", "headwise", "muon"), "softmax1+muon": ("softmax1", "none", "muon")}
    assert sorted(p.name for p in runs.iterdir()) == sorted(f"{name}-s{seed}" for name in variants for seed in (0, 1))
    ppl = {}
    for name, settings in variants.items():
        for seed in (0, 1):
            config = load_checkpoint(runs / f"{name}-s{seed}")["config"]
            assert (config["attn_norm"], config["attn_gate"], config["optimizer"], config["seed"]) == (*settings, seed)
        ppl[name] = [json.loads((runs / f"{name}-s{seed}" / "eval.json").read_text())["val_ppl"] for seed in (0, 1)]

    report = (tmp_path / "variants" / "report.md").read_text()
    for name in variants:  # a row per variant in each mean ± std table (model, quantization, attention sinks)
        assert len([line for line in report.splitlines() if line.startswith(f"| {name} | 2 |")]) == 3, name

    def expect(a, b):
        result = scipy.stats.ttest_ind(ppl[a], ppl[b], equal_var=False)
        return [f"{np.mean(ppl[a]) - np.mean(ppl[b]):+.3g}", f"{result.pvalue:.2g}"]

    # Against the baseline with the same optimizer: softmax1+muon against softmax+muon, not against softmax.
    cells = comparison_row(report, "Which differences exceed seed noise", "val PPL", "softmax1+muon − softmax+muon")
    assert [cells[0], cells[2]] == expect("softmax1+muon", "softmax+muon")
    assert expect("softmax1+muon", "softmax+muon")[0] != expect("softmax1+muon", "softmax")[0]  # the check can tell
    assert comparison_row(report, "Which differences exceed seed noise", "sink", "softmax+headwise − softmax")
    assert "softmax1+muon − softmax |" not in report
    # The optimizer's effect: each variant under muon against itself under adamw.
    for name in ("softmax", "softmax+headwise", "softmax1"):
        cells = comparison_row(report, "The optimizer's effect", "val PPL", f"{name}+muon − {name}")
        assert [cells[0], cells[2]] == expect(f"{name}+muon", name)
    assert {"layers_attn_sink.png", "layers_attn_sink-muon.png"} <= {p.name for p in (tmp_path / "variants").iterdir()}


def test_data_that_cannot_be_prepared_is_one_error_line(tmp_path):
    (tmp_path / "data").write_text("not a directory")  # where the study would write data/shakespeare_char
    proc = run_study(tmp_path / "studies", cwd=tmp_path, ok=False)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: preparing data/shakespeare_char failed: ")
    assert (tmp_path / "data").read_text() == "not a directory"  # nothing lost


def test_holm_against_a_hand_computed_case():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, then 0.04·1 = 0.04 < 0.06 -> 0.06 (monotone)
    adjusted = significance.holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert np.allclose(adjusted[[0, 1, 2, 4]], [0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[3])
    assert significance.holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1


def test_welch_interval_against_the_formula():
    a, b = np.array([2.0, 2.4, 2.1, 2.6]), np.array([1.0, 1.1, 0.7])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
    half = scipy.stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff, low, high, p = significance.welch(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (low, high) == pytest.approx((diff - half, diff + half))
    assert p == pytest.approx(2 * scipy.stats.t.sf(diff / math.sqrt(va + vb), df))
    assert all(math.isnan(x) for x in significance.welch(a, np.array([1.0]))[1:])  # one seed: no interval


def rows(*xs):
    return [(None, {"m": x, "n": x}) for x in xs]


def variant(name):
    return study.Variant(name, "none", "adamw", name)


def test_noise_section_bolds_only_what_survives_holm():
    base, far, near = (1.00, 1.01, 0.99), (2.00, 2.01, 1.99), (1.02, 1.03, 1.025)
    p_near = scipy.stats.ttest_ind(near, base, equal_var=False).pvalue
    # 4 testable comparisons (far and near on 2 metrics each; "single" has one seed): near's two rank 3rd and 4th
    # by p, so Holm multiplies them by 2 and 1 and takes the running maximum: 2·p. Significant alone, not after.
    assert p_near < 0.05 < 2 * p_near
    softmax, far_v, near_v, single, failed = map(variant, ["softmax", "far", "near", "single", "failed"])
    by_variant = {softmax: rows(*base), far_v: rows(*far), near_v: rows(*near), single: rows(5.0)}
    pairs = [(v, softmax) for v in (far_v, near_v, single, failed)]  # failed: no runs, left out
    text = study_report.noise_section(by_variant, [("metric m", "m"), ("metric n", "n")], pairs, "Against softmax.")
    cells = {tuple(line.split(" | ")[:2]): line for line in text.splitlines() if line.startswith("| metric")}
    # by hand: se = √(2·0.0001/3) = 0.00816, t(0.975, df 4) = 2.776: 1 ± 0.0227
    assert "| **+1** | **[+0.977, +1.02]** |" in cells[("| metric m", "far − softmax")]
    assert "**" not in cells[("| metric m", "near − softmax")]
    assert cells[("| metric m", "near − softmax")].endswith(f"| {p_near:.2g} | {2 * p_near:.2g} |")
    assert cells[("| metric m", "single − softmax")].endswith("| n/a | n/a | n/a |")  # one seed: no verdict
    assert len(cells) == 1 + 3 * 2 and text.startswith("Against softmax. ")  # the header; "failed" left out
    assert "over all 4 comparisons" in text
    assert "far − softmax: metric m +1" in text and "near − softmax:" not in text  # the survivors


def test_variants_have_unique_names_that_show_what_differs_from_the_defaults():
    gates = [gate for gate in GATES if gate != "none"]
    variants = study.study_variants(list(NORMALIZERS), gates, ["adamw", "muon"], "none")
    assert len(variants) == (len(NORMALIZERS) + len(gates)) * 2  # each gate on the baseline, both optimizers
    assert len({v.name for v in variants}) == len(variants)
    assert len({(v.norm, v.gate, v.optimizer) for v in variants}) == len(variants)
    for v in variants:  # the name parses back: attn_norm, then the gate unless none, the optimizer unless adamw
        norm, *rest = v.name.split("+")
        shown = [v.gate] * (v.gate != "none") + [v.optimizer] * (v.optimizer != "adamw")
        assert (norm, rest) == (v.norm, shown)
    names = [v.name for v in variants]
    assert names[:len(gates) + 2] == ["softmax", *(f"softmax+{g}" for g in gates), list(NORMALIZERS)[1]]
    assert {"sink+muon", "softmax+headwise+muon"} <= set(names)
    # No gates, AdamW: the names are the attn_norms (registry order), as run directories were always named; a
    # study of Muon alone or of a gate on every normalizer names them as its reports do (read_metrics' variant).
    assert [v.name for v in study.study_variants(["symax", "softmax"], [], ["adamw"], "none")] == ["softmax", "symax"]
    plain = study.study_variants(["symax", "softmax"], [], ["muon"], "headwise")
    assert [(v.name, v.optimizer) for v in plain] == [("softmax+headwise+muon", "muon"), ("symax+headwise+muon", "muon")]
    assert study.Run(plain[1], 2, (("learning_rate", 0.001),)).label == "symax+headwise+muon-learning_rate=0.001-s2"
    # The baselines: per optimizer; the optimizer's effect: each variant against itself under the first optimizer.
    against_baseline, optimizer_effect, block_effect = significance.comparisons(study.study_variants(
        ["softmax", "sink"], ["headwise"], ["adamw", "muon"], "none"))
    assert [(v.name, ref.name) for v, ref in against_baseline] == [
        ("softmax+headwise", "softmax"), ("sink", "softmax"),
        ("softmax+headwise+muon", "softmax+muon"), ("sink+muon", "softmax+muon")]
    assert [(v.name, ref.name) for v, ref in optimizer_effect] == [
        ("softmax+muon", "softmax"), ("softmax+headwise+muon", "softmax+headwise"), ("sink+muon", "sink")]
    assert block_effect == []


def test_run_config_sets_the_variant_and_tags_its_gate(tmp_path):
    cfg = TrainConfig(device="cpu", dtype="float32", wandb_tags="mine")
    plain, gated = study.study_variants(["softmax"], ["headwise"], ["adamw", "muon"], "none")[2:]
    run = study.Run(gated, 1, (("learning_rate", 0.001),))
    run_cfg = study.run_config(cfg, run, tmp_path / "study" / "runs" / run.label)
    assert (run_cfg.attn_norm, run_cfg.attn_gate, run_cfg.optimizer, run_cfg.seed) == ("softmax", "headwise", "muon", 1)
    assert run_cfg.wandb_tags == "mine,attn_gate=headwise,learning_rate=0.001"  # train.py adds norm, optimizer, seed
    assert run_cfg.wandb_run_name == "softmax+headwise+muon-learning_rate=0.001-s1" and run_cfg.wandb_group == "study"
    assert study.run_config(cfg, study.Run(plain, 0), tmp_path / "study" / "runs" / "x").wandb_tags == "mine"


def axes(settings=None, overrides=(), **kw):
    args = argparse.Namespace(**{"norms": None, "gates": None, "optimizers": None, "blocks": None, "seeds": None,
                                 "sweep": None, "config": "cfg.py", **kw})
    cfg = TrainConfig()
    for override in overrides:
        key, _, value = override[2:].partition("=")
        configurator.set_key(cfg, key, value, "the command line")
    return study.study_axes(args, settings or {}, cfg, list(overrides))


def test_study_axes_default_to_the_registry_and_make_a_typed_grid():
    variants, seeds, points = axes()
    assert [v.name for v in variants] == list(NORMALIZERS) and seeds == [0, 1, 2] and points == [()]
    assert {(v.gate, v.optimizer) for v in variants} == {("none", "adamw")}
    _, _, points = axes(sweep=["learning_rate=1e-3,2e-3", "n_layer=2,3"])
    assert points == [(("learning_rate", 0.001), ("n_layer", 2)), (("learning_rate", 0.001), ("n_layer", 3)),
                      (("learning_rate", 0.002), ("n_layer", 2)), (("learning_rate", 0.002), ("n_layer", 3))]
    assert study.Run(variants[0], 1, points[1]).label == "softmax-learning_rate=0.001-n_layer=3-s1"
    # Gates and optimizers from the command line, else the config file's study settings, else the config's own.
    variants, _, _ = axes(norms="symax,softmax", gates="headwise", optimizers="adamw,muon")
    assert [v.name for v in variants] == ["softmax", "softmax+headwise", "symax", "softmax+muon",
                                          "softmax+headwise+muon", "symax+muon"]
    variants, _, _ = axes({"study_norms": ["softmax"], "study_gates": ["elementwise"], "study_optimizers": ["muon"]})
    assert [(v.name, v.gate, v.optimizer) for v in variants] == [("softmax+muon", "none", "muon"),
                                                                  ("softmax+elementwise+muon", "elementwise", "muon")]
    # --gates '' drops the config file's study_gates (study_sinks.py lists every gate); so does study_gates = []
    for settings, kw in [({"study_gates": ["headwise", "elementwise"]}, dict(gates="")), ({"study_gates": []}, {})]:
        assert [v.name for v in axes({"study_norms": ["softmax", "symax"], **settings}, **kw)[0]] == ["softmax", "symax"]
    variants, _, _ = axes(norms="softmax", gates="none", overrides=["--attn_gate=headwise", "--optimizer=muon"])
    assert [(v.name, v.gate, v.optimizer) for v in variants] == [("softmax+headwise+muon", "headwise", "muon"),
                                                                  ("softmax+muon", "none", "muon")]
    for bad, words in [(dict(sweep=["n_layer=2,x"]), "n_layer"), (dict(sweep=["seed=1,2"]), "set by the study"),
                       (dict(norms="softmax,nope"), "unknown attn_norm 'nope'"), (dict(seeds="0,a"), "--seeds"),
                       (dict(gates="nope"), "unknown attn_gate 'nope'"), (dict(gates="none"), "already has"),
                       (dict(gates="headwise,"), "an empty value"), (dict(seeds=""), "an empty value"),
                       (dict(sweep=["optimizer=adamw,muon"]), "--optimizers"),
                       (dict(sweep=["attn_gate=none,headwise"]), "--gates"),
                       (dict(optimizers="muon", overrides=["--optimizer=adamw"]), "both set")]:
        with pytest.raises(ConfigError, match=words):
            axes(**bad)


def test_each_variant_may_keep_its_own_settings():
    own = {"study_norms": ["softmax", "symax"], "study_optimizers": ["adamw", "muon"],
           "study_settings": {"symax": {"learning_rate": 8e-3}, "softmax+muon": {"learning_rate": 2e-3}}}
    variants, _, _ = axes(own)
    assert {v.name: v.settings for v in variants} == {"softmax": (), "symax": (("learning_rate", 0.008),),
                                                      "softmax+muon": (("learning_rate", 0.002),), "symax+muon": ()}
    cfg = TrainConfig(device="cpu", dtype="float32")
    symax = next(v for v in variants if v.name == "symax")
    assert study.run_config(cfg, study.Run(symax, 2), Path("study/x/runs/symax-s2")).learning_rate == 0.008
    assert study.run_config(cfg, study.Run(variants[0], 2), Path("study/x/runs/a")).learning_rate == cfg.learning_rate
    # a variant this study does not train is passed over; the command line overrides every variant's own
    variants, _, _ = axes({**own, "study_settings": {**own["study_settings"], "diff+headwise": {"n_layer": 2}}})
    assert {v.name: v.settings for v in variants}["symax"] == (("learning_rate", 0.008),)
    for kw in ({"sweep": ["learning_rate=1e-3,2e-3"]}, {"overrides": ["--learning_rate=1e-3"]}):
        assert all(v.settings == () for v in axes(own, **kw)[0])
    for settings, kw, words in [({"softmx": {"learning_rate": 1e-3}}, {}, "not a variant"),
                                ({"softmax+adam": {"learning_rate": 1e-3}}, {}, "not a variant"),
                                ({"symax": {"learning_rate": 1e-3}}, {"study_sweep": {"learning_rate": [1e-3]}},
                                 "both swept"),
                                ({"symax": {"optimizer": "muon"}}, {}, "sets optimizer"),
                                ({"symax": {"n_layr": 2}}, {}, "n_layer"),
                                ({"symax": {"learning_rate": "8e-3"}}, {}, "must be a float"),
                                (["symax"], {}, "must be a dict")]:
        with pytest.raises(ConfigError, match=words):
            axes({**own, **{k: v for k, v in kw.items() if k.startswith("study_")}, "study_settings": settings},
                 **{k: v for k, v in kw.items() if not k.startswith("study_")})


def test_config_files_hold_study_settings(tmp_path):
    cfg, settings = study.load_settings("config/study_cpu_full.py", ["--max_iters=7"])
    assert settings["study_sweep"] == {"learning_rate": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]} and settings["study_seeds"] == [0, 1, 2]
    quick, quick_study = study.load_settings("config/study_cpu.py", [])
    # the quick study: normalizers at their own tuned rates, each a point of the full study's grid (a normalizer
    # registered since its sweep trains at the config's learning_rate until the sweep is run again)
    assert set(quick_study["study_settings"]) <= set(NORMALIZERS) and "softmax" in quick_study["study_settings"]
    assert all(own["learning_rate"] in settings["study_sweep"]["learning_rate"]
               for own in quick_study["study_settings"].values())
    assert settings["study_settings"] == {} and settings["study_max_tokens"] == 32768 and cfg.eval_iters == 20
    assert (cfg.n_layer, cfg.n_embd, cfg.max_iters) == (quick.n_layer, quick.n_embd, 7)  # its model, the override
    variants, seeds, points = axes(settings)
    # every registered normalizer, each gate on softmax, both optimizers (the numbers its comment gives)
    assert len(variants) == (len(NORMALIZERS) + len(GATES) - 1) * 2 == 26
    assert {v.norm for v in variants} == set(NORMALIZERS) and {v.optimizer for v in variants} == {"adamw", "muon"}
    assert {v.gate for v in variants if v.norm == "softmax"} == set(GATES)
    assert (len(variants) * len(points), len(variants) * (len(seeds) - 1)) == (156, 52)  # stage 1, stage 2
    cfg, settings = study.load_settings("config/study_gpu.py", [])
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, settings["study_seeds"]) == (6, 384, 256, [0, 1, 2])
    variants, seeds, points = axes(settings)
    assert len(variants) * len(seeds) * len(points) == 3 * len(NORMALIZERS) == 30
    bad = tmp_path / "bad.py"
    bad.write_text("n_layer = 2\nstudy_seed = [0]\n")
    with pytest.raises(ConfigError, match="unknown study setting study_seed"):
        study.load_settings(str(bad), [])


def test_worker_envs_share_the_cores_and_the_gpus(monkeypatch):
    envs = launch.worker_envs("cpu", None, n_runs=1)
    assert len(envs) == 1 and int(envs[0]["OMP_NUM_THREADS"]) >= 1
    cores = len(os.sched_getaffinity(0))
    envs = launch.worker_envs("cpu", None, n_runs=100)
    assert len(envs) == cores and all(e["OMP_NUM_THREADS"] == "1" for e in envs)
    assert [e["OMP_NUM_THREADS"] for e in launch.worker_envs("cpu", 1, n_runs=5)] == [str(cores)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in launch.worker_envs("cuda", None, 12)] == ["3", "5"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in launch.worker_envs("cuda", 5, 12)] == ["3", "5", "3", "5", "3"]
