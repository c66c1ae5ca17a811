"""sample.py on tiny checkpoints: a trained char model (conftest.tiny_char_run) and a GPT-2-vocabulary model
saved directly. Greedy sampling (top_k=1) is checked against argmax decoding done by hand and the tokenizer
against known encodings; bad prompts give one clear error line."""
import dataclasses
import subprocess
import sys

import pytest
import torch

import sample
from checkpoint import load_checkpoint, save_checkpoint
from helpers import REPO, subprocess_env
from model import GPT, GPTConfig


def load_model(out_dir):
    ckpt = load_checkpoint(out_dir)
    m = GPT(GPTConfig(**ckpt["model_args"]))
    m.load_state_dict(ckpt["model"])
    return m.eval(), ckpt


def greedy_by_hand(m, ids, n):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids[-m.config.block_size:]])
            logits = m(x, x)[0]  # all positions; take the last by hand
            ids.append(int(logits[0, -1].argmax()))
    return ids


def samples(out):
    """sample.py prints each sample followed by a line of dashes."""
    parts = out.split("\n---------------\n")
    assert parts[-1] == ""
    return parts[:-1]


def test_char_greedy_sample_matches_hand_decoding(tiny_char_run, capsys):
    m, ckpt = load_model(tiny_char_run)
    chars = ckpt["meta"]["chars"]
    prompt = "ROMEO:\nWhat"
    ids = [chars.index(c) for c in prompt]
    expected = "".join(chars[i] for i in greedy_by_hand(m, ids, 40))  # prompt runs past block_size=32
    sample.main([str(tiny_char_run), f"--start={prompt}", "--num_samples=2", "--max_new_tokens=40", "--top_k=1"])
    out = samples(capsys.readouterr().out)
    assert out == [expected, expected]
    assert out[0].startswith(prompt) and len(out[0]) == len(prompt) + 40


def test_char_sampling_is_seeded_and_in_vocab(tiny_char_run, capsys):
    args = [str(tiny_char_run), "--start=A", "--num_samples=3", "--max_new_tokens=30", "--temperature=1.5", "--top_k=65"]
    sample.main(args + ["--seed=1"])
    first = samples(capsys.readouterr().out)
    sample.main(args + ["--seed=1"])
    again = samples(capsys.readouterr().out)
    sample.main(args + ["--seed=2"])
    other = samples(capsys.readouterr().out)
    assert first == again and first != other
    assert len(set(first)) > 1  # three different samples
    chars = set(load_checkpoint(tiny_char_run)["meta"]["chars"])
    for s in first + other:
        assert s[0] == "A" and len(s) == 31 and set(s) <= chars


def test_start_from_file(tiny_char_run, tmp_path, capsys):
    f = tmp_path / "prompt.txt"
    f.write_text("KING:\n", encoding="utf-8")
    sample.main([str(tiny_char_run), f"--start=FILE:{f}", "--num_samples=1", "--max_new_tokens=5", "--top_k=1"])
    out = samples(capsys.readouterr().out)
    m, ckpt = load_model(tiny_char_run)
    chars = ckpt["meta"]["chars"]
    assert out == ["".join(chars[i] for i in greedy_by_hand(m, [chars.index(c) for c in "KING:\n"], 5))]


def test_prompt_errors(tiny_char_run, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        sample.main([str(tiny_char_run), f"--start=FILE:{tmp_path / 'missing.txt'}"])
    with pytest.raises(ValueError, match=r"'€' which is not in this model's vocabulary"):
        sample.main([str(tiny_char_run), "--start=price: €"])
    with pytest.raises(ValueError, match="empty"):
        sample.main([str(tiny_char_run), "--start="])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        sample.main([str(tiny_char_run), f"--start=FILE:{tmp_path / 'latin1.txt'}"])


def test_cli_errors_are_one_line(tiny_char_run, tmp_path):
    for args, message in (([str(tiny_char_run), "--start=€"], "not in this model's vocabulary"),
                          ([str(tmp_path / "no_run")], "no checkpoint at")):
        r = subprocess.run([sys.executable, str(REPO / "sample.py"), *args], env=subprocess_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and message in r.stderr
        assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A GPT-2-vocabulary checkpoint written directly (random weights, vocab padded to 50304 like train.py)."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16, attn_norm="softmax1")
    m = GPT(cfg)
    with torch.no_grad():
        m.transformer.ln_f.weight.fill_(5.0)  # spread the logits: the greedy path is not a tie
        m.lm_head.weight[50257:] = -1.0  # padding ids must never be produced
    out = tmp_path_factory.mktemp("bpe_run")
    save_checkpoint({"model": m.state_dict(), "model_args": dataclasses.asdict(cfg), "config": {}, "iter_num": 0,
                     "meta": {"tokenizer": "gpt2", "vocab_size": 50257}}, out)
    return out


def test_bpe_greedy_sample(bpe_run, capsys):
    m, _ = load_model(bpe_run)
    # GPT-2's encoding of "hello world" is [31373, 995] (r50k_base)
    expected_ids = greedy_by_hand(m, [31373, 995], 8)
    sample.main([str(bpe_run), "--start=hello world", "--num_samples=1", "--max_new_tokens=8", "--top_k=1"])
    out = samples(capsys.readouterr().out)
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(str(REPO / "data" / "raw" / "gpt2.tiktoken"))
    inv = {rank: token for token, rank in ranks.items()}
    assert all(i < 50257 for i in expected_ids)
    expected = b"".join(inv[i] for i in expected_ids).decode("utf-8", errors="replace")
    assert out == [expected] and out[0].startswith("hello world")


def test_sample_from_a_checkpoint_file_path(bpe_run, capsys):
    sample.main([str(bpe_run / "ckpt.pt"), "--start=hello", "--num_samples=1", "--max_new_tokens=2", "--top_k=1"])
    assert samples(capsys.readouterr().out)[0].startswith("hello")


def test_checkpoint_trained_with_fused_attention_samples_on_cpu(tiny_char_run, tmp_path):
    """A run trained with attn_impl=fused (symax's Triton kernel, CUDA only) must still sample on a CPU: sample.py
    picks the attention path for its own device. Subprocess without TRITON_INTERPRET, like a user's shell."""
    meta = load_checkpoint(tiny_char_run)["meta"]
    cfg = GPTConfig(block_size=16, vocab_size=len(meta["chars"]), n_layer=1, n_head=2, n_embd=16, attn_norm="symax",
                    attn_impl="fused")
    torch.manual_seed(0)
    save_checkpoint({"model": GPT(cfg).state_dict(), "model_args": dataclasses.asdict(cfg), "config": {},
                     "iter_num": 0, "meta": meta}, tmp_path)
    env = subprocess_env()
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), str(tmp_path), "--start=AB", "--num_samples=1",
                        "--max_new_tokens=4", "--device=cpu"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout.split("\n---------------\n")[0]
    assert text.startswith("AB") and len(text) == 6 and set(text) <= set(meta["chars"])
