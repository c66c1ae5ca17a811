"""
Attention alone, per attn_norm × impl (fused, reference) × T × d: forward and forward+backward time, TFLOP/s,
peak memory, and throughput relative to SDPA softmax measured in the same run.

    python benchmarks/attention.py                                  # GPU: bf16, T 1024..8192, d 64 and 128
    python benchmarks/attention.py --T 2048 4096 --d 128 --dtype float16
    python benchmarks/attention.py --out benchmarks/results/cpu-attention.md   # CPU: fp32, T 256..1024, d 64

FLOPs count only the causal half and only what the algorithm needs: forward 4·B·H·T²·d/2 (QKᵀ and PV) for
softmax, softmax1 and symax, 1.5× that for diff (H sub-heads of q and k, H/2 value heads 2d wide; the fused
path's padding of q and k to 2d is extra work and shows as lower TFLOP/s), backward 2.5× the forward. The
× SDPA column is fwd+bwd TFLOP/s over SDPA softmax's at the same T and d.

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
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
import model  # noqa: E402

NORMS = ("softmax", "softmax1", "symax", "diff")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    cores = f"{len(os.sched_getaffinity(0))} cores ({torch.get_num_threads()} torch threads)"
    return f"{cpu}, {cores}, load average {os.getloadavg()[0]:.1f} at the start"


def forward_flops(norm, B, H, T, d):
    causal = 4 * B * H * T * T * d / 2
    return 1.5 * causal if norm == "diff" else causal


def make_inputs(norm, B, H, T, d, dtype, device):
    """Leaf tensors (q, k, v, then the normalizer's parameter) and the names of the normalizer's arguments."""
    v_shape = (B, H // 2, T, 2 * d) if norm == "diff" else (B, H, T, d)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for shape in ((B, H, T, d), (B, H, T, d), v_shape))
    extra = {"symax": {"eta": torch.full((H,), 0.5, device=device)},
             "diff": {"lam": torch.tensor(0.5, device=device)}}.get(norm, {})
    return [x.requires_grad_() for x in (q, k, v, *extra.values())], list(extra)


def attention_fn(norm, impl):
    if impl == "fused":
        return lambda q, k, v, **args: kernels.attention(norm, q, k, v, **args)
    return lambda q, k, v, **args: model.reference_attention(q, k, v, model.ATTN_NORMS[norm], **args)


def skip_reason(norm, impl, B, H, T, device):
    """Why this row cannot be measured here, or None."""
    if impl == "fused":
        return kernels.unavailable_reason(norm, device, 0.0)
    need = 6 * B * H * T * T * 4  # fp32 T×T tensors alive in the reference's fwd+bwd (scores, weights, grads)
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None if need < 0.8 * free else f"the reference's T×T tensors need ~{need / 2**30:.0f} GiB"


def setup(norm, impl, B, H, T, d, dtype, device):
    """(forward, forward+backward) closures over fresh inputs, and the peak MiB of one fwd+bwd (None on CPU)."""
    leaves, arg_names = make_inputs(norm, B, H, T, d, dtype, device)
    fn = attention_fn(norm, impl)
    q, k, v, *extra = leaves
    args = dict(zip(arg_names, extra))
    dy = torch.randn_like(fn(q, k, v, **args))

    def forward():
        with torch.no_grad():
            fn(q, k, v, **args)

    def forward_backward():
        fn(q, k, v, **args).backward(dy)
        for x in leaves:
            x.grad = None

    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward_backward()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return forward, forward_backward, peak


def time_ms(fns, device, reps):
    """ms per call of each fn. On CPU: 2 warmup calls each, then `reps` rounds over all fns keeping each one's
    fastest call, so that a busy spell on a shared machine slows every fn alike rather than whichever ran in it."""
    if device == "cuda":
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", help="sequence lengths (GPU: 1024 … 8192; CPU: 256 512 1024)")
    parser.add_argument("--d", type=int, nargs="+", help="head dims (GPU: 64 128; CPU: 64)")
    parser.add_argument("--dtype", choices=DTYPES, help="GPU: bfloat16; CPU: float32")
    parser.add_argument("--B", type=int, help="batch (GPU: 4; CPU: 1)")
    parser.add_argument("--H", type=int, help="heads of q and k (GPU: 16; CPU: 4); diff has H/2 value heads")
    parser.add_argument("--reps", type=int, default=10, help="timed runs per measurement on CPU")
    parser.add_argument("--out", help="also write the table to this file")
    a = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    Ts = a.T or ([1024, 2048, 4096, 8192] if gpu else [256, 512, 1024])
    ds = a.d or ([64, 128] if gpu else [64])
    dtype_name = a.dtype or ("bfloat16" if gpu else "float32")
    dtype, B, H = DTYPES[dtype_name], a.B or (4 if gpu else 1), a.H or (16 if gpu else 4)

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    timing = "triton.testing.do_bench, median" if gpu else f"time.perf_counter, fastest of {a.reps} interleaved rounds"
    lines = [
        "# Attention kernels: causal forward and forward+backward",
        "",
        f"- device: {device_name(device)}",
        f"- torch {torch.__version__}, triton {triton_version}",
        f"- B={B}, H={H} (diff: H/2 value heads of width 2d), dtype {dtype_name}; timing: {timing}",
        "- TFLOP/s over the causal FLOPs the algorithm needs (fwd 2·B·H·T²·d, diff 1.5×, bwd 2.5× fwd); "
        "× SDPA = fwd+bwd TFLOP/s / SDPA softmax's at the same T, d",
        f"- peak memory: {'max_memory_allocated during one fwd+bwd, minus the inputs' if gpu else 'n/a on CPU'}",
        "",
        "| attn_norm | impl | T | d | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | peak MiB | × SDPA |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    notes = {}
    for T in Ts:
        for d in ds:
            rows, fns = [], []
            for norm in NORMS:
                for impl in ("fused", "reference"):
                    reason = skip_reason(norm, impl, B, H, T, device)
                    if not reason:
                        try:
                            forward, forward_backward, peak = setup(norm, impl, B, H, T, d, dtype, device)
                            rows.append((norm, impl, peak))
                            fns += [forward, forward_backward]
                        except Exception as e:  # e.g. out of memory, or a kernel that does not compile: go on
                            reason = f"failed: {type(e).__name__}: {str(e)[:200]}"
                    if reason:
                        notes.setdefault(f"{norm} {impl}: {reason}", []).append(f"T={T} d={d}")
            times = time_ms(fns, device, a.reps)
            sdpa = None
            for (norm, impl, peak), fwd, fwd_bwd in zip(rows, times[0::2], times[1::2]):
                flops = forward_flops(norm, B, H, T, d)
                tflops = flops / fwd / 1e9, 3.5 * flops / fwd_bwd / 1e9
                if norm == "softmax" and impl == "fused":
                    sdpa = tflops[1]
                ratio = f"{tflops[1] / sdpa:.2f}" if sdpa else "—"
                mem = f"{peak:.0f}" if peak is not None else "n/a"
                row = (f"| {norm} | {impl} | {T} | {d} | {fwd:.2f} | {fwd_bwd:.2f} | {tflops[0]:.3g} | "
                       f"{tflops[1]:.3g} | {mem} | {ratio} |")
                lines.append(row)
                print(row, flush=True)
    if notes:
        not_measured = ["", "Not measured:", ""] + [f"- {note} ({', '.join(where)})" for note, where in notes.items()]
        lines += not_measured
        print("\n".join(not_measured))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
