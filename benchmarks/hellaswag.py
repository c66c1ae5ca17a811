"""
What HellaSwag costs: seconds per 1,000 items of analysis.hellaswag.score (4 endings each) for the model of a
config file, with random weights (the cost does not depend on them) and that config's tokenizer.

    python -m benchmarks.hellaswag                                    # the CPU preset and GPT-2 124M
    python -m benchmarks.hellaswag --configs config/train_gpt2.py --items 1000 --device cuda --dtype bfloat16
    python -m benchmarks.hellaswag --data data/raw/hellaswag_val.jsonl --out benchmarks/results/<device>-hellaswag.md

The items: --data FILE (the real val set, where it has been downloaded), or synthetic ones of HellaSwag's shape cut
from Tiny Shakespeare: a context of --ctx_chars characters and four endings of --ending_chars each. The defaults
(200 and 100) are an estimate of the val set's typical lengths, not a measurement of it: the table says which
items it timed. A char-level model reads every synthetic item (the text is its own alphabet).
"""

import argparse
import sys
import time

import numpy as np
import torch

import runtime
from analysis import hellaswag
from benchmarks import Report, header
from model import GPT
from prepare_data import SHAKESPEARE_TXT, load_tokenizer
from train import load_config

TOKENIZERS = {"shakespeare_char": "char"}  # a config's dataset -> its tokenizer; any other dataset: GPT-2's


def synthetic_items(n, ctx_chars, ending_chars, seed=0):
    """n items of HellaSwag's format cut from Tiny Shakespeare at random places (newlines become spaces)."""
    text = SHAKESPEARE_TXT.read_text().replace("\n", " ")
    rng = np.random.default_rng(seed)
    cut = lambda length: text[(o := int(rng.integers(0, len(text) - length))):o + length].strip()  # noqa: E731
    return [{"ctx": cut(ctx_chars), "endings": [cut(ending_chars) for _ in range(4)], "label": int(rng.integers(4))}
            for _ in range(n)]


def measure(config, items, device, dtype, batch_size):
    """(wall seconds and CPU seconds of this process per 1,000 items, items scored, parameters, description of the
    model) of one config."""
    cfg = load_config([config, f"--device={device}", f"--dtype={dtype}"])
    if TOKENIZERS.get(cfg.dataset) == "char":
        meta = {"tokenizer": "char", "chars": "".join(sorted(set(SHAKESPEARE_TXT.read_text()))), "vocab_size": 65}
    else:
        meta = {"tokenizer": "gpt2", "vocab_size": 50257}
    torch.manual_seed(0)
    model = GPT(cfg.model_config(runtime.padded_vocab_size(meta["vocab_size"]))).to(device)
    encoded, skipped = hellaswag.encode_items(items, load_tokenizer(meta)[0])
    autocast = runtime.autocast(device.split(":")[0], dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with autocast:
        hellaswag.score(model, encoded[:batch_size // 4 or 1], 0, cfg.block_size, batch_size, device)  # warm-up
        sync()
        t0, cpu0 = time.perf_counter(), time.process_time()
        values = hellaswag.score(model, encoded, skipped, cfg.block_size, batch_size, device)
        sync()
    per_1000 = 1000 / values["hellaswag_items"]
    what = f"{cfg.n_layer}×{cfg.n_embd}, block {cfg.block_size}, {meta['tokenizer']}"
    return ((time.perf_counter() - t0) * per_1000, (time.process_time() - cpu0) * per_1000, values["hellaswag_items"],
            model.get_num_params(), what)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="config/shakespeare_char/cpu.py,config/train_gpt2.py",
                   help="comma-separated config files: a row each")
    p.add_argument("--items", type=int, default=200, help="items to time per model")
    p.add_argument("--data", help="a HellaSwag jsonl file (default: synthetic items)")
    p.add_argument("--ctx_chars", type=int, default=200)
    p.add_argument("--ending_chars", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=tuple(runtime.DTYPES))
    p.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's choice)")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    items = (hellaswag.read_items(args.data, args.items) if args.data else
             synthetic_items(args.items, args.ctx_chars, args.ending_chars))
    source = (f"{args.data}" if args.data else f"synthetic: Tiny Shakespeare, a {args.ctx_chars}-character context "
              f"and four {args.ending_chars}-character endings per item")
    report = Report(args.out)
    report.add(*header("HellaSwag scoring cost", "benchmarks.hellaswag", sys.argv[1:] if argv is None else argv,
                       args.device),
               f"- items: {source}; dtype {args.dtype}; {args.batch_size} windows per forward pass; "
               f"{torch.get_num_threads()} torch threads; random weights",
               "- CPU s: this process's CPU time, which waiting for a busy machine's cores does not inflate", "",
               "| config | model | params | items | s per 1,000 items | CPU s per 1,000 items |",
               "|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        seconds, cpu_seconds, n, params, what = measure(config, items, args.device, args.dtype, args.batch_size)
        report.add(f"| {config} | {what} | {params / 1e6:.1f}M | {n} | {seconds:.1f} | {cpu_seconds:.1f} |")


if __name__ == "__main__":
    main()
