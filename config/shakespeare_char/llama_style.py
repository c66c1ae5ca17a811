# The CPU char model (cpu.py: 4 layers x 128, minutes on a laptop) with LLaMA's block, as config/llama_style.py
# sets it: python train.py config/shakespeare_char/llama_style.py --attn_norm=softmax1
# Eager on CPU (cpu.py's compile = False) this block is slower than GPT-2's: its norms, rotation and SwiGLU are chains
# of elementwise ops that --compile=True fuses, after a compile of some seconds (benchmarks/results/cpu-train-blocks.md).
from config.shakespeare_char.cpu import *
from config.llama_style import bias, mlp, norm, pos_emb
