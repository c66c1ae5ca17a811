"""python -m analysis.perplexity: a --stride outside [1, block_size] ends in one `error:` line that gives the valid
range; the range's ends are accepted."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.perplexity import main as perplexity_main
from checkpoint import save_checkpoint
from model import GPT, GPTConfig

BLOCK_SIZE = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run's out_dir holding a tiny char model's checkpoint, and its dataset (200 val tokens, 100 train)."""
    root = tmp_path_factory.mktemp("ppl")
    data = root / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, 65, 200).astype(np.uint16).tofile(data / "val.bin")
    np.random.default_rng(1).integers(0, 65, 100).astype(np.uint16).tofile(data / "train.bin")
    meta = {"tokenizer": "char", "vocab_size": 65, "chars": "".join(map(chr, range(48, 113))), "dtype": "uint16",
            "train_tokens": 100, "val_tokens": 200}
    (data / "meta.json").write_text(json.dumps(meta))
    (root / "run").mkdir()
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=BLOCK_SIZE, vocab_size=65, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint({"model": GPT(cfg).state_dict(), "model_args": vars(cfg), "iter_num": 3, "meta": meta,
                     "config": {"dataset": "ignored", "batch_size": 4}}, root / "run")
    return root / "run", data


@pytest.mark.parametrize("stride", [1000, BLOCK_SIZE + 1, 0, -5])
def test_stride_out_of_range_is_one_error_line(run, stride):
    out_dir, data = run
    with pytest.raises(SystemExit) as e:
        perplexity_main([str(out_dir), "--data_dir", str(data), "--device", "cpu", f"--stride={stride}"])
    assert str(e.value) == (f"error: --stride={stride} is out of range: it must be in [1, {BLOCK_SIZE}] (1 to the "
                            f"checkpoint's block_size); leave it out to slide by block_size")
    assert not (out_dir / "eval.json").exists()


@pytest.mark.parametrize("stride", [1, BLOCK_SIZE])
def test_stride_at_the_ends_of_the_range_runs(run, stride):
    out_dir, data = run
    perplexity_main([str(out_dir), "--data_dir", str(data), "--device", "cpu", f"--stride={stride}"])
    result = json.loads((out_dir / "eval.json").read_text())
    assert result["stride"] == stride and result["tokens"] == 199 and result["iter"] == 3
    (out_dir / "eval.json").unlink()


def test_stride_error_from_the_command_line(run):
    out_dir, data = run
    proc = subprocess.run([sys.executable, "-m", "analysis.perplexity", str(out_dir), "--data_dir", str(data),
                           "--device", "cpu", "--stride=1000"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: --stride=1000 is out of range: it must be in [1, {BLOCK_SIZE}] "
                                        f"(1 to the checkpoint's block_size); leave it out to slide by block_size"]
