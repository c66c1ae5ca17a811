"""Every number knows what produced it (issue 22): the data's fingerprint in meta.json, checkpoints, metrics.jsonl and
eval.json; resume, perplexity and quantize refuse a mismatch (other data, other tokenizer, other training settings)
in one line that says what differs and how to go on; a setting given on resume takes effect or is refused; one
training per out_dir. The ids of the tests are rows of docs/troubleshooting.md."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import prepare_data
import train
from analysis import perplexity, quantize
from checkpoint import CheckpointError, load_checkpoint, lock_dir
from configurator import ConfigError
from helpers import REPO, TINY, read_metrics, run_train, subprocess_env, workdir
from prepare_data import DataError, load_prepared

ENV = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
RUN = [*TINY, "--max_iters=2", "--eval_interval=2"]
SMALL = ["--dataset=small"]  # the trained fixture's dataset: small enough to score whole splits in a second


def run(args, cwd=REPO, **env):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env={**ENV, **env}, capture_output=True,
                          text=True, timeout=300)


def one_error_line(r, *words, status=1):
    assert r.returncode == status, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def copy_data(char_data_root, tmp_path):
    """A private copy of data/shakespeare_char (to prepare again without touching the session's)."""
    root = tmp_path / "data"
    shutil.copytree(char_data_root, root, symlinks=False)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A working directory with data/small (the first 20,000 characters of Tiny Shakespeare, char-level, its
    paragraphs as documents) and a 2-iteration run on it in out/."""
    wd = tmp_path_factory.mktemp("trained")
    (wd / "small.txt").write_text((REPO / "data" / "raw" / "tinyshakespeare.txt").read_text()[:20000])
    prepare_data.prepare("small", out_dir=wd / "data", files=[wd / "small.txt"], tokenizer="char")
    run_train(wd, [*RUN, *SMALL, "--out_dir=out"])
    return wd


# ---- the mechanism: the data's fingerprint, carried by checkpoints, metrics and eval.json -------------------


def test_fingerprint_is_the_content_not_the_name(tmp_path, char_data_root):
    """Equal bytes and tokenizer: equal fingerprints, whatever the name or directory; prepared with another
    val_fraction: another fingerprint. Checked against hashlib over the files as the docstring defines it."""
    import hashlib
    meta = load_prepared(char_data_root / "shakespeare_char")[1]
    h = hashlib.sha256(json.dumps({"tokenizer": "char", "chars": meta["chars"]}, sort_keys=True).encode())
    for split in ("train", "val"):
        raw = (char_data_root / "shakespeare_char" / f"{split}.bin").read_bytes()
        h.update(f"{split}:{len(raw)}:".encode() + raw)
    assert meta["fingerprint"] == h.hexdigest()[:16]
    prepare_data.prepare("shakespeare_char", out_dir=tmp_path / "a")
    assert load_prepared(tmp_path / "a" / "shakespeare_char")[1]["fingerprint"] == meta["fingerprint"]
    prepare_data.prepare("shakespeare_char", out_dir=tmp_path / "b", val_fraction=0.3)
    assert load_prepared(tmp_path / "b" / "shakespeare_char")[1]["fingerprint"] != meta["fingerprint"]


def test_data_prepared_before_fingerprints_gets_one_on_load(tmp_path, char_data_root):
    d = copy_data(char_data_root, tmp_path) / "shakespeare_char"
    meta = json.loads((d / "meta.json").read_text())
    expected = meta.pop("fingerprint")
    (d / "meta.json").write_text(json.dumps(meta))
    assert load_prepared(d)[1]["fingerprint"] == expected
    assert json.loads((d / "meta.json").read_text())["fingerprint"] == expected  # kept for the next load


def test_checkpoint_and_metrics_carry_the_data(trained):
    meta = load_prepared(trained / "data" / "small")[1]
    ckpt = load_checkpoint(trained / "out")
    assert ckpt["meta"]["fingerprint"] == meta["fingerprint"]
    start = read_metrics(trained / "out")[0]
    assert start["event"] == "start" and start["data"] == meta["fingerprint"]


def test_eval_json_says_what_produced_each_number(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    data = trained / "data" / "small"
    perplexity.main([str(out), "--data_dir", str(data), "--device", "cpu"])
    perplexity.main([str(out), "--data_dir", str(data), "--device", "cpu", "--split", "train"])
    quantize.main([str(out), "--data_dir", str(data), "--device", "cpu", "--max_tokens", "300", "--calib_batches", "1"])
    ev = json.loads((out / "eval.json").read_text())
    meta, ckpt = load_prepared(data)[1], load_checkpoint(out)
    by = ev["produced_by"]
    assert {by[k]["data"] for k in by} == {meta["fingerprint"]} and {by[k]["iter"] for k in by} == {2}
    assert len({by[k]["run"] for k in by}) == 1
    # the val split's numbers are not relabelled by the train split's (both used to write "tokens" and "bpc")
    assert ev["tokens"] == meta["val_tokens"] - 1 and ev["split"] == "val"
    assert by["perplexity_train"]["tokens"] == meta["train_tokens"] - 1
    assert by["quantize"]["max_tokens"] == 300 and by["quantize"]["calib_batches"] == 1
    assert ckpt["iter_num"] == 2


# ---- resume: the same run, or refused ----------------------------------------------------------------------


@pytest.mark.parametrize("change", ["--weight_decay=0.5", "--beta1=0.8", "--beta2=0.9", "--learning_rate=0.002"])
def test_resume_with_other_training_settings_is_refused(tmp_path, trained, change):
    """Cases 4 and 5: the optimizer kept the saved weight decay and betas while the new ones were logged; a run
    with another learning_rate resumed the finished one in the shared default out_dir."""
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    key = change[2:].split("=")[0]
    with pytest.raises(ConfigError, match=rf"trained with other settings: {key}=.* there, .* now\. A new run: give "
                                          rf"it its own --out_dir\. .*--resume_changes={key}"):
        run_train(trained, [*RUN[:-2], *SMALL, "--max_iters=4", "--eval_interval=2", f"--out_dir={out}", change])


def test_runs_differing_in_learning_rate_do_not_share_the_default_out_dir(tmp_path, char_data_root):
    wd = workdir(tmp_path, char_data_root)
    run_train(wd, [*RUN, "--learning_rate=0.001"])
    (out,) = (wd / "out").iterdir()
    with pytest.raises(ConfigError, match=r"learning_rate=0.001 there, 0.002 now\. A new run: give it its own "
                                          r"--out_dir"):
        run_train(wd, [*RUN, "--learning_rate=0.002"])
    assert load_checkpoint(out)["config"]["learning_rate"] == 0.001


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_changes_take_effect(tmp_path, trained, char_data_root, optimizer):
    """With --resume_changes the new values are the optimizer's (not only the logged config's), the checkpoint
    records the change, and the resume record in metrics.jsonl says what changed."""
    wd = workdir(tmp_path, char_data_root)
    base = [*RUN[:-2], "--eval_interval=2", "--out_dir=out", f"--optimizer={optimizer}"]
    run_train(wd, [*base, "--max_iters=2"])
    changes = ["--weight_decay=0.5", "--beta1=0.8", "--beta2=0.9"] + (["--muon_lr=0.01"] if optimizer == "muon" else [])
    keys = ",".join(c[2:].split("=")[0] for c in changes)
    run_train(wd, [*base, "--max_iters=4", *changes, f"--resume_changes={keys}"])
    ckpt = load_checkpoint(wd / "out")
    states = ckpt["optimizer"].values() if optimizer == "muon" else [ckpt["optimizer"]]
    groups = [g for s in states for g in s["param_groups"]]
    assert {g["weight_decay"] for g in groups} == {0.5, 0.0}  # the decayed groups, and the exempt one
    assert all(g["betas"] == (0.8, 0.9) for g in groups if "betas" in g)
    if optimizer == "muon":  # Muon's peak lr relative to learning_rate: 0.01 / 6e-4 (the CPU preset's)
        assert [g["lr_scale"] for g in ckpt["optimizer"]["muon"]["param_groups"]] == [pytest.approx(0.01 / 1e-3)]
    assert ckpt["changes"] == [{"iter": 2, "settings": {
        "weight_decay": [0.1, 0.5], "beta1": [0.9, 0.8], "beta2": [0.99, 0.9],
        **({"muon_lr": [None, 0.01]} if optimizer == "muon" else {})}}]
    resumed = [e for e in read_metrics(wd / "out") if e["event"] == "resume"]
    assert resumed[0]["changes"] == ckpt["changes"][0]["settings"]


def test_resume_after_a_crash_with_the_same_settings_still_works(tmp_path, trained):
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    run_train(trained, [*RUN[:-2], *SMALL, "--max_iters=4", "--eval_interval=2", f"--out_dir={out}"])
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 4 and ckpt["changes"] == []


def test_resume_switching_optimizer_is_refused(tmp_path, trained):
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    with pytest.raises(ConfigError, match=r"trained with optimizer='adamw'; its optimizer state cannot go on as "
                                          r"optimizer='muon': use another out_dir"):
        run_train(trained, [*RUN, *SMALL, f"--out_dir={out}", "--optimizer=muon", "--resume_changes=learning_rate"])


@pytest.mark.parametrize("missing", ["meta", "data_rng", "optimizer"])
def test_checkpoint_of_older_train_py_or_nanogpt_is_refused_clearly(tmp_path, trained, missing):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = load_checkpoint(trained / "out")
    del ckpt[missing]
    torch.save(ckpt, out / "ckpt.pt")
    with pytest.raises(ConfigError, match=rf"cannot be resumed: it has no {missing} \(a checkpoint of an older "
                                          r"train.py or of nanoGPT\).*use another out_dir"):
        run_train(trained, [*RUN, *SMALL, f"--out_dir={out}"])


def test_resume_on_data_prepared_again_is_refused(tmp_path, char_data_root):
    """Case 2 at its root: data/<dataset> rebuilt with another val_fraction under the same name."""
    wd = tmp_path
    root = copy_data(char_data_root, tmp_path)
    run_train(wd, [*RUN, "--out_dir=out"])
    prepare_data.prepare("shakespeare_char", out_dir=root, force=True, val_fraction=0.3)
    with pytest.raises(ConfigError, match=r"trained on other data than data/shakespeare_char holds now \(fingerprint "
                                          r".* there, .* now \(val_fraction=0.1 there, 0.3 now\)\): it was prepared "
                                          r"again since\. Rebuild it as it was \(python prepare_data.py "
                                          r"shakespeare_char --val_fraction 0.1 --force\)"):
        run_train(wd, [*RUN[:-2], "--max_iters=4", "--eval_interval=2", "--out_dir=out"])
    run_train(wd, [*RUN[:-2], "--max_iters=4", "--eval_interval=2", "--out_dir=out", "--finetune_other_dataset=True"])


def test_two_trainings_in_one_out_dir(tmp_path, trained):
    out = tmp_path / "out"
    out.mkdir()
    with lock_dir(out):  # as a training in another process holds it
        with pytest.raises(CheckpointError, match=rf"another training \(pid {os.getpid()}\) is using out_dir {out}: "
                                                  r"wait for it to end, or give this run another --out_dir"):
            run_train(trained, [*RUN, *SMALL, f"--out_dir={out}"])
    run_train(trained, [*RUN, *SMALL, f"--out_dir={out}"])  # released: trains


def test_two_trainings_in_one_out_dir_cli(tmp_path, trained):
    """A real second process while the first holds the lock."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, checkpoint\nwith checkpoint.lock_dir("
                               "sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(out)],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run([REPO / "train.py", *RUN, *SMALL, f"--out_dir={out}"], cwd=trained)
        one_error_line(r, f"another training (pid {holder.pid}) is using out_dir")
    finally:
        holder.kill()
        holder.wait()


def test_disk_full_while_writing_metrics_leaves_no_torn_record(tmp_path, trained, monkeypatch):
    out = tmp_path / "out"
    real_write, calls = os.write, []

    def full_disk(fd, data):  # the 3rd record: half of it is written, then the disk is full
        calls.append(1)
        if len(calls) == 3:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(train.TrainingError, match=r"cannot write .*metrics.jsonl \(No space left on device\); the "
                                                  r"unfinished record was removed"):
        run_train(trained, [*RUN, *SMALL, f"--out_dir={out}"])
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len([json.loads(line) for line in text.splitlines()]) == 2


def test_a_torn_last_record_is_cut_when_the_log_is_opened(tmp_path, trained):
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 2, "event": "tr')  # a kill in the middle of a write
    run_train(trained, [*RUN[:-2], *SMALL, "--max_iters=3", "--eval_interval=2", f"--out_dir={out}"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["iter"] == 3


def test_checkpoint_that_is_a_directory(tmp_path, trained):
    out = tmp_path / "out"
    (out / "ckpt.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"ckpt.pt is a directory, not a checkpoint file: move it out of the way"):
        run_train(trained, [*RUN, *SMALL, f"--out_dir={out}"])
    r = run([REPO / "sample.py", out])
    one_error_line(r, "ckpt.pt is a directory, not a checkpoint file")


# ---- settings that used to end in a traceback, or in nothing --------------------------------------------------

TRAIN_SETTINGS = [
    ("train-seed-negative", ["--seed=-1"], "seed must be in [0, 2**63 - 2**16), got -1: e.g. --seed=1337"),
    ("train-seed-too-big", [f"--seed={2**64}"], f"seed must be in [0, 2**63 - 2**16), got {2**64}"),
    ("train-empty-dataset", ["--dataset="], "dataset='' is not a dataset name"),
    ("train-dataset-path", ["--dataset=../data"], "dataset='../data' is not a dataset name"),
    ("resume_changes-unknown", ["--resume_changes=learning_rat"], "'learning_rat' is not a setting a resume changes "
                                                                   "(no such setting)"),
    ("resume_changes-model", ["--resume_changes=n_layer"], "'n_layer' is not a setting a resume changes (the model's "
                                                            "settings and optimizer cannot change on resume)"),
]


@pytest.mark.parametrize("case", TRAIN_SETTINGS, ids=[c[0] for c in TRAIN_SETTINGS])
def test_train_settings(case, tmp_path):
    _, args, message = case
    with pytest.raises(ConfigError) as e:
        train.load_config([*TINY, *args]).validate()
    assert message in str(e.value)


CONFIG_FILES = [
    ("config-sys-exit", "import sys\nsys.exit(0)\n", "bad.py, line 2: it calls sys.exit(0). Config files hold plain "
                                                      "assignments"),
    ("config-keyboard-interrupt", "n_layer = 2\nraise KeyboardInterrupt\n", "bad.py, line 2: KeyboardInterrupt"),
]


@pytest.mark.parametrize("case", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_config_that_exits_is_one_error_line(case, tmp_path):
    """sys.exit(0) in a config used to end train.py with status 0, having trained nothing and said nothing."""
    _, text, message = case
    (tmp_path / "bad.py").write_text(text)
    one_error_line(run([REPO / "train.py", tmp_path / "bad.py"]), message)


def test_study_config_given_to_train_py(tmp_path):
    r = run([REPO / "train.py", "config/study_cpu.py"])
    one_error_line(r, "in config/study_cpu.py: config/study_cpu.py is a study config: run ./run_study.sh "
                      "config/study_cpu.py")


# ---- data: what meta.json says must be what the data is -------------------------------------------------------


@pytest.mark.parametrize("tokenizer,message", [
    ("gpt2", "meta.json names tokenizer 'gpt2' (vocab 50257) but vocab_size 65: the data was not tokenized with "
             "GPT-2 BPE"),
    ("bpe", "meta.json names tokenizer 'bpe', which is not one of char, gpt2")], ids=["gpt2-on-char", "bpe"])
def test_meta_tokenizer_that_does_not_match_the_data(tmp_path, char_data_root, tokenizer, message):
    """Case 7: "gpt2" on 65-token char data trained (and sampled garbage); "bpe" trained a whole run."""
    d = copy_data(char_data_root, tmp_path) / "shakespeare_char"
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "tokenizer": tokenizer}))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prepared(d)


def make_docs(tmp_path, n=40):
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(f"document {i} " + "text " * 20 for i in range(n)) + "\n")
    return path


def test_the_same_text_file_twice(tmp_path):
    """Case 8: every val document was in train too."""
    a = make_docs(tmp_path)
    shutil.copy(a, tmp_path / "copy.txt")
    again = tmp_path / ".." / tmp_path.name / "a.txt"
    with pytest.raises(ValueError, match=rf"{again} is the same file as {a}: a document in both would be in train"):
        prepare_data.prepare("x", out_dir=tmp_path / "d", files=[a, again])
    with pytest.raises(ValueError, match="copy.txt has the same contents as .*a.txt"):
        prepare_data.prepare("x", out_dir=tmp_path / "d", files=[a, tmp_path / "copy.txt"])
    assert not (tmp_path / "d").exists()


PREPARE_CASES = [
    ("prepare-name-dotdot", lambda t: ["--text", make_docs(t), "--name", ".."], "dataset name '..' must be a plain "
                                                                                "directory name"),
    ("prepare-seed-negative", lambda t: ["shakespeare_char", "--seed", "-1"], "--seed=-1 is out of range"),
    ("prepare-blank-lines", lambda t: ["--text", blank(t), "--name", "x"], "blank.txt holds only blank lines"),
    ("prepare-parquet-null-text", lambda t: ["--text", null_parquet(t), "--name", "x"],
     'docs.parquet, row 3: "text" is null, not a string'),
]


def blank(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n\t\n\n")
    return tmp_path / "blank.txt"


def null_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a", "b", None, "c"]}), tmp_path / "docs.parquet")
    return tmp_path / "docs.parquet"


@pytest.mark.parametrize("case", PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES])
def test_prepare_bad_input_before_building(case, tmp_path):
    _, args, message = case
    r = run([REPO / "prepare_data.py", *args(tmp_path), "--out_dir", tmp_path / "d"])
    one_error_line(r, message)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_the_suggested_fix_for_a_damaged_text_dataset_works(tmp_path):
    """The message used to suggest `prepare_data.py NAME --force`, which refuses a --text dataset's name."""
    a = make_docs(tmp_path)
    out = tmp_path / "d"
    prepare_data.prepare("mine", out_dir=out, files=[a], val_fraction=0.2, seed=7)
    before = (out / "mine" / "train.bin").read_bytes()
    (out / "mine" / "train.bin").write_bytes(before[:-2])
    with pytest.raises(DataError) as e:
        load_prepared(out / "mine")
    fix = str(e.value).split("re-run ", 1)[1]
    assert fix == (f"python prepare_data.py --text {a.resolve()} --name mine --tokenizer gpt2 --val_fraction 0.2 "
                   f"--seed 7 --out_dir {out} --force")
    r = subprocess.run([sys.executable, *fix.split()[1:]], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "mine" / "train.bin").read_bytes() == before


def test_prepare_again_with_other_settings_needs_force(tmp_path):
    prepare_data.prepare("shakespeare_char", out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"prepared with other settings \(val_fraction=0.1 there, 0.3 now\): add "
                                         r"--force to rebuild it"):
        prepare_data.prepare("shakespeare_char", out_dir=tmp_path, val_fraction=0.3)


# ---- perplexity, quantize and sample: the run's own data, checked before any compute ---------------------------


def other_table(tmp_path, trained):
    """The run's data under a reversed character table: same vocab size, other tokenizer."""
    d = tmp_path / "small"
    shutil.copytree(trained / "data" / "small", d)
    meta = json.loads((d / "meta.json").read_text())
    meta["chars"] = meta["chars"][::-1]
    del meta["fingerprint"]
    (d / "meta.json").write_text(json.dumps(meta))
    return d


@pytest.mark.parametrize("tool", ["perplexity", "quantize"])
def test_scoring_with_another_character_table_is_refused(tmp_path, trained, tool):
    """Case 6: same vocab size, other character table: it scored the wrong tokenization and overwrote val_ppl."""
    d = other_table(tmp_path, trained)
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    r = run(["-m", f"analysis.{tool}", out, "--data_dir", d, "--device", "cpu"])
    one_error_line(r, f"{d} has another tokenizer (char, ", "than the checkpoint was trained with")
    assert not (out / "eval.json").exists()


def test_scoring_on_data_prepared_again_is_refused(tmp_path, trained):
    root = tmp_path / "data"
    prepare_data.prepare("small", out_dir=root, files=[trained / "small.txt"], tokenizer="char", val_fraction=0.3)
    r = run(["-m", "analysis.perplexity", trained / "out", "--data_dir", root / "small", "--device", "cpu"])
    one_error_line(r, "holds other data (fingerprint", "it was prepared again with other settings or files since. "
                   "Point --data_dir at the data the run was trained on, or rebuild it as it was: python "
                   f"prepare_data.py --text {trained / 'small.txt'} --name small --tokenizer char --val_fraction 0.1 "
                   f"--seed 2357 --out_dir {root} --force")


def nan_run(tmp_path, trained):
    out = tmp_path / "nan"
    out.mkdir()
    ckpt = load_checkpoint(trained / "out")
    ckpt["model"]["transformer.wte.weight"][3, 1] = float("nan")
    torch.save(ckpt, out / "ckpt.pt")
    return out


SCORING_CASES = [
    ("perplexity-negative-batch_size", "perplexity", ["--batch_size", "-1"], "--batch_size=-1: give at least 1"),
    ("perplexity-bad-device", "perplexity", ["--device=tpu"], "--device=tpu: use cpu, cuda, cuda:N or mps"),
    ("quantize-bad-device", "quantize", ["--device=tpu"], "--device=tpu: use cpu, cuda, cuda:N or mps"),
    ("quantize-seed-negative", "quantize", ["--seed=-1"], "--seed=-1 is out of range"),
    ("sample-seed-negative", "sample", ["--seed=-1"], "--seed=-1 is out of range"),
    ("sample-temperature-tiny", "sample", ["--temperature=1e-300"], "--temperature=1e-300 is too small: the logits "
                                                                     "divided by it overflow float32"),
    ("sample-nan-model", "sample", ["NAN"], "holds weights that are not finite (NaN/Inf in transformer.wte.weight)"),
    ("quantize-nan-model", "quantize", ["NAN"], "holds weights that are not finite"),
    ("perplexity-damaged-eval-json", "perplexity", ["EVAL"], "eval.json is damaged (JSONDecodeError: "),
]
if not torch.cuda.is_available():
    SCORING_CASES += [("perplexity-cuda-without-gpu", "perplexity", ["--device=cuda"], "no CUDA GPU is visible"),
                      ("quantize-cuda-without-gpu", "quantize", ["--device=cuda"], "no CUDA GPU is visible")]


@pytest.mark.parametrize("case", SCORING_CASES, ids=[c[0] for c in SCORING_CASES])
def test_scoring_and_sampling_settings(case, tmp_path, trained):
    _, tool, args, message = case
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    if args == ["NAN"]:
        out, args = nan_run(tmp_path, trained), []
    if args == ["EVAL"]:
        (out / "eval.json").write_text('{"val_ppl": 3.1, "tok')  # cut short
        args = []
    program = [REPO / "sample.py"] if tool == "sample" else ["-m", f"analysis.{tool}"]
    data = [] if tool == "sample" else ["--data_dir", trained / "data" / "small"]
    device = [] if any(a.startswith("--device") for a in args) else ["--device=cpu"]
    r = run([*program, out, *data, *device, *args, *(["--max_new_tokens=3"] if tool == "sample" else [])])
    one_error_line(r, message)


def test_perplexity_on_a_read_only_run_dir_fails_before_computing(tmp_path, trained):
    """It used to fail after the whole computation. A read-only bind mount (root ignores file modes)."""
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    cmd = [sys.executable, "-m", "analysis.perplexity", str(out), "--data_dir",
           str(trained / "data" / "small"), "--device", "cpu"]
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("root without unshare: cannot make a read-only directory")
        cmd = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$1" "$1" || mount --bind "$1" "$1" && mount -o '
               'remount,bind,ro "$1" "$1" || exit 77; shift; exec "$@"', "sh", str(out), *cmd]
    else:
        out.chmod(0o555)
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    out.chmod(0o755)
    if r.returncode == 77:
        pytest.skip(f"cannot mount read-only here: {r.stderr[-300:]}")
    one_error_line(r, f"cannot write {out}/eval.json (Read-only file system", "copy the run directory somewhere "
                   "writable")
    assert "tok/s" not in r.stderr and "tok/s" not in r.stdout  # no progress bar: nothing was computed


# ---- run_training.sh: the environment ---------------------------------------------------------------------------

ENV_CASES = [
    ("NPROC-0", {"NPROC": "0"}, "NPROC=0 must be an integer >= 1"),
    ("NPROC-abc", {"NPROC": "abc"}, "NPROC=abc must be an integer >= 1"),
    ("NNODES-0", {"NNODES": "0"}, "NNODES=0 must be an integer >= 1"),
    ("NNODES-abc", {"NNODES": "abc"}, "NNODES=abc must be an integer >= 1"),
    ("MAX_RESTARTS-abc", {"MAX_RESTARTS": "abc"}, "MAX_RESTARTS=abc must be an integer >= 0"),
    ("MASTER_PORT-99999", {"MASTER_PORT": "99999"}, "MASTER_PORT=99999 must be an integer >= 1 and <= 65535"),
    ("NODE_RANK-beyond-NNODES", {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "localhost"},
     "NODE_RANK=2 must be an integer >= 0 and <= 1"),
]


@pytest.mark.parametrize("case", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_run_training_sh_environment(case):
    """These used to reach torchrun: a traceback, or (NODE_RANK >= NNODES) a wait for a rendezvous that never
    completes."""
    _, env, message = case
    r = subprocess.run([str(REPO / "run_training.sh"), "config/shakespeare_char/cpu.py"], cwd=REPO,
                       env={**ENV, **env}, capture_output=True, text=True, timeout=60)
    one_error_line(r, message, status=2)


# ---- the study: what it combines is what it says ---------------------------------------------------------------


def study_axes(settings=None, **kw):
    import argparse
    from analysis import study
    args = argparse.Namespace(**{"norms": None, "gates": None, "optimizers": None, "blocks": None, "seeds": None,
                                 "sweep": None, "config": "cfg.py", **kw})
    return study.study_axes(args, settings or {}, train.TrainConfig(), [])


STUDY_AXES = [  # case 1 and the config types: each used to count one run as several, mean a default, or raise
    ("study-seeds-twice", dict(seeds="0,0"), "--seeds 0,0: seed 0 is listed more than once"),
    ("study-seeds-same-number", dict(seeds="0,00,-0"), "--seeds 0,00,-0: seed 0 is listed more than once"),
    ("study-seeds-empty", dict(seeds=""), "--seeds '': an empty value"),
    ("study-seeds-negative", dict(seeds="-1,2"), "--seeds -1,2: seed -1 is out of range"),
    ("study_seeds-an-int", dict(settings={"study_seeds": 3}), "study_seeds = 3 in the config file: study_seeds must "
                                                              "be a list, e.g. study_seeds = [3]"),
    ("study_norms-a-string", dict(settings={"study_norms": "softmax"}), "study_norms = 'softmax' in the config file: "
                                                                        "study_norms must be a list"),
    ("study_sweep-a-value", dict(settings={"study_sweep": {"learning_rate": 1e-3}}), "study_sweep = {'learning_rate': "
                                                                                     "0.001} in cfg.py: write a dict "
                                                                                     "of lists"),
    ("study-norms-empty-value", dict(norms="softmax,,symax"), "--norms 'softmax,,symax': an empty value"),
    ("sweep-empty-value", dict(sweep=["learning_rate=1e-3,,2e-3"]), "--sweep learning_rate=1e-3,,2e-3: write --sweep "
                                                                    "key=a,b,c (no empty values)"),
    ("sweep-key-twice", dict(sweep=["learning_rate=1e-3", "learning_rate=2e-3"]), "--sweep learning_rate is given "
                                                                                   "twice: list all its values in "
                                                                                   "one, e.g. --sweep "
                                                                                   "learning_rate=1e-3,2e-3"),
]


@pytest.mark.parametrize("case", STUDY_AXES, ids=[c[0] for c in STUDY_AXES])
def test_study_axes_refuse_what_would_mislead(case):
    _, kw, message = case
    with pytest.raises(ConfigError) as e:
        study_axes(**kw)
    assert message in str(e.value)


def test_study_refuses_runs_trained_on_data_prepared_again(tmp_path, trained):
    """Case 2: a re-run after the data was rebuilt skipped the finished runs (scored on the old data) and trained
    the rest on the new, then averaged them."""
    from analysis import study
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "out", run_dir)
    ckpt = load_checkpoint(run_dir)
    cfg = train.TrainConfig(**{k: v for k, v in ckpt["config"].items() if k != "vocab_size"})
    assert study.changed_settings(run_dir, cfg, ckpt["meta"]["fingerprint"]) == {}
    changed = study.changed_settings(run_dir, cfg, "0123456789abcdef")
    assert changed == {"data/small (prepared again since; its fingerprint)": (ckpt["meta"]["fingerprint"],
                                                                             "0123456789abcdef")}
    message = study.stale_message({study.Run(study.Variant("softmax", "none", "adamw", "softmax"), 0): changed}, tmp_path)
    assert "prepared again since" in message and "--rerun" in message


def test_study_reads_a_checkpoint_from_before_attn_dropout_as_dropouts(tmp_path, trained):
    """A run saved before attn_dropout existed trained its attention with dropout's rate: a study asking for that
    rate (the CPU presets set attn_dropout = dropout = 0) skips it, one asking for another flags it."""
    from analysis import study
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "out", run_dir)
    ckpt = load_checkpoint(run_dir)
    settings = {k: v for k, v in ckpt["config"].items() if k not in ("vocab_size", "attn_dropout", "dropout")}
    torch.save({**ckpt, "config": {**settings, "dropout": 0.1}}, run_dir / "ckpt.pt")
    fingerprint = ckpt["meta"]["fingerprint"]
    assert study.changed_settings(run_dir, train.TrainConfig(**settings, dropout=0.1, attn_dropout=0.1),
                                  fingerprint) == {}
    assert study.changed_settings(run_dir, train.TrainConfig(**settings, dropout=0.1, attn_dropout=0.0),
                                  fingerprint) == {"attn_dropout": (0.1, 0.0)}


def test_study_redoes_evaluations_of_other_settings_or_another_checkpoint(tmp_path, trained):
    """Case 3: a re-run with another --max_tokens kept the old quantization results next to the new ones. An
    evaluation is done only where produced_by names this checkpoint and the settings asked for."""
    from analysis.run_steps import pending_steps
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "out", run_dir)
    data = ["--data_dir", str(trained / "data" / "small"), "--device", "cpu"]
    perplexity.main([str(run_dir), *data])
    quantize.main([str(run_dir), *data, "--max_tokens", "300", "--calib_batches", "1"])
    asked = {"max_tokens": 300, "calib_batches": 1}
    assert pending_steps(run_dir, 2, False, asked) == ["stats"]  # trained with log_stats=False
    assert pending_steps(run_dir, 2, False, {**asked, "max_tokens": 500}) == ["stats", "quantize"]
    # another run's checkpoint at the same iteration (a learning_rate apart) in its place: everything again
    other = tmp_path / "other"
    run_train(trained, [*RUN, *SMALL, f"--out_dir={other}", "--learning_rate=0.002"])
    shutil.copy(other / "ckpt.pt", run_dir / "ckpt.pt")
    assert pending_steps(run_dir, 2, False, asked) == ["perplexity", "stats", "quantize"]


def test_two_studies_with_the_same_name(tmp_path):
    """They trained each run twice at once."""
    study_dir = tmp_path / "studies" / "study_cpu"
    study_dir.mkdir(parents=True)
    with lock_dir(study_dir):
        r = run(["-m", "analysis.study", "config/study_cpu.py", "--study_root", tmp_path / "studies", "--norms",
                 "softmax", "--seeds", "0"])
    one_error_line(r, f"another study (pid {os.getpid()}) is running in {study_dir}: wait for it to end, or give "
                      "this one another --name")


def test_study_calib_batches_0_is_refused_before_training(tmp_path):
    r = run(["-m", "analysis.study", "config/study_cpu.py", "--study_root", tmp_path, "--calib_batches=0"])
    one_error_line(r, "--calib_batches=0 and --max_tokens=", " (or study_max_tokens): the quantization needs at "
                      "least 1 calibration batch")
    assert not (tmp_path / "study_cpu" / "runs").exists()


def test_nan_val_loss_is_not_shown_as_missing():
    """Case 10: a diverged run's NaN looked like 'not evaluated'."""
    from analysis import report
    from analysis.plots import fmt, mean_std_cell
    assert fmt(None) == "–" and fmt(float("nan")) == "NaN"
    assert mean_std_cell([1.0, float("nan")]) == "NaN ± NaN" and mean_std_cell([1.0, None]) == "–"
    assert mean_std_cell([2.0]) == "2 ± –" and mean_std_cell([1.0, 3.0]) == "2 ± 1.4"  # sqrt(2)
    diverged = {"eval": [{"iter": 10, "val_loss": float("nan")}], "eval_json": {}}
    never = {"eval": [], "eval_json": {}}
    assert fmt(report.summary(diverged)["val_loss"]) == "NaN" and fmt(report.summary(never)["val_loss"]) == "–"


def test_cases_are_documented():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    cases = TRAIN_SETTINGS + CONFIG_FILES + PREPARE_CASES + SCORING_CASES + ENV_CASES + STUDY_AXES
    ids = [c[0] for c in cases] + [name for name in globals() if name.startswith("test_") and name not in (
        "test_cases_are_documented", "test_train_settings", "test_config_that_exits_is_one_error_line",
        "test_prepare_bad_input_before_building", "test_scoring_and_sampling_settings",
        "test_run_training_sh_environment", "test_study_axes_refuse_what_would_mislead")]
    missing = [i for i in ids if f"`{i}`" not in doc]
    assert not missing, f"add these to docs/troubleshooting.md: {missing}"
