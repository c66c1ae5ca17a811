from config.train_gpt2 import *

attn_norm = "diff2"
