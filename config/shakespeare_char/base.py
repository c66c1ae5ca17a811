# A small character-level model on Tiny Shakespeare for one GPU (nanoGPT's train_shakespeare_char):
# nanoGPT's softmax reaches val loss ~1.47 in a few minutes on an A100.
# config/shakespeare_char/<attn_norm>.py import this and change only attn_norm.
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # the model overfits: keep the best val checkpoint
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2  # nanoGPT's, on the residual branches and embeddings
attn_dropout = 0.0  # none on the attention weights: every attn_norm then runs its fused path (README, "Dropout")
bias = False
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # small batches: average the second moment over more steps
warmup_iters = 100
wandb_project = "attnorm-shakespeare-char"
