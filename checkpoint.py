"""
Checkpoints that survive kills and never run code on load.

Saving writes a temp file, fsyncs it and renames it over out_dir/ckpt.pt, so a process killed at any moment
leaves either the old or the new checkpoint, never a torn one. With keep_last > 1 the previous ones are kept
as ckpt-<iter>.pt. Loading always uses torch.load(weights_only=True): a checkpoint is plain tensors and plain
Python types, and a pickle that would run code is refused.
"""

import os
import shutil
from pathlib import Path

import torch

CKPT_NAME = "ckpt.pt"


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state, out_dir, keep_last=1):
    """Atomically write state to out_dir/ckpt.pt, keeping the keep_last newest checkpoints in all."""
    out_dir = Path(out_dir)
    final = out_dir / CKPT_NAME
    # Temp files of a save that was killed midway (one process saves into an out_dir): never loaded, delete.
    for stale in out_dir.glob(".ckpt*.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = out_dir / f".{CKPT_NAME}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_last > 1 and final.exists():
        previous = torch.load(final, map_location="cpu", weights_only=True, mmap=True)["iter_num"]
        if previous != state.get("iter_num"):  # a resumed run re-saves its first iteration: not a new one
            # A second name for the previous checkpoint (a hard link, a copy where links are unsupported),
            # so that ckpt.pt itself never disappears: moving it aside would leave a moment without one.
            kept = out_dir / f"ckpt-{previous:08d}.pt"
            link_tmp = out_dir / f".{kept.name}.tmp-{os.getpid()}"
            try:
                os.link(final, link_tmp)
            except OSError:
                shutil.copyfile(final, link_tmp)
            os.replace(link_tmp, kept)
    os.replace(tmp, final)
    _fsync_dir(out_dir)
    older = sorted(out_dir.glob("ckpt-*.pt"))  # zero-padded iterations: oldest first
    for old in older[: len(older) - (keep_last - 1)]:
        old.unlink()


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint safely; every failure is a CheckpointError that says what to do."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train one first, or point to the run's out_dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} holds Python objects that could run code when loaded, so it was refused "
                f"(only tensors and plain types are loaded). Load it only if you trust its source, and re-save "
                f"its tensors with torch.save.") from None
        older = sorted(p.name for p in path.parent.glob("ckpt-*.pt"))
        fix = (f"to resume from the newest older checkpoint, copy {older[-1]} over it" if older else
               "move it away to start over, or use another out_dir")
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{str(e).strip().rstrip('.') or type(e).__name__}. Fix: {fix}") from None
    missing = {"model", "model_args", "config", "iter_num"} - set(ckpt) if isinstance(ckpt, dict) else {"model"}
    if missing:
        raise CheckpointError(f"{path} is not an attnorm checkpoint (missing {sorted(missing)})")
    return ckpt


def load_model(out_dir, device="cpu"):
    """The GPT in out_dir/ckpt.pt (or a checkpoint file), on device, and the rest of the checkpoint dict."""
    from model import GPT, GPTConfig
    ckpt = load_checkpoint(out_dir)
    # attn_impl="fused" may name a GPU kernel; "auto" computes the same function on whatever device this is.
    model = GPT(GPTConfig(**{**ckpt["model_args"], "attn_impl": "auto"}))
    model.load_state_dict(ckpt.pop("model"))
    return model.to(device), ckpt
