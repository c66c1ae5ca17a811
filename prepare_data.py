"""
Prepare a dataset for train.py: flat binary token files plus a meta.json.

    python prepare_data.py shakespeare_char       # char-level Tiny Shakespeare, from the bundled data/raw (offline)
    python prepare_data.py shakespeare            # GPT-2 BPE Tiny Shakespeare, from the bundled data/raw (offline)
    python prepare_data.py openwebtext            # GPT-2 BPE OpenWebText via Hugging Face datasets (~54 GB cache)
    python prepare_data.py --text a.jsonl b.jsonl --name mycorpus [--tokenizer gpt2|char]
    python prepare_data.py bb [--triggers 3] [--seq_len 256] [--sequences 20000]   # Bigram-Backcopy (offline)
    python prepare_data.py shakespeare_char --bos  # any dataset with a BOS token before every document

Writes <out_dir>/<name>/train.bin and val.bin (token ids back to back; uint16, or uint32 if the vocab
has more than 65535 entries; train.py memmaps them) and meta.json (tokenizer, vocab_size, dtype, token
counts, source; "chars" for char level). Everything is built in <name>.tmp-<pid>/ with meta.json written
last, synced to disk and then renamed into place, so a directory holding meta.json is complete, even after a
power loss. A re-run is a no-op unless --force, which rebuilds without touching the old data until the new is
complete.

--text takes .txt files (a document is a blank-line separated paragraph), .jsonl/.json or .parquet files
(a document is a row's "text" field). Like openwebtext (nanoGPT's recipe), documents are shuffled into
train/val (--val_fraction, --seed) and each is followed by <|endoftext|>; the char tokenizer has no such
token and puts a blank line between documents instead. The files are checked before anything is built: a byte
that is not UTF-8, a line that is not JSON, a record without a string "text" is reported with its file and line.

bb is the synthetic Bigram-Backcopy task (bigram_backcopy.py), fixed-length sequences that each start with BOS,
built from Tiny Shakespeare's statistics. --bos puts a BOS token before every document of any other dataset (Tiny
Shakespeare: every blank-line separated paragraph, a speaker's turn), written to <name>_bos: the GPT-2 tokenizer's
<|endoftext|> then starts each document instead of ending it, the char tokenizer gets bigram_backcopy.BOS_CHAR.
meta.json names bos_id; train.py then starts every window at a BOS (window_start). bb's meta.json also names the
triggers, says that its windows must start at a BOS (bos_required) and holds the Bayes-optimal loss at every
position (bayes_loss_by_position).

Ctrl-C stops with one line saying what was kept (exit status 130). Leftover <name>.tmp-<pid>/ directories of
killed runs are deleted by the next run. load_prepared() is the one check of a prepared dataset (train.py's).
"""
import argparse
import codecs
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from bigram_backcopy import BOS_CHAR, BigramBackcopy
from provenance import data_fingerprint, describe_difference

RAW_DIR = Path(__file__).resolve().parent / "data" / "raw"
SHAKESPEARE_TXT = RAW_DIR / "tinyshakespeare.txt"
GPT2_RANKS = RAW_DIR / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # data/raw/README.md
EOT = 50256  # <|endoftext|>

BOS_SUFFIX = "_bos"  # <dataset>_bos: the dataset with a BOS token before every document (--bos)
# built from data/raw, no network needed
OFFLINE_DATASETS = ("shakespeare_char", "shakespeare", "bb",
                    "shakespeare_char" + BOS_SUFFIX, "shakespeare" + BOS_SUFFIX)
DATASETS = OFFLINE_DATASETS + ("openwebtext", "openwebtext" + BOS_SUFFIX)
BB_DEFAULTS = {"triggers": 3, "seq_len": 256, "sequences": 20000}  # bb's own options (prepare's bb=)
BB_HELP = {"triggers": "how many of the most frequent characters are triggers", "seq_len": "tokens after BOS in each "
           "sequence", "sequences": "train sequences (val: --val_fraction of this many more)"}
TEXT_LOADERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}  # datasets builders


class DataError(ValueError):
    """A prepared dataset that is missing, incomplete or does not match its meta.json; the message says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during prepare(); the message says what was kept."""


# What prepare() raises for bad input, a missing optional library or a failing disk: its message is the fix, so
# callers report it as one error line.
PREPARE_ERRORS = (ValueError, OSError, ImportError)


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


def tokenizer_identity(meta):
    """What identifies the tokenizer of a prepared dataset (its meta.json, or a checkpoint's "meta"): equal dicts
    encode text to the same ids. Plain JSON types, so a checkpoint can store it."""
    if meta.get("tokenizer") == "char":
        return {"tokenizer": "char", "chars": meta["chars"]}
    if meta.get("tokenizer") == "gpt2":  # the ranks are bundled and hash-checked: the name is the encoding
        return {"tokenizer": "gpt2", "encoding": "gpt2"}
    raise ValueError(f"unknown tokenizer {meta.get('tokenizer')!r} in meta.json (expected 'char' or 'gpt2')")


def check_same_data(saved_meta, meta, data_dir, fix):
    """Refuse (ValueError) to score or resume a model trained on the data described by saved_meta (a checkpoint's
    "meta") with the data in data_dir (its meta.json: meta): another tokenizer, or the same one with other data
    (data_dir prepared again with other settings or files). fix: what the caller suggests for the second case.
    A checkpoint written before fingerprints existed is checked for its tokenizer only."""
    if tokenizer_identity(saved_meta) != tokenizer_identity(meta):
        raise ValueError(f"{data_dir} has another tokenizer ({_describe_tokenizer(meta)}) than the checkpoint was "
                         f"trained with ({_describe_tokenizer(saved_meta)}): its token ids mean other things here; "
                         f"point at the run's own dataset")
    saved, now = saved_meta.get("fingerprint"), meta.get("fingerprint")
    if saved and saved != now:
        raise ValueError(f"{data_dir} holds other data (fingerprint {now}) than the checkpoint was trained on "
                         f"(fingerprint {saved}): it was prepared again with other settings or files since. {fix}")


def _describe_tokenizer(meta):
    if meta.get("tokenizer") == "char":
        chars = meta["chars"]
        return f"char, {len(chars)} characters {chars[:20]!r}" + ("…" if len(chars) > 20 else "")
    return str(meta.get("tokenizer"))


def _tokenizer_meta(tokenizer, chars=None, bos=False):
    if tokenizer == "char":
        meta = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars}
        return meta | ({"bos_id": chars.index(BOS_CHAR)} if bos else {})
    meta = {"tokenizer": "gpt2", "vocab_size": gpt2_encoding().n_vocab}  # the model pads this to 50304 itself
    return meta | ({"bos_id": EOT} if bos else {})


def _dtype(vocab_size):
    return np.uint16 if vocab_size <= 65535 else np.uint32


# -----------------------------------------------------------------------------
# builders: each writes train.bin and val.bin into tmp and returns the meta

def _shakespeare_text():
    if not SHAKESPEARE_TXT.exists():
        raise FileNotFoundError(f"{SHAKESPEARE_TXT} is missing: restore it from git (see data/raw/README.md)")
    text = SHAKESPEARE_TXT.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{SHAKESPEARE_TXT} is empty")
    return text


def _build_shakespeare(tmp, tokenizer, val_fraction, bos):
    """nanoGPT's Tiny Shakespeare recipe: the first 90% of the characters train, the rest val. With bos, a BOS
    token starts every paragraph, and the split falls on the paragraph boundary nearest that point."""
    text = _shakespeare_text()
    n = int(len(text) * (1 - val_fraction))
    chars = "".join(sorted(set(text) | ({BOS_CHAR} if bos else set())))
    meta = _tokenizer_meta(tokenizer, chars, bos)
    if bos:
        n = text.rfind("\n\n", 0, n) + 2 if text.rfind("\n\n", 0, n) >= 0 else n
    for split, part in (("train", text[:n]), ("val", text[n:])):
        docs = [p + "\n\n" for p in part.removesuffix("\n\n").split("\n\n")] if bos else [part]
        ids = [i for doc in docs for i in _encode_document(doc, tokenizer, chars, bos)]
        np.array(ids, dtype=_dtype(meta["vocab_size"])).tofile(tmp / f"{split}.bin")
        meta[f"{split}_tokens"] = len(ids)
    meta["source"] = f"{SHAKESPEARE_TXT.name} (karpathy/char-rnn), first {1 - val_fraction:.0%} of characters train"
    meta["source"] += "; BOS before every paragraph" if bos else ""
    return meta


def _encode_document(text, tokenizer, chars, bos):
    """A document's ids, with a BOS first if bos (GPT-2's is <|endoftext|>)."""
    if tokenizer == "char":
        stoi = _stoi(chars)
        return [stoi[c] for c in (BOS_CHAR if bos else "") + text]
    return [EOT] * bos + gpt2_encoding().encode_ordinary(text)


def _build_bigram_backcopy(tmp, bb):
    """The Bigram-Backcopy task (bigram_backcopy.py): sequences of BOS + seq_len tokens, back to back."""
    triggers, seq_len, sequences, seed = bb["triggers"], bb["seq_len"], bb["sequences"], bb["seed"]
    task = BigramBackcopy(_shakespeare_text(), triggers)
    meta = _tokenizer_meta("char", task.chars, bos=True)
    n_val = max(1, round(sequences * bb["val_fraction"]))
    rng = np.random.default_rng(seed)
    for split, n in (("train", sequences), ("val", n_val)):
        x = task.sample(n, seq_len, rng)
        x.astype(_dtype(meta["vocab_size"])).tofile(tmp / f"{split}.bin")
        meta[f"{split}_tokens"] = x.size
    meta |= {"build": bb, "bos_required": True, "sequence_length": seq_len + 1, "triggers": task.triggers,
             "bayes_loss_by_position": task.bayes_loss_by_position(seq_len).tolist()}
    meta["source"] = (f"Bigram-Backcopy (Guo et al. 2024) on {SHAKESPEARE_TXT.name}'s bigrams: {triggers} triggers "
                      f"{[task.chars[i] for i in task.triggers]}, {sequences} train and {n_val} val sequences of "
                      f"BOS + {seq_len} tokens, seed {seed}")
    return meta


# -----------------------------------------------------------------------------
# input files are checked here, before datasets sees them: its errors are long tracebacks without a line number

_CHUNK = 1 << 24


def _check_utf8(path):
    """ValueError naming the line and byte offset of the first byte of path that is not UTF-8."""
    with open(path, "rb") as f:
        pending, pos, line = b"", 0, 1  # pos: file offset of pending[0]
        while True:
            chunk = f.read(_CHUNK)
            data = pending + chunk
            try:
                _, consumed = codecs.utf_8_decode(data, "strict", not chunk)
            except UnicodeDecodeError as e:
                line += data.count(b"\n", 0, e.start)
                raise ValueError(
                    f"{path}, line {line} (byte offset {pos + e.start}): not UTF-8 text ({e.reason}: "
                    f"{data[e.start:e.end]!r}). Convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 "
                    f"{path.name} > fixed{path.suffix} (with the file's real encoding in place of latin1)") from None
            line += data.count(b"\n", 0, consumed)
            pending, pos = data[consumed:], pos + consumed
            if not chunk:
                return


def _check_record(rec, where):
    fix = 'every record needs a "text" string, e.g. {"text": "a document"}'
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: a JSON {type(rec).__name__}, not an object: {fix}")
    if "text" not in rec:
        raise ValueError(f"{where}: no 'text' field (found: {', '.join(rec) or 'none'}): {fix}")
    if not isinstance(rec["text"], str):
        kind = {type(None): "null", bool: "true/false", int: "a number", float: "a number", list: "a list",
                dict: "an object"}[type(rec["text"])]
        raise ValueError(f'{where}: "text" is {kind}, not a string: {fix}')


def _first_line(path):
    with open(path, encoding="utf-8-sig") as f:
        return next((line for line in f if line.strip()), "")


def _check_json(path):
    """JSON lines (one object per line, blank lines allowed), or one JSON document (an array of objects, or a
    single object), as datasets reads them: every record needs a "text" string. A ValueError names the first bad
    line or array item."""
    _check_utf8(path)
    try:  # an array on one line is one document too
        whole = isinstance(json.loads(_first_line(path)), list)
    except json.JSONDecodeError:  # an array or (.json) an object over several lines, or a broken first line
        whole = _first_line(path).lstrip().startswith("[" if path.suffix == ".jsonl" else ("[", "{"))
    if whole:
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}): fix the file, "
                             "or write one JSON object per line (.jsonl)") from None
        if isinstance(records, list):
            for i, rec in enumerate(records):
                _check_record(rec, f"{path}, array item {i + 1}")
        else:
            _check_record(records, str(path))
        return
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            line = line.rstrip("\r\n")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                cut = e.msg.startswith("Unterminated") or e.pos >= len(line.rstrip())
                why = f"{e.msg} at the end of the line" if e.pos >= len(line.rstrip()) else f"{e.msg}: column {e.colno}"
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({why}{'; cut short?' if cut else ''}): each "
                                 'line must be one JSON object such as {"text": "a document"}; fix or delete that line'
                                 ) from None
            _check_record(rec, f"{path}, line {lineno}")


def _check_parquet(path):
    import pyarrow
    import pyarrow.parquet as pq
    try:
        schema = pq.read_schema(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}): check the file") from None
    if "text" not in schema.names:
        raise ValueError(f"{path}: no 'text' field (found: {', '.join(schema.names)}): the documents must be in a "
                         "string column named text")
    kind = schema.field("text").type
    if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)):
        raise ValueError(f"{path}: the 'text' column holds {kind}, not strings: the documents must be in a string "
                         "column named text")
    rows = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
        column = batch.column(0)
        if column.null_count:
            row = rows + column.is_null().to_pylist().index(True) + 1
            raise ValueError(f'{path}, row {row}: "text" is null, not a string: drop the rows without text (e.g. '
                             "df.dropna(subset=['text']) in pandas) or give them text")
        rows += len(column)


def _check_txt(path):
    _check_utf8(path)
    with open(path, encoding="utf-8-sig") as f:
        if not any(line.strip() for line in f):
            raise ValueError(f"{path} holds only blank lines: there is no text in it")


def check_text_files(files):
    """Raise ValueError (file, line and what to fix) for the first input file datasets could not read as documents."""
    for f in files:
        if f.suffix == ".txt":
            _check_txt(f)
        elif f.suffix in (".json", ".jsonl"):
            _check_json(f)
        elif f.suffix == ".parquet":
            _check_parquet(f)


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
    try:
        ds = datasets.load_dataset(loader, data_files=[str(f) for f in files], num_proc=num_proc, **extra)["train"]
    except Exception as e:  # the files were checked, but datasets has failures of its own: one line, not a traceback
        cause = e.__cause__ or e.__context__ or e
        first_line = (str(cause).strip().splitlines() or [""])[0]
        raise ValueError(f"{', '.join(map(str, files))}: Hugging Face datasets could not load them "
                         f"({type(cause).__name__}: {first_line}); check the files' format") from None
    if "text" not in ds.column_names:
        raise ValueError(f"{', '.join(map(str, files))}: no 'text' field (found: {', '.join(ds.column_names)})")
    return ds.select_columns(["text"])


def _tokenize(doc, chars=None, bos=False):
    """One document -> ids plus a separator (nanoGPT: ids.append(enc.eot_token)); with bos, a BOS first instead
    (GPT-2's <|endoftext|> starts the document rather than ending it)."""
    if chars is None:  # encode_ordinary: a literal "<|endoftext|>" in web text is just text
        ids = _encode_document(doc["text"], "gpt2", None, bos) + [EOT] * (not bos)
    else:
        ids = _encode_document(doc["text"] + "\n\n", "char", chars, bos)
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


def _build_documents(tmp, files, tokenizer, val_fraction, seed, num_proc, bos):
    ds = _load_documents(files, num_proc)
    if len(ds) < 2:
        raise ValueError(f"found {len(ds)} document(s) in {', '.join(map(str, files or ['openwebtext']))}: "
                         "need at least 2 to split off a validation set")
    chars = None
    if tokenizer == "char":  # the vocab is every character in the data, plus the newline of the separator
        vocab = {"\n"}
        for batch in ds.iter(batch_size=1000):
            vocab.update(*batch["text"])
        if bos and BOS_CHAR in vocab:
            raise ValueError(f"the documents contain {BOS_CHAR!r}, the char tokenizer's BOS: remove it, or use "
                             "--tokenizer gpt2")
        chars = "".join(sorted(vocab | ({BOS_CHAR} if bos else set())))
    meta = _tokenizer_meta(tokenizer, chars, bos)
    split = ds.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    split["val"] = split.pop("test")
    for name, dset in split.items():
        tokenized = dset.map(_tokenize, fn_kwargs={"chars": chars, "bos": bos}, remove_columns=["text"],
                             desc=f"tokenizing {name}", num_proc=num_proc)
        meta[f"{name}_tokens"] = _write_bin(tokenized, tmp / f"{name}.bin", _dtype(meta["vocab_size"]))
    meta["source"] = ", ".join(map(str, files)) if files else "openwebtext (Hugging Face datasets)"
    meta["source"] += f"; documents shuffled (seed {seed}), {val_fraction:g} of them val"
    meta["source"] += "; BOS before every document" if bos else ""
    return meta


# -----------------------------------------------------------------------------

def load_prepared(data_dir, block_size=None):
    """Check a prepared dataset and memory-map it: ({"train": memmap, "val": memmap}, meta). Every problem is a
    DataError saying what to do: not prepared, a damaged meta.json, .bin files that do not match it, token ids beyond
    the vocabulary, or (with block_size) a split too short for one block of block_size + 1 tokens."""
    data_dir = Path(data_dir)
    name = data_dir.name
    if not (data_dir / "meta.json").exists():
        raise DataError(f"dataset {name!r} is not prepared (no {data_dir}/meta.json): run "
                        f"python prepare_data.py {name}")
    meta = None
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
        redo = f"re-run {rebuild_command(data_dir, meta)}"
        dtype = np.dtype(meta["dtype"])
        vocab_size, counts = meta["vocab_size"], {s: meta[f"{s}_tokens"] for s in ("train", "val")}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{data_dir}/meta.json is damaged ({type(e).__name__}: {e}): re-run "
                        f"{rebuild_command(data_dir, meta)}") from None
    if meta.get("tokenizer") not in ("char", "gpt2"):
        raise DataError(f"{data_dir}/meta.json names tokenizer {meta.get('tokenizer')!r}, which is not one of char, "
                        f"gpt2: {redo}")
    if meta["tokenizer"] == "gpt2" and vocab_size != EOT + 1:
        raise DataError(f"{data_dir}/meta.json names tokenizer 'gpt2' (vocab {EOT + 1}) but vocab_size {vocab_size!r}"
                        f": the data was not tokenized with GPT-2 BPE, {redo}")
    if any(type(n) is not int or n < 0 for n in counts.values()):
        raise DataError(f"{data_dir}/meta.json: token counts {counts} are not counts: {redo}")
    if dtype.kind != "u" or type(vocab_size) is not int or not 0 < vocab_size <= np.iinfo(dtype).max + 1:
        raise DataError(f"{data_dir}/meta.json: vocab_size {vocab_size!r} does not fit token dtype {dtype}: {redo}")
    if meta.get("tokenizer") == "char" and len(meta.get("chars", "")) != vocab_size:
        raise DataError(f"{data_dir}/meta.json lists {len(meta.get('chars', ''))} characters but vocab_size "
                        f"{vocab_size}: {redo}")
    data = {}
    for split in ("train", "val"):
        path = data_dir / f"{split}.bin"
        size = path.stat().st_size if path.exists() else 0
        if size % dtype.itemsize or size // dtype.itemsize != counts[split]:
            raise DataError(f"{path} holds {size} bytes, but meta.json promises {counts[split]} {dtype} tokens "
                            f"({counts[split] * dtype.itemsize} bytes): the data is incomplete or damaged, {redo}")
        if block_size is not None and counts[split] <= block_size:
            raise DataError(f"{split} split has {counts[split]} tokens, too few for one block of "
                            f"block_size={block_size}+1: lower block_size or use more data")
        if counts[split] == 0:  # np.memmap cannot map 0 bytes
            data[split] = np.zeros(0, dtype=dtype)
            continue
        data[split] = np.memmap(path, dtype=dtype, mode="r")
        # Token ids beyond the vocabulary would index past the embedding; check a prefix of big files.
        if int(data[split][: 100_000_000].max()) >= vocab_size:
            raise DataError(f"{path} holds token ids >= vocab_size {vocab_size} (meta.json): the data does not "
                            f"match its meta.json, {redo}")
    if "fingerprint" not in meta:  # prepared before fingerprints: computed once, kept in meta.json if writable
        meta["fingerprint"] = data_fingerprint(data_dir, tokenizer_identity(meta))
        _write_json_atomically(data_dir / "meta.json", meta)
    return data, meta


def _write_json_atomically(path, obj):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        fsync(tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only dataset: the fingerprint is computed again on the next load
        tmp.unlink(missing_ok=True)


def rebuild_command(data_dir, meta=None):
    """The command that rebuilds data_dir (with --force) from what its meta.json records of how prepare() built it:
    the files, tokenizer, val_fraction and seed. Without that record (data prepared before it was kept, or a
    meta.json that cannot be read) the command of a built-in dataset, or a template for --text."""
    data_dir = Path(data_dir)
    made = meta.get("prepared_with") if isinstance(meta, dict) else None
    out = [] if data_dir.parent == Path("data") else ["--out_dir", str(data_dir.parent)]
    if isinstance(made, dict) and made.get("text"):
        args = ["--text", *made["text"], "--name", data_dir.name, "--tokenizer", made["tokenizer"]] + (
            ["--bos"] if made.get("bos") else [])
    elif data_dir.name in DATASETS:
        args = [data_dir.name]
    else:
        return shlex.join(["python", "prepare_data.py", "--text", "FILE", "...", "--name", data_dir.name, *out,
                           "--force"]) + " (with the files it was built from)"
    if isinstance(made, dict) and "val_fraction" in made:
        bb = made.get("bb") or {}
        seed = made["seed"] if made.get("seed") is not None else bb.get("seed")
        args += ["--val_fraction", str(made["val_fraction"])] + (["--seed", str(seed)] if seed is not None else [])
        args += [arg for key in BB_DEFAULTS if key in bb for arg in (f"--{key}", str(bb[key]))]
    return shlex.join(["python", "prepare_data.py", *args, *out, "--force"])


def window_start(setting, meta):
    """Where a run's windows start, "bos" or "random", from its window_start setting (auto: bos where the data's
    meta.json names a bos_id; older runs have no setting: None is random) and the dataset's meta."""
    if setting == "auto":
        return "bos" if "bos_id" in meta else "random"
    return setting or "random"


def bos_starts(tokens, bos_id, block_size):
    """The positions of tokens that hold bos_id and start a whole window (block_size + 1 tokens), found a chunk at a
    time (a memmap of billions of tokens is never compared at once)."""
    chunk, found = 1 << 26, []
    last = len(tokens) - block_size - 1  # the last position a window can start at
    for begin in range(0, max(last + 1, 0), chunk):
        part = np.asarray(tokens[begin:min(begin + chunk, last + 1)])
        found.append(np.flatnonzero(part == bos_id) + begin)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def is_prepared(data_dir):
    """True if data_dir holds a complete dataset that load_prepared accepts (meta.json, .bin files of the sizes it
    records, token ids within the vocabulary)."""
    try:
        load_prepared(data_dir)
        return True
    except (DataError, OSError):
        return False


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _clean_stale(final):
    """Deal with what killed runs left next to final: <name>.tmp-<pid>/ (a build; complete once it holds meta.json)
    and <name>.old-<pid>/ (the previous data, moved aside for the swap). If a kill came between the two renames of
    the swap, final is missing and a complete one of them takes its place; everything else is deleted."""
    for kind in ("tmp", "old"):  # a completed new build before the previous data
        for path in sorted(final.parent.glob(f"{final.name}.{kind}-*")):
            pid = path.name.rsplit("-", 1)[1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue  # not ours, or a run still going
            if not final.exists() and is_prepared(path):
                path.rename(final)
                print(f"moved {path} to {final}: complete data left by a run that was killed while swapping it in")
            else:
                shutil.rmtree(path, ignore_errors=True)
                print(f"removed {path}, left by a run that was killed (pid {pid})")


def fsync(path):
    """Flush a file's data, or a directory's entries, to disk: a rename is durable only once what it renames is, and
    itself only once its directory is (a power loss otherwise can leave meta.json beside empty .bin files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C (SIGINT) off until the block is done: a swap of directories is never left halfway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def prepare(name, out_dir="data", force=False, *, files=None, tokenizer=None, val_fraction=None,
            seed=2357, num_proc=None, bos=False, bb=None):
    """Build <out_dir>/<name>/ (a DATASETS name, or any name with files=[...]) and return its path. bos: a BOS before
    every document (a DATASETS name becomes <name>_bos); bb: bb's options, {key: value} of BB_DEFAULTS' keys."""
    if name == "bb" and files is None and (bos or tokenizer == "gpt2"):
        raise ValueError("bb has its own character vocabulary and a BOS already: drop --bos and --tokenizer")
    if bos and files is None and not name.endswith(BOS_SUFFIX):
        name += BOS_SUFFIX
    bos = bos or (files is None and name.endswith(BOS_SUFFIX))
    if files is None and name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, "
                         "or prepare local files with --text FILE [FILE ...] --name NAME")
    if not name or Path(name).name != name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"dataset name {name!r} must be a plain directory name (not starting with '.'), e.g. "
                         "--name mycorpus")
    if not 0 <= seed < 2**32:
        raise ValueError(f"--seed={seed} is out of range: the shuffle seed must be in [0, 2**32)")
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
        check_distinct(files)
    if tokenizer is None:
        tokenizer = "char" if name.removesuffix(BOS_SUFFIX) in ("shakespeare_char", "bb") and files is None else "gpt2"
    if val_fraction is None:
        val_fraction = 0.0005 if name.startswith("openwebtext") and files is None else 0.1
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    num_proc = num_proc or min(8, os.cpu_count() or 1)
    if bb and name != "bb":
        raise ValueError(f"--{', --'.join(bb)} only apply to the bb dataset")
    if name == "bb":
        bb = BB_DEFAULTS | (bb or {})
        for key, value in bb.items():
            if type(value) is not int or value < (2 if key == "seq_len" else 1):
                raise ValueError(f"--{key} must be an integer >= {2 if key == 'seq_len' else 1}, got {value}")
        bb |= {"seed": seed, "val_fraction": val_fraction}

    final = Path(out_dir) / name
    try:
        return _prepare(final, force, files, tokenizer, val_fraction, seed, num_proc, bos, bb)
    except Interrupted:
        raise
    except KeyboardInterrupt:  # before anything was built
        raise Interrupted(f"interrupted; nothing was written to {final}: run the command again") from None


def check_distinct(files):
    """A file given twice (under any path, or a copy) would put each of its val documents into train too."""
    seen = {}
    for f in files:
        with open(f, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest in seen:
            same = "is the same file as" if os.path.samefile(f, seen[digest]) else "has the same contents as"
            raise ValueError(f"{f} {same} {seen[digest]}: a document in both would be in train and in val; give "
                             "each file once")
        seen[digest] = f


def _prepare(final, force, files, tokenizer, val_fraction, seed, num_proc, bos, bb):
    name = final.name
    if final.parent.is_dir():
        _clean_stale(final)
    had_data = is_prepared(final)
    # what prepared_with records: what the data is a function of (the built-in texts are not shuffled: no seed)
    asked = {"text": [str(f.resolve()) for f in files] if files else None, "tokenizer": tokenizer,
             "val_fraction": val_fraction, "seed": None if files is None and name in OFFLINE_DATASETS else seed,
             "bos": bos, "bb": bb}
    if had_data and not force:
        built = load_meta(final).get("build", {})
        if bb is not None and built != bb:
            differ = ", ".join(f"{k}={built.get(k)}" for k in bb if built.get(k) != bb[k])
            raise ValueError(f"{final} was built with {differ}: rebuild it with --force (runs trained on the old data "
                             f"cannot be resumed on the new), or use --out_dir elsewhere")
        made = json.loads((final / "meta.json").read_text()).get("prepared_with")
        if made and made != asked:
            raise ValueError(f"{final} was prepared with other settings ({describe_difference(made, asked)}): add "
                             "--force to rebuild it (runs trained on the old data will refuse the new), or use "
                             "another --name")
        print(f"already prepared: {final} (use --force to rebuild)")
        return final
    if files is not None:
        check_text_files(files)
    tmp = final.with_name(f"{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if name == "bb":
            meta = _build_bigram_backcopy(tmp, bb)
        elif files is None and name in OFFLINE_DATASETS:
            meta = _build_shakespeare(tmp, tokenizer, val_fraction, bos)
        else:
            meta = _build_documents(tmp, files, tokenizer, val_fraction, seed, num_proc, bos)
        meta["dtype"] = np.dtype(_dtype(meta["vocab_size"])).name
        meta["prepared_with"] = asked
        meta["fingerprint"] = data_fingerprint(tmp, tokenizer_identity(meta))
        for path in tmp.iterdir():  # on disk before meta.json can say they are complete (_clean_stale trusts it)
            fsync(path)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: it marks the dir complete
        fsync(tmp / "meta.json")
        fsync(tmp)  # its entries: the rename below moves the directory, not what is in it
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):
            kept = (f"{final} is as it was (the unfinished rebuild was removed)" if had_data else
                    f"nothing was written to {final} (the unfinished build was removed)")
            raise Interrupted(f"interrupted; {kept}: run the command again") from None
        raise
    # swap in: the old data is deleted only once the new is complete and in place; Ctrl-C waits for the renames
    old = final.with_name(f"{name}.old-{os.getpid()}")
    try:
        with _deferred_interrupt():
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            fsync(final.parent)  # the renames themselves
        shutil.rmtree(old, ignore_errors=True)
    except KeyboardInterrupt:
        shutil.rmtree(old, ignore_errors=True)
        raise Interrupted(f"interrupted after {final} was complete and in place: it is ready to use") from None
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
    p.add_argument("--seed", type=int, default=2357, help="train/val shuffle seed for document datasets; bb's sampling")
    p.add_argument("--bos", action="store_true", help="a BOS token before every document (written to <name>_bos)")
    for key, default in BB_DEFAULTS.items():
        p.add_argument(f"--{key}", type=int, help=f"bb only: {BB_HELP[key]} (default {default})")
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
                val_fraction=args.val_fraction, seed=args.seed, num_proc=args.num_proc, bos=args.bos,
                bb={k: getattr(args, k) for k in BB_DEFAULTS if getattr(args, k) is not None} or None)
    except PREPARE_ERRORS as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:
        print(str(e) if isinstance(e, Interrupted) else "interrupted: run the command again", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
