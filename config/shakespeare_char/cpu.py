# nanoGPT's CPU recipe: a tiny character model that trains on a laptop in a few minutes (val loss ~1.9).
# Pick the normalizer on the command line: --attn_norm=softmax1
from config.shakespeare_char.base import *

device = "cpu"
dtype = "float32"
compile = False
eval_interval = 250
eval_iters = 20
log_interval = 10
block_size = 64
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
max_iters = 2000
lr_decay_iters = 2000
dropout = 0.0
