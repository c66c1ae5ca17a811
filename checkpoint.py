"""
Checkpoints that survive kills and never run code on load.

One process trains in an out_dir at a time (lock_dir). Saving writes a temp file, fsyncs it and renames it over out_dir/ckpt.pt, so a process killed at any moment
leaves either the old or the new checkpoint, never a torn one. With keep_last > 1 the previous ones are kept
as ckpt-<iter>.pt. A save that runs out of disk space removes its temp file, leaves the previous checkpoint as it
was and says how much space it needed. Loading always uses torch.load(weights_only=True): a checkpoint is plain
tensors and plain Python types, and a pickle that would run code is refused; a file that is no checkpoint at all
(a text file, some other zip or binary file) is called that.
"""

import contextlib
import errno
import fcntl
import io
import os
import pickletools
import shutil
import warnings
import zipfile
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


def _human(n):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def state_nbytes(state):
    """About how many bytes torch.save(state) writes: every tensor storage once, plus a little per tensor for the
    archive entry and the pickle."""
    seen, total = set(), 0

    def walk(obj):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes(), obj.device.type)
            if key not in seen:
                seen.add(key)
                total += storage.nbytes() + 256
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(k)
                walk(v)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                walk(v)
        else:
            total += 16

    walk(state)
    return total + 4096


def _is_disk_full(err, out_dir, tmp, needed):
    """True if err (raised while writing tmp) is the file system running out of space. torch reports a failed write
    as a RuntimeError ("unexpected pos …", "file write failed"), so then the free space decides."""
    e = err
    while e is not None:  # the OSError itself, or one torch's error was raised from / during
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    if not isinstance(err, (RuntimeError, OSError)):
        return False
    try:
        written = tmp.stat().st_size if tmp.exists() else 0
        free = shutil.disk_usage(out_dir).free
    except OSError:
        return False
    return free < (needed - written) * 1.01 + 2**20  # what was still to be written did not fit


@contextlib.contextmanager
def lock_dir(directory, busy="another training (pid {pid}) is using out_dir {directory}: wait for it to end, or "
                             "give this run another --out_dir"):
    """Hold directory/.lock (an flock, which the kernel drops when the process dies, however it dies) for the block:
    a second process asking for it gets a CheckpointError, busy with the pid that holds it (one training per
    out_dir, one study per study directory)."""
    path = Path(directory) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(busy.format(pid=holder, directory=directory)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def save_checkpoint(state, out_dir, keep_last=1):
    """Atomically write state to out_dir/ckpt.pt, keeping the keep_last newest checkpoints in all. Out of disk space
    it raises CheckpointError (how much was needed, where), with its temp file removed and ckpt.pt untouched."""
    out_dir = Path(out_dir)
    final = out_dir / CKPT_NAME
    # Temp files of a save that was killed midway (one process saves into an out_dir): never loaded, delete.
    for stale in out_dir.glob(".ckpt*.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = out_dir / f".{CKPT_NAME}.tmp-{os.getpid()}"
    link_tmp = None
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_last > 1 and final.exists():
            previous = checkpoint_iter(final)
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
    except BaseException as e:
        full = (isinstance(e, (OSError, RuntimeError)) and not isinstance(e, CheckpointError)
                and _is_disk_full(e, out_dir, tmp, needed := state_nbytes(state)))
        for path in (tmp, link_tmp):  # never loaded; removed now rather than by the next save
            if path is not None:
                path.unlink(missing_ok=True)
        if not full:
            raise
        try:
            free = _human(shutil.disk_usage(out_dir).free)
        except OSError:
            free = "an unknown amount"
        kept = (f"{final} is the previous checkpoint, untouched" if final.exists() else "no checkpoint was written")
        raise CheckpointError(
            f"disk full: saving a checkpoint to {out_dir} needs about {_human(needed)} but there is {free} free "
            f"(or the quota is reached); the partial file was removed and {kept}. Free up space there or use "
            f"another out_dir, then run the same command again") from None
    os.replace(tmp, final)
    _fsync_dir(out_dir)
    older = sorted(out_dir.glob("ckpt-*.pt"))  # zero-padded iterations: oldest first
    for old in older[: len(older) - (keep_last - 1)]:
        old.unlink()


# -----------------------------------------------------------------------------
# loading

# pickle opcodes that import or call something: a pickle without them is plain data
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2",
                 "EXT4"}


def _what_is(path):
    """What a file torch.load could not read is, when it is plainly no torch checkpoint: 'an empty file', 'a text
    file', …; None when it may be one (a torch zip archive, possibly cut short, or a pickle)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None  # torch's own archive cut short, most likely: torch's error says what broke
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "a zip archive that is not a torch checkpoint (no data.pkl inside)"
        return None
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return None  # a pickle: torch's legacy format, or a raw pickle
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "a text file, not a torch file"
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 3 and len(head) == 4096:  # a character cut at the end of the sample
                return "a text file, not a torch file"
    return "binary data that is not a torch file (torch.save writes a zip archive)"


def _pickle_runs_code(path, limit=16 * 2**20):
    """True if the pickle(s) at the start of path import or call anything (read without executing a thing)."""
    with open(path, "rb") as f:
        data = io.BytesIO(f.read(limit))
    for _ in range(8):  # torch's legacy format is a few pickles back to back
        try:
            for op, _, _ in pickletools.genops(data):
                if op.name in _CODE_OPCODES:
                    return True
        except Exception:  # the end of the pickles (raw tensor bytes) or a cut-short file
            return False
        if data.tell() >= len(data.getbuffer()):
            return False
    return False


def _torch_load(path, mmap=False, map_location="cpu"):
    """torch.load(weights_only=True); every failure is a CheckpointError that says what the file is and what to do."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        if mmap and "mmap can only be used" in str(e):  # torch's legacy format (or not torch at all)
            return _torch_load(path, mmap=False, map_location=map_location)
        older = sorted(p.name for p in path.parent.glob("ckpt-*.pt") if p != path)
        fix = (f"to resume from the newest older checkpoint, copy {older[-1]} over it" if older else
               "move it away to start over, or use another out_dir")
        what = _what_is(path)
        if what:
            if not path.name.startswith("ckpt"):  # a file given by hand: likely the wrong path
                fix = "give a run's out_dir (holding ckpt.pt) or a ckpt*.pt file"
            raise CheckpointError(f"{path} is not a checkpoint: it is {what}. Fix: {fix}") from None
        message = str(e)
        if "weights_only" in message or "Weights only" in message:
            if "global" in message.lower() or _pickle_runs_code(path):
                raise CheckpointError(
                    f"{path} holds Python objects that could run code when loaded, so it was refused "
                    f"(only tensors and plain types are loaded). Load it only if you trust its source, and re-save "
                    f"its tensors with torch.save.") from None
            raise CheckpointError(f"{path} is not a checkpoint: it is a Python pickle that torch.save did not "
                                  f"write. Fix: {fix}") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{message.strip().rstrip('.') or type(e).__name__}. Fix: {fix}") from None


def _checkpoint_path(path):
    path = Path(path)
    if path.is_dir() and path.suffix != ".pt":  # a run's out_dir
        path = path / CKPT_NAME
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: move it out of the way (train.py "
                              f"writes {CKPT_NAME} as a file), or use another out_dir")
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train one first, or point to the run's out_dir")
    return path


def load_checkpoint(path, map_location="cpu", mmap=False):
    """Load a checkpoint safely; every failure is a CheckpointError that says what to do. mmap: the tensors are
    memory-mapped, not read (cheap, for the settings alone)."""
    path = _checkpoint_path(path)
    ckpt = _torch_load(path, map_location=map_location, mmap=mmap)
    missing = {"model", "model_args", "config", "iter_num"} - set(ckpt) if isinstance(ckpt, dict) else {"model"}
    if missing:
        raise CheckpointError(f"{path} is not an attnorm checkpoint (missing {sorted(missing)})")
    return ckpt


def checkpoint_iter(path_or_dir):
    """The iter_num saved in a checkpoint (a file, or a run's out_dir holding ckpt.pt), read cheaply: the tensors
    are memory-mapped, not read. Failures are CheckpointErrors, as for load_checkpoint."""
    path = _checkpoint_path(path_or_dir)
    ckpt = _torch_load(path, mmap=True)
    if not isinstance(ckpt, dict) or "iter_num" not in ckpt:
        raise CheckpointError(f"{path} is not an attnorm checkpoint (missing ['iter_num'])")
    return ckpt["iter_num"]


def load_model(out_dir, device="cpu"):
    """The GPT in out_dir/ckpt.pt (or a checkpoint file), on device, and the rest of the checkpoint dict."""
    from model import GPT, GPTConfig
    ckpt = load_checkpoint(out_dir)
    # attn_impl="fused" may name a GPU kernel; "auto" computes the same function on whatever device this is.
    model = GPT(GPTConfig(**{**ckpt["model_args"], "attn_impl": "auto"}))
    model.load_state_dict(ckpt.pop("model"))
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # train.py never saves such weights; a model of NaNs would sample garbage and score NaN
        raise CheckpointError(f"{_checkpoint_path(out_dir)} holds weights that are not finite (NaN/Inf in "
                              f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}): use an earlier checkpoint "
                              f"(ckpt-<iter>.pt, kept with keep_checkpoints > 1) or train again")
    return model.to(device), ckpt
