# The full CPU study: ./run_study.sh config/study_cpu_full.py trains every registered normalizer on the quick study's
# model and schedule (config/study_cpu.py), tunes the learning rate per normalizer, and trains 3 seeds at each one's
# choice. Stage 1: every normalizer x learning rate on seed 0 (12 runs with 4 normalizers); stage 2: seeds 1, 2 at
# the chosen rate (8 runs): about 20 runs' worth, ~20 min on 2 cores by the quick study's ~1 min per run and core.
# The grid spans 4x around the quick study's 2e-3 (tuned on softmax only); a choice at its edge is flagged in the
# report, then widen it here. The optimizer: AdamW (train.py's default). Comparing optimizers per normalizer is one
# more sweep entry, "optimizer": ["adamw", "muon"] (the study picks per normalizer the better one; for the optimizer
# as a control on every normalizer, run this study once per optimizer with --optimizer=... and --name).
from config.study_cpu import *

study_seeds = [0, 1, 2]
study_sweep = {"learning_rate": [1e-3, 2e-3, 4e-3]}
