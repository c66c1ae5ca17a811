"""
What DDP with torch.compile costs per training step, in the two orders: compile the model and wrap it in DDP
(nanoGPT's order: the compiled backward is one autograd node, so DDP all-reduces every bucket after it ends),
or wrap first and compile the DDP module (torch's recommended order: dynamo's DDPOptimizer splits the graph at
bucket boundaries, so a bucket's all-reduce overlaps the rest of the backward). Run under torchrun, e.g. on CPU
with gloo:

    torchrun --standalone --nproc_per_node=2 -m benchmarks.ddp_step --out benchmarks/results/cpu-ddp.md

Each row: train.py's train_step (forward, backward, all-reduce, clipping, AdamW) on random tokens, median ms of
--iters after --warmup (compilation), the orders interleaved over --rounds. --backend picks the compiler (inductor
is what train.py uses; aot_eager compiles in seconds and splits the graph the same way).
"""

import argparse
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import runtime
from benchmarks import Report, header
from model import GPT
from train import TrainConfig, TrainState, train_step

ORDERS = ("compile, then DDP", "DDP, then compile")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    dist_ctx = runtime.setup_distributed("cpu")
    if not dist_ctx.ddp:
        sys.exit("error: run under torchrun (see --help)")
    cfg = TrainConfig(device="cpu", dtype="float32", n_layer=args.n_layer, n_head=4, n_embd=args.n_embd,
                      block_size=args.block_size, batch_size=args.batch_size,
                      gradient_accumulation_steps=2 * dist_ctx.world_size)  # two micro-steps: no_sync, then sync
    data = np.random.default_rng(0).integers(0, 512, 100_000).astype(np.uint16)
    steps = {}
    for order in ORDERS:
        torch.manual_seed(0)
        raw = GPT(cfg.model_config(512))
        optimizer = raw.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        compiled = lambda m: torch.compile(m, backend=args.backend)  # noqa: E731
        model = DDP(compiled(raw)) if order == ORDERS[0] else compiled(DDP(raw))
        state = TrainState(0, float("inf"), torch.Generator().manual_seed(0))
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        steps[order] = lambda model=model, raw=raw, optimizer=optimizer, scaler=scaler, state=state: train_step(
            model, raw, optimizer, scaler, data, state, cfg, runtime.autocast("cpu", "float32"), dist_ctx)
        for _ in range(args.warmup):
            steps[order]()
    times = {order: [] for order in ORDERS}
    for _ in range(args.rounds):
        for order in ORDERS:
            torch.distributed.barrier()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                steps[order]()
            times[order].append((time.perf_counter() - t0) / args.iters)
    if dist_ctx.master:
        report = Report(args.out)
        report.add(*header("DDP and torch.compile: the order", __spec__.name, argv, "cpu"),
                   f"- {dist_ctx.world_size} processes (gloo), {torch.get_num_threads()} threads each; model "
                   f"{args.n_layer} layers x {args.n_embd}, block {args.block_size}, micro-batch {args.batch_size}, "
                   f"fp32; backend {args.backend}; median of {args.rounds} interleaved rounds of {args.iters} steps",
                   "", "| order | ms/step |", "|---|---:|",
                   *(f"| {order} | {np.median(times[order]) * 1000:.1f} |" for order in ORDERS))
    dist_ctx.close()


if __name__ == "__main__":
    main()
