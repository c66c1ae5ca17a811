"""
Training throughput per attn_norm: tokens/s, ms/iter and MFU of full training steps (forward, backward,
AdamW) on random tokens, with the model and batch of a config file.

    python benchmarks/train_throughput.py                                   # CPU preset, every attn_norm
    python benchmarks/train_throughput.py config/softmax.py --batch_size=16 # GPT-2 124M, block 1024, on a GPU
    python benchmarks/train_throughput.py --out benchmarks/results/cpu-train.md

Prints a markdown table with the device, settings and torch version; the ratio column compares each
attn_norm's tokens/s with softmax measured in the same run.
"""

import argparse
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
from model import ATTN_NORMS, GPT  # noqa: E402
from train import load_config  # noqa: E402


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu} ({torch.get_num_threads()} threads)"


def measure(cfg, iters, warmup):
    """Mean seconds per training iteration (gradient_accumulation_steps micro-batches) after warmup."""
    device_type = cfg.device.split(":")[0]
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model_config(50304 if cfg.dataset != "shakespeare_char" else 65)).to(cfg.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    step_model = torch.compile(model) if cfg.compile else model
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    autocast = nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
    x = torch.randint(model.config.vocab_size, (cfg.batch_size, cfg.block_size + 1), device=cfg.device)

    def step():
        for _ in range(cfg.gradient_accumulation_steps):
            with autocast:
                loss = step_model(x[:, :-1], x[:, 1:])[1]
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - t0) / iters, model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="config/shakespeare_char/cpu.py")
    parser.add_argument("--norms", default=",".join(ATTN_NORMS))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", help="also write the table to this file")
    args, overrides = parser.parse_known_args()

    rows, base = [], None
    for norm in args.norms.split(","):
        cfg = load_config([args.config, f"--attn_norm={norm}", *overrides])
        cfg.validate()
        dt, model = measure(cfg, args.iters, args.warmup)
        tokens = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        mfu = model.estimate_mfu(tokens, dt, device_name(cfg.device))
        base = tokens / dt if norm == "softmax" else base
        attention = kernels.describe(norm, cfg.attn_impl, cfg.device.split(":")[0], cfg.dropout)
        rows.append(f"| {norm} | {attention} | {dt * 1000:.1f} | {tokens / dt:,.0f} | "
                    f"{'n/a' if mfu is None else f'{mfu * 100:.1f}%'} | "
                    f"{'' if base is None else f'{tokens / dt / base:.2f}'} |")
        print(rows[-1], flush=True)

    header = [
        f"# Training throughput: {args.config} {' '.join(overrides)}",
        "",
        f"device: {device_name(cfg.device)}; dtype {cfg.dtype}; compile {cfg.compile}; torch {torch.__version__}",
        f"model: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}; "
        f"batch {cfg.batch_size} x {cfg.gradient_accumulation_steps} micro-steps; {args.iters} timed iterations "
        f"after {args.warmup} warm-up; random tokens",
        "",
        "| attn_norm | attention path | ms/iter | tokens/s | MFU | vs softmax |",
        "|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + rows) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
