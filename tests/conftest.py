import os
import sys
from pathlib import Path

# Tests never touch the network or an experiment tracker.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
# Triton kernels run in Triton's CPU interpreter when there is no GPU; the variable must be set before the
# kernels are defined. It changes nothing on the reference path.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
