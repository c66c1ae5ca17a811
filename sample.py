"""
Generate text from a trained checkpoint.

    python sample.py OUT_DIR --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py OUT_DIR --start=FILE:prompt.txt

The tokenizer (char or GPT-2 BPE) comes from the dataset metadata saved in the checkpoint.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

from checkpoint import CheckpointError, load_model
from runtime import check_device

# Logits of a trained model are below ~1e3 in magnitude: divided by this they stay far from float32's 3.4e38.
MIN_TEMPERATURE = 1e-30
from prepare_data import load_tokenizer


def read_prompt(start):
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:"):])
    if not path.is_file():
        raise ValueError(f"--start={start}: no such file {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--start={start}: {path} is not UTF-8 text") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a run's out_dir (holding ckpt.pt) or a checkpoint file")
    parser.add_argument("--start", default="\n", help='the prompt, or "FILE:path" to read it from a file')
    parser.add_argument("--num_samples", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=0.8, help="< 1: more predictable, > 1: more random")
    parser.add_argument("--top_k", type=int, default=200,
                        help="sample among the k most likely tokens only (beyond the vocabulary: all of it)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1 or args.top_k < 1:
        parser.error("num_samples, max_new_tokens and top_k must be >= 1 and temperature > 0")
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise ValueError(f"--temperature={args.temperature}: the temperature must be a finite number > 0 "
                         "(1 samples the model's own distribution; e.g. --temperature=0.8)")
    if args.temperature < MIN_TEMPERATURE:
        raise ValueError(f"--temperature={args.temperature} is too small: the logits divided by it overflow float32 "
                         f"(NaN probabilities); use at least {MIN_TEMPERATURE:g}, or --top_k=1 for the most likely "
                         "token")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed={args.seed} is out of range: it must be in [0, 2**63)")
    check_device(args.device)

    model, ckpt = load_model(args.out_dir, args.device)
    model.eval()
    if "meta" not in ckpt:
        raise ValueError(f"{args.out_dir}: the checkpoint has no dataset metadata ('meta'), so its tokenizer is "
                         "unknown: sample from a checkpoint written by train.py")
    encode, decode = load_tokenizer(ckpt["meta"])
    # The embedding may be padded beyond the tokenizer (GPT-2: 50257 ids in 50304 rows): never sample a padding id.
    vocab_size = ckpt["meta"]["vocab_size"]
    top_k = min(args.top_k, vocab_size)
    try:
        ids = encode(read_prompt(args.start))
    except KeyError as e:  # a character the char-level vocabulary has never seen
        raise ValueError(f"the prompt holds {e} which is not in this model's vocabulary") from None
    if not ids:
        raise ValueError("the prompt is empty: give at least one token with --start")

    torch.manual_seed(args.seed)
    x = torch.tensor(ids, dtype=torch.long, device=args.device)[None, -model.config.block_size:]
    for _ in range(args.num_samples):
        y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=top_k, vocab_size=vocab_size)
        print(decode(y[0].tolist()))
        print("---------------")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
