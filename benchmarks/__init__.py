"""
Benchmarks, run from the repo root as modules:

    python -m benchmarks.attention          attention kernels per attn_norm: time, TFLOP/s, memory, × SDPA softmax
    python -m benchmarks.train_throughput   training steps per attn_norm and attn_gate: tokens/s, ms/iter, MFU
    python -m benchmarks.hellaswag          HellaSwag scoring: seconds per 1,000 items per model size

The first two read the normalizer registry (every attn_norm by default). Each prints a markdown table that says how
it was made (command, device, date, versions) and, with --out, keeps it in a file (benchmarks/results/<device>-*.md).
"""

import datetime
import os
import shlex
from pathlib import Path

import torch

import runtime


def header(title, module, argv, device):
    """The first lines of a results file: what was run, where and when."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [f"# {title}", "",
             f"- command: `python -m {module}{' ' if argv else ''}{shlex.join(argv)}`",
             f"- device: {runtime.device_description(device)}"]
    if not str(device).startswith("cuda"):  # CPU machines are often shared: say how busy this one was
        lines[-1] += f", load average {os.getloadavg()[0]:.1f} at the start"
    return lines + [f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
                    f"- torch {torch.__version__}, triton {triton_version}"]


class Report:
    """Markdown lines, printed as they come and rewritten to `out` after each addition, so that a run stopped
    midway (a time limit, out of memory) leaves every row it measured."""

    def __init__(self, out=None):
        self.lines, self.out = [], Path(out) if out else None

    def add(self, *lines):
        self.lines += lines
        print("\n".join(lines), flush=True)
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
            tmp.write_text("\n".join(self.lines) + "\n")
            os.replace(tmp, self.out)  # readers see the old table or the new one, never half of it
