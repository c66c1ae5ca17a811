"""The sink testbed: the Bigram-Backcopy data against its definition, BOS-aligned windows, the sink statistics on
hand-computed cases, and a softmax model that grows a sink on the task.

Oracles: the bigram table, the triggers and the Bayes-optimal predictor are recomputed here from the raw text
(collections.Counter), independently of bigram_backcopy.py; scipy's chi-square test; planted attention weights,
norms and logits whose statistics are worked out by hand."""
import collections
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

import prepare_data
import train
from analysis.perplexity import bos_windows, evaluate_perplexity
from analysis.stats import attention_stats, copy_accuracy, first_token_ratio, model_stats
from helpers import REPO, run_train, split_and_straight_runs, workdir
from model import BLOCKS, GPT, GPTConfig

SEQ_LEN, SEQUENCES = 64, 3000


@pytest.fixture(scope="module")
def bb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bb_data")
    prepare_data.prepare("bb", out_dir=root, bb={"seq_len": SEQ_LEN, "sequences": SEQUENCES})
    return root


@pytest.fixture(scope="module")
def bb(bb_root):
    data, meta = prepare_data.load_prepared(bb_root / "bb")
    return {split: np.asarray(tokens, dtype=np.int64).reshape(-1, SEQ_LEN + 1) for split, tokens in data.items()}, meta


@pytest.fixture(scope="module")
def table():
    """The task's parameters, counted here from the raw text: chars (with BOS), bigram P, start u, triggers."""
    text = (REPO / "data" / "raw" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    counts = collections.Counter(text)
    chars = sorted(set(text) | {"\x02"})
    ids = {c: i for i, c in enumerate(chars)}
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    triggers = {ids[c] for c, _ in top}
    pairs = collections.Counter(zip(text, text[1:]))
    V = len(chars)
    P = np.zeros((V, V))
    for (a, b), n in pairs.items():
        P[ids[a], ids[b]] = n
    P /= np.maximum(P.sum(1, keepdims=True), 1)
    u = np.array([counts.get(c, 0) if ids[c] not in triggers else 0 for c in chars], dtype=float)
    return {"chars": "".join(chars), "P": P, "u": u / u.sum(), "triggers": triggers, "bos": ids["\x02"]}


def test_bb_meta_names_bos_and_the_most_frequent_characters_as_triggers(bb, table):
    _, meta = bb
    assert meta["chars"] == table["chars"] and meta["bos_id"] == table["bos"] == 0
    assert set(meta["triggers"]) == table["triggers"]
    assert [meta["chars"][i] for i in meta["triggers"]] == [" ", "e", "t"]  # Tiny Shakespeare's top 3
    assert meta["bos_required"] and meta["sequence_length"] == SEQ_LEN + 1
    assert len(meta["bayes_loss_by_position"]) == SEQ_LEN


def test_bb_sequences_follow_the_definition(bb, table):
    (data, _) = bb
    for x in data.values():
        assert (x[:, 0] == table["bos"]).all() and (x[:, 1:] != table["bos"]).all()  # BOS first, and only there
        is_trigger = np.isin(x, list(table["triggers"]))
        assert not is_trigger[:, 1].any()  # x_1 has a token before it that is not BOS... to copy
        after = is_trigger[:, 1:-1]  # every trigger (but the last token) is followed by the token before it
        assert after.sum() > 0.2 * after.size
        assert (x[:, 2:][after] == x[:, :-2][after]).all()
        assert not (is_trigger[:, 1:] & is_trigger[:, :-1]).any()  # never two triggers in a row


def test_bb_bigram_steps_match_the_table(bb, table):
    """Chi-square goodness of fit of the transitions out of the five most common non-triggers."""
    x = bb[0]["train"]
    source, target = x[:, 1:-1].ravel(), x[:, 2:].ravel()
    for a in [i for i in np.argsort(-np.bincount(source)) if i not in table["triggers"]][:5]:
        observed = np.bincount(target[source == a], minlength=len(table["chars"]))
        expected = table["P"][a] * observed.sum()
        keep = expected > 5  # chi-square needs expected counts of 5 or more: pool the rest
        obs = np.append(observed[keep], observed[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        obs, exp = obs[exp > 0], exp[exp > 0]
        assert scipy_stats.chisquare(obs, exp).pvalue > 1e-4, table["chars"][a]


def test_bb_first_tokens_follow_the_unigram_of_the_non_triggers(bb, table):
    first = bb[0]["train"][:, 1]
    observed = np.bincount(first, minlength=len(table["chars"]))
    expected = table["u"] * len(first)
    keep = expected > 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert scipy_stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue > 1e-4


def oracle_logprobs(x, table):
    """log p of the Bayes-optimal predictor for every position of windows x (n, T): (n, T, V)."""
    V = len(table["chars"])
    with np.errstate(divide="ignore"):
        logP, logu = np.log(table["P"]), np.log(table["u"])
    out = np.where(np.arange(x.shape[1])[None, :, None] == 0, logu, logP[x])
    copy = np.isin(x, list(table["triggers"])) & (np.arange(x.shape[1]) >= 1)
    onehot = np.full((V,), -np.inf)
    prev = np.roll(x, 1, axis=1)
    out[copy] = onehot
    out[copy, prev[copy]] = 0.0
    return out


def test_bayes_loss_is_the_oracle_predictors_loss_on_val(bb, table):
    """The task's floor in meta.json (from the table and the trigger rate, by the Markov chain) against the loss of
    the oracle predictor, written here, on the val split: within 4 standard errors."""
    (data, meta) = bb
    x = data["val"]
    lp = oracle_logprobs(x[:, :-1], table)
    nll = -np.take_along_axis(lp, x[:, 1:, None], -1)[..., 0]
    assert np.isfinite(nll).all()  # the oracle never calls a token of the data impossible
    for T in (16, SEQ_LEN):
        floor = np.mean(meta["bayes_loss_by_position"][:T])
        sample = nll[:, :T].mean(1)  # sequences are independent
        assert abs(sample.mean() - floor) < 4 * sample.std(ddof=1) / math.sqrt(len(sample)), T
    assert 1.5 < np.mean(meta["bayes_loss_by_position"]) < 1.9  # about the bigram entropy, less the copies


class OracleModel(torch.nn.Module):
    """model(x, targets) -> (logits, mean loss) of the Bayes-optimal predictor of the task, as GPT returns them."""

    def __init__(self, table, mode="oracle"):
        super().__init__()
        self.table, self.mode = table, mode

    def forward(self, x, targets):
        lp = torch.from_numpy(oracle_logprobs(x.numpy(), self.table)).clamp(min=-1e4)
        if self.mode == "repeat":  # after a trigger, predict the trigger itself: never the copy
            lp = torch.full_like(lp, -5.0).scatter_(-1, x[..., None], 0.0)
        return lp, torch.nn.functional.cross_entropy(lp.flatten(0, 1), targets.flatten(), ignore_index=-1)


def test_bos_windowed_perplexity_of_the_oracle_is_the_bayes_loss(bb, table):
    (data, meta) = bb
    tokens = data["val"].ravel()
    T = 32
    starts = prepare_data.bos_starts(tokens, meta["bos_id"], T)
    assert (starts == np.arange(len(data["val"])) * (SEQ_LEN + 1)).all()
    result = evaluate_perplexity(OracleModel(table), tokens, T, 64, "cpu", starts=starts, progress=False,
                                 triggers=meta["triggers"])
    assert result["tokens"] == len(starts) * T  # each sequence's first T predictions, once
    assert result["copy_acc"] == 1.0 and result["copy_loss"] == pytest.approx(0.0, abs=1e-9)
    floor = np.mean(meta["bayes_loss_by_position"][:T])
    assert result["loss"] == pytest.approx(floor, abs=0.03)
    wrong = evaluate_perplexity(OracleModel(table, "repeat"), tokens, T, 64, "cpu", starts=starts, progress=False,
                                triggers=meta["triggers"])
    assert wrong["copy_acc"] == 0.0


def test_bos_windows_score_each_document_up_to_the_next_start():
    begins, first, last, T = bos_windows([0, 3, 10, 12], 30, 8)
    assert list(begins) == [0, 3, 10, 12] and list(first) == [0] * 4 and T == 8
    assert list(last) == [3, 7, 2, 8]  # the last window: min(T, 29 - 12)


def test_bos_starts_are_the_bos_positions_a_whole_window_fits_after():
    tokens = np.array([0, 5, 5, 0, 5, 5, 5, 0, 5, 0])
    assert list(prepare_data.bos_starts(tokens, 0, 3)) == [0, 3]  # 7 + 3 + 1 > 10
    assert list(prepare_data.bos_starts(tokens, 0, 2)) == [0, 3, 7]


# ---- the statistics, on planted cases ----------------------------------------------------------------------


def test_attention_stats_split_active_and_dormant_queries():
    T = 4
    p = torch.zeros(1, 1, T, T)
    p[0, 0, 0, 0] = 1.0
    p[0, 0, 1] = torch.tensor([0.9, 0.1, 0, 0])  # dormant: on BOS
    p[0, 0, 2] = torch.tensor([0.0, 1.0, 0, 0])  # active: copies token 1
    p[0, 0, 3] = torch.tensor([0.5, 0.2, 0.1, 0])  # dormant, 0.2 unspent (quiet)
    active = torch.tensor([[False, False, True, False]])
    s = attention_stats(p, active)
    assert s["attn_sink"].item() == pytest.approx((0.9 + 0.0 + 0.5) / 3)
    assert s["attn_sink_dormant"].item() == pytest.approx((0.9 + 0.5) / 2)
    assert s["attn_sink_active"].item() == pytest.approx(0.0)
    assert s["attn_quiet_dormant"].item() == pytest.approx(0.2 / 2)
    assert s["attn_quiet_active"].item() == pytest.approx(0.0)


def test_first_token_ratio_and_copy_accuracy_on_planted_cases():
    norms = torch.tensor([[10.0, 1.0, 2.0, 3.0], [4.0, 2.0, 2.0, 8.0]])  # medians 2 and 2 (torch: the lower)
    assert first_token_ratio(norms).item() == pytest.approx((10 / 2 + 4 / 2) / 2)
    tokens = torch.tensor([[0, 7, 2, 7, 2, 9]])  # triggers {2}: at t=2 (copy 7: right) and t=4 (copy 7: wrong)
    logits = torch.zeros(1, 6, 10)
    logits[0, 2, 7] = 1.0
    logits[0, 4, 3] = 1.0
    assert copy_accuracy(logits, tokens, [2]).item() == pytest.approx(0.5)


@pytest.mark.parametrize("T, expect", [(3, 1.0), (8, 0.0)])
def test_sink_rate_of_uniform_attention(T, expect):
    """With q = 0 softmax attends uniformly: query i puts 1/(i+1) on token 0, a mean of (H_T - 1)/(T - 1) over
    queries 1..T-1: 0.417 at T=3 (a sink by the 0.3 threshold), 0.245 at T=8 (none)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, vocab_size=11, n_layer=2, n_head=2, n_embd=8))
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:8] = 0  # the q rows
    s = model_stats(model, torch.randint(11, (3, T)))
    uniform = (sum(1 / k for k in range(1, T + 1)) - 1) / (T - 1)
    assert s["attn_sink/h.0"] == pytest.approx(uniform, abs=1e-6) and s["attn_sink/h.1"] == pytest.approx(uniform,
                                                                                                      abs=1e-6)
    assert s["sink_rate"] == expect


# ---- window_start and the sink itself ----------------------------------------------------------------------


def test_window_start_errors(tmp_path, bb_root, char_data_root):
    wd = workdir(tmp_path, bb_root)
    cfg = train.load_config(["config/sinks.py", "--window_start=random"])
    with pytest.raises(train.ConfigError, match="must start there too"), chdir_to(wd):
        train.load_dataset(cfg)
    wd2 = workdir(tmp_path / "char", char_data_root)
    cfg = train.load_config(["config/sinks.py", "--dataset=shakespeare_char", "--window_start=bos"])
    with pytest.raises(train.ConfigError, match="has no BOS token: prepare one with"), chdir_to(wd2):
        train.load_dataset(cfg)


def chdir_to(path):
    from helpers import chdir
    return chdir(path)


@pytest.mark.parametrize("block", [[], [*(f"--{k}={v}" for k, v in BLOCKS["llama"].items()), "--dropout=0.1",
                                        "--attn_dropout=0.2"]], ids=["gpt2", "llama+dropout"])
def test_bos_windows_start_at_bos_and_resume_bit_identically(tmp_path, bb_root, block):
    """Training windows are drawn among the BOS positions only; a run stopped and resumed equals a straight one, in
    GPT-2's block and in LLaMA's with residual and attention dropout."""
    wd = workdir(tmp_path, bb_root)
    args = [str(REPO / "config/sinks.py"), "--n_embd=16", "--batch_size=4", "--eval_interval=10",
            "--lr_decay_iters=20", "--log_stats=False", "--always_save_checkpoint=True", *block]
    cfg = train.load_config(args)
    with chdir_to(wd):
        data, meta = train.load_dataset(cfg)
    starts = train.window_starts(data, meta, cfg)
    offsets = train.sample_offsets(data["train"], 256, torch.Generator().manual_seed(0), cfg.block_size,
                                   starts["train"])
    assert all(data["train"][o] == meta["bos_id"] for o in offsets) and len(set(offsets)) > 200
    split_and_straight_runs(wd, args, 10, 20)
    # Tiny Shakespeare with a BOS per paragraph may train on random crops, but a run does not switch on resume
    prepare_data.prepare("shakespeare_char", out_dir=bb_root, bos=True)
    char = [*args, "--dataset=shakespeare_char_bos", "--out_dir=char"]
    run_train(wd, [*char, "--max_iters=10", "--window_start=random"])
    with pytest.raises(train.ConfigError, match="windows that start at 'random' positions, not 'bos'"):
        run_train(wd, [*char, "--max_iters=20"])  # auto: bos, the dataset has one


def test_a_softmax_head_grows_a_sink_on_bb(tmp_path, bb_root):
    """The study's settings, one layer and one head: at the queries that need not copy, softmax parks its weight on
    BOS (> 0.3; uniform attention would put 0.06 there), at the triggers it copies, and BOS's value shrinks."""
    wd = workdir(tmp_path, bb_root)
    run_train(wd, [str(REPO / "config/sinks.py"), "--n_head=1", "--max_iters=200", "--lr_decay_iters=200",
                   "--eval_interval=200", "--out_dir=sink"])
    final = [json.loads(line) for line in (wd / "sink/metrics.jsonl").read_text().splitlines()][-1]
    assert final["iter"] == 200
    assert final["attn_sink_dormant/h.0"] > 0.3 and final["sink_rate"] == 1.0
    assert final["attn_sink_active/h.0"] < 0.1 and final["copy_acc"] > 0.9
    assert final["bos_value_ratio/h.0"] < 0.6


def test_prepare_bb_errors(tmp_path, bb_root):
    """Each a ValueError, which prepare_data.py prints as one error line."""
    with pytest.raises(ValueError, match=r"was built with seq_len=64, sequences=3000: rebuild it with --force"):
        prepare_data.prepare("bb", out_dir=bb_root)  # the defaults differ from the fixture's options
    with pytest.raises(ValueError, match=r"--triggers only apply to the bb dataset"):
        prepare_data.prepare("shakespeare_char", out_dir=tmp_path, bb={"triggers": 2})
    with pytest.raises(ValueError, match=r"--seq_len must be an integer >= 2, got 1"):
        prepare_data.prepare("bb", out_dir=tmp_path, bb={"seq_len": 1})
    with pytest.raises(ValueError, match=r"bb has its own character vocabulary and a BOS already"):
        prepare_data.prepare("bb", out_dir=tmp_path, bos=True)
    text = tmp_path / "a.txt"
    text.write_text("one\x02two\n\nthree\n")
    with pytest.raises(ValueError, match=r"the documents contain '\\x02', the char tokenizer's BOS"):
        prepare_data.prepare("mine", out_dir=tmp_path, files=[text], tokenizer="char", bos=True, num_proc=1)


def test_bos_documents_start_with_bos(tmp_path):
    """--bos on local files: every document starts with BOS (GPT-2: <|endoftext|> first instead of last)."""
    text = tmp_path / "a.jsonl"
    text.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(20)))
    for tokenizer in ("char", "gpt2"):
        path = prepare_data.prepare(f"docs_{tokenizer}", out_dir=tmp_path, files=[text], tokenizer=tokenizer,
                                    bos=True, num_proc=1)
        data, meta = prepare_data.load_prepared(path)
        encode, decode = prepare_data.load_tokenizer(meta)
        for split in ("train", "val"):
            tokens = np.asarray(data[split])
            starts = np.flatnonzero(tokens == meta["bos_id"])
            assert starts[0] == 0 and len(starts) == (18 if split == "train" else 2)
            docs = np.split(tokens, starts[1:])
            assert all(decode(d[1:]).startswith("document ") for d in docs)
