# GPT-2 124M's sizes and recipe (config/train_gpt2.py) with LLaMA's block: rotary positions, RMSNorm, a SwiGLU MLP
# (hidden 2048: the same parameter count as GELU's 3072), no biases. Pick the normalizer on the command line:
# ./run_training.sh config/llama_style.py --attn_norm=softmax1
from config.train_gpt2 import *

pos_emb = "rope"
norm = "rmsnorm"
mlp = "swiglu"
bias = False
