# The quick CPU study: ./run_study.sh config/study_cpu.py trains every registered normalizer x seeds 0, 1, 2 (the
# study's defaults) on char-level Tiny Shakespeare and writes study/study_cpu/report.md, in under 15 minutes on 2 cores.
# The model of config/shakespeare_char/cpu.py (4 layers x 128 wide, block 64, batch 12) with a short, hotter
# schedule: 1000 iterations at lr 2e-3 reach val loss ~2.0 (unigram level: ~3.3), against ~2.13 at lr 1e-3.
from config.shakespeare_char.cpu import *

max_iters = 1000
lr_decay_iters = 1000
learning_rate = 2e-3
warmup_iters = 50
eval_interval = 200  # 6 evals: the statistics' curves over training (train.py logs model_stats at each)
eval_iters = 20
log_interval = 100
