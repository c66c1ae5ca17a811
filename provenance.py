"""
What produced a number: every result of this project can name the data, tokenizer, settings and checkpoint behind it,
and whatever would resume, combine or score results that differ in more than the one thing compared is refused.

- data: prepare_data.py writes into meta.json a fingerprint of the prepared data (a hash of the tokenizer's
  identity and of the bytes of train.bin and val.bin), so two datasets are the same exactly when their
  fingerprints are, whatever their names. A checkpoint keeps its dataset's meta.json, fingerprint included.
- a run: run_id(ckpt) hashes the model's settings, the training settings that define what it learns (every
  TrainConfig setting but train.py's RESUME_FREE ones) and the data fingerprint.
- a number in eval.json: the tool that wrote it (analysis.perplexity, analysis.quantize, analysis.hellaswag,
  analysis.lm_eval) also writes eval.json["produced_by"][tool] = {"run": run_id, "iter": the checkpoint's iter,
  "data": the data scored (the prepared data's fingerprint; HellaSwag's file by its git blob id; the fingerprint of
  lm-eval's task versions), and the tool's own settings}, so that a reader can tell a result of this checkpoint,
  data and settings from a stale one.
"""

import hashlib
import json
from pathlib import Path

DIGITS = 16  # hex digits kept of a sha256: 64 bits, short enough to read in a message


def fingerprint(obj):
    """A short hash of a JSON-serializable object (dict keys in any order)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:DIGITS]


def data_fingerprint(data_dir, identity):
    """The fingerprint of the prepared data in data_dir: its tokenizer's identity and the bytes of train.bin and
    val.bin (each with its length, so that moving tokens from one split to the other changes it)."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for split in ("train", "val"):
        path = Path(data_dir) / f"{split}.bin"
        h.update(f"{split}:{path.stat().st_size}:".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:DIGITS]


def run_id(ckpt, resume_free):
    """The identity of the run a checkpoint belongs to: its model, the settings that define what it learns (all
    but resume_free) and its data. Equal for every checkpoint of one run, whatever its iteration."""
    config = {k: v for k, v in ckpt["config"].items() if k not in resume_free}
    return fingerprint({"model": ckpt["model_args"], "config": config,
                        "data": (ckpt.get("meta") or {}).get("fingerprint")})


def describe_difference(there, now):
    """'key=a there, b now, ...' for every key whose value differs between two dicts."""
    return ", ".join(f"{k}={there.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(there) | set(now))
                     if there.get(k) != now.get(k))
