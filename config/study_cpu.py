# The quick CPU study: ./run_study.sh config/study_cpu.py trains every registered normalizer x seeds 0, 1, 2 (the
# study's defaults) on char-level Tiny Shakespeare and writes study/study_cpu/report.md; built to fit 15 minutes on 2
# cores with 10 normalizers (30 runs, two at a time): the wall time measured is in results/cpu-quick-study/.
# The model of config/shakespeare_char/cpu.py (4 heads x 128 wide, block 64, batch 12) with 3 layers instead of 4 and
# a short, hot schedule of 500 iterations. results/quick-study-setting/ compares candidate settings for it.
from config.shakespeare_char.cpu import *

n_layer = 3
max_iters = 500
lr_decay_iters = 500
learning_rate = 4e-3  # the middle of config/study_cpu_full.py's sweep; per-normalizer values: study_settings below
warmup_iters = 50
eval_interval = 100  # 6 evals: the statistics' curves over training (train.py logs model_stats at each)
eval_iters = 20
log_interval = 50
