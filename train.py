"""
Train a GPT whose attention normalizer is a config flag. nanoGPT's loop: one process, or DDP under torchrun.

    python train.py config/shakespeare_char/cpu.py --attn_norm=softmax1
    torchrun --standalone --nproc_per_node=8 train.py config/softmax1.py      (or ./run_training.sh)

Settings come from the TrainConfig defaults, then config files (plain Python assignments), then --key=value
overrides, in argument order. Every setting is saved in the checkpoint and logged to metrics.jsonl and wandb.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import kernels
from checkpoint import CKPT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from config import ConfigError, load_config
from model import GPT


class TrainingError(RuntimeError):
    """Training cannot go on (a loss that stays NaN/Inf): reported like ConfigError, in one line."""


def load_dataset(cfg):
    """Check the prepared data once, up front, so a bad dataset fails before any compute is spent."""
    data_dir = Path("data") / cfg.dataset
    if not (data_dir / "meta.json").exists():
        raise ConfigError(f"dataset {cfg.dataset!r} is not prepared (no {data_dir}/meta.json): run "
                         f"python prepare_data.py {cfg.dataset}")
    redo = f"re-run python prepare_data.py {cfg.dataset} --force"
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        vocab_size, counts = meta["vocab_size"], {s: meta[f"{s}_tokens"] for s in ("train", "val")}
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{data_dir}/meta.json is damaged ({type(e).__name__}: {e}): {redo}") from None
    if any(type(n) is not int or n < 0 for n in counts.values()):
        raise ConfigError(f"{data_dir}/meta.json: token counts {counts} are not counts: {redo}")
    if dtype.kind != "u" or type(vocab_size) is not int or not 0 < vocab_size <= np.iinfo(dtype).max + 1:
        raise ConfigError(f"{data_dir}/meta.json: vocab_size {vocab_size!r} does not fit token dtype {dtype}: "
                         f"{redo}")
    if meta.get("tokenizer") == "char" and len(meta.get("chars", "")) != vocab_size:
        raise ConfigError(f"{data_dir}/meta.json lists {len(meta.get('chars', ''))} characters but vocab_size "
                         f"{vocab_size}: {redo}")
    data = {}
    for split in ("train", "val"):
        path = data_dir / f"{split}.bin"
        size = path.stat().st_size if path.exists() else 0
        if size % dtype.itemsize or size // dtype.itemsize != counts[split]:
            raise ConfigError(f"{path} holds {size} bytes, but meta.json promises {counts[split]} {dtype} tokens "
                             f"({counts[split] * dtype.itemsize} bytes): the data is incomplete or damaged, {redo}")
        if counts[split] <= cfg.block_size:
            raise ConfigError(f"{split} split has {counts[split]} tokens, too few for one block of "
                             f"block_size={cfg.block_size}+1: lower block_size or use more data")
        data[split] = np.memmap(path, dtype=dtype, mode="r")
        # Token ids beyond the vocabulary would index past the embedding; check a prefix of big files.
        if int(data[split][: 100_000_000].max()) >= vocab_size:
            raise ConfigError(f"{path} holds token ids >= vocab_size {vocab_size} (meta.json): the data does not "
                             f"match its meta.json, {redo}")
    return data, meta


def main(argv):
    cfg = load_config(argv)
    ddp = int(os.environ.get("RANK", -1)) != -1
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    cfg.validate(world_size)
    cfg.out_dir = cfg.out_dir or f"out/{cfg.dataset}-{cfg.n_layer}x{cfg.n_embd}-{cfg.attn_norm}-s{cfg.seed}"
    if ddp:
        cfg.device = f"cuda:{os.environ['LOCAL_RANK']}" if cfg.device.startswith("cuda") else cfg.device
        dist.init_process_group(backend="nccl" if cfg.device.startswith("cuda") else "gloo")
        if cfg.device.startswith("cuda"):
            torch.cuda.set_device(cfg.device)
    rank = dist.get_rank() if ddp else 0
    master = rank == 0
    device_type = cfg.device.split(":")[0]
    micro_steps = cfg.gradient_accumulation_steps // world_size
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    log = print if master else (lambda *a, **k: None)

    data, meta = load_dataset(cfg)
    out_dir = Path(cfg.out_dir)
    if master:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create out_dir {out_dir} ({e.strerror}): choose another --out_dir") from None
        if not os.access(out_dir, os.W_OK):
            raise ConfigError(f"out_dir {out_dir} is not writable: choose another --out_dir")

    # ---- model and optimizer, from scratch or from the checkpoint in out_dir ----
    ckpt_path = out_dir / CKPT_NAME
    kept = sorted(p.name for p in out_dir.glob("ckpt-*.pt"))
    if kept and not ckpt_path.exists():  # a fresh run would prune them (keep_checkpoints): never lose them
        raise ConfigError(f"{out_dir} holds older checkpoints ({', '.join(kept)}) but no {CKPT_NAME}: copy the one "
                         f"to resume from to {ckpt_path}, or choose a new out_dir")
    resume = cfg.init_from == "resume" or (cfg.init_from == "auto" and ckpt_path.exists())
    if cfg.init_from == "resume" and not ckpt_path.exists():
        raise ConfigError(f"init_from=resume but there is no {ckpt_path}: use init_from=scratch or auto")
    if cfg.init_from == "scratch" and ckpt_path.exists():
        raise ConfigError(f"{ckpt_path} exists and init_from=scratch would overwrite it: resume with "
                         f"init_from=auto, or choose a new out_dir")
    # The char vocab is used as is; GPT-2's 50257 is padded to 50304, a multiple of 64, for speed.
    vocab_size = meta["vocab_size"] if meta["vocab_size"] < 50257 else 50304
    model_config = cfg.model_config(vocab_size)
    ckpt = load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None:
        saved = ckpt["model_args"]
        changed = {k: (saved.get(k), v) for k, v in dataclasses.asdict(model_config).items()
                   if k != "attn_impl" and saved.get(k) != v}
        if changed:
            raise ConfigError(f"{ckpt_path} was trained with a different model: " + ", ".join(
                f"{k}={a!r} there, {b!r} now" for k, (a, b) in changed.items()) + ". Use another out_dir.")
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone (two runs start identical)
    model = GPT(model_config).to(cfg.device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    log(f"{model.get_num_params() / 1e6:.2f}M parameters; attn_norm={cfg.attn_norm}, attention: "
        f"{kernels.describe(cfg.attn_norm, cfg.attn_impl, device_type, cfg.dropout)}")
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.dtype == "float16")
    iter_num, best_val_loss = 0, float("inf")
    # Training batches are drawn for the whole global batch from one generator shared by all ranks, so
    # the run sees the same sequences whatever the number of processes; dropout RNG is per rank.
    data_rng = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + rank)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        data_rng.set_state(ckpt["data_rng"])
        if len(ckpt["rng"]) == world_size:
            torch.set_rng_state(ckpt["rng"][rank]["cpu"])
            if "cuda" in ckpt["rng"][rank] and device_type == "cuda":
                torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"])
        log(f"resumed from {ckpt_path} at iter {iter_num}")
        del ckpt
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None)
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    autocast = nullcontext() if cfg.dtype == "float32" else torch.autocast(device_type, dtype=ptdtype)

    def get_batch(split, offsets):
        x = torch.stack([torch.from_numpy(data[split][i:i + cfg.block_size].astype(np.int64)) for i in offsets])
        y = torch.stack([torch.from_numpy(data[split][i + 1:i + 1 + cfg.block_size].astype(np.int64)) for i in offsets])
        if device_type == "cuda":  # pinned memory lets the host-to-device copy overlap compute
            return x.pin_memory().to(cfg.device, non_blocking=True), y.pin_memory().to(cfg.device, non_blocking=True)
        return x.to(cfg.device), y.to(cfg.device)

    def sample_offsets(split, n, generator):
        return torch.randint(len(data[split]) - cfg.block_size, (n,), generator=generator).tolist()

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches per split; the same batches at every eval (own generator)."""
        model.eval()
        out = {}
        for split in ("train", "val"):
            rng = torch.Generator().manual_seed(cfg.seed + 1 + rank)
            losses = torch.zeros(cfg.eval_iters, device=cfg.device)
            for k in range(cfg.eval_iters):
                with autocast:
                    losses[k] = model(*get_batch(split, sample_offsets(split, cfg.batch_size, rng)))[1]
            loss = losses.mean()
            if ddp:
                dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            out[split] = loss.item()
        model.train()
        return out

    def get_lr(it):
        if not cfg.decay_lr:
            return cfg.learning_rate
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
        if it > cfg.lr_decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)

    def save():
        rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if device_type == "cuda" else {})}
        rngs = [rng] * world_size
        if ddp:
            dist.all_gather_object(rngs, rng)
        if not master:
            return
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            raise TrainingError(f"parameters are not finite at iter {iter_num}; refusing to overwrite the last good "
                                f"checkpoint in {out_dir}: resume from it with a lower learning_rate")
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "model_args": dataclasses.asdict(model_config),
                 "config": dataclasses.asdict(cfg), "iter_num": iter_num, "best_val_loss": best_val_loss,
                 "data_rng": data_rng.get_state(), "rng": rngs, "meta": meta}
        save_checkpoint(state, out_dir, cfg.keep_checkpoints)

    metrics = open(out_dir / "metrics.jsonl", "a") if master else None
    wandb = None
    if cfg.wandb_log and master:
        import wandb
        run_name = cfg.wandb_run_name or f"{cfg.attn_norm}-s{cfg.seed}"
        wandb.init(project=cfg.wandb_project, name=run_name, config=dataclasses.asdict(cfg), dir=str(out_dir),
                   id=f"{run_name}-{hashlib.md5(str(out_dir.resolve()).encode()).hexdigest()[:8]}", resume="allow")

    def record(event):
        """One JSON line per log/eval event in out_dir/metrics.jsonl, and the same to wandb."""
        event = {"iter": iter_num, "tokens": iter_num * tokens_per_iter, **event}
        metrics.write(json.dumps(event) + "\n")
        metrics.flush()
        if wandb is not None and event["event"] in ("train", "eval"):  # the settings went to wandb.init
            # One lr per step: the train record's (the rate its step used), not the eval's (the next step's).
            skip = ("event", "iter") + (("lr",) if event["event"] == "eval" else ())
            wandb.log({k: v for k, v in event.items() if k not in skip}, step=iter_num)

    if master:
        record({"event": "resume" if resume else "start", "config": dataclasses.asdict(cfg),
                "world_size": world_size, "attention": kernels.describe(cfg.attn_norm, cfg.attn_impl,
                                                                        device_type, cfg.dropout)})
    probe = None
    if cfg.log_stats:
        from analysis.stats import model_stats, probe_batch
        probe = probe_batch(data["val"], cfg.block_size).to(cfg.device)

    # ---- the training loop ----
    device_name = torch.cuda.get_device_name() if device_type == "cuda" else "cpu"
    nonfinite_in_a_row, t0, t0_iter = 0, time.time(), iter_num
    while True:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters:
            losses = estimate_loss()
            event = {"event": "eval", "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
            if probe is not None and master:
                t_stats = time.time()
                event.update(model_stats(raw_model, probe))
                event["stats_s"] = time.time() - t_stats
            log(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if master:
                record(event)
            if losses["val"] < best_val_loss or cfg.always_save_checkpoint:
                best_val_loss = min(best_val_loss, losses["val"])
                if iter_num > 0:
                    save()
            t0, t0_iter = time.time(), iter_num  # timings exclude evaluation and checkpointing
        if iter_num >= cfg.max_iters or cfg.eval_only:
            break

        offsets = sample_offsets("train", cfg.gradient_accumulation_steps * cfg.batch_size, data_rng)
        loss_sum = torch.zeros((), device=cfg.device)
        for micro_step in range(micro_steps):
            # This rank's share of the global batch: micro-batches rank, rank + world_size, ...
            start = (micro_step * world_size + rank) * cfg.batch_size
            X, Y = get_batch("train", offsets[start:start + cfg.batch_size])
            # Gradients are all-reduced only on the last micro-step.
            sync = nullcontext() if not ddp or micro_step == micro_steps - 1 else model.no_sync()
            with sync, autocast:
                loss = model(X, Y)[1] / micro_steps
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf"))
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        if not (torch.isfinite(grad_norm) and torch.isfinite(loss_sum)) and not scaler.is_enabled():
            # A NaN/Inf step would poison the weights (and every later checkpoint): skip it.
            nonfinite_in_a_row += 1
            log(f"iter {iter_num}: non-finite loss {loss_sum.item()} or grad norm {grad_norm.item()}; "
                f"step skipped ({nonfinite_in_a_row} in a row)")
            if master:
                record({"event": "nonfinite", "loss": loss_sum.item(), "grad_norm": grad_norm.item(),
                        "in_a_row": nonfinite_in_a_row})
            if nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                raise TrainingError(f"{nonfinite_in_a_row} non-finite steps in a row at iter {iter_num}: lower "
                                    f"learning_rate, use dtype=bfloat16/float32, or check the data. The last "
                                    f"good checkpoint in {out_dir} is untouched.")
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1
            continue
        nonfinite_in_a_row = 0
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        if iter_num % cfg.log_interval == 0 and master:
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t0) / (iter_num - t0_iter)
            t0, t0_iter = time.time(), iter_num
            mfu = raw_model.estimate_mfu(tokens_per_iter, dt, device_name)
            record({"event": "train", "loss": loss_sum.item(), "grad_norm": grad_norm.item(), "lr": lr,
                    "ms_per_iter": dt * 1000, "tokens_per_s": tokens_per_iter / dt, "mfu": mfu})
            print(f"iter {iter_num}: loss {loss_sum.item():.4f}, {dt * 1000:.1f} ms, "
                  f"{tokens_per_iter / dt:,.0f} tok/s" + (f", mfu {mfu * 100:.1f}%" if mfu else ""))

    if master:
        metrics.close()
        if wandb is not None:
            wandb.finish()
    if ddp:
        dist.barrier()  # no rank tears the group down while rank 0 still writes the final checkpoint
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, CheckpointError, TrainingError) as e:
        sys.exit(f"error: {e}")
