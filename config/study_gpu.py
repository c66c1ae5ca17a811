# The GPU study: ./run_study.sh config/study_gpu.py trains every registered normalizer x seeds 0, 1, 2 at nanoGPT's
# GPU Shakespeare size (config/shakespeare_char/base.py: 6 layers x 384 wide, block 256, batch 64, dropout 0.2) and
# writes study/study_gpu/report.md, built to finish in one 10-minute command on one H100/H200.
# The estimate (not measured yet): nanoGPT runs this model's 5000 iterations in ~3 min on an A100, ~36 ms/iter; an
# H100/H200 is ~1.5-2x faster. One run uses a fraction of such a GPU, so all 12 runs train at once (study_jobs) at
# an aggregate ~2-3x one run's throughput: 12 x 2500 iterations x ~20 ms / ~2.5 = ~4 min, plus ~1 min of
# torch.compile, evaluation (exact val perplexity, quantization) and the report. Hence half of nanoGPT's schedule,
# 2500 iterations, with the cosine decay ending there.
# With more GPUs the runs are spread round robin; lower study_jobs if memory or time says so.
from config.shakespeare_char.base import *

max_iters = 2500
lr_decay_iters = 2500
eval_interval = 500  # 6 evals with the statistics (train.py's log_stats): the curves over training
eval_iters = 100
log_interval = 50
study_seeds = [0, 1, 2]
study_jobs = 12  # every run of the study on the GPU at once (12 with 4 normalizers)
