"""analysis.hellaswag: accuracy by summed and by mean ending loss on hand-made items whose answers are worked out by
hand; the CLI on a real checkpoint against per-token log-probabilities computed one window at a time; the download
(never the network: urlopen is replaced) and the errors."""
import hashlib
import json
import math
import urllib.error

import numpy as np
import pytest
import torch

from analysis import hellaswag
from analysis.perplexity import continuation_logprobs
from checkpoint import save_checkpoint
from model import GPT, GPTConfig

CHARS = " .abcx"
STOI = {c: i for i, c in enumerate(CHARS)}
# A unigram model: every position predicts these probabilities, whatever the context.
PROBS = {" ": 0.1, ".": 0.1, "a": 0.5, "b": 0.1, "c": 0.1, "x": 0.1}


class Unigram(torch.nn.Module):
    def forward(self, idx, targets=None):
        logp = torch.tensor([math.log(PROBS[c]) for c in CHARS])
        return logp.expand(*idx.shape, len(CHARS)), None


def item(endings, label, ctx="x."):
    """An item in HellaSwag's jsonl format (the fields rowanz/hellaswag's data/README.md lists)."""
    return {"ind": 0, "activity_label": "test", "ctx_a": ctx, "ctx_b": "", "ctx": ctx, "split": "val",
            "split_type": "indomain", "label": label, "endings": endings, "source_id": "test"}


# Loss of " " + k a's: ln 10 + k ln 2 over k + 1 tokens; " b" or " c": 2 ln 10 over 2 tokens.
#   1: " a" 3.00 (mean 1.50), " aaaa" 5.08 (1.02), " b" 4.61 (2.30), " bb" 6.91 (2.30)  sum -> 0, mean -> 1
#   2: the same endings, label 1                                                        sum wrong, mean right
#   3: " b" 4.61 (2.30), " c" 4.61 (2.30), " a" 3.00 (1.50), " bc" 6.91 (2.30)          both -> 2, right
#   4: " b", " c", " aa" 3.69 (1.23), " bcb" 9.21 (2.30), label 3                       both -> 2, wrong
#   5: " aaaaaa" 6.46 (0.92), " a" 3.00 (1.50), " b", " c", label 0                     sum -> 1, mean -> 0
#   6: holds "z", outside the vocabulary: skipped
ITEMS = [item(["a", "aaaa", "b", "bb"], 0), item(["a", "aaaa", "b", "bb"], 1),
         item(["b", "c", "a", "bc"], 2), item(["b", "c", "aa", "bcb"], 3), item(["aaaaaa", "a", "b", "c"], 0),
         item(["z", "a", "b", "c"], 1)]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_accuracy_by_sum_and_by_mean_loss_on_hand_made_items(tmp_path):
    encoded, skipped = hellaswag.load_encoded(lambda s: [STOI[c] for c in s], write_jsonl(tmp_path / "h.jsonl", ITEMS))
    assert skipped == 1 and len(encoded) == 5
    for block_size, batch_size in [(64, 32), (3, 1)]:  # whole endings in one window, and in 3-token pieces
        values = hellaswag.score(Unigram(), encoded, skipped, block_size, batch_size, "cpu")
        assert values == {"hellaswag_acc_sum_loss": 2 / 5, "hellaswag_acc_mean_loss": 3 / 5, "hellaswag_items": 5,
                          "hellaswag_skipped": 1}


def test_limit_reads_the_first_items(tmp_path):
    encoded, skipped = hellaswag.load_encoded(lambda s: [STOI[c] for c in s], write_jsonl(tmp_path / "h.jsonl", ITEMS),
                                              limit=2)
    assert (len(encoded), skipped) == (2, 0)
    values = hellaswag.score(Unigram(), encoded, skipped, 64, 8, "cpu")
    assert (values["hellaswag_acc_sum_loss"], values["hellaswag_acc_mean_loss"]) == (1 / 2, 1 / 2)


# ---- a real checkpoint through the CLI ----

VOCAB = "".join(sorted(set("".join(i["ctx"] + " " + " ".join(i["endings"]) for i in ITEMS)) - {"z"})) + "defgh"
BLOCK_SIZE = 4


def long_items():
    """Contexts and endings longer than BLOCK_SIZE, so that every ending is read in several windows."""
    rng = np.random.default_rng(0)
    text = lambda n: "".join(rng.choice(list(VOCAB), n))  # noqa: E731
    return [item([text(int(rng.integers(1, 9))) for _ in range(4)], int(rng.integers(0, 4)), ctx=text(7))
            for _ in range(12)] + ITEMS[-1:]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hellaswag")
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=BLOCK_SIZE, vocab_size=len(VOCAB), n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(100)  # log-probabilities far apart: no near-ties between endings
    meta = {"tokenizer": "char", "vocab_size": len(VOCAB), "chars": VOCAB, "dtype": "uint16"}
    (root / "run").mkdir()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(cfg), "iter_num": 7, "meta": meta,
                     "config": {"dataset": "ignored", "batch_size": 4}}, root / "run")
    return root / "run", model.eval(), write_jsonl(root / "items.jsonl", long_items())


def windowed_logprobs(model, context, ending):
    """Each ending token's log-probability, one forward per token. The ending is read in pieces of BLOCK_SIZE tokens,
    each in the one window of BLOCK_SIZE + 1 tokens that ends where the piece ends: a token is predicted from what
    precedes it in that window."""
    seq = context + ending
    out = []
    for g in range(len(context), len(seq)):
        piece_end = min(len(seq), len(context) + ((g - len(context)) // BLOCK_SIZE + 1) * BLOCK_SIZE)
        logits = model(torch.tensor([seq[max(0, piece_end - 1 - BLOCK_SIZE):g]]))[0][0, -1].double()
        out.append(logits.log_softmax(-1)[seq[g]].item())
    return np.array(out)


def test_cli_on_a_checkpoint_matches_window_by_window_scoring(run):
    out_dir, model, data = run
    hellaswag.main([str(out_dir), "--data", str(data), "--device", "cpu", "--batch_size", "5"])
    result = json.loads((out_dir / "eval.json").read_text())
    encode = {c: i for i, c in enumerate(VOCAB)}.__getitem__
    right_sum = right_mean = 0
    from helpers import torch_threads
    with torch.no_grad(), torch_threads(1):  # hundreds of tiny forwards: threads only contend
        for i in long_items()[:-1]:
            lps = [windowed_logprobs(model, [encode(c) for c in i["ctx"]], [encode(c) for c in " " + e])
                   for e in i["endings"]]
            right_sum += int(np.argmax([lp.sum() for lp in lps]) == i["label"])
            right_mean += int(np.argmax([lp.mean() for lp in lps]) == i["label"])
    by = result.pop("produced_by")["hellaswag"]
    assert result == {"hellaswag_acc_sum_loss": right_sum / 12, "hellaswag_acc_mean_loss": right_mean / 12,
                      "hellaswag_items": 12, "hellaswag_skipped": 1, "iter": 7}
    items = data.read_bytes()  # the file scored, named as git names it
    assert by["data"] == hashlib.sha1(b"blob " + str(len(items)).encode() + b"\0" + items).hexdigest()
    assert by["iter"] == 7 and by["limit"] is None and len(by["run"]) > 0


def test_continuation_logprobs_match_window_by_window(run):
    _, model, _ = run
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, len(VOCAB), c).tolist(), rng.integers(0, len(VOCAB), n).tolist())
             for c, n in [(1, 1), (1, 9), (6, 3), (2, 4), (9, 12)]]
    with torch.no_grad():
        for (lp, greedy), (context, continuation) in zip(continuation_logprobs(model, pairs, BLOCK_SIZE, 3, "cpu"),
                                                          pairs):
            np.testing.assert_allclose(lp, windowed_logprobs(model, context, continuation), rtol=0, atol=1e-5)
            assert len(greedy) == len(continuation)


# ---- the val file: download, checksum, errors ----

@pytest.fixture
def val_file(tmp_path, monkeypatch):
    path = tmp_path / "hellaswag_val.jsonl"
    monkeypatch.setattr(hellaswag, "VAL_FILE", path)
    return path


def test_offline_and_absent_is_one_error_line(val_file, monkeypatch, run):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as e:
        hellaswag.main([str(run[0]), "--device", "cpu"])
    assert str(e.value) == (f"error: HellaSwag's val set is not in {val_file} and cannot be downloaded from "
                            f"{hellaswag.VAL_URL} (Temporary failure in name resolution): download that file where "
                            f"there is network and copy it to {val_file}")
    assert not val_file.exists()


class Response:
    def __init__(self, data):
        self.data = data

    def read(self):
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_is_checked_and_cached(val_file, monkeypatch):
    data = "".join(json.dumps(i) + "\n" for i in ITEMS).encode()
    # The blob id as `git hash-object` computes it, written out by hand: sha1 of "blob <size>\0" + the bytes.
    import hashlib
    blob = hashlib.sha1(f"blob {len(data)}".encode() + b"\x00" + data).hexdigest()
    monkeypatch.setattr(hellaswag, "VAL_GIT_BLOB", blob)
    calls = []
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: calls.append(url) or Response(data))
    assert hellaswag.fetch_val_file() == val_file and val_file.read_bytes() == data
    assert hellaswag.fetch_val_file() == val_file and calls == [hellaswag.VAL_URL]  # cached: downloaded once
    val_file.write_bytes(data[:-10])  # a truncated copy
    with pytest.raises(ValueError, match="is not HellaSwag's val set .* delete it and run again"):
        hellaswag.fetch_val_file()
    val_file.unlink()
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: Response(data[:-10]))
    with pytest.raises(ValueError, match="is not HellaSwag's val set .*try again"):
        hellaswag.fetch_val_file()
    assert not val_file.exists()


def test_the_pinned_blob_id_is_gits():
    # git hash-object of an empty file is e69de29b...; of "hello\n" ce013625...: git's documented ids.
    assert hellaswag.git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert hellaswag.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_a_line_that_is_not_an_item_is_one_error_line(tmp_path, run):
    bad = write_jsonl(tmp_path / "bad.jsonl", ITEMS[:2] + [{"ctx": "x", "endings": ["a", "b"], "label": 0}])
    with pytest.raises(SystemExit) as e:
        hellaswag.main([str(run[0]), "--data", str(bad), "--device", "cpu"])
    assert str(e.value).startswith(f"error: {bad}:3 is not a HellaSwag item")


def test_no_item_in_the_vocabulary_is_one_error_line(tmp_path, run):
    data = write_jsonl(tmp_path / "z.jsonl", ITEMS[-1:])
    with pytest.raises(SystemExit) as e:
        hellaswag.main([str(run[0]), "--data", str(data), "--device", "cpu"])
    assert str(e.value).startswith("error: none of the 1 items can be written in this model's vocabulary")


# ---- during training ----

def test_training_scores_hellaswag_every_hellaswag_interval(char_data_root, tmp_path, monkeypatch):
    from helpers import TINY, read_metrics, run_train, workdir
    data = write_jsonl(tmp_path / "hellaswag_val.jsonl", long_items())
    monkeypatch.setattr(hellaswag, "VAL_FILE", data)
    monkeypatch.setattr(hellaswag, "VAL_GIT_BLOB", hellaswag.git_blob_id(data.read_bytes()))
    wd = workdir(tmp_path / "wd", char_data_root)
    run_train(wd, [*TINY, "--max_iters=4", "--eval_interval=2", "--hellaswag_interval=4",
                   "--always_save_checkpoint=True", "--out_dir=out"])
    evals = [r for r in read_metrics(wd / "out") if r["event"] == "eval"]
    assert [(r["iter"], "hellaswag_items" in r) for r in evals] == [(0, True), (2, False), (4, True)]
    # The last one scored the model the checkpoint holds: the CLI scores it again.
    hellaswag.main([str(wd / "out"), "--data", str(data), "--device", "cpu"])
    result = json.loads((wd / "out" / "eval.json").read_text())
    scores = {k: v for k, v in result.items() if k not in ("iter", "produced_by")}
    assert {k: evals[-1][k] for k in scores} == scores
    assert result["hellaswag_items"] == 13 and result["hellaswag_skipped"] == 0


@pytest.mark.parametrize("interval", [-2, 3])
def test_hellaswag_interval_must_be_a_multiple_of_eval_interval(interval):
    import train
    from configurator import ConfigError
    cfg = train.load_config(["--eval_interval=2", f"--hellaswag_interval={interval}", "--device=cpu"])
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert str(e.value) == f"hellaswag_interval must be 0 (never) or a multiple of eval_interval (2), got {interval}"


# ---- in the study report ----

def test_study_report_tables_downstream_scores_where_runs_have_them(tmp_path):
    """HellaSwag from train.py's eval record or from eval.json (which wins: it scored the final checkpoint), and
    lm-eval's metrics from eval.json, without their stderr and counts; mean ± std over seeds by hand."""
    from analysis import study, study_report
    dirs = {}
    for seed, logged, scored in [(0, 0.25, None), (1, 0.5, 0.75)]:
        run = tmp_path / f"softmax-s{seed}"
        run.mkdir()
        records = [{"iter": 0, "event": "start", "config": {"attn_norm": "softmax", "seed": seed}},
                   {"iter": 10, "event": "eval", "val_loss": 1.0, "hellaswag_acc_mean_loss": logged}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        eval_json = {"lm_eval_arc_easy_acc": 0.5 + seed / 10, "lm_eval_arc_easy_acc_stderr": 0.01,
                     "lm_eval_arc_easy_samples": 100, "lm_eval_limit": None}
        if scored is not None:
            eval_json["hellaswag_acc_mean_loss"] = scored
        (run / "eval.json").write_text(json.dumps(eval_json))
        dirs.setdefault(study.Variant("softmax", "none", "adamw", "softmax"), []).append(run)
    by_variant = study_report.rows_by_variant(dirs)
    metrics = study_report.downstream_metrics(by_variant)
    assert metrics == [("HellaSwag acc (mean loss)", "hellaswag_acc_mean_loss"), ("lm-eval arc_easy_acc",
                                                                                  "lm_eval_arc_easy_acc")]
    # seeds: HellaSwag 0.25 (logged) and 0.75 (eval.json): 0.5 ± 0.354; arc_easy 0.5 and 0.6: 0.55 ± 0.0707
    assert study_report.table(by_variant, metrics).splitlines()[-1] == "| softmax | 2 | 0.5 ± 0.35 | 0.55 ± 0.071 |"
