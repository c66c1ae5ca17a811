"""No silent wrong results; every bad input ends in one `error:` line (issue 15).

checkpoint.py: a file that is no checkpoint is called that (not "dangerous"); a full disk during a save is one
clear error with the temp file removed and the previous ckpt.pt untouched; checkpoint_iter() reads iter_num.
sample.py: never samples an id of the padded part of the vocabulary; bad --temperature/--device are one line.
prepare_data.py: bad input files are reported with file and line before datasets sees them; Ctrl-C says what was
kept (exit 130); stale <name>.tmp-<pid> dirs are cleaned; load_prepared() is the one check of prepared data;
tokenizer_identity() tells tokenizers apart.

The ids of the parametrized cases are the rows of docs/troubleshooting.md. Nothing here touches the network.
"""
import dataclasses
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import prepare_data
import sample
from checkpoint import CheckpointError, checkpoint_iter, load_checkpoint, save_checkpoint
from helpers import REPO, subprocess_env
from prepare_data import DataError, load_prepared, tokenizer_identity

ENV = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")


def run(args, cwd=None, **env):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env={**ENV, **env}, capture_output=True,
                          text=True, timeout=180)


def one_error_line(r, *words):
    """The process failed with exactly one line on stderr, `error: ...`, holding every one of words."""
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------------------------------------------------
# checkpoint.py: files that are not checkpoints


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_sample_not_a_checkpoint_cli():
    """`python sample.py README.md` used to call the README a dangerous pickle."""
    r = run([REPO / "sample.py", "README.md"], cwd=REPO)
    line = one_error_line(r, "README.md is not a checkpoint", "text file", "out_dir")
    assert "could run code" not in line and "trust" not in line


NOT_CHECKPOINTS = {
    "text": (lambda p: p.write_text("# notes\nnot a checkpoint, café\n", encoding="utf-8"), "a text file"),
    "zip": (lambda p: zipfile.ZipFile(p, "w").writestr("notes/readme.txt", "hi"), "a zip archive that is not a torch"),
    "binary": (lambda p: p.write_bytes(bytes(range(256)) * 8), "binary data that is not a torch file"),
    "empty": (lambda p: p.write_bytes(b""), "an empty file"),
    "plain-pickle": (lambda p: p.write_bytes(pickle.dumps({"iter_num": 3}, protocol=4)), "a Python pickle that torch"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_not_a_checkpoint_is_named_what_it_is(tmp_path, kind):
    make, what = NOT_CHECKPOINTS[kind]
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "ckpt.pt"
    make(path)
    for load in (load_checkpoint, checkpoint_iter):
        with pytest.raises(CheckpointError) as e:
            load(path.parent)
        assert f"{path} is not a checkpoint: it is {what}" in str(e.value)
        assert "could run code" not in str(e.value) and "Fix: move it away" in str(e.value)


@pytest.mark.parametrize("protocol", [4, 5])
def test_code_running_pickle_of_any_protocol_is_still_refused(tmp_path, protocol):
    """torch's unpickler stops at protocol 4's first opcode: the opcodes are scanned (nothing runs) to tell a pickle
    that would run code from plain data."""
    path, marker = tmp_path / "ckpt.pt", tmp_path / "marker"
    path.write_bytes(pickle.dumps({"model": Payload(marker), "iter_num": 0}, protocol=protocol))
    with pytest.raises(CheckpointError, match="could run code when loaded, so it was refused"):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is live
    assert marker.exists()


# ------------------------------------------------------------------------------------------------------------
# checkpoint.py: a full disk during a save


def small_state(it):
    return {"model": {"w": torch.arange(10.0)}, "model_args": {}, "config": {}, "iter_num": it}


def big_state(it):
    return {"model": {"w": torch.zeros(1_000_000), "view": torch.zeros(1)}, "model_args": {}, "config": {},
            "iter_num": it}  # 4.0 MB of tensor data


def failing_save(exc):
    """A torch.save that writes a little, then fails as a write to a full disk does."""
    def save(obj, f, *args, **kwargs):
        f.write(b"PK" + b"\0" * 4094)
        raise exc
    return save


def assert_disk_full_error(e, out_dir):
    msg = str(e)
    assert msg.startswith(f"disk full: saving a checkpoint to {out_dir} needs about ")
    needed = float(re.search(r"needs about ([\d.]+) MB", msg).group(1))
    assert 4.0 <= needed <= 4.2, msg  # the 4,000,000 bytes of tensors, plus a little
    assert f"{out_dir / 'ckpt.pt'} is the previous checkpoint, untouched" in msg
    assert "Free up space there or use another out_dir" in msg


@pytest.mark.parametrize("error", ["oserror-enospc", "torch-runtimeerror"])
def test_full_disk_during_save(tmp_path, monkeypatch, error):
    save_checkpoint(small_state(1), tmp_path)
    before = (tmp_path / "ckpt.pt").read_bytes()
    if error == "oserror-enospc":
        exc = OSError(errno.ENOSPC, "No space left on device")
    else:  # what torch raises when Python's file write fails; the free space says it was the disk
        exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**30, 2**30 - 5000, 5000))
    monkeypatch.setattr(torch, "save", failing_save(exc))
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(big_state(2), tmp_path)
    assert_disk_full_error(e.value, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # the temp file is gone
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_failed_write_with_free_space_is_not_called_disk_full(tmp_path, monkeypatch):
    save_checkpoint(small_state(1), tmp_path)
    before = (tmp_path / "ckpt.pt").read_bytes()
    monkeypatch.setattr(torch, "save", failing_save(RuntimeError("unexpected pos 768 vs 662")))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**40, 2**39, 2**39))
    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        save_checkpoint(big_state(2), tmp_path)
    assert not isinstance(e.value, CheckpointError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert (tmp_path / "ckpt.pt").read_bytes() == before


TMPFS_SAVER = r"""
import hashlib, json, os, sys
sys.path.insert(0, sys.argv[1])
import torch, checkpoint
d = sys.argv[2]
md5 = lambda: hashlib.md5(open(os.path.join(d, "ckpt.pt"), "rb").read()).hexdigest()
checkpoint.save_checkpoint({"model": {"w": torch.zeros(10_000)}, "iter_num": 1}, d)
before, error = md5(), None
try:
    checkpoint.save_checkpoint({"model": {"w": torch.zeros(1_000_000)}, "iter_num": 2}, d)
except checkpoint.CheckpointError as e:
    error = str(e)
except BaseException as e:
    error = f"wrong kind {type(e).__name__}: {e}"
print(json.dumps({"error": error, "files": sorted(os.listdir(d)), "same": md5() == before,
                  "iter": checkpoint.checkpoint_iter(d)}))
"""


def test_full_disk_on_a_real_2mb_tmpfs(tmp_path):
    """The real thing where the machine allows it (root, unshare): a private 2 MB tmpfs, gone when the process is."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs "$1" || exit 77; shift; '
                        'exec "$@"', "sh", str(mnt), sys.executable, "-c", TMPFS_SAVER, str(REPO), str(mnt)],
                       env=ENV, capture_output=True, text=True, timeout=180)
    if r.returncode == 77 or "unshare failed" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["error"].startswith(f"disk full: saving a checkpoint to {mnt} needs about 4.0 MB"), result
    assert "is the previous checkpoint, untouched" in result["error"]
    assert result["files"] == ["ckpt.pt"] and result["same"] and result["iter"] == 1


# ------------------------------------------------------------------------------------------------------------
# checkpoint.py: checkpoint_iter


def test_checkpoint_iter(tmp_path):
    (tmp_path / "run").mkdir()
    save_checkpoint(small_state(42), tmp_path / "run")
    assert checkpoint_iter(tmp_path / "run") == 42 == checkpoint_iter(tmp_path / "run" / "ckpt.pt")
    save_checkpoint(small_state(43), tmp_path / "run", keep_last=2)  # keep_last reads the previous iter with it
    assert checkpoint_iter(tmp_path / "run") == 43 and checkpoint_iter(tmp_path / "run" / "ckpt-00000042.pt") == 42
    # torch's legacy (non-zip) format cannot be memory-mapped: still read
    torch.save(small_state(7), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert checkpoint_iter(tmp_path / "legacy.pt") == 7
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint_iter(tmp_path / "nowhere")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not an attnorm checkpoint \(missing \['iter_num'\]\)"):
        checkpoint_iter(tmp_path / "other.pt")
    data = (tmp_path / "run" / "ckpt.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint_iter(tmp_path / "torn.pt")


# ------------------------------------------------------------------------------------------------------------
# sample.py


@pytest.fixture(scope="module")
def padded_bpe_run(tmp_path_factory):
    """A GPT-2-vocabulary checkpoint (50257 ids padded to 50304 rows, like train.py) whose padding ids get logits
    of 1600 and every real id 0: sampling without the real vocabulary picks a padding id at every step."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16, bias=True)
    m = GPT(cfg)
    with torch.no_grad():
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.fill_(1.0)  # the final hidden state is all ones
        m.lm_head.weight.zero_()
        m.lm_head.weight[50257:] = 100.0  # tied with wte; the prompt never holds padding ids
    out = tmp_path_factory.mktemp("padded_bpe")
    save_checkpoint({"model": m.state_dict(), "model_args": dataclasses.asdict(cfg), "config": {}, "iter_num": 0,
                     "meta": {"tokenizer": "gpt2", "vocab_size": 50257}}, out)
    return out


@pytest.mark.parametrize("top_k", [50304, 10**6, 5])
def test_sample_never_samples_padding_ids(padded_bpe_run, monkeypatch, capsys, top_k):
    seen = []

    def recording_tokenizer(meta):
        encode, decode = prepare_data.load_tokenizer(meta)
        return encode, lambda ids: seen.append(list(ids)) or decode(ids)

    monkeypatch.setattr(sample, "load_tokenizer", recording_tokenizer)
    sample.main([str(padded_bpe_run), "--start=hello", f"--top_k={top_k}", "--temperature=10", "--num_samples=2",
                 "--max_new_tokens=12", "--device=cpu"])
    assert len(seen) == 2 and all(len(ids) == 1 + 12 for ids in seen)
    new = [i for ids in seen for i in ids[1:]]
    assert max(new) < 50257, f"sampled padding ids {sorted(i for i in new if i >= 50257)}"
    assert len(set(new)) > 1  # real ids, uniformly: all their logits are 0
    assert capsys.readouterr().out.count("---------------") == 2


def test_sample_top_k_beyond_vocab_cli(padded_bpe_run):
    """The reported crash: `sample.py out/bpe --top_k=50304 --temperature=10` sampled ids >= 50257 and failed to
    decode them."""
    r = run([REPO / "sample.py", padded_bpe_run, "--top_k=50304", "--temperature=10", "--num_samples=1",
             "--max_new_tokens=8", "--device=cpu"])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.endswith("---------------\n")


NO_CUDA = not torch.cuda.is_available()
SAMPLE_SETTINGS = [
    # (id, arguments, the words of the error)
    ("sample-temperature-nan", ["--temperature=nan"], "--temperature=nan: the temperature must be a finite number > 0"),
    ("sample-temperature-inf", ["--temperature=inf"], "--temperature=inf: the temperature must be a finite number > 0"),
    ("sample-temperature-0", ["--temperature=0"], "--temperature=0.0: the temperature must be a finite number > 0"),
    ("sample-temperature-negative", ["--temperature=-1"], "--temperature=-1.0: the temperature must be a finite"),
    ("sample-cuda-without-gpu", ["--device=cuda"], "--device=cuda but no CUDA GPU is visible: use --device=cpu"),
    ("sample-bad-device", ["--device=tpu"], "--device=tpu: use cpu, cuda, cuda:N or mps"),
]


@pytest.mark.parametrize("case", SAMPLE_SETTINGS, ids=[c[0] for c in SAMPLE_SETTINGS])
def test_sample_bad_settings(case, padded_bpe_run):
    name, args, words = case
    if name == "sample-cuda-without-gpu" and not NO_CUDA:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError) as e:
        sample.main([str(padded_bpe_run), "--max_new_tokens=2", *args])
    assert words in str(e.value)


@pytest.mark.parametrize("args", [["--temperature=nan"], ["--device=cuda"]], ids=["nan", "cuda"])
def test_sample_bad_settings_cli_is_one_line(args, padded_bpe_run):
    if args == ["--device=cuda"] and not NO_CUDA:
        pytest.skip("this machine has a GPU")
    one_error_line(run([REPO / "sample.py", padded_bpe_run, *args]), args[0].split("=")[0])


# ------------------------------------------------------------------------------------------------------------
# prepare_data.py: bad input files, reported with file and line before datasets sees them

BAD_TEXT_FILES = [
    # (id, file name, bytes, the words of the error (besides the file's path))
    ("prepare-txt-not-utf8", "book.txt", "hello\nworld café\n\nmore\n".encode("latin-1"),
     ["line 2 (byte offset 15): not UTF-8 text", "iconv"]),
    ("prepare-jsonl-cut-short", "docs.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "c is cut sh',
     ["line 3: not valid JSON", "cut short?", "fix or delete that line"]),
    ("prepare-jsonl-invalid-line", "docs.jsonl", b'{"text": "a"}\n{"text": "b", x}\n{"text": "c"}\n',
     ["line 2: not valid JSON", "column 15"]),
    ("prepare-jsonl-text-not-a-string", "docs.jsonl", b'{"text": "a"}\n\n{"text": 5}\n',
     ['line 3: "text" is a number, not a string', 'every record needs a "text" string']),
    ("prepare-jsonl-text-null", "docs.jsonl", b'{"text": "a"}\n{"text": null}\n', ['line 2: "text" is null']),
    ("prepare-jsonl-no-text", "docs.jsonl", b'{"text": "a"}\n{"body": "b"}\n',
     ["line 2: no 'text' field (found: body)"]),
    ("prepare-jsonl-not-utf8", "docs.jsonl", '{"text": "a"}\n{"text": "café"}\n'.encode("latin-1"),
     ["line 2 (byte offset 27): not UTF-8 text"]),
    ("prepare-json-array-no-text", "docs.json", b'[{"text": "a"},\n {"txt": "b"}]', ["array item 2: no 'text' field"]),
    ("prepare-json-invalid", "docs.json", b'[{"text": "a"},\n {"text": "b"]', ["line 2, column 14: not valid JSON"]),
    ("prepare-parquet-damaged", "docs.parquet", b"PAR1 not really parquet", ["not a readable parquet file"]),
]


@pytest.mark.parametrize("case", BAD_TEXT_FILES, ids=[c[0] for c in BAD_TEXT_FILES])
def test_prepare_bad_text_file(case, tmp_path):
    name, filename, content, words = case
    f = tmp_path / filename
    f.write_bytes(content)
    r = run([REPO / "prepare_data.py", "--text", f, "--name", "x", "--out_dir", tmp_path / "data"],
            HF_DATASETS_CACHE=str(tmp_path / "hf_cache"))
    one_error_line(r, f"error: {f}", *words)
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


def test_good_files_pass_the_check(tmp_path):
    """The check must not reject what datasets reads: blank lines, CRLF, a BOM, no final newline, a JSON array,
    other fields of mixed types, UTF-8 split across the check's read chunks."""
    good = {"a.jsonl": '\ufeff{"text": "a", "id": 1}\r\n\n{"text": "b", "id": "x"}\r\n   \n{"text": "c"}',
            "b.json": '[{"text": "a"}, {"text": "b"}]', "c.txt": "ü" * 40 + "\n\nplain\n",
            "d.json": json.dumps([{"text": "a"}, {"text": "b"}], indent=2),  # an array over several lines
            "e.json": json.dumps({"text": "one document", "id": 1}, indent=2)}
    files = []
    for name, text in good.items():
        files.append(tmp_path / name)
        files[-1].write_text(text, encoding="utf-8")
    old_chunk = prepare_data._CHUNK
    try:
        prepare_data._CHUNK = 7  # odd: the two-byte ü is split between reads
        prepare_data.check_text_files(files)
    finally:
        prepare_data._CHUNK = old_chunk


# ------------------------------------------------------------------------------------------------------------
# prepare_data.py: Ctrl-C and leftovers of killed runs

CTRL_C = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import prepare_data

def build(tmp, *settings):  # _build_shakespeare's signature
    (tmp / "train.bin").write_bytes(b"half of it")
    os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
    time.sleep(30)

prepare_data._build_shakespeare = build
prepare_data.main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    return prepare_data.prepare("shakespeare_char", tmp_path_factory.mktemp("char"))


@pytest.mark.parametrize("had_data", [False, True], ids=["fresh", "force-over-data"])
def test_prepare_ctrl_c_says_what_was_kept(tmp_path, char_data, had_data):
    out = tmp_path / "data"
    target = out / "shakespeare_char"
    if had_data:
        shutil.copytree(char_data, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()} if had_data else None
    (tmp_path / "ctrl_c.py").write_text(CTRL_C)
    r = run([tmp_path / "ctrl_c.py", REPO, "shakespeare_char", "--out_dir", out, *(["--force"] if had_data else [])])
    assert r.returncode == 130, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    if had_data:
        assert lines[0] == (f"interrupted; {target} is as it was (the unfinished rebuild was removed): "
                            "run the command again")
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    else:
        assert lines[0] == (f"interrupted; nothing was written to {target} (the unfinished build was removed): "
                            "run the command again")
        assert not target.exists()
    assert sorted(p.name for p in out.iterdir()) == (["shakespeare_char"] if had_data else [])


def test_stale_tmp_dirs_of_killed_runs_are_cleaned(tmp_path, char_data):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "data"
        for pid in (dead.pid, alive.pid):
            (out / f"shakespeare_char.tmp-{pid}").mkdir(parents=True)
            (out / f"shakespeare_char.tmp-{pid}" / "train.bin").write_bytes(b"half")
        # killed between the two renames of a --force swap: the previous data is aside, nothing in place
        shutil.copytree(char_data, out / f"shakespeare_char.old-{dead.pid}")
        (out / "other.tmp-1").mkdir()  # not this dataset's: left alone
        prepare_data.prepare("shakespeare_char", out)
        assert sorted(p.name for p in out.iterdir()) == ["other.tmp-1", "shakespeare_char",
                                                         f"shakespeare_char.tmp-{alive.pid}"]  # a run still going
        for f in ("train.bin", "val.bin", "meta.json"):
            assert (out / "shakespeare_char" / f).read_bytes() == (char_data / f).read_bytes()
    finally:
        alive.kill()
        alive.wait()


# ------------------------------------------------------------------------------------------------------------
# prepare_data.load_prepared: train.py's checks of prepared data, in one place


def damaged(d, case):
    meta = json.loads((d / "meta.json").read_text())

    def write_meta(**changes):
        meta.update(changes)
        (d / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))

    if case == "missing":
        shutil.rmtree(d)
    elif case == "meta-not-json":
        (d / "meta.json").write_text((d / "meta.json").read_text()[:-20])
    elif case == "meta-missing-key":
        write_meta(train_tokens=None)
    elif case == "meta-bad-counts":
        write_meta(train_tokens=-1)
    elif case == "meta-float-dtype":
        write_meta(dtype="float32")
    elif case == "meta-vocab-too-big":
        write_meta(vocab_size=70000)
    elif case == "meta-chars-vs-vocab":
        write_meta(chars=meta["chars"][:-1])
    elif case == "train.bin-odd-size":
        (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-1])
    elif case == "val.bin-missing":
        (d / "val.bin").unlink()
    elif case == "token-id-beyond-vocab":
        ids = np.fromfile(d / "val.bin", dtype=np.uint16)
        ids[len(ids) // 2] = 65
        ids.tofile(d / "val.bin")


LOAD_PREPARED = [
    # (damage, block_size, the message as train.py words it; {d} is the dataset dir)
    ("missing", 32, "dataset 'bad' is not prepared (no {d}/meta.json): run python prepare_data.py bad"),
    ("meta-not-json", 32, "{d}/meta.json is damaged (JSONDecodeError: "),
    ("meta-missing-key", 32,
     "{d}/meta.json is damaged (KeyError: 'train_tokens'): re-run python prepare_data.py --text FILE ... --name bad "
     "--out_dir {d.parent} --force (with the files it was built from)"),
    ("meta-bad-counts", 32, "{d}/meta.json: token counts {{'train': -1, 'val': 111540}} are not counts"),
    ("meta-float-dtype", 32, "{d}/meta.json: vocab_size 65 does not fit token dtype float32: re-run"),
    ("meta-vocab-too-big", 32, "{d}/meta.json: vocab_size 70000 does not fit token dtype uint16"),
    ("meta-chars-vs-vocab", 32, "{d}/meta.json lists 64 characters but vocab_size 65"),
    ("train.bin-odd-size", 32, "{d}/train.bin holds 2007707 bytes, but meta.json promises 1003854 uint16 tokens "
                               "(2007708 bytes): the data is incomplete or damaged, re-run python prepare_data.py "
                               "--text FILE ... --name bad"),
    ("val.bin-missing", 32, "{d}/val.bin holds 0 bytes, but meta.json promises 111540 uint16 tokens"),
    ("token-id-beyond-vocab", 32, "{d}/val.bin holds token ids >= vocab_size 65 (meta.json): the data does not match "
                                  "its meta.json, re-run python prepare_data.py --text FILE ... --name bad"),
    ("block_size-beyond-data", 200000, "val split has 111540 tokens, too few for one block of block_size=200000+1: "
                                       "lower block_size or use more data"),
]


@pytest.mark.parametrize("case", LOAD_PREPARED, ids=[c[0] for c in LOAD_PREPARED])
def test_load_prepared_refuses_bad_data(case, tmp_path, char_data):
    damage, block_size, message = case
    d = tmp_path / "bad"
    shutil.copytree(char_data, d)
    damaged(d, damage)
    with pytest.raises(DataError) as e:
        load_prepared(d, block_size)
    assert isinstance(e.value, ValueError)
    assert message.format(d=d) in str(e.value)
    if damage != "block_size-beyond-data":
        assert not prepare_data.is_prepared(d)  # the same checks decide whether to rebuild


def test_load_prepared(char_data):
    data, meta = load_prepared(char_data, block_size=32)
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1_003_854, 111_540)
    assert sorted(data) == ["train", "val"] and isinstance(data["train"], np.memmap)
    assert data["train"].dtype == np.uint16 and (len(data["train"]), len(data["val"])) == (1_003_854, 111_540)
    assert prepare_data.load_tokenizer(meta)[1](data["train"][:13]) == "First Citizen"
    assert prepare_data.is_prepared(char_data)


# ------------------------------------------------------------------------------------------------------------
# prepare_data.tokenizer_identity


def test_tokenizer_identity(char_data, tmp_path):
    meta = prepare_data.load_meta(char_data)
    same = json.loads(json.dumps(meta))
    same["train_tokens"] = 5  # another dataset with the same character table
    other = {**meta, "chars": meta["chars"][:-1] + "~"}  # as many characters, one different: other ids
    assert tokenizer_identity(meta) == tokenizer_identity(same)
    assert tokenizer_identity(meta) != tokenizer_identity(other)
    gpt2 = {"tokenizer": "gpt2", "vocab_size": 50257, "train_tokens": 1}
    assert tokenizer_identity(gpt2) == tokenizer_identity({**gpt2, "train_tokens": 2}) != tokenizer_identity(meta)
    assert tokenizer_identity(gpt2)["encoding"] == "gpt2"
    assert json.loads(json.dumps(tokenizer_identity(meta))) == tokenizer_identity(meta)  # storable in a checkpoint
    with pytest.raises(ValueError, match="unknown tokenizer 'sentencepiece'"):
        tokenizer_identity({"tokenizer": "sentencepiece"})


# ------------------------------------------------------------------------------------------------------------


def test_cases_are_documented():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    ids = [c[0] for c in SAMPLE_SETTINGS + BAD_TEXT_FILES] + [
        "sample-not-a-checkpoint", "sample-top_k-beyond-vocab", "test_full_disk_during_save",
        "test_prepare_ctrl_c_says_what_was_kept", "test_stale_tmp_dirs_of_killed_runs_are_cleaned"]
    missing = [i for i in ids if f"`{i}`" not in doc]
    assert not missing, f"add these to docs/troubleshooting.md: {missing}"
