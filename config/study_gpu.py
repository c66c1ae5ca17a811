# The GPU study: ./run_study.sh config/study_gpu.py trains every registered normalizer x seeds 0, 1, 2 at nanoGPT's
# GPU Shakespeare size (config/shakespeare_char/base.py: 6 layers x 384 wide, block 256, batch 64, dropout 0.2, attention dropout 0) and
# writes study/study_gpu/report.md. With the registry of 10 normalizers: 30 runs, on one H100/H200.
# Estimates, not measured: nanoGPT runs this model's 5000 iterations in ~3 min on an A100, ~36 ms/iter; an H100/H200
# is ~1.5-2x faster, ~20 ms/iter. One run uses a fraction of such a GPU, so runs share it (study_jobs at a time) at an
# aggregate ~2-3x one run's throughput: 30 x 1500 iterations x ~20 ms / ~2.5 = ~6 min, plus torch.compile,
# evaluation (exact val perplexity, quantization) and the report: built to fit one 10-minute command. A study that is
# cut off resumes where it stopped when run again (finished runs are skipped, the others resume from their last
# checkpoint, every eval_interval). 30% of nanoGPT's schedule, 1500 iterations, with the cosine decay ending there.
# study_jobs = 15: two waves of 15 runs; all 30 at once would need 30 CUDA contexts and activations (estimated a few
# GiB each: more than an 80 GB H100 may hold); on an H200 (141 GB), --jobs 30 may fit. With more GPUs the runs are
# spread round robin; lower study_jobs if memory or time says so.
from config.shakespeare_char.base import *

max_iters = 1500
lr_decay_iters = 1500
eval_interval = 300  # 6 evals with the statistics (train.py's log_stats): the curves over training
eval_iters = 100
log_interval = 50
study_seeds = [0, 1, 2]
study_jobs = 15  # half of the 30 runs at a time (see above)
