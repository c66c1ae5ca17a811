# The CPU char model (cpu.py: 4 layers x 128, minutes on a laptop) with LLaMA's block, as config/llama_style.py
# sets it: python train.py config/shakespeare_char/llama_style.py --attn_norm=softmax1
from config.shakespeare_char.cpu import *
from config.llama_style import bias, mlp, norm, pos_emb
