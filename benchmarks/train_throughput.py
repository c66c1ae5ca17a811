"""
Training throughput per attn_norm, attn_gate and block: tokens/s, ms/iter and MFU of train.py's own training step
(forward, backward, clipping, optimizer) on random tokens, with the model and batch of a config file.

    python -m benchmarks.train_throughput                                        # CPU preset, every attn_norm
    python -m benchmarks.train_throughput config/train_gpt2.py --batch_size=auto --gradient_accumulation_steps=1
    python -m benchmarks.train_throughput --norms softmax,diff --attn_impl=fused --out benchmarks/results/x.md

Rows: every attn_norm of --norms (default: every registered one) with the first of --gates (none) and of --blocks
(gpt2), then every other attn_gate mode with the first attn_norm (softmax): a gate scales attention's output, so what
it costs does not depend on the normalizer; then every other block (model.BLOCKS: llama) with the first attn_norm and
gate. The params column is the non-embedding parameter count (SwiGLU's hidden width is rounded up to a multiple of
64, so the LLaMA block has as many parameters as GPT-2's only where 2/3·4·n_embd is one, e.g. n_embd = 192, 768).
The × column is tokens/s over the first row's in the same run. MFU is model.estimate_mfu against the device's peak
bf16.
--rounds R measures every row R times, the rows interleaved (round 1 measures every row, then round 2, ...), and
reports each row's median: on a shared machine whose load drifts, every row then sees the same drift.
Each row is written (printed, and to --out) as soon as it is measured (in its last round), so a run stopped at a
time limit keeps every finished row.

--batch_size=auto: on a GPU, the largest micro-batch that fits, found for the first row by halving from
--max_batch_size on out of memory; every row uses it, and a row that runs out of memory halves its own (the
batch column says so). On CPU, the config's batch_size. Other --key=value arguments override the config, as for
train.py.
"""

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import normalizers
import runtime
from benchmarks import Report, header
from configurator import ConfigError
from model import BLOCKS
from prepare_data import load_meta
from train import build, load_config, train_step


def default_vocab_size(dataset):
    """The dataset's vocabulary where it is prepared, else GPT-2's (every dataset's tokenizer but the char one)."""
    try:
        return load_meta(Path("data") / dataset)["vocab_size"]
    except FileNotFoundError:
        return 50257


def measure(cfg, vocab_size, iters, warmup):
    """Seconds per iteration of train.py's train_step (gradient_accumulation_steps micro-batches of random tokens)
    after warmup iterations, and the model."""
    dist_ctx = runtime.Distributed(False, 0, 1, cfg.device)
    data = np.random.default_rng(cfg.seed).integers(0, vocab_size, 64 * (cfg.block_size + 1)).astype(np.uint32)
    torch.compiler.reset()  # a fresh compile per model: past dynamo's recompile limit it would fall back to eager
    with tempfile.TemporaryDirectory() as out_dir:  # an empty out_dir: build() starts from scratch
        model, optimizer, scaler, state, _ = build(cfg, {"vocab_size": vocab_size}, Path(out_dir), dist_ctx)
    step_model = torch.compile(model) if cfg.compile else model
    autocast = runtime.autocast(cfg.device.split(":")[0], cfg.dtype)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    for i in range(warmup + iters):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        train_step(step_model, model, optimizer, scaler, data, state, cfg, autocast, dist_ctx)
    sync()
    return (time.perf_counter() - t0) / iters, model


def fitting_batch(cfg, vocab_size, args, batch_size, halve):
    """measure() at batch_size; with halve, each out-of-memory halves the micro-batch and tries again.
    Returns (seconds per iteration, model, the micro-batch used)."""
    while True:
        cfg.batch_size = batch_size
        try:
            return (*measure(cfg, vocab_size, args.iters, args.warmup), batch_size)
        except torch.cuda.OutOfMemoryError:
            if not halve or batch_size == 1:
                raise
        gc.collect()  # the failed attempt's model and activations, before the next one allocates
        torch.cuda.empty_cache()
        batch_size //= 2
        print(f"out of memory: trying batch_size={batch_size}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="config/shakespeare_char/cpu.py")
    parser.add_argument("--norms", default=",".join(normalizers.NORMALIZERS),
                        help="comma-separated attn_norms (default: every registered one)")
    parser.add_argument("--gates", default=",".join(normalizers.gates.GATES),
                        help="comma-separated attn_gate modes, measured with the baseline (default: every one)")
    parser.add_argument("--blocks", default=",".join(BLOCKS),
                        help="comma-separated blocks (model.BLOCKS), measured with the baseline (default: every one)")
    parser.add_argument("--batch_size", help="micro-batch: an integer, or auto (see above); default: the config's")
    parser.add_argument("--max_batch_size", type=int, default=256, help="where --batch_size=auto starts halving")
    parser.add_argument("--vocab_size", type=int, help="default: data/<dataset>/meta.json's, else GPT-2's 50257")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=5, help="iterations before timing (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every row this many times, interleaved, "
                                                             "and report the median")
    parser.add_argument("--out", help="also write the table to this file, e.g. benchmarks/results/<device>-train.md")
    args, overrides = parser.parse_known_args(argv)
    for name, valid in (("norms", normalizers.NORMALIZERS), ("gates", normalizers.gates.GATES),
                        ("blocks", BLOCKS)):
        unknown = [n for n in getattr(args, name).split(",") if n not in valid]
        if unknown:
            parser.error(f"unknown {name} {', '.join(unknown)}; valid: {', '.join(valid)}")
    if args.batch_size not in (None, "auto") and not args.batch_size.isdigit():
        parser.error(f"--batch_size={args.batch_size}: expected a positive integer or auto")
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("need --iters >= 1, --warmup >= 0 and --rounds >= 1")
    return args, overrides


def row_config(args, overrides, norm, gate, block):
    """The TrainConfig of one row: the config file, the overrides, this attn_norm, attn_gate and block."""
    batch = [f"--batch_size={args.batch_size}"] if args.batch_size not in (None, "auto") else []
    cfg = load_config([args.config, *overrides, *batch, f"--attn_norm={norm}", f"--attn_gate={gate}",
                       *(f"--{key}={value}" for key, value in BLOCKS[block].items())])
    cfg.validate()
    return cfg


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    norms, gates, blocks = args.norms.split(","), args.gates.split(","), args.blocks.split(",")
    rows = ([(norm, gates[0], blocks[0]) for norm in norms] + [(norms[0], gate, blocks[0]) for gate in gates[1:]] +
            [(norms[0], gates[0], block) for block in blocks[1:]])
    try:
        cfgs = [row_config(args, overrides, *row) for row in rows]
    except ConfigError as e:
        sys.exit(f"error: {e}")
    cfg = cfgs[0]
    gpu = cfg.device.startswith("cuda")
    auto = args.batch_size == "auto" and gpu
    vocab_size = args.vocab_size or default_vocab_size(cfg.dataset)
    device_name = runtime.device_name(cfg.device)

    batch_text = (f"auto (the largest that fits, halving from {args.max_batch_size})" if auto else
                  f"{cfg.batch_size}" + (" (auto: the config's, on CPU)" if args.batch_size == "auto" else ""))
    report = Report(args.out)
    report.add(*header("Training throughput", __spec__.name, argv, cfg.device),
               f"- model: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}, "
               f"vocab {vocab_size} (padded to {runtime.padded_vocab_size(vocab_size)}); dtype {cfg.dtype}; "
               f"compile {cfg.compile}",
               f"- batch: micro-batch {batch_text} x "
               f"{cfg.gradient_accumulation_steps} micro-steps; {args.iters} timed iterations after {args.warmup} "
               f"warm-up" + (f", median of {args.rounds} interleaved rounds" if args.rounds > 1 else "") +
               f"; random tokens; MFU against {device_name}'s peak bf16 (n/a: unknown peak)",
               "",
               f"| attn_norm | attn_gate | block | params | attention path | micro-batch | ms/iter | tokens/s | MFU | "
               f"× {norms[0]} |",
               "|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    batch_size, failed = args.max_batch_size if auto else cfg.batch_size, {}
    seconds, used, flops, params = [[] for _ in rows], [None] * len(rows), [None] * len(rows), [None] * len(rows)
    base = None
    for r in range(args.rounds):
        for i, ((norm, gate, block), cfg) in enumerate(zip(rows, cfgs)):
            if i in failed:
                continue
            try:
                dt, model, used[i] = fitting_batch(cfg, vocab_size, args, used[i] or batch_size, halve=auto)
            except Exception as e:  # out of memory, a kernel that does not compile, ...: the other rows still run
                failed[i] = f"- {norm}, attn_gate={gate}, {block}: {type(e).__name__}: {str(e).strip()[:300]}"
                print(failed[i], flush=True)
                continue
            if i == 0 and r == 0:  # every other row starts from its micro-batch
                batch_size = used[0]
            tokens = cfg.gradient_accumulation_steps * used[i] * cfg.block_size
            flops[i] = model.estimate_mfu(tokens, 1.0, device_name)  # MFU at 1 s/iter: MFU = this / dt
            params[i] = model.get_num_params()
            seconds[i].append(dt)
            if args.rounds > 1:
                print(f"round {r + 1}/{args.rounds}: {norm}, {gate}, {block}: {dt * 1000:.1f} ms/iter", flush=True)
            del model  # before the next row builds its own
            if r == args.rounds - 1:  # the row is complete: written now, so a run stopped midway keeps it
                dt = float(np.median(seconds[i]))
                if i == 0:  # the × column compares with the first row; without it ("Failed:" below) it stays empty
                    base = tokens / dt
                attention = normalizers.describe(norm, cfg.attn_impl, cfg.device.split(":")[0],
                                                 cfg.attention_dropout, cfg.n_embd // cfg.n_head)
                batch = f"{used[i]}" if used[i] == batch_size else f"{used[i]} (out of memory at {batch_size})"
                report.add(f"| {norm} | {gate} | {block} | {params[i]:,} | {attention} | {batch} | "
                           f"{dt * 1000:.1f} | {tokens / dt:,.0f} | "
                           f"{'n/a' if flops[i] is None else f'{flops[i] / dt * 100:.1f}%'} | "
                           f"{f'{tokens / dt / base:.2f}' if base else '—'} |")
    if failed:
        report.add("", "Failed:", "", *failed.values())


if __name__ == "__main__":
    main()
