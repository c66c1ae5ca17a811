"""
A multi-seed study: train every (variant, seed) pair, evaluate each run, and compare the variants.

    ./run_study.sh config/study_cpu.py [--norms softmax,symax] [--gates headwise,...] [--optimizers adamw,muon]
                   [--blocks gpt2,llama] [--seeds 0,1,2] [--sweep key=a,b,c ...] [--name NAME] [--jobs N] [--rerun]
                   [--key=value ...] [--launcher local|slurm] [--no-wait] [--slurm_<setting> VALUE ...]
    python -m analysis.study CONFIG ...                                  (the same; run_study.sh only calls this)

What a study compares is a *variant*: an attn_norm with an output gate (attn_gate, normalizers/gates.py), an
optimizer and a block. --norms defaults to every registered normalizer (normalizers.NORMALIZERS), in the registry's
order; the first of them is the baseline. --gates (default: none) adds, per gate listed, the baseline with that gate;
the other variants keep the config's attn_gate ('none' unless it sets one). --optimizers (default: the config's
optimizer) is one more axis: every variant is trained with each optimizer listed. --blocks (default: the config's
block) is another: every variant is trained in each block listed (model.BLOCKS: gpt2, llama), which sets pos_emb,
norm, mlp and qk_norm. A variant's name is its attn_norm, then its gate unless none, its optimizer unless adamw and
its block unless gpt2 (analysis.variant_name, as in every report): softmax, softmax+headwise, sink+muon,
softmax+headwise+muon, softmax+llama. --attn_gate=... thus gates every variant; --optimizer=... is --optimizers with
one (the two are refused together, as are --pos_emb=... and the like with --blocks); none of them may be swept.
--seeds defaults to 0,1,2. A config file may set these for its study, with `study_norms`, `study_gates`,
`study_optimizers`, `study_blocks`, `study_seeds`, `study_sweep` and `study_jobs` (see STUDY_SETTINGS); the command
line overrides them. Every other assignment in it is a train.py setting.

Each run trains with `python train.py --key=value ...`, its settings resolved here (the config file, then the
overrides, then the variant's attn_norm, attn_gate and optimizer, seed, out_dir and the swept values) into
study/<name>/runs/<label>/ (name: the config file's stem; label: <variant>[-<key>=<value>...]-s<seed>); train.log
starts with the command. The study adds always_save_checkpoint=True, so that the checkpoint is the model at
max_iters (the runs are compared at equal steps) and a finished run can be told from an unfinished one. Then, in one
process per run: exact val perplexity (analysis.perplexity), model_stats on train.py's probe batch if the last eval
did not log them (log_stats=False), post-training quantization (analysis.quantize), and with wandb_log the run's
final numbers into its wandb summary. Finally study/<name>/report.md: mean ± std over seeds per variant, bar charts,
per-layer curves, each variant's difference to the baseline under the same optimizer and block (with two optimizers,
two baselines) and, with several optimizers (blocks), each variant's difference to itself under the first optimizer
(in the first block): the optimizer's (block's) effect, with 95% confidence intervals and Holm-corrected p-values,
and per_run/report.md (analysis.report).

Sweeps: `--sweep learning_rate=1e-3,2e-3,4e-3` (any train.py setting but those a variant sets; several --sweep make a
grid). Stage 1 trains every (variant, grid point) on the first seed and picks, per variant, the point with the
lowest exact val loss; stage 2 trains the other seeds at each variant's point. The report shows the sweep table and
flags a choice at the edge of the grid.

With --launcher slurm each run is a Slurm job (analysis/slurm.py: its settings, the jobs, waiting and collecting;
study_slurm_<setting> in a config file). With the default, --launcher local, runs go to a pool of workers: --jobs
per visible GPU's share (CUDA_VISIBLE_DEVICES set per run, round robin; default one run per GPU) when the config's
device is cuda, else --jobs CPU processes (default: one per core) sharing the cores (OMP_NUM_THREADS = cores / jobs;
for small models one thread per run beats many threads per run). With
wandb_log=True every run logs to the wandb group named after the study, tagged with its attn_norm, optimizer and
seed (by train.py), its attn_gate=<gate> unless none, its block=<block> unless gpt2, and its swept values.

A re-run skips finished runs (checkpoint at max_iters, evaluation complete) and resumes interrupted ones (train.py's
init_from=auto), but only where the run was trained with the settings asked for now, on the data as it is now: a run
directory whose checkpoint holds other settings (but for UNCHECKED_KEYS) or another data fingerprint (provenance.py:
the data prepared again since) stops the study with an error before anything runs. Use a new --name for new
settings, or --rerun to delete those runs and train them again. An evaluation counts as done where eval.json's
produced_by names the run's checkpoint and the settings asked for (--max_tokens, --calib_batches); it is done again
otherwise. One study at a time per study directory (a lock).
"""

import argparse
import contextlib
import copy
import dataclasses
import functools
import itertools
import math
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import configurator
import normalizers
import runtime
from analysis import slurm, variant_name
from analysis.launch import execute, fmt_time, worker_envs
from analysis.plots import in_registry_order
from analysis.run_steps import evaluate_run, read_json
from analysis.study_report import point_name, write_study_report
from checkpoint import CKPT_NAME, CheckpointError, load_checkpoint, lock_dir
from configurator import ConfigError
from model import BLOCKS, block_name
from normalizers.gates import GATES
from train import OPTIMIZERS, TrainConfig

# Set per run by the study, not by --key=value (wandb_tags may be given: the study adds its tags to them).
STUDY_KEYS = ("attn_norm", "seed", "out_dir", "wandb_run_name", "wandb_group")
# Set per variant, by the study setting named here: a sweep of them would contradict the variants' names. Unlike
# STUDY_KEYS, --key=value may set them, as the default for the whole study (see study_axes).
VARIANT_KEYS = {"attn_gate": "--gates", "optimizer": "--optimizers", **{key: "--blocks" for key in BLOCKS["gpt2"]}}
# Settings that change neither what a run learns nor what the report shows of it: a run trained with other values
# of these still counts as trained with the settings asked for. (attn_impl picks between exact paths of the same
# function; train.py's resume ignores it too.) Every other setting must match, device and dtype included.
UNCHECKED_KEYS = {"out_dir", "compile", "attn_impl", "log_interval", "keep_checkpoints", "init_from",
                  "always_save_checkpoint", "max_nonfinite_steps", "wandb_log", "wandb_project", "wandb_run_name",
                  "wandb_group", "wandb_tags"}
# Study settings a config file may hold, with what the command line calls them.
STUDY_SETTINGS = {"study_norms": "--norms", "study_gates": "--gates", "study_optimizers": "--optimizers",
                  "study_blocks": "--blocks",
                  "study_seeds": "--seeds", "study_sweep": "--sweep", "study_jobs": "--jobs",
                  "study_max_tokens": "--max_tokens",
                  "study_settings": "(config file only)",
                  **{f"study_slurm_{name}": f"--slurm_{name}" for name in slurm.SETTINGS}}
MAX_TOKENS = 32768  # val tokens scored per quantized variant, unless --max_tokens or study_max_tokens


@dataclass(frozen=True)
class Variant:
    """What a study compares: an attn_norm with an output gate, an optimizer and a block (model.BLOCKS, or the
    config's own); name: analysis.variant_name()."""
    norm: str
    gate: str
    optimizer: str
    name: str
    settings: tuple = ()  # ((setting, value), ...): this variant's own values (study_settings), e.g. a tuned rate
    block: str = "gpt2"


def study_variants(norms, gates, optimizers, study_gate, blocks=("gpt2",)):
    """The study's variants, block by block and optimizer by optimizer: the norms in the registry's order with
    study_gate, the first of them (the baseline) followed by itself with each of gates."""
    norms = in_registry_order(dict.fromkeys(norms))
    pairs = [(norm, study_gate) for norm in norms]
    pairs[1:1] = [(norms[0], gate) for gate in gates]
    return [Variant(norm, gate, optimizer, variant_name(norm, gate, optimizer, block), block=block)
            for block in blocks for optimizer in optimizers for norm, gate in pairs]


@dataclass(frozen=True)
class Run:
    variant: Variant
    seed: int
    point: tuple = ()  # ((setting, value), ...): this run's values of the swept settings

    @property
    def label(self):
        return "-".join([self.variant.name, *(f"{key}={value}" for key, value in self.point), f"s{self.seed}"])

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


def listed(text, study, key, default, may_be_empty=False):
    """A study axis: the comma-separated command-line value (STUDY_SETTINGS[key]), else the config file's study
    setting (a list), else default. An empty value (`--seeds ''`, `a,,b`) is refused, not read as the default;
    where may_be_empty (an axis of extra variants, --gates), `--gates ''` or `study_gates = []` is an empty list."""
    if may_be_empty and (text == "" or (text is None and study.get(key) in ([], ()))):
        return []
    if text is not None:
        values, source = text.split(","), f"{STUDY_SETTINGS[key]} {text!r}"
    elif key in study:
        values, source = study[key], f"{key} = {study[key]!r} in the config file"
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, e.g. {key} = {[values]!r}")
    else:
        return list(default)
    if not values or any(isinstance(v, str) and not v.strip() for v in values):
        raise ConfigError(f"{source}: an empty value; list the values separated by commas, e.g. "
                          f"{STUDY_SETTINGS[key]} {','.join(map(str, default)) or 'a,b'}")
    return list(values)


def study_seeds(args, study):
    """The seeds: distinct integers in train.py's range. `--seeds 0,0` (or 0,00,-0) would count one run as several
    seeds: a std of 0 and every difference 'beyond noise'."""
    raw = listed(args.seeds, study, "study_seeds", [0, 1, 2])
    source = f"--seeds {args.seeds}" if args.seeds is not None else f"study_seeds = {study.get('study_seeds')!r}"
    try:
        seeds = [s if type(s) is int else int(s) if isinstance(s, str) else None for s in raw]
    except ValueError:
        seeds = [None]
    if None in seeds:
        raise ConfigError(f"{source}: give comma-separated integers, e.g. --seeds 0,1,2")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"{source}: seed {', '.join(map(str, twice))} is listed more than once; the runs of one "
                          f"seed are one run, so give each seed once, e.g. --seeds 0,1,2")
    for seed in seeds:
        if not 0 <= seed < 2**63 - 2**16:
            raise ConfigError(f"{source}: seed {seed} is out of range: seeds are in [0, 2**63 - 2**16)")
    return seeds


def sweep_grid(args, study):
    """{setting: [values]} from --sweep key=a,b (each key once) or the config file's study_sweep, and its source."""
    if not args.sweep:
        sweep = study.get("study_sweep", {})
        if not isinstance(sweep, dict) or not all(isinstance(v, (list, tuple)) and v for v in sweep.values()):
            raise ConfigError(f"study_sweep = {sweep!r} in {args.config}: write a dict of lists, e.g. study_sweep = "
                              "{'learning_rate': [1e-3, 2e-3]}")
        return dict(sweep), args.config
    sweep = {}
    for text in args.sweep:
        key, sep, values = text.partition("=")
        if not sep or not values or any(not v.strip() for v in values.split(",")):
            raise ConfigError(f"--sweep {text}: write --sweep key=a,b,c (no empty values)")
        if key in sweep:
            raise ConfigError(f"--sweep {key} is given twice: list all its values in one, e.g. --sweep "
                              f"{key}={','.join(sweep[key] + values.split(','))}")
        sweep[key] = values.split(",")
    return sweep, "the command line"


def study_axes(args, study, cfg, overrides):
    """(variants, seeds, grid points) from the command line, else the config file's study settings, else defaults.
    The variants' gate and first optimizer default to cfg's, so --attn_gate=... gates every variant; --optimizer=...
    and --optimizers would contradict each other and are refused together."""
    given = {o[2:].partition("=")[0] for o in overrides}
    norms = listed(args.norms, study, "study_norms", normalizers.NORMALIZERS)
    for norm in norms:
        if norm not in normalizers.NORMALIZERS:
            raise ConfigError(f"unknown attn_norm {norm!r} in --norms; registered: {', '.join(normalizers.NORMALIZERS)}")
    gates = list(dict.fromkeys(listed(args.gates, study, "study_gates", [], may_be_empty=True)))
    for gate in gates:
        if gate not in GATES:
            raise ConfigError(f"unknown attn_gate {gate!r} in --gates; registered: {', '.join(GATES)}")
        if gate == cfg.attn_gate:
            raise ConfigError(f"--gates {gate}: every variant already has attn_gate={gate}; list only other gates")
    if "optimizer" in given and (args.optimizers or "study_optimizers" in study):
        raise ConfigError("optimizer is both set (--optimizer=...) and studied (--optimizers or study_optimizers): "
                          "give one of them, e.g. --optimizers muon")
    optimizers = list(dict.fromkeys(listed(args.optimizers, study, "study_optimizers", [cfg.optimizer])))
    blocks = list(dict.fromkeys(listed(args.blocks, study, "study_blocks", [block_name(cfg)])))
    if args.blocks or "study_blocks" in study:
        for block in blocks:
            if block not in BLOCKS:
                raise ConfigError(f"unknown block {block!r} in --blocks; valid: {', '.join(BLOCKS)}")
        if given & set(BLOCKS["gpt2"]):
            raise ConfigError(f"{', '.join(sorted(given & set(BLOCKS['gpt2'])))} both set (--key=...) and studied "
                              f"(--blocks or study_blocks, which set {', '.join(BLOCKS['gpt2'])}): give one of them")
    seeds = study_seeds(args, study)
    sweep, source = sweep_grid(args, study)
    for key, values in sweep.items():
        if key in STUDY_KEYS:
            raise ConfigError(f"--sweep {key}: {key} is set by the study (--norms, --seeds, --name)")
        if key in VARIANT_KEYS:
            raise ConfigError(f"--sweep {key}: {key} is set per variant: list its values in {VARIANT_KEYS[key]}")
        if key in given:
            raise ConfigError(f"{key} is both set (--{key}=...) and swept (--sweep {key}=...): give one of them")
        sweep[key] = list(dict.fromkeys(typed(cfg, key, value, source) for value in values))
    points = [tuple(zip(sweep, values)) for values in itertools.product(*sweep.values())]
    variants = study_variants(norms, gates, optimizers, cfg.attn_gate, blocks)
    overridden = given | (set(sweep) if args.sweep else set())
    return with_own_settings(variants, study.get("study_settings", {}), cfg, overridden,
                             set() if args.sweep else set(sweep), args.config), seeds, points


def with_own_settings(variants, own, cfg, overridden, swept, source):
    """The variants with their own settings from study_settings = {variant name: {setting: value}}: what a sweep
    chose for each (a quick study keeps its full study's tuned learning rates this way). A variant in another block
    than gpt2 takes its gpt2 twin's settings unless study_settings names it too (softmax+llama: softmax's rate).
    Names of variants this study does not train (--norms picked others) are passed over; a setting given on the
    command line (--key=... or --sweep key=...) overrides every variant's own; one swept in the same config file
    contradicts it."""
    if not isinstance(own, dict) or not all(isinstance(settings, dict) for settings in own.values()):
        raise ConfigError(f"study_settings in {source} must be a dict {{variant name: {{setting: value}}}}")
    for name in own:
        norm, *rest = name.split("+")
        if norm not in normalizers.NORMALIZERS or any(part not in (*GATES, *OPTIMIZERS, *BLOCKS) for part in rest):
            raise ConfigError(f"study_settings names {name!r}, not a variant: write <attn_norm>[+<attn_gate>]"
                              f"[+<optimizer>][+<block>], e.g. softmax+headwise+muon")
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
    twin = lambda v: variant_name(v.norm, v.gate, v.optimizer)  # the same variant in the gpt2 block
    return [dataclasses.replace(v, settings=tuple(typed_own.get(v.name, typed_own.get(twin(v), ())))) for v in variants]


def run_config(cfg, run, run_dir, world_size=1, device_here=True):
    """The TrainConfig of one run: the study's settings with the run's own, validated for world_size processes
    (device_here=False: on a Slurm node, not this machine). In wandb, the runs of a study share a group named after
    it; train.py tags each with its attn_norm, optimizer and seed, the study adds its gate (unless none), its block
    (unless gpt2) and its swept values."""
    cfg = copy.copy(cfg)
    variant = run.variant
    gate_tag = [f"attn_gate={variant.gate}"] if variant.gate != "none" else []
    block_tag = [f"block={variant.block}"] if variant.block != "gpt2" else []
    tags = ",".join(filter(None, [cfg.wandb_tags, *gate_tag, *block_tag,
                                  *(f"{key}={value}" for key, value in run.point)]))
    settings = {"attn_norm": variant.norm, "attn_gate": variant.gate, "optimizer": variant.optimizer,
                **BLOCKS.get(variant.block, {}),  # a block of the config's own (not in BLOCKS) is already set
                "seed": run.seed, "out_dir": str(run_dir), "always_save_checkpoint": True,
                "wandb_run_name": run.label, "wandb_group": run_dir.parents[1].name, "wandb_tags": tags,
                **dict(variant.settings), **dict(run.point)}  # both typed by study_axes
    for key, value in settings.items():
        setattr(cfg, key, value)
    cfg.validate(world_size, device_here)
    return cfg


def changed_settings(run_dir, cfg, fingerprint):
    """{setting: (value the run in run_dir was trained with, value asked for)} for every setting that differs,
    but for UNCHECKED_KEYS, and for its data: "data/<dataset>" with the two fingerprints when the data was prepared
    again since (fingerprint: the data's now, None if not prepared yet); {} for a run without a checkpoint. A setting
    the checkpoint does not hold (one added to TrainConfig after the run was trained) counts as its default."""
    if not (run_dir / CKPT_NAME).exists():
        return {}
    ckpt, defaults = load_checkpoint(run_dir, mmap=True), dataclasses.asdict(TrainConfig())
    saved = {**defaults, **ckpt["config"]}
    # attn_dropout compared as the value it takes, as train.py's resume does: None (dropout's) = dropout
    saved["attn_dropout"] = saved["dropout"] if saved["attn_dropout"] is None else saved["attn_dropout"]
    asked = {**dataclasses.asdict(cfg), "attn_dropout": cfg.attention_dropout}
    changed = {key: (saved[key], value) for key, value in asked.items()
               if key not in UNCHECKED_KEYS and saved[key] != value}
    there = (ckpt.get("meta") or {}).get("fingerprint")
    if fingerprint and there != fingerprint:
        changed[f"data/{cfg.dataset} (prepared again since; its fingerprint)"] = (there, fingerprint)
    return changed


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

def train_and_evaluate(variants, seeds, points, configs, study_dir, args, launch):
    """Every run through launch (launch.execute or slurm.execute), a sweep in two stages: (the grid point chosen
    per variant, the sweep for the report or None, {label: log} of the runs that failed)."""
    if len(points) == 1:  # nothing to choose: every run at once
        return {variant: points[0] for variant in variants}, None, launch(list(configs), configs, study_dir, args, "")
    stage1 = [Run(v, seeds[0], point) for v in variants for point in points]
    failed = launch(stage1, configs, study_dir, args, "stage 1 (sweep): ")
    losses = {v: {point: math.nan if Run(v, seeds[0], point).label in failed else read_json(
        study_dir / "runs" / Run(v, seeds[0], point).label / "eval.json").get("val_loss", math.nan)
        for point in points} for v in variants}
    chosen = {v: min((p for p in points if math.isfinite(by_point[p])), key=by_point.get)
              for v, by_point in losses.items() if any(map(math.isfinite, by_point.values()))}
    for variant, point in chosen.items():
        print(f"sweep: {variant.name} at {point_name(point)}")
    stage2 = [Run(v, s, point) for v, point in chosen.items() for s in seeds[1:]]
    failed.update(launch(stage2, configs, study_dir, args, "stage 2: ") if stage2 else {})
    return chosen, {"seed": seeds[0], "points": points, "losses": losses, "chosen": chosen}, failed


# ---- the command line: check everything, launch the pending runs, write the report ----------------------


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False,  # --seed=1 is train.py's key, not short for --seeds
                                usage="%(prog)s CONFIG [--norms A,B] [--gates G,H] [--optimizers adamw,muon] "
                                      "[--blocks gpt2,llama] [--seeds 0,1] [--sweep key=a,b] [--name NAME] [--rerun] "
                                      "[--key=value ...]")
    p.add_argument("config", nargs="?", help="a train.py config file, e.g. config/study_cpu.py")
    p.add_argument("--norms", help="comma-separated attn_norms (default: every registered normalizer)")
    p.add_argument("--gates", help="comma-separated attn_gates, each one more variant: the baseline (the first "
                                   "attn_norm) with that gate (default: the config file's study_gates, else none; "
                                   "--gates '' for none where the config file lists some)")
    p.add_argument("--optimizers", help="comma-separated optimizers, each variant trained with each (default: the "
                                        "config's optimizer)")
    p.add_argument("--blocks", help=f"comma-separated blocks ({', '.join(BLOCKS)}), each variant trained in each "
                                    f"(default: the config's block)")
    p.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--sweep", action="append", metavar="KEY=A,B,...",
                   help="a train.py setting to tune per variant on the first seed; repeat for a grid")
    p.add_argument("--name", help="study/<name>/ (default: the config file's name)")
    p.add_argument("--study_root", default="study", help="where studies live (default: study)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per GPU, or one per CPU core; "
                                               "with --launcher slurm: as many as Slurm lets run)")
    p.add_argument("--rerun", action="store_true", help="delete and retrain runs trained with other settings")
    p.add_argument("--max_tokens", type=int, help=f"val tokens scored per quantized variant (default: {MAX_TOKENS})")
    p.add_argument("--calib_batches", type=int, default=8, help="training batches to calibrate activations on")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: a pool of workers on this machine; slurm: each run a Slurm job (see analysis/slurm.py)")
    p.add_argument("--no-wait", action="store_true", help="with --launcher slurm: return once the jobs are "
                                                          "submitted; the same command later collects them")
    for name, (kind, default, what) in slurm.SETTINGS.items():
        p.add_argument(f"--slurm_{name}", type=kind, help=f"with --launcher slurm: {what}" +
                       (f" (default: {default})" if default else ""))
    p.add_argument("--evaluate", metavar="RUN_DIR", help="(used by the study) evaluate one trained run")
    p.add_argument("--eval_device", default="cpu", help="with --evaluate: the device to evaluate on")
    args, overrides = p.parse_known_args(argv)
    if args.evaluate:
        return evaluate_run(args.evaluate, args.eval_device, args.max_tokens or MAX_TOKENS, args.calib_batches)
    if not args.config:
        p.error("a config file is required, e.g. config/study_cpu.py")
    slurm_only = [f"--{key}" for key, value in vars(args).items() if value is not None and key.startswith("slurm_")]
    slurm_only += ["--no-wait"] if args.no_wait else []
    if args.launcher == "local" and slurm_only:
        sys.exit(f"error: {', '.join(slurm_only)} only apply to --launcher slurm: add --launcher slurm, or leave "
                 f"them out")
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
        if args.calib_batches < 1 or args.max_tokens < 2:  # found here, not after every run has trained
            raise ConfigError(f"--calib_batches={args.calib_batches} and --max_tokens={args.max_tokens} (or "
                              f"study_max_tokens): the quantization needs at least 1 calibration batch and 2 tokens")
        slurm_settings = slurm.settings(args, study, base.device) if args.launcher == "slurm" else None
        # Every run the study may train (stage 2 trains a subset of the grid's later seeds), checked up front.
        processes = slurm.world_size(slurm_settings) if slurm_settings else 1
        configs = {run: run_config(base, run, study_dir / "runs" / run.label, processes, slurm_settings is None)
                   for run in (Run(v, s, point) for v in variants for point in points for s in seeds)}
        fingerprints = {name: data_fingerprint_now(name) for name in {cfg.dataset for cfg in configs.values()}}
        stale = {run: changed for run, cfg in configs.items()
                 if (changed := changed_settings(study_dir / "runs" / run.label, cfg, fingerprints[cfg.dataset]))}
    except (ConfigError, CheckpointError, prepare_data.DataError) as e:
        sys.exit(f"error: {e}")
    study_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:  # two studies in one directory would train each run twice at once, and delete each other's (--rerun)
            held.enter_context(lock_dir(study_dir, "another study (pid {pid}) is running in {directory}: wait for "
                                                   "it to end, or give this one another --name"))
        except CheckpointError as e:
            sys.exit(f"error: {e}")
        run_study(args, argv, t0, study_dir, base, variants, seeds, points, configs, stale, slurm_settings)


def data_fingerprint_now(dataset):
    """The fingerprint of data/<dataset> as it is now, or None if it is not prepared (yet)."""
    import prepare_data
    path = Path("data") / dataset
    return prepare_data.load_prepared(path)[1]["fingerprint"] if (path / "meta.json").exists() else None


def run_study(args, argv, t0, study_dir, base, variants, seeds, points, configs, stale, slurm_settings):
    """Train and evaluate what is not done yet, then write the report (main() has checked everything)."""
    import prepare_data
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

    launch = execute if args.launcher == "local" else functools.partial(slurm.execute, slurm=slurm_settings)
    try:
        chosen, sweep, failed = train_and_evaluate(variants, seeds, points, configs, study_dir, args, launch)
    except slurm.JobsRunning as e:  # --no-wait
        print(e)
        return
    except ConfigError as e:  # no Slurm here, or sbatch refused the jobs
        sys.exit(f"error: {e}")
    finished = {v: [study_dir / "runs" / run.label for run in (Run(v, s, chosen[v]) for s in seeds)
                    if run.label not in failed] for v in variants if v in chosen}
    if any(finished.values()):
        if args.launcher == "local":
            envs = worker_envs(base.device, args.jobs, len(configs))
            threads = f", OMP_NUM_THREADS={envs[0]['OMP_NUM_THREADS']} each" if "OMP_NUM_THREADS" in envs[0] else ""
            where = f"{runtime.device_description(base.device)}; up to {len(envs)} runs at a time{threads}"
        else:
            where = (f"{base.device}, Slurm jobs of {slurm_settings['nodes']} node(s) × "
                     f"{slurm_settings['gpus_per_node']} GPU(s) per run")
        header = [f"- command: `./run_study.sh {shlex.join(argv)}`",
                  f"- device: {where}",
                  f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                  f"- wall time: {fmt_time(time.time() - t0)} for this invocation (runs already finished were "
                  f"skipped; data preparation included, this report not)"]
        own = [f"{v.name}: {point_name(v.settings)}" for v in variants if v.settings]
        header += [f"- each variant's own settings (study_settings in the config file): {'; '.join(own)}"] if own else []
        path = write_study_report(study_dir, variants, finished, header, sweep)
        print(f"\nreport: {path}\nplots:  {study_dir}/*.png and {study_dir}/per_run/*.png\n"
              f"total time {fmt_time(time.time() - t0)}")
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed: " +
                 ", ".join(f"{label} (log: {log})" for label, log in failed.items()))


if __name__ == "__main__":
    main()
