"""
Train a GPT whose attention normalizer is a config flag. nanoGPT's loop: one process, or DDP under torchrun.

    python train.py config/shakespeare_char/cpu.py --attn_norm=softmax1
    torchrun --standalone --nproc_per_node=8 train.py config/softmax1.py      (or ./run_training.sh)
    python train.py --help                                                     (every setting, with its default)

Settings come from TrainConfig's defaults (the model's own from GPTConfig, which it extends), then config files
(plain Python assignments), then --key=value overrides, in argument order. Every setting is saved in the
checkpoint and logged to metrics.jsonl and wandb.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
import normalizers
import runtime
from checkpoint import CKPT_NAME, CheckpointError, checkpoint_iter, load_checkpoint, lock_dir, save_checkpoint
from configurator import ConfigError
from model import GPT, GPTConfig, block_name
from prepare_data import (DataError, bos_starts, load_prepared, rebuild_command, tokenizer_identity,
                          window_start)
from provenance import describe_difference


def default_device():
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def default_dtype():
    if torch.cuda.is_available():
        return "bfloat16" if runtime.native_bf16() else "float16"
    return "float32"


OPTIMIZERS = ("adamw", "muon")  # the optimizer setting's values (configure_optimizers in model.py)
WINDOW_STARTS = ("auto", "random", "bos")  # the window_start setting's values (load_dataset)


@dataclass
class TrainConfig(GPTConfig):
    DERIVED = {"vocab_size": "it is the dataset's (meta.json), padded by runtime.padded_vocab_size"}
    UNKNOWN_KEY_HINTS = {"study_": "{source} is a study config: run ./run_study.sh {source}"}
    # Settings a resumed run may change freely: they change where and how it runs, what it logs, or (max_iters) how
    # long it trains, not what it learns. Any other setting must equal the checkpoint's, unless resume_changes
    # names it (then it takes effect from the resume on); the model's own settings (GPTConfig) never change.
    RESUME_FREE = {"out_dir", "eval_interval", "log_interval", "eval_iters", "eval_only", "hellaswag_interval",
                   "always_save_checkpoint", "keep_checkpoints", "init_from", "log_stats", "wandb_log",
                   "wandb_project", "wandb_run_name", "wandb_group", "wandb_tags", "finetune_other_dataset",
                   "resume_changes", "max_iters", "max_nonfinite_steps", "device", "compile", "attn_impl"}
    # I/O
    out_dir: str = ""  # empty: out/<dataset>-<n_layer>x<n_embd>-<attn_norm>[-<block>]-s<seed>, block unless gpt2
    eval_interval: int = 2000  # evaluate (and checkpoint) every this many iterations
    log_interval: int = 1  # log the training loss every this many iterations
    eval_iters: int = 200  # batches per split in each evaluation
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # save at every eval, not only when val loss improves
    keep_checkpoints: int = 1  # keep this many newest checkpoints (ckpt.pt plus ckpt-<iter>.pt)
    init_from: str = "auto"  # 'scratch', 'resume' (out_dir/ckpt.pt), or 'auto' (resume if one exists)
    log_stats: bool = True  # kurtosis, outliers and attention statistics at every eval (see analysis/)
    hellaswag_interval: int = 0  # also score HellaSwag (analysis/hellaswag.py) every this many iterations; 0: never
    # wandb
    wandb_log: bool = False  # log to wandb too (WANDB_MODE=offline works without network)
    wandb_project: str = "attnorm"  # the wandb project
    wandb_run_name: str = ""  # empty: '<attn_norm>[-<block>]-s<seed>', block unless gpt2
    wandb_group: str = ""  # runs of one study share a group (run_study.sh sets it); empty: none
    wandb_tags: str = ""  # comma-separated tags, added to attn_norm, optimizer and seed=<seed>
    # data
    dataset: str = "openwebtext"  # a folder data/<dataset> written by prepare_data.py
    gradient_accumulation_steps: int = 40  # micro-steps per iteration, global: split across DDP ranks
    batch_size: int = 12  # sequences per micro-step and rank
    finetune_other_dataset: bool = False  # resume on other data (another dataset, or it rebuilt), same tokenizer
    window_start: str = "auto"  # where windows start: random, bos (at a BOS token), auto (bos if the data has one)
    resume_changes: str = ""  # comma-separated settings a resume may change, e.g. learning_rate after a divergence
    # optimizer
    optimizer: str = "adamw"  # adamw, or muon: Muon for the blocks' weight matrices, AdamW for everything else
    learning_rate: float = 6e-4  # peak learning rate (AdamW's)
    muon_lr: float = None  # peak learning rate of the Muon matrices; None: learning_rate (updates are RMS-matched)
    max_iters: int = 600000  # total iterations
    weight_decay: float = 1e-1  # weight decay of the matrices (AdamW's and Muon's)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 disables clipping
    max_nonfinite_steps: int = 10  # skip steps with a NaN/Inf loss or gradient; stop after this many in a row
    # learning rate schedule: linear warmup, cosine decay to min_lr
    decay_lr: bool = True  # False: constant learning_rate
    warmup_iters: int = 2000  # linear warmup iterations
    lr_decay_iters: int = 600000  # the cosine reaches min_lr here
    min_lr: float = 6e-5  # the final learning rate
    # system
    seed: int = 1337  # the initial weights, the data order and dropout
    device: str = dataclasses.field(default_factory=default_device)  # cpu, cuda, cuda:1, mps
    dtype: str = dataclasses.field(default_factory=default_dtype)  # float32, bfloat16, float16
    compile: bool = True  # torch.compile the model

    def validate(self, world_size=1, device_here=True):
        """Every check that needs no data, with the number of processes the run will use. device_here=False: the
        run starts on another machine (a Slurm job), so whether this one has the device is not checked."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is float and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        try:
            self.check()  # the model's settings (GPTConfig and the normalizers' own)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        positive = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size",
                    "keep_checkpoints", "learning_rate")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.hellaswag_interval < 0 or self.hellaswag_interval % self.eval_interval:
            raise ConfigError(f"hellaswag_interval must be 0 (never) or a multiple of eval_interval "
                              f"({self.eval_interval}), got {self.hellaswag_interval}")
        if self.muon_lr is not None and self.muon_lr <= 0:
            raise ConfigError(f"muon_lr must be > 0, got {self.muon_lr}")
        if not 0 <= self.seed < 2**63 - 2**16:  # torch seeds are 64-bit; seed + 1 and seed + rank are seeds too
            raise ConfigError(f"seed must be in [0, 2**63 - 2**16), got {self.seed}: e.g. --seed=1337")
        if not self.dataset or Path(self.dataset).name != self.dataset or self.dataset.startswith("."):
            raise ConfigError(f"dataset={self.dataset!r} is not a dataset name (a folder data/<dataset> written by "
                              f"prepare_data.py): e.g. --dataset=shakespeare_char")
        for key in filter(None, self.resume_changes.split(",")):
            if key not in self.changeable_on_resume():
                why = ("it may always change" if key in self.RESUME_FREE else "the model's settings and optimizer "
                       "cannot change on resume" if hasattr(self, key) else "no such setting")
                raise ConfigError(f"resume_changes={self.resume_changes!r}: {key!r} is not a setting a resume "
                                  f"changes ({why}): list only training settings, e.g. resume_changes=learning_rate")
        choices = {"init_from": ("scratch", "resume", "auto"), "dtype": tuple(runtime.DTYPES),
                   "optimizer": OPTIMIZERS, "window_start": WINDOW_STARTS}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(valid)}")
        if self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device={self.device!r}: use cpu, cuda, cuda:N or mps")
        if device_here and self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible: use --device=cpu")
        if device_here and self.device == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device=mps but this torch has no MPS (Apple GPU) backend: use --device=cpu")
        if self.gradient_accumulation_steps % world_size:
            raise ConfigError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must be a "
                              f"multiple of the number of processes ({world_size})")
        if self.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"optimizer=muon needs torch.optim.Muon (torch >= 2.9), this is torch "
                              f"{torch.__version__}: upgrade torch, or use optimizer=adamw")
        reason = normalizers.unavailable_reason(self.attn_norm, self.device.split(":")[0], self.attention_dropout,
                                                head_dim=self.n_embd // self.n_head)
        if self.attn_impl == "fused" and reason:
            raise ConfigError(f"attn_impl=fused cannot run attn_norm={self.attn_norm} on {self.device}: {reason}. "
                              f"Use attn_impl=auto (the reference where no fused kernel runs) or reference")

    @classmethod
    def changeable_on_resume(cls):
        """The settings resume_changes may name: every TrainConfig setting but the model's, the optimizer (its
        state would not fit), the dataset (finetune_other_dataset) and the RESUME_FREE ones."""
        model = {f.name for f in dataclasses.fields(GPTConfig)}
        return {f.name for f in dataclasses.fields(cls)} - model - cls.RESUME_FREE - {"optimizer", "dataset"}

    def model_config(self, vocab_size=50304):
        return GPTConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GPTConfig)}
                         | {"vocab_size": vocab_size})


def run_label(cfg):
    """attn_norm, and the block (model.block_name) unless GPT-2's: a LLaMA-style run never shares a default out_dir
    with a GPT-2 one."""
    block = block_name(cfg)
    return cfg.attn_norm if block == "gpt2" else f"{cfg.attn_norm}-{block}"


def load_config(argv):
    return configurator.load(TrainConfig, argv)


def help_text():
    norm_settings = {k: ("normalizer settings", s.help) for k, s in normalizers.settings().items()}
    norm_settings["attn_norm"] = ("model", "the attention normalizer: " + ", ".join(normalizers.NORMALIZERS))
    return __doc__.strip() + "\n\nSettings (--key=value; default):\n" + configurator.help_text(TrainConfig, norm_settings)


class TrainingError(RuntimeError):
    """Training cannot go on (a loss that stays NaN/Inf): reported like ConfigError, in one line."""


# ---- model, optimizer and state: from scratch or from the checkpoint in out_dir ----

@dataclass
class TrainState:
    """What the loop changes, saved in every checkpoint with the model and optimizer."""
    iter_num: int
    best_val_loss: float
    data_rng: torch.Generator  # draws the global batch: the same sequences whatever the number of processes
    nonfinite_in_a_row: int = 0
    changes: list = dataclasses.field(default_factory=list)  # [{"iter", "settings": {key: [before, after]}}] of resumes


def find_checkpoint(cfg, out_dir):
    """out_dir/ckpt.pt if this run resumes from it, else None (after refusing what would lose or mix runs)."""
    ckpt_path = out_dir / CKPT_NAME
    kept = sorted(p.name for p in out_dir.glob("ckpt-*.pt"))
    if kept and not ckpt_path.exists():  # a fresh run would prune them (keep_checkpoints): never lose them
        raise ConfigError(f"{out_dir} holds older checkpoints ({', '.join(kept)}) but no {CKPT_NAME}: copy the one "
                          f"to resume from to {ckpt_path}, or choose a new out_dir")
    if cfg.init_from == "resume" and not ckpt_path.exists():
        raise ConfigError(f"init_from=resume but there is no {ckpt_path}: use init_from=scratch or auto")
    if cfg.init_from == "scratch" and ckpt_path.exists():
        raise ConfigError(f"{ckpt_path} exists and init_from=scratch would overwrite it: resume with "
                          f"init_from=auto, or choose a new out_dir")
    return ckpt_path if cfg.init_from == "resume" or ckpt_path.exists() else None


RESUME_KEYS = ("optimizer", "scaler", "best_val_loss", "data_rng", "rng", "meta")  # what train.py's checkpoints hold


def check_resumable(ckpt, ckpt_path, model_config, cfg, meta):
    """Refuse to continue a checkpoint with another model, tokenizer, data or training settings (but the ones
    resume_changes names); returns {setting: [checkpoint's, now]} of those it names that differ."""
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise ConfigError(f"{ckpt_path} cannot be resumed: it has no {', '.join(missing)} (a checkpoint of an older "
                          f"train.py or of nanoGPT). sample.py and the analysis tools read it if it has 'meta'; "
                          f"to train, use another out_dir")
    try:
        saved_config = GPTConfig.from_saved(ckpt["model_args"])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{ckpt_path}: {e}. Use another out_dir") from None
    # attn_dropout compared as the value it takes: None (dropout's, all a checkpoint older than it knows) = dropout
    saved, now = ({**dataclasses.asdict(c), "attn_dropout": c.attention_dropout} for c in (saved_config, model_config))
    changed = {k: (saved.get(k), v) for k, v in now.items() if k != "attn_impl" and saved.get(k) != v}
    if changed:
        raise ConfigError(f"{ckpt_path} was trained with a different model: " + ", ".join(
            f"{k}={a!r} there, {b!r} now" for k, (a, b) in changed.items()) + ". Use another out_dir.")
    saved_meta = ckpt["meta"] or {}
    if tokenizer_identity(saved_meta) != tokenizer_identity(meta):
        raise ConfigError(f"{ckpt_path} was trained with another tokenizer (dataset "
                          f"{ckpt['config'].get('dataset')!r}) than dataset {cfg.dataset!r} has: its token ids mean "
                          f"other things here. Use another out_dir")
    saved_start = window_start(ckpt["config"].get("window_start"), saved_meta)
    start = window_start(cfg.window_start, meta)
    if saved_start != start and not cfg.finetune_other_dataset:
        raise ConfigError(f"{ckpt_path} was trained with windows that start at {saved_start!r} positions, not "
                          f"{start!r}: resume with --window_start={saved_start}, or use another out_dir")
    if ckpt["config"].get("dataset") != cfg.dataset and not cfg.finetune_other_dataset:
        raise ConfigError(f"{ckpt_path} was trained on dataset {ckpt['config'].get('dataset')!r}, not "
                          f"{cfg.dataset!r}: use another out_dir, or --finetune_other_dataset=True to go on "
                          f"training it on {cfg.dataset!r} (same tokenizer)")
    there, now = saved_meta.get("fingerprint"), meta["fingerprint"]
    if there and there != now and not cfg.finetune_other_dataset:
        made = saved_meta.get("prepared_with")
        made = f" ({describe_difference(made, meta.get('prepared_with') or {})})" if made else ""
        raise ConfigError(f"{ckpt_path} was trained on other data than data/{cfg.dataset} holds now (fingerprint "
                          f"{there} there, {now} now{made}): it was prepared again since. Rebuild it as it was "
                          f"({rebuild_command(Path('data') / cfg.dataset, saved_meta)}), or use another out_dir, or "
                          f"--finetune_other_dataset=True to go on training on the new data")
    saved_cfg, defaults = ckpt["config"], dataclasses.asdict(TrainConfig())
    if saved_cfg.get("optimizer", "adamw") != cfg.optimizer:
        raise ConfigError(f"{ckpt_path} was trained with optimizer={saved_cfg.get('optimizer', 'adamw')!r}; its "
                          f"optimizer state cannot go on as optimizer={cfg.optimizer!r}: use another out_dir")
    allowed = set(filter(None, cfg.resume_changes.split(",")))
    differ = {k: [saved_cfg.get(k, defaults[k]), v] for k, v in dataclasses.asdict(cfg).items()
              if k in TrainConfig.changeable_on_resume() and saved_cfg.get(k, defaults[k]) != v}
    refused = {k: v for k, v in differ.items() if k not in allowed}
    if refused:
        keys = ",".join(refused)
        raise ConfigError(f"{ckpt_path} was trained with other settings: " + ", ".join(
            f"{k}={a!r} there, {b!r} now" for k, (a, b) in refused.items()) + f". A new run: give it its own "
            f"--out_dir. To go on training this one with them: add --resume_changes={keys}")
    return differ


def build(cfg, meta, out_dir, dist_ctx):
    """The model, its optimizer and GradScaler, and the training state: fresh, or as saved in out_dir."""
    ckpt_path = find_checkpoint(cfg, out_dir)
    model_config = cfg.model_config(runtime.padded_vocab_size(meta["vocab_size"]))
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        changes = check_resumable(ckpt, ckpt_path, model_config, cfg, meta)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone (two runs start identical)
    model = GPT(model_config).to(dist_ctx.device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    device_type = dist_ctx.device.split(":")[0]
    muon_lr = (cfg.muon_lr or cfg.learning_rate) if cfg.optimizer == "muon" else None
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type,
                                           muon_lr)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.dtype == "float16")
    state = TrainState(0, float("inf"), torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed + dist_ctx.rank)  # dropout: per rank
    if ckpt is not None:
        # load_state_dict brings back the saved hyperparameters (weight decay, betas, Muon's lr_scale) with the
        # moments; the settings of this run take their place, so that a change resume_changes allows takes effect.
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)
        scaler.load_state_dict(ckpt["scaler"])
        state.iter_num, state.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        state.changes = ckpt.get("changes", []) + ([{"iter": state.iter_num, "settings": changes}] if changes else [])
        state.data_rng.set_state(ckpt["data_rng"])
        if len(ckpt["rng"]) == dist_ctx.world_size:
            torch.set_rng_state(ckpt["rng"][dist_ctx.rank]["cpu"])
            if "cuda" in ckpt["rng"][dist_ctx.rank] and device_type == "cuda":
                torch.cuda.set_rng_state(ckpt["rng"][dist_ctx.rank]["cuda"])
    return model, optimizer, scaler, state, ckpt_path


def save(cfg, raw_model, optimizer, scaler, state, meta, out_dir, dist_ctx):
    """Every rank hands in its RNG state; rank 0 writes the checkpoint atomically (checkpoint.py)."""
    rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if "cuda" in dist_ctx.device else {})}
    rngs = [rng] * dist_ctx.world_size
    if dist_ctx.ddp:
        dist.all_gather_object(rngs, rng)
    if not dist_ctx.master:
        return
    if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
        kept = f"the last good checkpoint {out_dir / CKPT_NAME}" if (out_dir / CKPT_NAME).exists() else "nothing"
        raise TrainingError(f"parameters are not finite at iter {state.iter_num}; refusing to overwrite {kept} "
                            f"with them: lower learning_rate" + (" and resume" if "checkpoint" in kept else ""))
    save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "model_args": dataclasses.asdict(raw_model.config),
                     "config": dataclasses.asdict(cfg), "iter_num": state.iter_num,
                     "best_val_loss": state.best_val_loss, "data_rng": state.data_rng.get_state(), "rng": rngs,
                     "meta": meta, "changes": state.changes}, out_dir, cfg.keep_checkpoints)


# ---- data, evaluation, learning rate ----

def load_dataset(cfg):
    """data/<dataset>, checked once, up front, so a bad dataset fails before any compute is spent. Resolves
    window_start=auto (bos where meta.json names a bos_id) and refuses what the data cannot give."""
    try:
        data, meta = load_prepared(Path("data") / cfg.dataset, cfg.block_size)
    except DataError as e:
        raise ConfigError(str(e)) from None
    if cfg.window_start == "bos" and "bos_id" not in meta:
        raise ConfigError(f"window_start=bos, but dataset {cfg.dataset!r} has no BOS token: prepare one with "
                          f"python prepare_data.py {cfg.dataset} --bos (and --dataset={cfg.dataset}_bos), or use "
                          f"window_start=random")
    if window_start(cfg.window_start, meta) == "random" and meta.get("bos_required"):
        raise ConfigError(f"dataset {cfg.dataset!r} is made of sequences that each start with BOS: its windows "
                          f"must start there too (window_start=bos or auto), not at random")
    return data, meta


def window_starts(data, meta, cfg):
    """{split: positions a window may start at} for window_start=bos, or None (random crops)."""
    if window_start(cfg.window_start, meta) != "bos":
        return None
    starts = {split: bos_starts(tokens, meta["bos_id"], cfg.block_size) for split, tokens in data.items()}
    for split, positions in starts.items():
        if len(positions) == 0:
            raise ConfigError(f"the {split} split of {cfg.dataset!r} has no BOS with block_size={cfg.block_size} + 1 "
                              f"tokens after it: lower block_size")
    return starts


def get_batch(data, offsets, cfg, device):
    x = torch.stack([torch.from_numpy(data[i:i + cfg.block_size].astype(np.int64)) for i in offsets])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + cfg.block_size].astype(np.int64)) for i in offsets])
    if device.startswith("cuda"):  # pinned memory lets the host-to-device copy overlap compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def sample_offsets(data, n, generator, block_size, starts=None):
    """n window starts: any position (random crops), or one of starts (e.g. the BOS positions)."""
    if starts is None:
        return torch.randint(len(data) - block_size, (n,), generator=generator).tolist()
    return starts[torch.randint(len(starts), (n,), generator=generator).numpy()].tolist()


@torch.no_grad()
def estimate_loss(model, data, cfg, autocast, dist_ctx, starts=None):
    """Mean loss over eval_iters batches per split, the same batches at every eval and for any number of
    processes: one generator draws them all, and rank r evaluates batches r, r + world_size, ..."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        rng = torch.Generator().manual_seed(cfg.seed + 1)
        losses = torch.zeros(cfg.eval_iters, device=dist_ctx.device)
        for k in range(cfg.eval_iters):
            offsets = sample_offsets(data[split], cfg.batch_size, rng, cfg.block_size, starts and starts[split])
            if k % dist_ctx.world_size == dist_ctx.rank:
                with autocast:
                    losses[k] = model(*get_batch(data[split], offsets, cfg, dist_ctx.device))[1]
        if dist_ctx.ddp:
            dist.all_reduce(losses)  # each batch's loss is on one rank, zeros elsewhere
        out[split] = losses.mean().item()
    model.train()
    return out


def get_lr(it, cfg):
    """Linear warmup, then cosine decay from learning_rate to min_lr at lr_decay_iters."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


# ---- one training step ----

def train_step(model, raw_model, optimizer, scaler, data, state, cfg, autocast, dist_ctx, starts=None):
    """Forward/backward over the global batch (this rank's share), clip, step; windows start at starts (the BOS
    positions) if given, else anywhere. Returns (mean loss, grad norm) as tensors, and whether the step was applied
    (False: a NaN/Inf loss or gradient, skipped)."""
    world_size, rank = dist_ctx.world_size, dist_ctx.rank
    micro_steps = cfg.gradient_accumulation_steps // world_size
    offsets = sample_offsets(data, cfg.gradient_accumulation_steps * cfg.batch_size, state.data_rng, cfg.block_size,
                             starts)
    loss_sum = torch.zeros((), device=dist_ctx.device)
    for micro_step in range(micro_steps):
        # This rank's share of the global batch: micro-batches rank, rank + world_size, ...
        start = (micro_step * world_size + rank) * cfg.batch_size
        X, Y = get_batch(data, offsets[start:start + cfg.batch_size], cfg, dist_ctx.device)
        # Gradients are all-reduced only on the last micro-step.
        sync = nullcontext() if not dist_ctx.ddp or micro_step == micro_steps - 1 else model.no_sync()
        with sync, autocast:
            loss = model(X, Y)[1] / micro_steps
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf"))
    if dist_ctx.ddp:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    # A NaN/Inf step would poison the weights (and every later checkpoint): skip it. (fp16's GradScaler skips
    # such steps itself and lowers its scale.) One host synchronisation for both checks, not one each.
    applied = scaler.is_enabled() or bool(torch.isfinite(torch.stack((grad_norm.float(), loss_sum.float()))).all())
    if applied:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, applied


# ---- logging ----

class MetricsLog:
    """One JSON line per event in out_dir/metrics.jsonl (rank 0), the same to wandb when asked for. A record is
    written whole or not at all: a write that fails (a full disk) is cut off again, and a torn last line that a
    killed run left is removed when the log is opened."""

    def __init__(self, cfg, out_dir, tokens_per_iter, master):
        self.path = out_dir / "metrics.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if master else None
        if self.fd is not None:
            self.cut_torn_line()
        self.tokens_per_iter, self.wandb = tokens_per_iter, None
        if cfg.wandb_log and master:
            import wandb
            run_name = cfg.wandb_run_name or f"{run_label(cfg)}-s{cfg.seed}"
            tags = [cfg.attn_norm, cfg.optimizer, f"seed={cfg.seed}", *filter(None, cfg.wandb_tags.split(","))]
            wandb.init(project=cfg.wandb_project, name=run_name, config=dataclasses.asdict(cfg), dir=str(out_dir),
                       id=f"{run_name}-{hashlib.md5(str(out_dir.resolve()).encode()).hexdigest()[:8]}",
                       resume="allow", group=cfg.wandb_group or None, tags=tags)
            self.wandb = wandb

    def cut_torn_line(self):
        size = os.fstat(self.fd).st_size
        if not size:
            return
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 2**20))
            tail = f.read()
        if not tail.endswith(b"\n"):
            os.ftruncate(self.fd, size - len(tail) + tail.rfind(b"\n") + 1)

    def record(self, iter_num, event):
        if self.fd is None:
            return
        event = {"iter": iter_num, "tokens": iter_num * self.tokens_per_iter, **event}
        line, start = (json.dumps(event) + "\n").encode(), os.fstat(self.fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(self.fd, line[written:])
        except OSError as e:
            os.ftruncate(self.fd, start)
            raise TrainingError(f"cannot write {self.path} ({e.strerror}); the unfinished record was removed and "
                                f"{checkpoint_note(self.path.parent)}. Free up space there, then run the same "
                                f"command again") from None
        if self.wandb is not None and event["event"] in ("train", "eval"):  # the settings went to wandb.init
            # One lr per step: the train record's (the rate its step used), not the eval's (the next step's).
            skip = ("event", "iter") + (("lr",) if event["event"] == "eval" else ())
            self.wandb.log({k: v for k, v in event.items() if k not in skip}, step=iter_num)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.wandb is not None:
            self.wandb.finish()


# ---- the run ----

def check_out_dir(out_dir):
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create out_dir {out_dir} ({e.strerror}): choose another --out_dir") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"out_dir {out_dir} is not writable: choose another --out_dir")


def preflight(argv, world_size):
    """Every check a run makes before it spends compute, without starting it (run_training.sh calls this before
    torchrun, so that a user error is reported once, not retried)."""
    cfg = load_config(argv)
    cfg.validate(world_size)
    load_dataset(cfg)
    return cfg


def main(argv):
    cfg = load_config(argv)
    cfg.validate(int(os.environ.get("WORLD_SIZE", 1)))
    cfg.out_dir = cfg.out_dir or f"out/{cfg.dataset}-{cfg.n_layer}x{cfg.n_embd}-{run_label(cfg)}-s{cfg.seed}"
    dist_ctx = runtime.setup_distributed(cfg.device)
    data, meta = load_dataset(cfg)
    out_dir = Path(cfg.out_dir)
    if dist_ctx.master:
        check_out_dir(out_dir)
    # One training per out_dir: a second one would resume the same checkpoint and the two would overwrite each
    # other's saves. Held by rank 0 until the run ends (or its process dies).
    with lock_dir(out_dir) if dist_ctx.master else nullcontext():
        run(cfg, data, meta, out_dir, dist_ctx)
    dist_ctx.close()


def run(cfg, data, meta, out_dir, dist_ctx):
    model, optimizer, scaler, state, ckpt_path = build(cfg, meta, out_dir, dist_ctx)
    log = print if dist_ctx.master else (lambda *a, **k: None)
    attention = normalizers.describe(cfg.attn_norm, cfg.attn_impl, dist_ctx.device.split(":")[0],
                                     cfg.attention_dropout, cfg.n_embd // cfg.n_head)
    log(f"{model.get_num_params() / 1e6:.2f}M parameters; attn_norm={cfg.attn_norm}, block {block_name(cfg)}, "
        f"attention: {attention}")
    if ckpt_path:
        log(f"resumed from {ckpt_path} at iter {state.iter_num}")
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    metrics = MetricsLog(cfg, out_dir, tokens_per_iter, dist_ctx.master)
    # What produced every record that follows: the settings, the data (its fingerprint), and the settings this
    # resume changed (the checkpoint keeps the list of them).
    changed = state.changes[-1]["settings"] if ckpt_path and state.changes and state.changes[-1]["iter"] == \
        state.iter_num else {}
    metrics.record(state.iter_num, {"event": "resume" if ckpt_path else "start", "config": dataclasses.asdict(cfg),
                                    "data": meta["fingerprint"], "world_size": dist_ctx.world_size,
                                    "attention": attention, "block": block_name(cfg),
                                    **({"changes": changed} if changed else {})})
    try:
        train(cfg, model, optimizer, scaler, state, data, meta, out_dir, metrics, dist_ctx, log)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at iter {state.iter_num}; " + checkpoint_note(out_dir)) from None
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise TrainingError(out_of_memory_message(cfg, e)) from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        raise TrainingError(out_of_memory_message(cfg, e)) from None
    finally:
        metrics.close()


def train(cfg, model, optimizer, scaler, state, data, meta, out_dir, metrics, dist_ctx, log):
    """nanoGPT's loop: evaluate and checkpoint every eval_interval, one optimizer step per iteration, log."""
    raw_model, device_type = model, dist_ctx.device.split(":")[0]
    # DDP, then compile (torch's order): dynamo splits the graph at DDP's gradient buckets, so each bucket's all-reduce
    # overlaps the rest of the backward; a compiled model wrapped in DDP all-reduces after the whole backward.
    # Evaluation runs without DDP: it syncs no gradients, and DDP's forward broadcasts buffers (symax's η), a
    # collective that a rank with no evaluation batch (eval_iters < world size) would never join.
    compiled = torch.compile if cfg.compile else (lambda m: m)
    eval_model = compiled(model)
    if dist_ctx.ddp:
        model = compiled(DDP(model, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None))
    else:
        model = eval_model
    autocast = runtime.autocast(device_type, cfg.dtype)
    probe, starts = None, window_starts(data, meta, cfg)
    if cfg.log_stats:
        from analysis.stats import model_stats, probe_batch
        probe = probe_batch(data["val"], cfg.block_size, starts and starts["val"]).to(dist_ctx.device)
    hellaswag = None
    if cfg.hellaswag_interval:
        from analysis import hellaswag as hs
        from prepare_data import load_tokenizer
        try:
            hellaswag = hs.load_encoded(load_tokenizer(meta)[0])
        except (OSError, ValueError) as e:
            raise ConfigError(str(e)) from None
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    device_name = runtime.device_name(dist_ctx.device)
    t0, t0_iter = time.time(), state.iter_num
    while True:
        lr = get_lr(state.iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's group may peak elsewhere (muon_lr)
        if state.iter_num % cfg.eval_interval == 0 or state.iter_num == cfg.max_iters:
            losses = estimate_loss(eval_model, data, cfg, autocast, dist_ctx, starts)
            event = {"event": "eval", "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
            if probe is not None and dist_ctx.master:
                t_stats = time.time()
                event.update(model_stats(raw_model, probe, triggers=meta.get("triggers")))
                event["stats_s"] = time.time() - t_stats
            if hellaswag and (state.iter_num % cfg.hellaswag_interval == 0 or state.iter_num == cfg.max_iters):
                with autocast:
                    event.update(hs.score(raw_model, *hellaswag, cfg.block_size, cfg.batch_size, dist_ctx.device))
            log(f"iter {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            metrics.record(state.iter_num, event)
            if losses["val"] < state.best_val_loss or cfg.always_save_checkpoint:
                state.best_val_loss = min(state.best_val_loss, losses["val"])
                if state.iter_num > 0:
                    save(cfg, raw_model, optimizer, scaler, state, meta, out_dir, dist_ctx)
            t0, t0_iter = time.time(), state.iter_num  # timings exclude evaluation and checkpointing
        if state.iter_num >= cfg.max_iters or cfg.eval_only:
            return

        loss, grad_norm, applied = train_step(model, raw_model, optimizer, scaler, data["train"], state, cfg,
                                              autocast, dist_ctx, starts and starts["train"])
        state.iter_num += 1
        if not applied:
            state.nonfinite_in_a_row += 1
            log(f"iter {state.iter_num - 1}: non-finite loss {loss.item()} or grad norm {grad_norm.item()}; "
                f"step skipped ({state.nonfinite_in_a_row} in a row)")
            metrics.record(state.iter_num - 1, {"event": "nonfinite", "loss": loss.item(),
                                                "grad_norm": grad_norm.item(), "in_a_row": state.nonfinite_in_a_row})
            if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                raise TrainingError(nonfinite_message(cfg, state, out_dir))
            continue
        state.nonfinite_in_a_row = 0
        if state.iter_num % cfg.log_interval == 0 and dist_ctx.master:
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t0) / (state.iter_num - t0_iter)
            t0, t0_iter = time.time(), state.iter_num
            mfu = raw_model.estimate_mfu(tokens_per_iter, dt, device_name, dist_ctx.world_size)
            metrics.record(state.iter_num, {"event": "train", "loss": loss.item(), "grad_norm": grad_norm.item(),
                                            "lr": lr, "ms_per_iter": dt * 1000, "tokens_per_s": tokens_per_iter / dt,
                                            "mfu": mfu})
            print(f"iter {state.iter_num}: loss {loss.item():.4f}, {dt * 1000:.1f} ms, "
                  f"{tokens_per_iter / dt:,.0f} tok/s" + (f", mfu {mfu * 100:.1f}%" if mfu else ""))


# ---- what a stopped run says ----

class Interrupted(TrainingError):
    """Ctrl-C: one line saying what was kept."""


def checkpoint_note(out_dir):
    ckpt = out_dir / CKPT_NAME
    if not ckpt.exists():
        return f"no checkpoint was written to {out_dir}"
    return f"last checkpoint at iter {checkpoint_iter(ckpt)} ({ckpt}); the same command resumes from it"


def nonfinite_message(cfg, state, out_dir):
    """Why the run stops after max_nonfinite_steps NaN/Inf steps, naming the likely cause and what is on disk."""
    causes = "lower learning_rate, use dtype=bfloat16/float32, or check the data"
    if cfg.learning_rate > 1:
        causes = f"lower learning_rate ({cfg.learning_rate} is far too high)"
    elif cfg.grad_clip == 0:
        causes = "lower learning_rate or clip gradients (grad_clip=1.0; it is 0, off)"
    kept = (f"The last good checkpoint is untouched: {checkpoint_note(out_dir)} (with other settings: add "
            f"--resume_changes=<them>, e.g. --resume_changes=learning_rate)" if (out_dir / CKPT_NAME).exists()
            else "No checkpoint was written")
    return f"{state.nonfinite_in_a_row} non-finite steps in a row at iter {state.iter_num - 1}: {causes}. {kept}."


def out_of_memory_message(cfg, error):
    where = "GPU" if isinstance(error, torch.OutOfMemoryError) else "CPU"
    return (f"out of {where} memory with batch_size={cfg.batch_size}, block_size={cfg.block_size}, "
            f"n_layer={cfg.n_layer}, n_embd={cfg.n_embd}: lower batch_size (raise gradient_accumulation_steps to keep "
            f"the global batch), or block_size, or the model size")


if __name__ == "__main__":
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        print(help_text())
        sys.exit(0)
    try:
        main(sys.argv[1:])
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(130)
    except (ConfigError, CheckpointError, TrainingError) as e:
        sys.exit(f"error: {e}")
