"""
softmax1 ("attention is off by one"): p_ij = exp(s_ij) / (1 + Σ_j exp(s_ij)), a virtual logit fixed at 0, so a
head may attend to nothing. It is the sink normalizer with b frozen at 0 (normalizers/sink.py): same weights, same
fused kernel (kernels/softmax1.py), no parameter.
"""

from kernels.softmax1 import softmax1_attention

from .sink import Sink


class Softmax1(Sink):
    name = "softmax1"
    formula = "p_i = exp(s_i) / (1 + Σ_j exp(s_j))"
    color = "tab:orange"
    fused = staticmethod(softmax1_attention)

    def add_parameters(self, attn, cfg, layer_idx):
        pass

    def args(self, attn, x):
        return {}
