"""prepare_data.py against independent facts: nanoGPT's published Tiny Shakespeare token counts,
GPT-2's known encoding of "hello world", and per-document tiktoken encodes of a local corpus."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never download (also set in conftest.py)
os.environ["HF_DATASETS_OFFLINE"] = "1"

import prepare_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "First document. Hello world!",
    "Second one, with numbers 12345 and 'quotes'.",
    "  leading spaces\nand a newline",
    "Ünïcödé text: naïve café — 東京",
    "a",
    "The <|endoftext|> literal is ordinary text here.",
    "Seventh\n\nwith a blank line inside.",
    "eighth doc",
    "ninth doc, a bit longer than the others so lengths differ " * 3,
    "tenth",
]


def read_bin(d, split):
    meta = json.loads((d / "meta.json").read_text())
    return np.fromfile(d / f"{split}.bin", dtype=meta["dtype"])


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    return prepare_data.prepare("shakespeare_char", tmp_path_factory.mktemp("char"))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return prepare_data.prepare("shakespeare", tmp_path_factory.mktemp("bpe"))


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """DOCS as a local jsonl file; the datasets cache goes to tmp_path, not ~/.cache."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(DOCS)))
    return path


def prepare_docs(files, out_dir, **kw):
    kw.setdefault("num_proc", 1)  # worker processes cost a second each; test_text_jsonl_gpt2 uses 2
    return prepare_data.prepare("docs", out_dir, files=files, **kw)


# --- Tiny Shakespeare -----------------------------------------------------------------------------

def test_shakespeare_char(char_dir):
    meta = prepare_data.load_meta(char_dir)
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("char", 65, "uint16")
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert len(meta["chars"]) == 65 and list(meta["chars"]) == sorted(meta["chars"])
    assert "tinyshakespeare" in meta["source"]
    train, val = read_bin(char_dir, "train"), read_bin(char_dir, "val")
    assert (len(train), len(val)) == (1_003_854, 111_540)
    encode, decode = prepare_data.load_tokenizer(meta)
    assert decode(train[:13]) == "First Citizen"
    text = prepare_data.SHAKESPEARE_TXT.read_text(encoding="utf-8")
    assert decode(train) + decode(val) == text
    assert encode("First Citizen") == train[:13].tolist()


def test_gpt2_encoding():
    enc = prepare_data.gpt2_encoding()
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    encode, decode = prepare_data.load_tokenizer({"tokenizer": "gpt2"})
    assert encode("hello world<|endoftext|>") == [31373, 995, 50256]
    assert decode(np.array([31373, 995], dtype=np.uint16)) == "hello world"


def test_shakespeare_bpe(bpe_dir):
    meta = prepare_data.load_meta(bpe_dir)
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("gpt2", 50257, "uint16")
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)
    train = read_bin(bpe_dir, "train")
    assert len(train) == 301_966 and len(read_bin(bpe_dir, "val")) == 36_059
    assert prepare_data.load_tokenizer(meta)[1](train[:3]) == "First Citizen:"


def test_cli(tmp_path):
    cmd = [sys.executable, str(REPO / "prepare_data.py"), "shakespeare_char", "--out_dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "1,003,854" in out and prepare_data.is_prepared(tmp_path / "shakespeare_char")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "already prepared" in out and "--force" in out
    bad = subprocess.run([*cmd[:2], "nosuchset"], capture_output=True, text=True)
    assert bad.returncode != 0 and "error: unknown dataset 'nosuchset'" in bad.stderr


# --- local files through the datasets (openwebtext) path ----------------------------------------------

def test_text_jsonl_gpt2(corpus, tmp_path):
    d = prepare_docs([corpus], tmp_path / "out", num_proc=2)
    meta = prepare_data.load_meta(d)
    enc = prepare_data.gpt2_encoding()
    expected = [enc.encode_ordinary(t) + [enc.eot_token] for t in DOCS]
    train, val = read_bin(d, "train"), read_bin(d, "val")
    assert meta["train_tokens"] + meta["val_tokens"] == sum(map(len, expected)) == len(train) + len(val)
    assert meta["val_tokens"] > 0 and str(corpus) in meta["source"]

    def split_docs(ids):  # every document ends with EOT, so splitting on it recovers them
        cut = np.flatnonzero(ids == enc.eot_token) + 1
        return [enc.decode(chunk[:-1].tolist()) for chunk in np.split(ids, cut)[:-1]]

    train_docs, val_docs = split_docs(train), split_docs(val)
    assert sorted(train_docs + val_docs) == sorted(DOCS)  # a partition: every doc once, none lost
    assert len(val_docs) == 1  # ceil(0.1 * 10 documents)


def test_text_char_and_txt(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    txt = tmp_path / "book.txt"
    paragraphs = [f"paragraph {i}\nsecond line of {i}" for i in range(10)]
    txt.write_text("\n\n".join(paragraphs) + "\n")
    d = prepare_docs([txt], tmp_path / "out", tokenizer="char")
    meta = prepare_data.load_meta(d)
    assert meta["tokenizer"] == "char" and meta["chars"] == "".join(sorted(set(txt.read_text())))
    _, decode = prepare_data.load_tokenizer(meta)
    text = decode(read_bin(d, "train")) + decode(read_bin(d, "val"))
    # each paragraph is a document followed by a blank line (the last keeps the file's final newline)
    assert sorted(p.strip("\n") for p in text.split("\n\n") if p.strip()) == sorted(paragraphs)


def test_rerun_force_and_interrupt(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    d = prepare_docs([corpus], out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    assert prepare_docs([corpus], out) == d
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == mtimes  # no-op

    corpus.write_text(corpus.read_text() + json.dumps({"text": "an eleventh document"}) + "\n")
    old_meta = prepare_data.load_meta(d)
    new_meta = prepare_data.load_meta(prepare_docs([corpus], out, force=True))
    assert new_meta["train_tokens"] + new_meta["val_tokens"] > old_meta["train_tokens"] + old_meta["val_tokens"]

    # interrupted rebuild (after train.bin is written): the previous complete data stays in place
    write_bin = prepare_data._write_bin

    def interrupted(dset, path, dtype):
        if path.name == "val.bin":
            raise KeyboardInterrupt
        return write_bin(dset, path, dtype)

    monkeypatch.setattr(prepare_data, "_write_bin", interrupted)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        prepare_docs([corpus], out, force=True)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["docs"]  # no temp dirs left

    # interrupted first build: no meta.json, so train.py will not take it
    with pytest.raises(KeyboardInterrupt):
        prepare_data.prepare("fresh", out, files=[corpus], num_proc=1)
    assert not (out / "fresh" / "meta.json").exists()
    assert not prepare_data.is_prepared(out / "fresh")


def test_incomplete_dir_is_rebuilt(char_dir, tmp_path):
    d = tmp_path / "shakespeare_char"
    d.mkdir()
    (d / "meta.json").write_text((char_dir / "meta.json").read_text())
    (d / "train.bin").write_bytes(b"\0\0")  # truncated: sizes do not match meta
    assert not prepare_data.is_prepared(d)
    prepare_data.prepare("shakespeare_char", tmp_path)
    assert prepare_data.is_prepared(d)


# --- errors -------------------------------------------------------------------------------------

def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'tinystories'.*shakespeare_char.*--text"):
        prepare_data.prepare("tinystories", tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        prepare_docs([tmp_path / "nope.jsonl"], tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        prepare_docs([tmp_path / "empty.txt"], tmp_path)
    assert not (tmp_path / "docs").exists()


def test_too_few_documents(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    (tmp_path / "one.jsonl").write_text('{"text": "only one"}\n')
    with pytest.raises(ValueError, match="found 1 document.*at least 2"):
        prepare_docs([tmp_path / "one.jsonl"], tmp_path)


def test_no_text_field(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    (tmp_path / "x.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match="no 'text' field.*body"):
        prepare_docs([tmp_path / "x.jsonl"], tmp_path)


def test_openwebtext_offline_says_what_to_do(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE.*--text"):
        prepare_data.prepare("openwebtext", tmp_path, num_proc=1)
    assert not any(tmp_path.glob("openwebtext*"))
