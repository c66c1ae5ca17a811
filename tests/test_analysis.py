"""analysis/ against independent references: scipy and numpy for every statistic, closed forms for attention
on hand-built layers and for perplexity, and end to end over two tiny real training runs (report, notebook,
perplexity CLI, torchrun sharding)."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import prepare_data
from analysis import POINTS, read_metrics
from analysis.perplexity import bits_per_char, evaluate_perplexity, windows
from checkpoint import load_model
from analysis.perplexity import main as perplexity_main
from analysis.report import figures, write_report
from analysis.stats import activation_stats, excess_kurtosis, model_stats, pearson_kurtosis
from model import GPT, GPTConfig
from normalizers import NORMALIZERS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--max_iters=20", "--eval_interval=10", "--eval_iters=2", "--n_layer=2", "--n_embd=32", "--n_head=2",
        "--block_size=32", "--batch_size=4", "--always_save_checkpoint=True"]
VAL_TOKENS = 4000


def subprocess_env():
    # One thread per process: the two tiny runs share the CI machine's 2 cores without oversubscribing them.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}



@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A directory laid out like the repo root for train.py: data/shakespeare_char, prepared, with the val
    split cut to its first VAL_TOKENS tokens so that exact perplexity over all of it takes a moment."""
    root = tmp_path_factory.mktemp("work")
    data = prepare_data.prepare("shakespeare_char", out_dir=root / "data")
    (data / "val.bin").write_bytes((data / "val.bin").read_bytes()[:2 * VAL_TOKENS])  # uint16
    meta = prepare_data.load_meta(data)
    (data / "meta.json").write_text(json.dumps({**meta, "val_tokens": VAL_TOKENS}))
    return root


@pytest.fixture(scope="session")
def tiny_runs(workdir):
    """Two 20-iteration runs of train.py (softmax and softmax1, 2x32 model), trained side by side."""
    procs = {norm: subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), str(REPO / "config/shakespeare_char/cpu.py"), *TINY,
         f"--attn_norm={norm}", f"--out_dir=run-{norm}"], cwd=workdir, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for norm in ("softmax", "softmax1")}
    for norm, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"train.py --attn_norm={norm} failed:\n{out}"
    return [workdir / f"run-{norm}" for norm in procs]


# ---- kurtosis and magnitudes against scipy / numpy ----------------------------------------------------------


def test_kurtosis_of_known_distributions():
    rng = np.random.default_rng(0)
    n = 1_000_000
    normal, laplace = rng.standard_normal(n), rng.laplace(size=n)
    for x in (normal, laplace):  # the same number as scipy, not just close to the population value
        assert excess_kurtosis(torch.from_numpy(x)).item() == pytest.approx(scipy.stats.kurtosis(x), rel=1e-9)
        assert pearson_kurtosis(torch.from_numpy(x)).item() == pytest.approx(
            scipy.stats.kurtosis(x, fisher=False), rel=1e-9)
    # Population values 0 and 3. Standard errors at n = 1e6: sqrt(24/n) ≈ 0.005 for the normal, about 0.05
    # for the Laplace (its 8th moment is large); the tolerances are 6 of them.
    assert excess_kurtosis(torch.from_numpy(normal)).item() == pytest.approx(0, abs=0.03)
    assert excess_kurtosis(torch.from_numpy(laplace)).item() == pytest.approx(3, abs=0.3)
    # float32 input (what activations are) agrees too: the moments are taken in float64
    x32 = torch.from_numpy(laplace).float()
    assert excess_kurtosis(x32).item() == pytest.approx(scipy.stats.kurtosis(x32.numpy().astype(np.float64)),
                                                        rel=1e-9)


def test_planted_outlier():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 50, 100)).astype(np.float32)
    x[1, 7, 42] = -50.0
    stats = {k: v.item() for k, v in activation_stats(torch.from_numpy(x)).items()}
    a = np.sort(np.abs(x).ravel())[::-1]
    assert stats["act_absmax"] == 50.0
    assert stats["act_top10"] == a[9] and stats["act_top100"] == a[99]
    assert stats["act_median"] == np.sort(a)[(a.size - 1) // 2]  # the lower median: a value of x, not a mean
    assert stats["act_kurtosis_tensor"] == pytest.approx(scipy.stats.kurtosis(x.ravel().astype(np.float64)))
    assert stats["act_kurtosis_tensor"] > 100  # one 50σ value among 10,000 dominates the fourth moment


def test_constant_tokens_are_left_out_of_the_means():
    """Clipped softmax can zero a head's output: a token of equal values has no kurtosis and is skipped."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 32))
    x[0, 3] = 0.0
    x[1, 9] = 2.5
    x[1, 0] = 0.0
    got = {k: v.item() for k, v in activation_stats(torch.from_numpy(x)).items()}
    keep = np.ones(x.shape[:2], bool)
    keep[0, 3] = keep[1, 9] = keep[1, 0] = False
    assert got["act_kurtosis_token"] == pytest.approx(scipy.stats.kurtosis(x[keep], axis=-1, fisher=False).mean())
    x[1] = 0.0  # a whole sequence of zeros: the per-sample mean is sequence 0's value
    got = {k: v.item() for k, v in activation_stats(torch.from_numpy(x)).items()}
    assert got["act_kurtosis_sample"] == pytest.approx(reference_definitions(x[:1])["act_kurtosis_sample"])


def reference_definitions(x):
    """The three activation kurtosis definitions in numpy, written from their papers' formulas."""
    x = x.astype(np.float64)
    per_sample = [np.mean((s - s.mean()) ** 4) / np.std(s, ddof=1) ** 4 for s in x.reshape(len(x), -1)]
    return {"act_kurtosis_tensor": scipy.stats.kurtosis(x.ravel()),
            "act_kurtosis_sample": np.mean(per_sample),
            "act_kurtosis_token": scipy.stats.kurtosis(x, axis=-1, fisher=False).mean()}


def test_kurtosis_definitions_disagree_where_they_should():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 64, 128))
    massive_token = base.copy()
    massive_token[0, 5] *= 30  # one token with a 30x norm, ordinary across its channels
    scaled_sequences = base * (10.0 ** np.arange(4))[:, None, None]  # every sequence normal, scales differ
    outlier_channel = base.copy()
    outlier_channel[..., 7] += 20  # one channel large in every token
    got = {}
    for name, x in (("massive", massive_token), ("scaled", scaled_sequences), ("channel", outlier_channel)):
        got[name] = {k: v.item() for k, v in activation_stats(torch.from_numpy(x).float()).items()}
        for key, want in reference_definitions(x.astype(np.float32)).items():
            assert got[name][key] == pytest.approx(want, rel=1e-6), (name, key)
    # massive token: the tensor sees it, the per-token view does not (Pearson of 128 normals: ~3 - 6/129)
    assert got["massive"]["act_kurtosis_tensor"] > 20 and got["massive"]["act_kurtosis_token"] < 3.2
    # scales that differ between sequences: only the whole-tensor kurtosis rises (the 1000x sequence holds
    # almost all the variance, so the tensor looks like a quarter of it in a normal: excess ≈ 3·4 - 3 = 9)
    assert got["scaled"]["act_kurtosis_tensor"] > 8
    assert got["scaled"]["act_kurtosis_sample"] == pytest.approx(3, abs=0.1)
    assert got["scaled"]["act_kurtosis_token"] == pytest.approx(3, abs=0.1)
    # outlier channel: each token's 128 values hold one at ~20σ, so per-token Pearson ≈ 128 / (1 + 127/400)²
    assert got["channel"]["act_kurtosis_token"] > 50


def test_weight_kurtosis_equals_scipy_on_a_trained_model(tiny_runs):
    model, _ = load_model(tiny_runs[0], "cpu")
    stats = model_stats(model, torch.zeros(1, 8, dtype=torch.long))
    C = model.config.n_embd
    tensors = {"wte": model.transformer.wte.weight, "wpe": model.transformer.wpe.weight}
    for i, block in enumerate(model.transformer.h):
        for part, w in zip("qkv", block.attn.c_attn.weight.split(C)):
            tensors[f"h.{i}.attn.c_attn.{part}"] = w
        for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            tensors[f"h.{i}.{name}"] = block.get_submodule(name).weight
    assert {k.split("/", 1)[1] for k in stats if k.startswith("weight_kurtosis/")} == set(tensors)
    for name, w in tensors.items():
        want = scipy.stats.kurtosis(w.detach().numpy().ravel().astype(np.float64), fisher=True, bias=True)
        assert stats[f"weight_kurtosis/{name}"] == pytest.approx(want, rel=1e-9, abs=1e-12), name


# ---- attention statistics on hand-built layers --------------------------------------------------------------


def hand_model(attn_norm, score, T):
    """A 1-layer GPT whose attention scores are all `score`: c_attn's weight is 0 and its bias makes every
    query -c·u and every key c·u in each head (u a unit vector), so q·k/√d = -c²/√d = score."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, vocab_size=11, n_layer=1, n_head=2, n_embd=8, bias=True,
                          attn_norm=attn_norm))
    attn, C, d = model.transformer.h[0].attn, 8, 4
    c = math.sqrt(-score * math.sqrt(d))
    with torch.no_grad():
        attn.c_attn.weight.zero_()
        attn.c_attn.bias.zero_()
        attn.c_attn.bias[0:C:d] = -c  # q: the first dimension of every head
        attn.c_attn.bias[C:2 * C:d] = c  # k
    return model


T_HAND = 16
t = np.arange(1, T_HAND)  # the queries the statistics average over; query t sees t + 1 keys


@pytest.mark.parametrize("attn_norm, score, sink_quiet", [  # sink_quiet(λ): per-query weight on token 0, quiet mass
    ("softmax", 0.0, lambda lam: (1 / (t + 1), 0 * t)),  # uniform over the t + 1 visible keys
    ("softmax", -30.0, lambda lam: (1 / (t + 1), 0 * t)),  # equal scores: uniform, however negative
    ("softmax1", 0.0, lambda lam: (1 / (t + 2), 1 / (t + 2))),  # the virtual key's exp(0) takes one share
    ("softmax1", -30.0, lambda lam: (np.exp(-30) / (1 + (t + 1) * np.exp(-30)), 1 / (1 + (t + 1) * np.exp(-30)))),
    ("symax", -2.0, lambda lam: (2 / (1 + 2 * (t + 1)), 1 / (1 + 2 * (t + 1)))),  # |s| / (η + Σ|s|), η = 1
    ("diff", 0.0, lambda lam: ((1 - lam) / (t + 1), lam + 0 * t)),  # A1 - λ·A2 with A1 = A2 uniform
])
def test_attention_stats_closed_form(attn_norm, score, sink_quiet):
    model = hand_model(attn_norm, score, T_HAND)
    model.train()
    stats = model_stats(model, torch.randint(0, 11, (3, T_HAND)))
    assert model.training  # the mode is restored
    lam = model.transformer.h[0].attn.norm_args()["lam"].item() if attn_norm == "diff" else None
    sink, quiet = (np.mean(v) for v in sink_quiet(lam))
    assert stats["attn_sink/h.0"] == pytest.approx(sink, rel=1e-5, abs=1e-7)
    assert stats["attn_quiet/h.0"] == pytest.approx(quiet, rel=1e-5, abs=1e-6)
    # equal scores: every normalizer's |weights|, renormalised, are uniform over the t + 1 keys
    assert stats["attn_entropy/h.0"] == pytest.approx(np.mean(np.log(t + 1)), rel=1e-5)
    n_heads = 1 if attn_norm == "diff" else 2  # diff pairs the 2 heads into one
    assert [stats[f"attn_sink_head/h.0.head{j}"] for j in range(n_heads)] == pytest.approx([sink] * n_heads,
                                                                                           rel=1e-5, abs=1e-7)
    if attn_norm == "softmax1" and score < -10:
        assert stats["attn_quiet/h.0"] > 0.99999  # the head attends to (almost) nothing


@pytest.mark.parametrize("attn_norm", NORMALIZERS)
def test_model_stats_names_every_layer_and_point(attn_norm):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=4, n_embd=32, attn_norm=attn_norm))
    model.eval()
    stats = model_stats(model, torch.randint(0, 65, (4, 32)))
    assert not model.training
    for i in range(2):
        for point in POINTS:
            for stat in ("act_kurtosis_tensor", "act_kurtosis_sample", "act_kurtosis_token", "act_absmax",
                         "act_top10", "act_top100", "act_median"):
                assert f"{stat}/h.{i}.{point}" in stats
        for stat in ("attn_sink", "attn_quiet", "attn_entropy"):
            assert f"{stat}/h.{i}" in stats
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_model_stats_overhead_on_the_cpu_preset(tiny_runs):
    """Prints what model_stats costs at config/shakespeare_char/cpu.py's settings (4x128 model, batch 12 x 64,
    an eval every 250 steps), with no timed assert: machines differ. Also the stats_s train.py recorded."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x = torch.randint(0, 65, (12, 64))

    def best_of_two(fn):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    def train_step():
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ratio is what counts; a thread pool shared with other busy processes spins
    try:
        step_s = best_of_two(train_step)
        stats_s = best_of_two(lambda: model_stats(model, x[:8]))  # train.py's probe: 8 val sequences
    finally:
        torch.set_num_threads(threads)
    share = stats_s / (stats_s + 250 * step_s)
    print(f"\nmodel_stats at the CPU preset (1 thread): {stats_s * 1e3:.0f} ms per eval, a training step "
          f"{step_s * 1e3:.0f} ms: {share:.2%} of the time between evals")
    for run in tiny_runs:
        recorded = [r["stats_s"] for r in read_metrics(run)["eval"]]
        print(f"train.py stats_s in {run.name}: " + ", ".join(f"{s * 1e3:.0f} ms" for s in recorded))
        assert recorded and all(s > 0 for s in recorded)


# ---- perplexity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, block_size, stride", [(100, 32, None), (97, 32, None), (100, 32, 8), (20, 32, None),
                                                    (33, 32, None), (100, 32, 32)])
def test_windows_score_every_token_once(n, block_size, stride):
    begins, n_new, T = windows(n, block_size, stride)
    scored = np.concatenate([np.arange(b + T - k, b + T) + 1 for b, k in zip(begins, n_new)])  # target indices
    assert sorted(scored) == list(range(1, n))
    assert (begins >= 0).all() and (begins + T + 1 <= n).all()
    if stride:  # after the first window, each scored token has at least T - stride tokens of context
        assert all(T - k >= T - stride for k in n_new[1:])


def test_perplexity_of_a_uniform_model_is_the_vocab_size():
    model = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=1, n_head=1, n_embd=8))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero embeddings and lm_head: every logit is 0
    tokens = np.random.default_rng(3).integers(0, 37, 1000).astype(np.uint16)
    result = evaluate_perplexity(model, tokens, 16, 7, "cpu", progress=False)
    assert result["ppl"] == pytest.approx(37, rel=1e-5) and result["tokens"] == 999  # float32 log-softmax


def reference_nll(model, tokens, T, stride):
    """Mean NLL with one explicit window per step: score the targets after `done`, with context back to T."""
    tokens = torch.from_numpy(tokens.astype(np.int64))
    total, done = 0.0, 0  # done: the targets tokens[1..done] are scored
    while done < len(tokens) - 1:
        end = min(done + (stride if done else T), len(tokens) - 1)
        begin = max(0, end - T)
        x = tokens[begin:end][None]
        logits = model(x, torch.zeros_like(x))[0][0]  # targets given: logits at every position
        total += F.cross_entropy(logits[done - begin:], tokens[done + 1:end + 1], reduction="sum").item()
        done = end
    return total / (len(tokens) - 1)


@pytest.mark.parametrize("stride", [None, 5])
def test_perplexity_matches_hand_computed_windows(stride):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=23, n_layer=2, n_head=2, n_embd=16))
    model.train()
    tokens = np.random.default_rng(4).integers(0, 23, 203).astype(np.uint16)
    result = evaluate_perplexity(model, tokens, 16, 4, "cpu", stride=stride, progress=False)
    assert model.training
    with torch.no_grad():
        want = reference_nll(model.eval(), tokens, 16, stride or 16)
    assert result["loss"] == pytest.approx(want, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(want), rel=1e-5)


def test_bits_per_char():
    meta = {"tokenizer": "gpt2"}
    encode, decode = prepare_data.load_tokenizer(meta)
    tokens = np.array(encode("To be, or not to be: that is the question."))
    assert bits_per_char(10.0, tokens, meta) == pytest.approx(10 / math.log(2) / len(decode(tokens[1:])))
    assert bits_per_char(10.0, np.zeros(6), {"tokenizer": "char"}) == pytest.approx(10 / math.log(2) / 5)


def test_perplexity_cli_merges_eval_json(tiny_runs, workdir, monkeypatch, capsys):
    run = tiny_runs[0]
    (run / "eval.json").write_text(json.dumps({"w8a8_ppl": 12.5, "bpc": -1}))  # another tool's key survives
    monkeypatch.chdir(workdir)  # data/<dataset> is found relative to the working directory, as in train.py
    perplexity_main([str(run), "--batch_size", "64"])
    out = json.loads((run / "eval.json").read_text())
    assert json.loads(capsys.readouterr().out).items() <= out.items()  # it prints what it wrote
    val = np.memmap(workdir / "data/shakespeare_char/val.bin", dtype=np.uint16, mode="r")
    model, _ = load_model(run, "cpu")
    want = evaluate_perplexity(model, val, 32, 64, "cpu", progress=False)
    assert out["w8a8_ppl"] == 12.5 and out["split"] == "val" and out["tokens"] == VAL_TOKENS - 1
    assert out["val_loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert out["val_ppl"] == pytest.approx(math.exp(out["val_loss"]))
    assert out["bpc"] == pytest.approx(out["val_loss"] / math.log(2))  # char level: a token is a character


def test_perplexity_sharded_under_torchrun(tiny_runs, workdir):
    run = tiny_runs[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "analysis.perplexity", str(run), "--batch_size", "64", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((run / "eval.json").read_text())
    model, _ = load_model(run, "cpu")
    val = np.memmap(workdir / "data/shakespeare_char/val.bin", dtype=np.uint16, mode="r")
    want = evaluate_perplexity(model, val, 32, 64, "cpu", progress=False)
    assert out["val_loss"] == pytest.approx(want["loss"], rel=1e-6) and out["tokens"] == want["tokens"]


# ---- metrics, report, notebook ------------------------------------------------------------------------------


def test_read_metrics_keeps_the_last_record_after_a_resume(tmp_path):
    config = {"attn_norm": "symax", "seed": 3}
    lines = [{"iter": 0, "event": "start", "config": {**config, "max_iters": 10}},
             *({"iter": i, "event": "train", "loss": 10.0 - i} for i in (1, 2, 3, 4)),
             {"iter": 0, "event": "eval", "val_loss": 9.0}, {"iter": 4, "event": "eval", "val_loss": 7.0}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    text += '{"iter": 5, "event": "tra'  # killed mid-write; the resumed run appends to the same line
    resumed = [{"iter": 2, "event": "resume", "config": {**config, "max_iters": 20}},
               *({"iter": i, "event": "train", "loss": 1.0 * i} for i in (3, 4, 5)),
               {"iter": 4, "event": "eval", "val_loss": 6.5}]
    text += "".join(json.dumps(r) + "\n" for r in resumed)
    (tmp_path / "metrics.jsonl").write_text(text)
    run = read_metrics(tmp_path)
    assert run["config"]["max_iters"] == 20 and run["label"] == "symax s3"
    assert [(r["iter"], r["loss"]) for r in run["train"]] == [(1, 9.0), (2, 8.0), (3, 3.0), (4, 4.0), (5, 5.0)]
    assert [(r["iter"], r["val_loss"]) for r in run["eval"]] == [(0, 9.0), (4, 6.5)]
    assert run["eval_json"] == {}


def test_summary_outlier_ratio_and_sink_max_by_hand(tmp_path):
    from analysis.report import summary
    last = {"iter": 8, "event": "eval", "val_loss": 2.0,
            "act_absmax/h.0.resid": 12.0, "act_median/h.0.resid": 0.5,   # 24
            "act_absmax/h.1.resid": 30.0, "act_median/h.1.resid": 3.0,   # 10
            "act_absmax/h.1.attn_out": 5.0, "act_median/h.1.attn_out": 0.0,  # all-zero median: no ratio
            "attn_sink/h.0": 0.1, "attn_sink/h.1": 0.4}
    lines = [{"iter": 0, "event": "start", "config": {"attn_norm": "softmax", "seed": 0}}, last]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    row = summary(read_metrics(tmp_path))
    assert row["act_ratio_max"] == 24.0 and row["act_absmax_max"] == 30.0
    assert row["attn_sink_max"] == 0.4 and row["attn_sink_mean"] == pytest.approx(0.25)


def test_runs_are_named_and_grouped_by_variant(tmp_path):
    from analysis.report import seeds_table
    dirs = []
    for i, (gate, optimizer, seed, loss) in enumerate([("none", "adamw", 0, 2.0), ("none", "adamw", 1, 2.2),
                                                       ("headwise", "adamw", 0, 3.0), ("headwise", "adamw", 1, 3.4),
                                                       ("none", "muon", 0, 5.0), ("none", "muon", 1, 5.0)]):
        config = {"attn_norm": "softmax", "attn_gate": gate, "optimizer": optimizer, "seed": seed}
        lines = [{"iter": 0, "event": "start", "config": config}, {"iter": 9, "event": "eval", "val_loss": loss}]
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        dirs.append(tmp_path / str(i))
    runs = [read_metrics(d) for d in dirs]
    assert [r["label"] for r in runs] == ["softmax s0", "softmax s1", "softmax+headwise s0", "softmax+headwise s1",
                                          "softmax+muon s0", "softmax+muon s1"]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[2] for line in seeds_table(runs).splitlines()[2:]}
    assert rows == {"softmax": "2.1 ± 0.14", "softmax+headwise": "3.2 ± 0.28", "softmax+muon": "5 ± 0"}


def test_report_over_two_runs(tiny_runs, tmp_path):
    (tiny_runs[0] / "eval.json").write_text(json.dumps({"val_loss": 3.21, "val_ppl": math.exp(3.21), "bpc": 4.6}))
    path = write_report(tiny_runs, tmp_path / "report")
    text = path.read_text()
    assert "softmax s1337" in text and "softmax1 s1337" in text
    assert "| 3.21 |" in text and "4.6" in text  # the exact val loss from eval.json, unstarred
    pngs = [name for name, _, _ in figures([read_metrics(r) for r in tiny_runs])]
    for name in pngs:
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
        assert f"]({name})" in text


def test_report_orders_and_colours_runs_by_the_registry(tmp_path):
    from matplotlib.colors import to_rgba
    from analysis.report import fig_loss, load_runs
    names = list(NORMALIZERS)[::-1]  # the registry's order reversed on the command line
    for name in names:
        records = [{"iter": 0, "event": "start", "config": {"attn_norm": name, "seed": 0}},
                   {"iter": 1, "event": "train", "loss": 3.0}, {"iter": 1, "event": "eval", "val_loss": 3.1}]
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = load_runs([tmp_path / name for name in names])
    assert [run["config"]["attn_norm"] for run in runs] == list(NORMALIZERS)
    lines = fig_loss(runs).axes[0].lines  # a train and a val line per run
    assert [to_rgba(line.get_color()) for line in lines[::2]] == [to_rgba(s.color) for s in NORMALIZERS.values()]
    colours = [to_rgba(s.color) for s in NORMALIZERS.values()]
    assert len(set(colours)) == len(colours)  # one colour per normalizer: no two look alike in a plot


def test_report_cli_out_must_be_given_and_a_directory(tmp_path, capsys):
    from analysis.report import main
    afile = tmp_path / "notes.txt"
    afile.write_text("not a directory")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--out", str(afile)])
    assert str(e.value) == f"error: --out {afile} is a file, not a directory: give a directory for report.md and its plots"
    with pytest.raises(SystemExit) as e:  # no default: a report never lands where the command happens to run
        main([str(tmp_path)])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert afile.read_text() == "not a directory"


def test_notebook_executes(tiny_runs, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    monkeypatch.setenv("ATTNORM_RUN_DIRS", ",".join(map(str, tiny_runs)))
    nb = nbformat.read(REPO / "analysis/kurtosis_curves.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 10
    assert any("softmax1 s1337" in o.get("text", "") for o in outputs)
