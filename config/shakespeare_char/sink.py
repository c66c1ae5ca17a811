from config.shakespeare_char.base import *

attn_norm = "sink"
