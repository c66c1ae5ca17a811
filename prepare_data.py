"""
Prepare a dataset for train.py: flat binary token files plus a meta.json.

    python prepare_data.py shakespeare_char       # char-level Tiny Shakespeare, from the bundled data/raw (offline)
    python prepare_data.py shakespeare            # GPT-2 BPE Tiny Shakespeare, from the bundled data/raw (offline)
    python prepare_data.py openwebtext            # GPT-2 BPE OpenWebText via Hugging Face datasets (~54 GB cache)
    python prepare_data.py --text a.jsonl b.jsonl --name mycorpus [--tokenizer gpt2|char]

Writes <out_dir>/<name>/train.bin and val.bin (token ids back to back; uint16, or uint32 if the vocab
has more than 65535 entries; train.py memmaps them) and meta.json (tokenizer, vocab_size, dtype, token
counts, source; "chars" for char level). Everything is built in <name>.tmp-<pid>/ with meta.json written
last and then renamed into place, so a directory holding meta.json is complete. A re-run is a no-op
unless --force, which rebuilds without touching the old data until the new is complete.

--text takes .txt files (a document is a blank-line separated paragraph), .jsonl/.json or .parquet files
(a document is a row's "text" field). Like openwebtext (nanoGPT's recipe), documents are shuffled into
train/val (--val_fraction, --seed) and each is followed by <|endoftext|>; the char tokenizer has no such
token and puts a blank line between documents instead.
"""
import argparse
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np

RAW_DIR = Path(__file__).resolve().parent / "data" / "raw"
SHAKESPEARE_TXT = RAW_DIR / "tinyshakespeare.txt"
GPT2_RANKS = RAW_DIR / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # data/raw/README.md
EOT = 50256  # <|endoftext|>

OFFLINE_DATASETS = ("shakespeare_char", "shakespeare")  # built from data/raw, no network needed
DATASETS = OFFLINE_DATASETS + ("openwebtext",)
TEXT_LOADERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}  # datasets builders


# -----------------------------------------------------------------------------
# tokenizers

@lru_cache(maxsize=None)
def gpt2_encoding():
    """GPT-2 BPE (= tiktoken "gpt2" / r50k_base) built from the bundled ranks, so nothing is downloaded."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    try:  # a module constant: importing it does not fetch anything (r50k_base() would)
        from tiktoken_ext.openai_public import r50k_pat_str
    except ImportError:  # older tiktoken kept the pattern inside r50k_base(); this was it there
        r50k_pat_str = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    if not GPT2_RANKS.exists():
        raise FileNotFoundError(f"{GPT2_RANKS} is missing: restore it from git (see data/raw/README.md)")
    ranks = load_tiktoken_bpe(str(GPT2_RANKS), expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=EOT + 1)


@lru_cache(maxsize=None)
def _stoi(chars):
    return {c: i for i, c in enumerate(chars)}


def load_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepare the data first, "
                                "e.g. python prepare_data.py shakespeare_char")
    return json.loads(path.read_text())


def load_tokenizer(meta):
    """(encode, decode) for a dataset's meta.json: str -> list[int] and list[int] -> str."""
    if meta["tokenizer"] == "char":
        chars, stoi = meta["chars"], _stoi(meta["chars"])
        return (lambda s: [stoi[c] for c in s]), (lambda ids: "".join(chars[i] for i in ids))
    if meta["tokenizer"] == "gpt2":
        enc = gpt2_encoding()
        # like nanoGPT's sample.py, a prompt may contain <|endoftext|>; int() so numpy ids decode too
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}),
                lambda ids: enc.decode([int(i) for i in ids]))
    raise ValueError(f"unknown tokenizer {meta['tokenizer']!r} in meta.json (expected 'char' or 'gpt2')")


def _tokenizer_meta(tokenizer, chars=None):
    if tokenizer == "char":
        return {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
    return {"tokenizer": "gpt2", "vocab_size": gpt2_encoding().n_vocab}  # the model pads this to 50304 itself


def _dtype(vocab_size):
    return np.uint16 if vocab_size <= 65535 else np.uint32


# -----------------------------------------------------------------------------
# builders: each writes train.bin and val.bin into tmp and returns the meta

def _build_shakespeare(tmp, tokenizer, val_fraction):
    """nanoGPT's Tiny Shakespeare recipe: the first 90% of the characters train, the rest val."""
    if not SHAKESPEARE_TXT.exists():
        raise FileNotFoundError(f"{SHAKESPEARE_TXT} is missing: restore it from git (see data/raw/README.md)")
    text = SHAKESPEARE_TXT.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{SHAKESPEARE_TXT} is empty")
    n = int(len(text) * (1 - val_fraction))
    meta = _tokenizer_meta(tokenizer, "".join(sorted(set(text))))
    stoi = _stoi(meta["chars"]) if tokenizer == "char" else None
    for split, part in (("train", text[:n]), ("val", text[n:])):
        ids = [stoi[c] for c in part] if stoi else gpt2_encoding().encode_ordinary(part)
        np.array(ids, dtype=_dtype(meta["vocab_size"])).tofile(tmp / f"{split}.bin")
        meta[f"{split}_tokens"] = len(ids)
    meta["source"] = f"{SHAKESPEARE_TXT.name} (karpathy/char-rnn), first {1 - val_fraction:.0%} of characters train"
    return meta


def _load_documents(files, num_proc):
    """A datasets.Dataset with one "text" column: openwebtext from the hub, or local files."""
    try:
        import datasets
    except ImportError:
        raise ImportError("this needs Hugging Face datasets: pip install datasets") from None
    if files is None:
        try:
            return datasets.load_dataset("openwebtext", num_proc=num_proc)["train"]
        except ConnectionError as e:  # what datasets raises both with no network and with HF_HUB_OFFLINE=1
            raise ConnectionError(
                f"could not load openwebtext from the Hugging Face hub ({e}). Set up network access, or a "
                "populated HF cache (HF_HOME) and HF_HUB_OFFLINE=1 to read only from it, or use --text with "
                "local files") from None
    loader = TEXT_LOADERS[files[0].suffix]
    extra = {"sample_by": "paragraph"} if loader == "text" else {}  # one document per line would put EOT on every line
    ds = datasets.load_dataset(loader, data_files=[str(f) for f in files], num_proc=num_proc, **extra)["train"]
    if "text" not in ds.column_names:
        raise ValueError(f"{', '.join(map(str, files))}: no 'text' field (found: {', '.join(ds.column_names)})")
    return ds.select_columns(["text"])


def _tokenize(doc, chars=None):
    """One document -> ids plus a separator (nanoGPT: ids.append(enc.eot_token))."""
    if chars is None:  # encode_ordinary: a literal "<|endoftext|>" in web text is just text
        ids = gpt2_encoding().encode_ordinary(doc["text"]) + [EOT]
    else:
        stoi = _stoi(chars)
        ids = [stoi[c] for c in doc["text"] + "\n\n"]
    return {"ids": ids, "len": len(ids)}


def _write_bin(dset, path, dtype):
    """Concatenate the "ids" column into a memmap, one contiguous shard at a time (never the corpus in RAM)."""
    from tqdm import tqdm
    n = int(np.sum(dset["len"], dtype=np.uint64))
    arr = np.memmap(path, dtype=dtype, mode="w+", shape=(n,))
    total_batches = min(1024, len(dset))
    idx = 0
    for i in tqdm(range(total_batches), desc=f"writing {path.name}"):
        batch = dset.shard(num_shards=total_batches, index=i, contiguous=True).with_format("numpy")
        ids = np.concatenate(batch["ids"])
        arr[idx:idx + len(ids)] = ids
        idx += len(ids)
    arr.flush()
    return n


def _build_documents(tmp, files, tokenizer, val_fraction, seed, num_proc):
    ds = _load_documents(files, num_proc)
    if len(ds) < 2:
        raise ValueError(f"found {len(ds)} document(s) in {', '.join(map(str, files or ['openwebtext']))}: "
                         "need at least 2 to split off a validation set")
    chars = None
    if tokenizer == "char":  # the vocab is every character in the data, plus the newline of the separator
        vocab = {"\n"}
        for batch in ds.iter(batch_size=1000):
            vocab.update(*batch["text"])
        chars = "".join(sorted(vocab))
    meta = _tokenizer_meta(tokenizer, chars)
    split = ds.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    split["val"] = split.pop("test")
    for name, dset in split.items():
        tokenized = dset.map(_tokenize, fn_kwargs={"chars": chars}, remove_columns=["text"],
                             desc=f"tokenizing {name}", num_proc=num_proc)
        meta[f"{name}_tokens"] = _write_bin(tokenized, tmp / f"{name}.bin", _dtype(meta["vocab_size"]))
    meta["source"] = ", ".join(map(str, files)) if files else "openwebtext (Hugging Face datasets)"
    meta["source"] += f"; documents shuffled (seed {seed}), {val_fraction:g} of them val"
    return meta


# -----------------------------------------------------------------------------

def is_prepared(data_dir):
    """True if data_dir holds a complete dataset: meta.json and .bin files of the sizes it records."""
    try:
        meta = load_meta(data_dir)
        itemsize = np.dtype(meta["dtype"]).itemsize
        return all((Path(data_dir) / f"{s}.bin").stat().st_size == meta[f"{s}_tokens"] * itemsize
                   for s in ("train", "val"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare(name, out_dir="data", force=False, *, files=None, tokenizer=None, val_fraction=None,
            seed=2357, num_proc=None):
    """Build <out_dir>/<name>/ (a DATASETS name, or any name with files=[...]) and return its path."""
    if files is None and name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, "
                         "or prepare local files with --text FILE [FILE ...] --name NAME")
    if not name or Path(name).name != name:
        raise ValueError(f"dataset name {name!r} must be a plain directory name")
    if files is not None:
        files = [Path(f) for f in files]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: no such file")
            if f.suffix not in TEXT_LOADERS:
                raise ValueError(f"{f}: unsupported file type (use {', '.join(TEXT_LOADERS)})")
            if f.stat().st_size == 0:
                raise ValueError(f"{f} is empty")
        if len({TEXT_LOADERS[f.suffix] for f in files}) > 1:
            raise ValueError("--text files must all be of one kind: .txt, .json/.jsonl or .parquet")
    if tokenizer is None:
        tokenizer = "char" if name == "shakespeare_char" and files is None else "gpt2"
    if val_fraction is None:
        val_fraction = 0.0005 if name == "openwebtext" and files is None else 0.1
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    num_proc = num_proc or min(8, os.cpu_count() or 1)

    final = Path(out_dir) / name
    if not force and is_prepared(final):
        print(f"already prepared: {final} (use --force to rebuild)")
        return final
    tmp = final.with_name(f"{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if files is None and name in OFFLINE_DATASETS:
            meta = _build_shakespeare(tmp, tokenizer, val_fraction)
        else:
            meta = _build_documents(tmp, files, tokenizer, val_fraction, seed, num_proc)
        meta["dtype"] = np.dtype(_dtype(meta["vocab_size"])).name
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: it marks the dir complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # swap in: the old data is deleted only once the new is complete and in place
    old = final.with_name(f"{name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {final}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['dtype']})")
    return final


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--text", nargs="+", metavar="FILE", help="local .txt/.jsonl/.json/.parquet files instead")
    p.add_argument("--name", help="output directory name for --text")
    p.add_argument("--tokenizer", choices=("gpt2", "char"), help="for --text (default gpt2)")
    p.add_argument("--out_dir", default="data")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--val_fraction", type=float,
                   help="default 0.1 (shakespeare, --text; documents for --text), 0.0005 (openwebtext)")
    p.add_argument("--seed", type=int, default=2357, help="train/val shuffle seed for document datasets")
    args = p.parse_args(argv)
    if args.text:
        if args.dataset or not args.name:
            p.error("--text FILE ... needs --name NAME (and no dataset name)")
    elif not args.dataset:
        p.error(f"name a dataset ({', '.join(DATASETS)}) or use --text FILE ... --name NAME")
    elif args.name or args.tokenizer:
        p.error("--name and --tokenizer are only for --text")
    try:
        prepare(args.name or args.dataset, args.out_dir, args.force, files=args.text, tokenizer=args.tokenizer,
                val_fraction=args.val_fraction, seed=args.seed, num_proc=args.num_proc)
    except (ValueError, OSError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
