"""
One run of a study (analysis.study): the steps it still needs (STEPS: training, then its evaluation) and doing the
evaluation steps in one process (`python -m analysis.study --evaluate RUN_DIR`, which the launchers start after
training).
"""

import json
from pathlib import Path

from analysis import quantize, read_metrics
from analysis.perplexity import read_eval_json
from checkpoint import CKPT_NAME, checkpoint_iter, load_checkpoint
from provenance import run_id
from train import TrainConfig

STEPS = ("train", "perplexity", "stats", "quantize", "wandb")
WANDB_SUMMARY = ["val_ppl", "min_act_bits"] + [f"delta_ppl_{name}" for name in quantize.VARIANTS]


def read_json(path):
    return json.loads(path.read_text()) if path.exists() else {}


def has_stats(record):
    return any(key.startswith("act_kurtosis_tensor/") for key in record)


def pending_steps(run_dir, max_iters, wandb_log, quant):
    """The steps of STEPS a run still needs; [] when it is finished. An evaluation counts as done only where
    eval.json's produced_by says this run's checkpoint at max_iters produced it (provenance.py), the quantization
    with the settings asked for: quant = {"max_tokens": N, "calib_batches": M}; anything else is done again."""
    if not (run_dir / CKPT_NAME).exists() or checkpoint_iter(run_dir) != max_iters:
        return [step for step in STEPS if step != "wandb" or wandb_log]
    ev, evals = read_eval_json(run_dir / "eval.json"), read_metrics(run_dir)["eval"]
    run = run_id(load_checkpoint(run_dir, mmap=True), TrainConfig.RESUME_FREE)
    by = ev.get("produced_by", {})

    def done(tool, keys, **settings):
        record = by.get(tool, {})
        return (record.get("run") == run and record.get("iter") == max_iters and all(k in ev for k in keys)
                and all(record.get(k) == v for k, v in settings.items()))

    steps = []
    if not done("perplexity_val", ["val_ppl"]):
        steps.append("perplexity")
    if not (evals and evals[-1]["iter"] == max_iters and has_stats(evals[-1])) and not done("stats", ["stats"]):
        steps.append("stats")
    if not done("quantize", quantize.EVAL_KEYS, **quant, tolerance=quantize.TOLERANCE):  # the study's tolerance
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
    from analysis.perplexity import open_run, produced_by, update_json
    from analysis.stats import model_stats, probe_batch
    from prepare_data import bos_starts, window_start

    run_dir = Path(run_dir)
    iters = checkpoint_iter(run_dir)
    quant = {"max_tokens": max_tokens, "calib_batches": calib_batches}
    steps = pending_steps(run_dir, iters, read_metrics(run_dir)["config"].get("wandb_log", False), quant)
    if "perplexity" in steps:
        perplexity.main([str(run_dir), "--device", device])
    if "stats" in steps:  # on the probe train.py uses: the first block_size windows of val (at BOS, if it does)
        model, ckpt, data, meta, eval_path = open_run(run_dir, None, device, None)
        T, val = ckpt["model_args"]["block_size"], data["val"]
        bos = window_start(ckpt["config"].get("window_start"), meta) == "bos"
        starts = bos_starts(val, meta["bos_id"], T) if bos else None
        probe = probe_batch(val, T, starts).to(device)
        update_json(eval_path, {"stats": model_stats(model.to(device), probe, triggers=meta.get("triggers"))},
                    {"stats": produced_by(ckpt, meta)})
        print(f"model_stats of {run_dir} written to eval.json")
    if "quantize" in steps:
        quantize.main([str(run_dir), "--device", device, "--max_tokens", str(max_tokens),
                       "--calib_batches", str(calib_batches)])
    if "wandb" in steps:
        write_wandb_summary(run_dir, iters)
