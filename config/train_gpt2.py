# GPT-2 124M on OpenWebText, nanoGPT's train_gpt2 recipe: ~300B tokens on 8 GPUs.
# config/<attn_norm>.py import this and change only attn_norm, so the runs differ in the normalizer alone.
# Global batch: 12 sequences x 1024 tokens x 40 micro-steps = 491,520 tokens per iteration.
dataset = "openwebtext"
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 40  # split across the GPUs by train.py (5 per GPU on 8)
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1
eval_interval = 1000
eval_iters = 200
log_interval = 10
compile = True
wandb_log = True
wandb_project = "attnorm-owt"
