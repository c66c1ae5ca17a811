# The quick CPU study: ./run_study.sh config/study_cpu.py trains every registered normalizer x seeds 0, 1, 2 (the
# study's defaults) on char-level Tiny Shakespeare and writes study/study_cpu/report.md; built to fit 15 minutes on 2
# cores with 10 normalizers (30 runs, two at a time): the wall time measured is in results/cpu-quick-study/.
# The model of config/shakespeare_char/cpu.py (4 heads x 128 wide, block 64, batch 12) with 3 layers instead of 4 and
# a short, hot schedule of 500 iterations. results/quick-study-setting/ compares candidate settings for it.
from config.shakespeare_char.cpu import *

n_layer = 3
max_iters = 500
lr_decay_iters = 500
learning_rate = 4e-3  # mid-grid in config/study_cpu_full.py's sweep; each normalizer's own: study_settings below
warmup_iters = 50
eval_interval = 100  # 6 evals: the statistics' curves over training (train.py logs model_stats at each)
eval_iters = 10  # train.py's loss estimate; the report's val loss is exact (analysis.perplexity) anyway
log_interval = 50
# Each normalizer's learning rate: its AdamW choice in the sweep of config/study_cpu_full.py (stage 1: seed 0,
# learning_rate 1e-3 ... 3.2e-2, lowest exact val loss; results/cpu-full-study/report.md, 2026-11-23; every choice
# inside the grid).
study_max_tokens = 8192  # val tokens per quantized variant (the default 32768 would cost ~1 of the 15 minutes)
study_settings = {
    "softmax": {"learning_rate": 8e-3},
    "softmax1": {"learning_rate": 8e-3},
    "symax": {"learning_rate": 8e-3},
    "diff": {"learning_rate": 2e-3},
    "sigmoid": {"learning_rate": 4e-3},
    "softpick": {"learning_rate": 2e-3},
    "clipped": {"learning_rate": 2e-3},
    "sink": {"learning_rate": 4e-3},
    "kvbias": {"learning_rate": 8e-3},
    "diff2": {"learning_rate": 8e-3},
}
