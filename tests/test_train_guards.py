"""train.py refuses what would silently give wrong results, and stops in one line that says what happened:
a checkpoint of another dataset or tokenizer, non-finite settings, a run_training.sh user error (caught before
torchrun, never retried), Ctrl-C, an allocation that cannot fit. Also the optimizer as a setting (Muon)."""
import math
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import model
import prepare_data
import train
from helpers import REPO, TINY, read_metrics, run_train, split_and_straight_runs, subprocess_env, workdir


def prepare_variant(root, name, transform):
    """A char dataset from Tiny Shakespeare's text passed through transform, as root/name."""
    text = transform((REPO / "data" / "raw" / "tinyshakespeare.txt").read_text())
    src = root.parent / f"{name}.txt"
    src.write_text(text)
    prepare_data.prepare(name, out_dir=root, files=[src], tokenizer="char")
    return root / name


@pytest.fixture(scope="module")
def variants(tmp_path_factory, char_data_root):
    """Two 65-character corpora beside shakespeare_char: the same character table (swapped case), and another
    table ('z' becomes 'é')."""
    root = tmp_path_factory.mktemp("variants") / "data"
    root.mkdir()
    (root / "shakespeare_char").symlink_to(char_data_root / "shakespeare_char", target_is_directory=True)
    prepare_variant(root, "swapcase65", str.swapcase)
    prepare_variant(root, "greek65", lambda t: t.replace("z", "é"))
    return root


def test_variant_datasets_are_what_the_tests_need(variants):
    metas = {n: prepare_data.load_prepared(variants / n)[1] for n in ("shakespeare_char", "swapcase65", "greek65")}
    assert {m["vocab_size"] for m in metas.values()} == {65}
    assert metas["swapcase65"]["chars"] == metas["shakespeare_char"]["chars"] != metas["greek65"]["chars"]


def test_resume_refuses_another_tokenizer(tmp_path, variants):
    wd = workdir(tmp_path, variants)
    run_train(wd, [*TINY, "--max_iters=4", "--eval_interval=4", "--out_dir=out"])
    before = (wd / "out" / "ckpt.pt").read_bytes()
    with pytest.raises(train.ConfigError, match=r"another tokenizer.*'shakespeare_char'.*'greek65'.*another out_dir"):
        run_train(wd, [*TINY, "--max_iters=8", "--eval_interval=4", "--out_dir=out", "--dataset=greek65",
                       "--finetune_other_dataset=True"])  # no opt-in makes other token ids mean the same
    assert (wd / "out" / "ckpt.pt").read_bytes() == before


def test_resume_refuses_another_dataset_unless_asked(tmp_path, variants):
    wd = workdir(tmp_path, variants)
    run_train(wd, [*TINY, "--max_iters=4", "--eval_interval=4", "--out_dir=out"])
    with pytest.raises(train.ConfigError, match=r"trained on dataset 'shakespeare_char', not 'swapcase65'.*"
                                                r"--finetune_other_dataset=True"):
        run_train(wd, [*TINY, "--max_iters=8", "--eval_interval=4", "--out_dir=out", "--dataset=swapcase65"])
    run_train(wd, [*TINY, "--max_iters=8", "--eval_interval=4", "--out_dir=out", "--dataset=swapcase65",
                   "--finetune_other_dataset=True"])
    resumed = [e for e in read_metrics(wd / "out") if e["event"] == "resume"]
    assert resumed and resumed[0]["iter"] == 4 and resumed[0]["config"]["dataset"] == "swapcase65"
    saved = torch.load(wd / "out" / "ckpt.pt", weights_only=True)
    assert saved["config"]["dataset"] == "swapcase65" and saved["iter_num"] == 8


@pytest.mark.parametrize("setting", ["learning_rate", "grad_clip", "dropout", "symax_eta", "beta2"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_settings_are_refused(tmp_path, setting, value):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(f"{setting} = float('{value}')\n")
    for argv in ([str(cfg_file)], [f"--{setting}={value}"]):
        with pytest.raises(train.ConfigError, match=f"{setting} must be a finite number"):
            train.load_config(argv).validate()


def test_diverging_fresh_run_claims_no_checkpoint(tmp_path, char_data_root):
    wd = workdir(tmp_path, char_data_root)
    with pytest.raises(train.TrainingError) as e:
        run_train(wd, [*TINY, "--learning_rate=1e9", "--decay_lr=False", "--max_iters=40", "--eval_interval=1000",
                       "--max_nonfinite_steps=3", "--out_dir=out"])
    assert "lower learning_rate (1000000000.0 is far too high)" in str(e.value)
    assert "No checkpoint was written" in str(e.value) and "untouched" not in str(e.value)
    assert not (wd / "out" / "ckpt.pt").exists()


@pytest.mark.parametrize("env, args, message", [
    ({"NPROC": "2"}, [], "gradient_accumulation_steps (1) must be a multiple of the number of processes (2)"),
    ({}, ["--n_embd=31"], "n_embd (31) must be divisible by n_head (2)"),
    ({}, ["--device=cuda"], "device=cuda but no CUDA GPU is visible"),
    ({}, ["--block_size=2000000"], "too few for one block of block_size=2000000"),
])
def test_run_training_sh_reports_user_errors_once_before_torchrun(tmp_path, char_data_root, env, args, message):
    if args == ["--device=cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    wd = workdir(tmp_path, char_data_root)  # the script runs from its folder: a copy beside the data
    shutil.copy(REPO / "run_training.sh", wd / "run_training.sh")
    (wd / "train.py").symlink_to(REPO / "train.py")
    r = subprocess.run(["bash", str(wd / "run_training.sh"), *TINY, *args, f"--out_dir={wd / 'out'}"], cwd=wd,
                       env=subprocess_env(MAX_RESTARTS="3", **env), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines == [f"error: {lines[0][7:]}"] and message in lines[0], r.stderr
    assert "torchrun" not in r.stdout + r.stderr and "ChildFailedError" not in r.stderr


def test_mps_without_mps_is_an_error():
    if torch.backends.mps.is_available():
        pytest.skip("this torch has MPS")
    with pytest.raises(train.ConfigError, match="no MPS"):
        train.load_config(["--device=mps"]).validate()


def test_ctrl_c_says_what_was_kept(tmp_path, char_data_root):
    wd = workdir(tmp_path, char_data_root)
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *TINY, "--max_iters=100000",
                             "--eval_interval=5", "--out_dir=out"], cwd=wd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (wd / "out" / "ckpt.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    saved = torch.load(wd / "out" / "ckpt.pt", weights_only=True)["iter_num"]
    assert line.startswith("interrupted at iter ") and f"last checkpoint at iter {saved} " in line, err
    assert "Traceback" not in err and saved % 5 == 0 and saved > 0


def test_out_of_memory_names_the_settings_to_lower(tmp_path, char_data_root, monkeypatch):
    def no_memory(self, idx, targets=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(model.GPT, "forward", no_memory)
    wd = workdir(tmp_path, char_data_root)
    with pytest.raises(train.TrainingError, match=r"out of GPU memory with batch_size=4, block_size=32.*lower "
                                                  r"batch_size \(raise gradient_accumulation_steps"):
        run_train(wd, [*TINY, "--max_iters=3", "--out_dir=out"])


def test_help_lists_every_setting_with_its_default():
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                       timeout=60, env=subprocess_env())
    assert r.returncode == 0 and not r.stderr
    for f in train.dataclasses.fields(train.TrainConfig):
        if f.name != "vocab_size":  # comes from the data
            assert f"--{f.name}=" in r.stdout, f.name
    assert "--learning_rate=0.0006" in r.stdout and "peak learning rate" in r.stdout
    assert "optimizer:" in r.stdout and "normalizer settings:" in r.stdout


def test_vocab_size_is_not_a_setting():
    with pytest.raises(train.ConfigError, match="vocab_size cannot be set.*meta.json"):
        train.load_config(["--vocab_size=100"])


# ----------------------------------------------------------------------------------------------------------
# the optimizer


def tiny_model(**kw):
    torch.manual_seed(0)
    return model.GPT(model.GPTConfig(block_size=8, vocab_size=33, n_layer=2, n_head=2, n_embd=16, bias=True,
                                     attn_norm="symax", symax_learn_eta=True, **kw))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    m = tiny_model()
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", muon_lr=2e-2)
    names = {id(p): n for n, p in m.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    expected_muon = {f"transformer.h.{i}.{w}.weight" for i in range(2)
                     for w in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert muon == expected_muon
    assert adamw == {n for n, _ in m.named_parameters()} - expected_muon
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.log_eta"} <= adamw
    decayed = {names[id(p)] for g in opt.adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert opt.muon.param_groups[0]["lr_scale"] == pytest.approx(20.0)


def newton_schulz_f64(g, steps=5, a=3.4445, b=-4.775, c=2.0315, eps=1e-7):
    """Keller Jordan's quintic Newton–Schulz orthogonalisation, written out in float64."""
    x = np.asarray(g, dtype=np.float64)
    transpose = x.shape[0] > x.shape[1]
    x = x.T if transpose else x
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if transpose else x


def test_first_muon_step_matches_the_algorithm():
    """One step from zero momentum: θ ← θ(1 − lr·wd) − 0.2·√max(A, B)·lr·NS(g + μ(buf − g)), buf = (1 − μ)g."""
    m = tiny_model()
    lr, wd, mu = 2e-2, 0.1, 0.95
    opt = m.configure_optimizers(wd, 1e-3, (0.9, 0.95), "cpu", muon_lr=lr)
    idx = torch.randint(0, 33, (2, 8), generator=torch.Generator().manual_seed(1))
    m(idx, idx)[1].backward()
    w = m.transformer.h[0].mlp.c_fc.weight
    before, g = w.detach().double().numpy().copy(), w.grad.double().numpy()
    opt.step()
    nesterov = g + mu * ((1 - mu) * g - g)
    expected = before * (1 - lr * wd) - 0.2 * math.sqrt(max(w.shape)) * lr * newton_schulz_f64(nesterov)
    step, actual = expected - before, w.detach().double().numpy() - before
    # torch runs Newton–Schulz in bf16, which blurs the smallest singular directions (seen: 13-15% of the update's
    # norm here, against 3e-6 in fp32); a wrong lr scaling (Keller's √max(1, A/B) = 2 here) would be off by 60%.
    assert np.linalg.norm(actual - step) < 0.2 * np.linalg.norm(step)
    assert (actual * step).sum() > 0.95 * np.linalg.norm(actual) * np.linalg.norm(step)  # the same direction


def test_muon_weight_decay_is_decoupled():
    """With a zero gradient the update is 0 and only the decay acts: θ ← θ(1 − lr·wd), exactly."""
    m = tiny_model()
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", muon_lr=2e-2)
    w = m.transformer.h[1].attn.c_attn.weight
    before = w.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(w.detach(), before * (1 - 2e-2 * 0.1), rtol=0, atol=1e-9)


def test_muon_resume_is_bit_identical(tmp_path, char_data_root):
    wd = workdir(tmp_path, char_data_root)
    args = [*TINY, "--optimizer=muon", "--muon_lr=0.01", "--eval_interval=6", "--lr_decay_iters=12"]
    a, _ = split_and_straight_runs(wd, args, 6, 12)
    losses = [[e["loss"] for e in read_metrics(wd / d) if e["event"] == "train" and e["iter"] > 6]
              for d in ("split", "straight")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert set(a["optimizer"]) == {"muon", "adamw"}


def test_muon_under_torchrun_matches_one_process(tmp_path, char_data_root):
    wd = workdir(tmp_path, char_data_root)
    args = [*TINY, "--optimizer=muon", "--gradient_accumulation_steps=2", "--max_iters=4", "--eval_interval=4"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(REPO / "train.py"), *args, "--out_dir=ddp"], cwd=wd, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_train(wd, [*args, "--out_dir=single"])
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        a, b = ([e[key] for e in read_metrics(wd / d) if e["event"] == kind] for d in ("ddp", "single"))
        assert len(a) == len(b) > 0 and a == pytest.approx(b, abs=1e-5)
