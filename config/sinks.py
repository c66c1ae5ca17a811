# The sink testbed: a one-layer model on the Bigram-Backcopy task (prepare_data.py bb; bigram_backcopy.py, Guo et al.
# 2024), where a softmax head grows an attention sink on BOS within the first 200 iterations on a CPU.
#   ./run_training.sh config/sinks.py --attn_norm=softmax1        (about a minute on one core)
# config/study_sinks.py trains every normalizer with it.
from config.shakespeare_char.cpu import *

dataset = "bb"  # windows start at BOS (window_start=auto)
n_layer = 1
n_head = 2  # diff needs an even number of heads (H/2 differential heads)
n_embd = 64
block_size = 64
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 3e-3
weight_decay = 0.1
beta2 = 0.99
max_iters = 300
lr_decay_iters = 300
warmup_iters = 30
min_lr = 3e-4
eval_interval = 50  # 7 evals: the sink's curves over training (train.py logs model_stats at each)
eval_iters = 5
log_interval = 50
