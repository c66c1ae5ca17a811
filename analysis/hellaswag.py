"""
HellaSwag (Zellers et al. 2019), scored as build-nanogpt scores it during training: each of the validation set's
10,042 items is a context and four endings, one of them right. The model reads context + " " + ending for every
ending, and the ending whose tokens it finds most likely is its answer, by two rules, both reported:

    hellaswag_acc_sum_loss    the lowest summed loss over the ending's tokens (build-nanogpt's "acc")
    hellaswag_acc_mean_loss   the lowest mean loss per token of the ending (build-nanogpt's "acc_norm", the number
                              the nanoGPT lineage quotes for GPT-2 124M)

This is completion style; lm-evaluation-harness's hellaswag task (a different prompt, and an acc_norm that divides
by characters) runs through analysis.lm_eval.

    python -m analysis.hellaswag OUT_DIR [--limit N] [--batch_size N] [--device D] [--data FILE]

The file is rowanz/hellaswag's data/hellaswag_val.jsonl, downloaded once into data/raw/ and checked against the
git blob id that repository's tree records for it (no sha256 is published), so a truncated or altered copy is
never scored. --data scores another file of the same format instead (the tests' small one), unchecked.

Any of the repo's tokenizers: with a char-level one, an item holding a character outside the vocabulary cannot be
read by the model, so it is skipped and counted. An ending longer than block_size is scored in block_size pieces
(analysis.perplexity.continuation_logprobs). Writes hellaswag_acc_sum_loss, hellaswag_acc_mean_loss,
hellaswag_items (the items scored), hellaswag_skipped and iter into OUT_DIR/eval.json, keeping the other keys.
train.py scores the same way every hellaswag_interval iterations.
"""

import argparse
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from analysis.perplexity import continuation_logprobs, produced_by, update_json

VAL_URL = ("https://raw.githubusercontent.com/rowanz/hellaswag/a29ff8e9a04bba4bd6588223785ce105328adc57/"
           "data/hellaswag_val.jsonl")
VAL_GIT_BLOB = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"  # data/hellaswag_val.jsonl in the tree of that commit
VAL_FILE = Path(__file__).resolve().parents[1] / "data" / "raw" / "hellaswag_val.jsonl"


def git_blob_id(data):
    """The id git gives a file holding data: sha1 over "blob <size>\\0" and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fetch_val_file():
    """VAL_FILE, after downloading HellaSwag's validation set there if it is absent (atomically: a killed download
    leaves nothing), and checking it against VAL_GIT_BLOB either way. ValueError: what is wrong and what to do."""
    path = VAL_FILE
    if not path.exists():
        try:
            with urllib.request.urlopen(VAL_URL, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as e:
            raise ValueError(f"HellaSwag's val set is not in {path} and cannot be downloaded from {VAL_URL} "
                             f"({getattr(e, 'reason', e)}): download that file where there is network and copy it "
                             f"to {path}") from None
        if git_blob_id(data) != VAL_GIT_BLOB:
            raise ValueError(f"the download from {VAL_URL} is not HellaSwag's val set (checksum differs): try again")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    elif git_blob_id(path.read_bytes()) != VAL_GIT_BLOB:
        raise ValueError(f"{path} is not HellaSwag's val set (its checksum differs from git blob {VAL_GIT_BLOB}): "
                         f"delete it and run again to download it")
    return path


def read_items(path, limit=None):
    """The first limit items (all: None) of a HellaSwag jsonl file, each checked: a str "ctx", four str "endings"
    and an int "label" in 0..3."""
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(items) == limit:
                break
            try:
                item = json.loads(line)
                ok = (isinstance(item["ctx"], str) and len(item["endings"]) == 4
                      and all(isinstance(e, str) for e in item["endings"]) and item["label"] in range(4))
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise ValueError(f"{path}:{line_no} is not a HellaSwag item (a JSON object with a string \"ctx\", "
                                 f"four string \"endings\" and a \"label\" 0-3): fix or remove that line")
            items.append(item)
    return items


def encode_items(items, encode):
    """(items as (context ids, [ids of " " + ending] * 4, label), how many were skipped): an item the tokenizer
    cannot encode (a char-level vocabulary without one of its characters: KeyError) is skipped."""
    encoded = []
    for item in items:
        try:
            encoded.append((encode(item["ctx"]), [encode(" " + e) for e in item["endings"]], item["label"]))
        except KeyError:
            continue
    return encoded, len(items) - len(encoded)


def score(model, encoded, skipped, block_size, batch_size, device, progress=False):
    """Accuracy of model on encoded items (encode_items' output) by summed and by mean loss over the ending's
    tokens, as the eval.json / metrics keys. batch_size: windows per forward pass. Under torch.distributed the items
    are split over the ranks and the counts all-reduced, so every rank returns the totals."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = encoded[rank::world]
    correct = torch.zeros(3, dtype=torch.float64, device=device)  # by sum, by mean, items
    per_step = max(1, batch_size // 4)
    for i in tqdm(range(0, len(mine), per_step), unit_scale=per_step, unit="item", disable=not progress or rank):
        chunk = mine[i:i + per_step]
        pairs = [(context, ending) for context, endings, _ in chunk for ending in endings]
        logprobs = [lp for lp, _ in continuation_logprobs(model, pairs, block_size, batch_size, device)]
        loss_sum = -np.array([lp.sum() for lp in logprobs]).reshape(-1, 4)
        loss_mean = loss_sum / np.array([len(lp) for lp in logprobs]).reshape(-1, 4)
        labels = np.array([label for _, _, label in chunk])
        correct += torch.tensor([(loss_sum.argmin(1) == labels).sum(), (loss_mean.argmin(1) == labels).sum(),
                                 len(chunk)], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(correct)
    by_sum, by_mean, n = correct.tolist()
    return {"hellaswag_acc_sum_loss": by_sum / n if n else None, "hellaswag_acc_mean_loss": by_mean / n if n else None,
            "hellaswag_items": int(n), "hellaswag_skipped": skipped}


def load_encoded(encode, path=None, limit=None):
    """encode_items over the val set (downloaded and checked), or over path's items unchecked; a ValueError if
    the tokenizer can encode none of them."""
    encoded, skipped = encode_items(read_items(path or fetch_val_file(), limit), encode)
    if not encoded:
        raise ValueError(f"none of the {skipped} items can be written in this model's vocabulary (a char-level "
                         f"tokenizer lacks their characters): score a model with the GPT-2 tokenizer")
    return encoded, skipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a training run's out_dir (holding ckpt.pt)")
    p.add_argument("--limit", type=int, help="score the first N items only (default: all 10,042)")
    p.add_argument("--batch_size", type=int, default=32, help="windows (4 per item) per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", help=f"a HellaSwag-format jsonl file (default: {VAL_FILE}, downloaded once)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1 or args.batch_size < 1:
        p.error("--limit and --batch_size must be >= 1")

    from checkpoint import CheckpointError, load_model
    from prepare_data import load_tokenizer
    try:
        model, ckpt = load_model(args.out_dir, args.device)
        if "meta" not in ckpt:
            raise ValueError(f"{args.out_dir}: the checkpoint has no dataset metadata ('meta'), so its tokenizer is "
                             "unknown: score a checkpoint written by train.py")
        encoded, skipped = load_encoded(load_tokenizer(ckpt["meta"])[0], args.data, args.limit)
    except (CheckpointError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    values = score(model, encoded, skipped, ckpt["model_args"]["block_size"], args.batch_size, args.device,
                   progress=True)
    values["iter"] = ckpt["iter_num"]
    # produced_by: this checkpoint, the items file by its git blob id (the data scored) and --limit
    items = Path(args.data) if args.data else VAL_FILE
    update_json(Path(args.out_dir) / "eval.json", values,
                {"hellaswag": produced_by(ckpt, {"fingerprint": git_blob_id(items.read_bytes())}, limit=args.limit)})
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
    main()
