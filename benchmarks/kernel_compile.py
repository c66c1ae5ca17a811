"""
The elementwise Triton kernels (kernels/elementwise.py) compiled ahead of time for CUDA GPUs, without one: for each
target × attn_norm × forward/backward × dtype × head_dim, the registers, register spills and shared memory ptxas
reports at the launch config the code picks for that target (kernels.elementwise.configs).

    python -m benchmarks.kernel_compile --out benchmarks/results/cuda-kernels.md      # the full matrix
    python -m benchmarks.kernel_compile --targets sm_80 --dtypes bfloat16 --d 128     # a part of it

A kernel fails when it does not compile, needs more shared memory per block than the target has, or spills
registers in fp16/bf16 (spills there are the price of too large a tile; fp32's 3xTF32 dots may spill a little).
The exit status is 1 when one fails. tests/test_kernel_compile.py runs a subset on every CI run.

Each kernel is compiled from the same launch description the autograd.Function uses (forward_launch,
backward_launch on meta tensors of the model's layout: q, k, v are views of c_attn's output), specialised as
Triton's launcher specialises it (16-byte aligned pointers, strides divisible by 16). Triton runs ptxas -v on
the PTX again for the register and spill counts, as its compiled kernel object reads them only from a loaded
GPU module. TRITON_INTERPRET must not be set: the interpreter replaces the kernels the compiler needs.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks import Report, header

# The shared memory one block may use, in bytes (CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability": 163 KB on 8.0, 99 KB on 8.6 and 8.9, 227 KB on 9.0), and GPUs of each target.
TARGETS = {"sm_80": ((8, 0), 163 * 1024, "A100, A30"),
           "sm_86": ((8, 6), 99 * 1024, "A10, A40, RTX 3090; sm_89's L4, L40S, RTX 4090 have the same 99 KB"),
           "sm_90": ((9, 0), 227 * 1024, "H100, H200")}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32"}
HEAD_DIMS = (32, 64, 128)  # the padded BLOCK_D the model can make: 16 and 32 (d ≤ 32), 64, 128 (d ≤ 128)
T = 1024  # GPT-2's block_size; a runtime argument, specialised only on its divisibility by 16


def launch(norm, direction, dtype, d, capability):
    """(kernel, grid, args, kwargs) of one launch on meta tensors laid out as CausalSelfAttention makes them."""
    from kernels import elementwise
    B, H = 2, 4
    qkv = torch.empty(B, T, 3 * H * d, device="meta", dtype=dtype)  # c_attn's output
    q, k, v = (x.view(B, T, H, d).transpose(1, 2) for x in qkv.split(H * d, dim=2))
    c = torch.empty(H, device="meta", dtype=torch.float32)
    scalars = (norm, 0.5, 1.0, -0.03)
    grid, args, kwargs, saved = elementwise.forward_launch(q, k, v, c, *scalars, capability)
    if direction == "forward":
        return elementwise._elementwise_fwd, grid, args, kwargs
    do = torch.empty(B, H, T, d, device="meta", dtype=dtype)
    grid, args, kwargs, _, _ = elementwise.backward_launch(q, k, v, c, do, *saved, *scalars, capability)
    return elementwise._elementwise_bwd, grid, args, kwargs


def specialise(kernel, args, kwargs, backend):
    """Triton's (signature, constexprs, attrs) for these arguments, as its launcher would specialise them."""
    aligned = backend.parse_attr("D")  # tt.divisibility 16
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, [*args, *[kwargs[n] for n in kernel.arg_names[len(args):]]])):
        if name in kwargs or value is None:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name], attrs[(i,)] = "*" + TRITON_TYPES[value.dtype], aligned
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:  # Triton folds an integer argument equal to 1 into the kernel
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = aligned
    return signature, constexprs, attrs


def ptxas_report(ptx, arch):
    """(registers, spill bytes (stores + loads)) of one kernel's PTX, from ptxas -v: the ptxas Triton bundles for
    this PTX version (Triton 3.9 writes sm_90 PTX that only its newer ptxas-blackwell reads)."""
    import triton
    tools = [getattr(triton.knobs.nvidia, name, None) for name in ("ptxas", "ptxas_blackwell")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        for tool in filter(None, tools):
            run = subprocess.run([tool.path, "-v", f"--gpu-name={arch}", path, "-o", path + ".o"], capture_output=True,
                                 text=True)
            if run.returncode == 0:
                break
        else:
            raise RuntimeError(f"ptxas: {run.stderr.strip()[:300]}")
        log = run.stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def compile_kernel(norm, direction, dtype, d, target):
    """One row: {registers, spills, shared, seconds, config, problem (None: it passes)}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    capability, shared_limit, _ = TARGETS[target]
    arch = capability[0] * 10 + capability[1]
    gpu = GPUTarget("cuda", arch, 32)
    t0 = time.perf_counter()
    kernel, grid, args, kwargs = launch(norm, direction, dtype, d, capability)
    options = {k: kwargs[k] for k in ("num_warps", "num_stages")}
    constants = {k: v for k, v in kwargs.items() if k not in options}
    signature, constexprs, attrs = specialise(kernel, args, constants, make_backend(gpu))
    config = {k: v for k, v in kwargs.items() if k.startswith("BLOCK_") and k != "BLOCK_D"} | options
    row = dict(config=config, registers=None, spills=None, shared=None)
    try:
        compiled = triton.compile(triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                                            attrs=attrs), target=gpu, options=options)
    except Exception as e:  # the compiler's own error (e.g. out of shared memory), reported in the row
        return row | dict(seconds=time.perf_counter() - t0, problem=f"does not compile: {str(e).strip()[:200]}")
    row["shared"] = compiled.metadata.shared
    row["registers"], row["spills"] = ptxas_report(compiled.asm["ptx"], f"sm_{arch}{'a' if arch >= 90 else ''}")
    row["seconds"] = time.perf_counter() - t0
    problems = []
    if row["shared"] > shared_limit:
        problems.append(f"needs {row['shared']:,} B of shared memory, {target} has {shared_limit:,}")
    if row["spills"] and dtype != torch.float32:
        problems.append(f"spills {row['spills']:,} B of registers")
    return row | dict(problem="; ".join(problems) or None)


def parse_args(argv):
    from kernels.elementwise import NORMS
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument("--directions", nargs="+", default=["forward", "backward"], choices=["forward", "backward"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--d", nargs="+", type=int, default=list(HEAD_DIMS), help="head dims (≤ 128)")
    parser.add_argument("--out", help="also write the table to this file, e.g. benchmarks/results/cuda-kernels.md")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("error: TRITON_INTERPRET=1 replaces the kernels with the interpreter's: unset it to compile them")
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit("error: triton is not installed: pip install triton (Linux)")
    args = parse_args(argv)
    report = Report(args.out)
    report.add(*header("Triton kernels compiled for CUDA targets (no GPU)", __spec__.name, argv, "cpu"),
               "- targets: " + "; ".join(f"{t} (shared memory {TARGETS[t][1]:,} B per block: {TARGETS[t][2]})"
                                         for t in args.targets),
               "- registers and spills (bytes, stores + loads) from ptxas -v; shared memory from Triton's metadata",
               "", "| target | attn_norm | kernel | dtype | d | launch config | registers | spills | shared | "
               "compile s | check |", "|---|---|---|---|---:|---|---:|---:|---:|---:|---|")
    failed = 0
    for target in args.targets:
        for norm in args.norms:
            for direction in args.directions:
                for dtype in args.dtypes:
                    for d in args.d:
                        r = compile_kernel(norm, direction, DTYPES[dtype], d, target)
                        failed += r["problem"] is not None
                        config = " ".join(f"{k}={v}" for k, v in r["config"].items())
                        cells = [f"{r[k]:,}" if r[k] is not None else "—" for k in ("registers", "spills", "shared")]
                        report.add(f"| {target} | {norm} | {direction} | {dtype} | {d} | {config} | "
                                   f"{' | '.join(cells)} | {r['seconds']:.1f} | {r['problem'] or 'ok'} |")
    report.add("", f"{failed} failed" if failed else "every kernel passes")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
