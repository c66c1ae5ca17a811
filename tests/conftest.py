import os
import sys
from pathlib import Path

# Tests never touch the network or an experiment tracker.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
# Without a GPU, Triton kernels run in Triton's CPU interpreter; the variable must be set before the kernels
# are defined. On a GPU machine they run compiled, as users run them.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---- shared fixtures of test_train.py / test_sample.py (appended) ----
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def char_data_root(tmp_path_factory):
    """One prepared char-level Tiny Shakespeare per session, as <root>/shakespeare_char. train.py reads
    data/<dataset> relative to its working directory: helpers.workdir() links <workdir>/data to this root."""
    import prepare_data
    root = tmp_path_factory.mktemp("data")
    prepare_data.prepare("shakespeare_char", out_dir=root)
    return root


@pytest.fixture(scope="session")
def tiny_char_run(char_data_root, tmp_path_factory):
    """A tiny char model trained for 30 iterations (checkpoint at 30): out_dir with ckpt.pt and metrics.jsonl."""
    from helpers import TINY, run_train, workdir
    wd = workdir(tmp_path_factory.mktemp("tiny_run"), char_data_root)
    run_train(wd, [*TINY, "--max_iters=30", "--eval_interval=30", "--out_dir=out"])
    return wd / "out"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A directory with data/shakespeare_char whose val split is cut to 1000 tokens, for studies run there
    (test_study.py, test_slurm.py): exact perplexity over all of it takes a moment."""
    import json

    import prepare_data
    root = tmp_path_factory.mktemp("work")
    data = prepare_data.prepare("shakespeare_char", out_dir=root / "data")
    (data / "val.bin").write_bytes((data / "val.bin").read_bytes()[:2 * 1000])  # uint16
    (data / "meta.json").write_text(json.dumps({**prepare_data.load_meta(data), "val_tokens": 1000}))
    return root
