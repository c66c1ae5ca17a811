"""
What the entry points share about where they run: the device's name, the dtype names, autocast, DDP setup, and
the padded vocabulary size. One home, so train.py, the analysis and the benchmarks agree.
"""

import os
import platform
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def padded_vocab_size(vocab_size):
    """The embedding size for a tokenizer's vocabulary: small (char) vocabularies as they are; GPT-2's 50257 and
    other large ones rounded up to a multiple of 64, which is faster on GPUs."""
    return vocab_size if vocab_size < 50257 else -(-vocab_size // 64) * 64


def cpu_name():
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return models[0].strip() if models else (platform.processor() or platform.machine())


def device_name(device):
    """'NVIDIA H200' for a CUDA device, else the CPU's model name; used for MFU's peak FLOP/s and in reports."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return cpu_name()


def device_description(device):
    """A line for reports: the GPU(s), or the CPU with its core and thread counts."""
    if str(device).startswith("cuda"):
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"CPU {cpu_name()}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} threads, no GPU used"


def autocast(device_type, dtype):
    """The mixed-precision context for a dtype name: none for float32."""
    return nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=DTYPES[dtype])


@dataclass
class Distributed:
    ddp: bool
    rank: int
    world_size: int
    device: str

    @property
    def master(self):
        return self.rank == 0

    def close(self):
        if self.ddp:
            dist.barrier()  # no rank tears the group down while rank 0 still writes
            dist.destroy_process_group()


def native_bf16():
    """Whether the current CUDA GPU computes bf16 natively (sm_80 and newer): torch.cuda.is_bf16_supported() alone
    also counts emulation (T4, V100), where bf16 is slow and aten's flash attention does not run."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def setup_distributed(device):
    """Under torchrun (RANK set): join the process group, one GPU per process (NCCL) or gloo on CPU; the device
    this process uses. Otherwise a single process on device. A CUDA device becomes the current one, so that
    Triton launches, the CUDA RNG and synchronize act on it (cuda:1 would otherwise leave them on GPU 0)."""
    if int(os.environ.get("RANK", -1)) == -1:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        return Distributed(False, 0, 1, device)
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Distributed(True, dist.get_rank(), dist.get_world_size(), device)


def check_device(device):
    """device as torch names it, or a ValueError that says which devices this machine has."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device={device}: use cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device={device} but no CUDA GPU is visible: use --device=cpu "
                             "(or check nvidia-smi and CUDA_VISIBLE_DEVICES)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device={device} but only {torch.cuda.device_count()} CUDA GPU(s) are visible: "
                             f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device={device} but MPS (Apple GPU) is not available here: use --device=cpu")
    return device
