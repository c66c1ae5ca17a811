"""
Attention alone, per attn_norm × impl (fused, reference) × T × d: forward and forward+backward time, TFLOP/s,
peak memory, and throughput relative to SDPA softmax (the registry's baseline, fused) measured in the same run.

    python -m benchmarks.attention                               # GPU: bf16, T 1024..8192, d 64 and 128
    python -m benchmarks.attention --norms softmax,symax --T 2048 4096 --d 128 --dtype float16
    python -m benchmarks.attention --out benchmarks/results/cpu-attention.md   # CPU: fp32, T 256..1024, d 64

Every registered attn_norm by default. Inputs are made as a layer of that normalizer makes them: one
CausalSelfAttention (n_head=H, n_embd=H·d, block_size=T) turns random x into q, k, v in the normalizer's head
layout (diff: H/2 value heads 2d wide) and its extra tensors (η, λ, ...), under autocast as in training. The
timed call is normalizers.attention on detached leaf copies of those, so fwd+bwd also computes their gradients.

FLOPs count only the causal half: forward 2·B·H·T²·d (QKᵀ and PV) × the normalizer's attn_flops (diff 1.5: its
value heads are 2d wide; a fused path's padding is extra work and shows as lower TFLOP/s), backward 2.5× the
forward. The × SDPA column is fwd+bwd TFLOP/s over SDPA softmax's at the same T and d.

Timing: triton.testing.do_bench (median ms) on CUDA; on CPU the fastest of --reps calls (time.perf_counter)
after 2 warmup calls, with the rows of one (T, d) timed in interleaved rounds: CPU machines are often shared
(the header gives the load average at the start), and the fastest call is the least disturbed. The forward
runs under no_grad (inference); fwd+bwd is one training step of attention.
Peak memory: on CUDA, torch.cuda.max_memory_allocated during one fwd+bwd minus what was allocated before it
(the inputs). On CPU "n/a": torch has no allocator statistics for CPU, and the process's max RSS only ever
grows, so a delta would misattribute earlier rows' peaks.
The reference runs only where its T×T fp32 tensors fit in free memory (estimate: 6 of them, fwd+bwd).
"""

import argparse
import os
import sys
import time

import torch

import normalizers
import runtime
from benchmarks import Report, header
from model import CausalSelfAttention, GPTConfig

IMPLS = ("fused", "reference")


class NotMeasured(Exception):
    """A row that cannot run here; the message says why."""


def make_inputs(norm, impl, B, H, T, d, dtype, device):
    """Leaf tensors q, k, v and the normalizer's extra args, as one attention layer of this normalizer makes them."""
    attn = CausalSelfAttention(GPTConfig(n_embd=H * d, n_head=H, block_size=T, attn_norm=norm, attn_impl=impl), 0)
    attn.to(device)
    x = torch.randn(B, T, H * d, device=device)
    with torch.no_grad(), runtime.autocast(device.split(":")[0], dtype):
        q, k, v = attn.qkv(x)
        args = attn.norm_args(x)
    leaf = lambda t: t.detach().requires_grad_(t.is_floating_point())  # keeps the layout: q, k, v are views
    return [leaf(t) for t in (q, k, v)], {name: leaf(a) if torch.is_tensor(a) else a for name, a in args.items()}


def free_memory(device):
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def setup(norm, impl, B, H, T, d, dtype, device):
    """(forward, forward+backward) closures over fresh inputs, and the peak MiB of one fwd+bwd (None on CPU).
    Raises NotMeasured where the row cannot run here."""
    if impl == "fused" and (reason := normalizers.unavailable_reason(norm, device.split(":")[0], 0.0)):
        raise NotMeasured(reason)
    (q, k, v), args = make_inputs(norm, impl, B, H, T, d, dtype, device)
    need = 6 * B * q.size(1) * T * T * 4  # fp32 T×T tensors alive in the reference's fwd+bwd (scores, weights, grads)
    if impl == "reference" and need > 0.8 * free_memory(device):
        raise NotMeasured(f"the reference's T×T tensors need ~{need / 2**30:.0f} GiB")
    leaves = [q, k, v] + [a for a in args.values() if torch.is_tensor(a) and a.requires_grad]
    run = lambda: normalizers.attention(norm, q, k, v, 0.0, impl, **args)
    dy = torch.randn_like(run())

    def forward():
        with torch.no_grad():
            run()

    def forward_backward():
        run().backward(dy)
        for x in leaves:
            x.grad = None

    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if gpu else 0
    forward_backward()  # also checks that the backward runs before anything is timed
    if gpu:
        torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if gpu else None
    return forward, forward_backward, peak


def time_ms(fns, device, reps):
    """ms per call of each fn. On CPU: 2 warmup calls each, then `reps` rounds over all fns keeping each one's
    fastest call, so that a busy spell on a shared machine slows every fn alike rather than whichever ran in it."""
    if device.startswith("cuda"):
        import triton.testing

        return [triton.testing.do_bench(fn) for fn in fns]
    for fn in fns:
        fn(), fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [1e3 * t for t in best]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norms", default=",".join(normalizers.NORMALIZERS),
                        help="comma-separated attn_norms (default: every registered one); the baseline always runs")
    parser.add_argument("--T", type=int, nargs="+", help="sequence lengths (GPU: 1024 … 8192; CPU: 256 512 1024)")
    parser.add_argument("--d", type=int, nargs="+", help="head dims (GPU: 64 128; CPU: 64)")
    parser.add_argument("--dtype", choices=runtime.DTYPES, help="GPU: bfloat16; CPU: float32")
    parser.add_argument("--B", type=int, help="batch (GPU: 4; CPU: 1)")
    parser.add_argument("--H", type=int, help="n_head (GPU: 16; CPU: 4)")
    parser.add_argument("--reps", type=int, default=10, help="timed runs per measurement on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="also write the table to this file, e.g. benchmarks/results/<device>-attention.md")
    a = parser.parse_args(argv)
    unknown = [n for n in a.norms.split(",") if n not in normalizers.NORMALIZERS]
    if unknown:
        parser.error(f"unknown attn_norm {', '.join(unknown)}; registered: {', '.join(normalizers.NORMALIZERS)}")
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    device, gpu = a.device, a.device.startswith("cuda")
    Ts = a.T or ([1024, 2048, 4096, 8192] if gpu else [256, 512, 1024])
    ds = a.d or ([64, 128] if gpu else [64])
    dtype, B, H = a.dtype or ("bfloat16" if gpu else "float32"), a.B or (4 if gpu else 1), a.H or (16 if gpu else 4)
    baseline = next(iter(normalizers.NORMALIZERS))
    norms = list(dict.fromkeys([baseline, *a.norms.split(",")]))  # × SDPA needs the baseline in every (T, d)

    timing = "triton.testing.do_bench, median" if gpu else f"time.perf_counter, fastest of {a.reps} interleaved rounds"
    report = Report(a.out)
    report.add(*header("Attention kernels: causal forward and forward+backward", __spec__.name, argv, device),
               f"- shapes: B={B}, n_head H={H}, T={', '.join(map(str, Ts))}, d={', '.join(map(str, ds))} "
               f"(q, k, v in each normalizer's own head layout); dtype {dtype}; timing: {timing}",
               "- TFLOP/s over the causal FLOPs the algorithm needs (fwd 2·B·H·T²·d × attn_flops, bwd 2.5× fwd); "
               f"× SDPA = fwd+bwd TFLOP/s / {baseline} fused's at the same T, d",
               f"- peak memory: {'max_memory_allocated during one fwd+bwd, minus the inputs' if gpu else 'n/a on CPU'}",
               "",
               "| attn_norm | impl | T | d | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | peak MiB | × SDPA |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = {}
    for T in Ts:
        for d in ds:
            rows, fns = [], []
            for norm in norms:
                for impl in IMPLS:
                    try:
                        forward, forward_backward, peak = setup(norm, impl, B, H, T, d, dtype, device)
                        rows.append((norm, impl, peak))
                        fns += [forward, forward_backward]
                    except NotMeasured as e:
                        notes.setdefault(f"{norm} {impl}: {e}", []).append(f"T={T} d={d}")
                    except Exception as e:  # out of memory, a kernel that does not compile, ...: go on
                        notes.setdefault(f"{norm} {impl}: failed: {type(e).__name__}: {str(e)[:200]}", []).append(
                            f"T={T} d={d}")
                        if gpu:
                            torch.cuda.empty_cache()
            times = time_ms(fns, device, a.reps)
            sdpa = None
            for (norm, impl, peak), fwd, fwd_bwd in zip(rows, times[0::2], times[1::2]):
                flops = 2 * B * H * T * T * d * normalizers.get(norm).attn_flops
                tflops = flops / fwd / 1e9, 3.5 * flops / fwd_bwd / 1e9
                if (norm, impl) == (baseline, "fused"):
                    sdpa = tflops[1]
                report.add(f"| {norm} | {impl} | {T} | {d} | {fwd:.2f} | {fwd_bwd:.2f} | {tflops[0]:.3g} | "
                           f"{tflops[1]:.3g} | {'n/a' if peak is None else f'{peak:.0f}'} | "
                           f"{f'{tflops[1] / sdpa:.2f}' if sdpa else '—'} |")
    if notes:
        report.add("", "Not measured:", "", *(f"- {note} ({', '.join(where)})" for note, where in notes.items()))


if __name__ == "__main__":
    main()
