"""The elementwise Triton kernels compiled for real CUDA targets on every CI run, no GPU needed: each must compile,
fit the target's shared memory and (fp16/bf16) not spill registers at the launch config the code picks there.
A representative subset of benchmarks/kernel_compile.py's full matrix (benchmarks/results/cuda-kernels.md): every
family member forward and backward at the largest head_dim, where registers and shared memory are tightest, on
sm_80 in bf16 (registers) and on sm_86 in fp32 (its 99 KB of shared memory); and sm_90 at d = 64 in fp16. It runs in
a subprocess, as the compiler needs the kernels that TRITON_INTERPRET=1 (tests/conftest.py) replaces."""
import importlib.util
import os
import subprocess
import sys

import pytest

from helpers import REPO

# Shared memory per block, bytes (CUDA C++ Programming Guide, technical specifications per compute capability).
SHARED_MEMORY = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_90": 227 * 1024}
SUBSET = [("sm_80", "bfloat16", 128), ("sm_86", "float32", 128), ("sm_90", "float16", 64)]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (Linux)")


@pytest.mark.parametrize("target, dtype, d", SUBSET)
def test_kernels_compile_for_cuda_targets(target, dtype, d):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.kernel_compile", "--targets", target, "--dtypes", dtype,
                        "--d", str(d)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines()
            if line.startswith(f"| {target} |")]
    assert len(rows) == 8, r.stdout[-3000:] + r.stderr[-3000:]  # 4 members × forward, backward
    for tgt, norm, kernel, dt, _, config, registers, spills, shared, _, check in rows:
        where = f"{norm} {kernel} {dt} on {target} ({config})"
        assert registers != "—", f"{where}: {check}"
        assert int(shared.replace(",", "")) <= SHARED_MEMORY[target], where
        assert dt == "float32" or spills == "0", f"{where} spills {spills} B"
        assert check == "ok", where
    assert r.returncode == 0, r.stdout[-3000:]
