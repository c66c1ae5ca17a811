"""softmax, the baseline: p_ij = exp(s_ij) / Σ_j exp(s_ij). Fused: PyTorch's SDPA (flash / memory-efficient)."""

import torch
import torch.nn.functional as F

from .spec import Normalizer, minus_inf_where_masked


def causal_softmax(s, mask):
    return torch.softmax(minus_inf_where_masked(s, mask), dim=-1)


def sdpa_attention(q, k, v, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


class Softmax(Normalizer):
    name = "softmax"
    formula = "p_i = exp(s_i) / Σ_j exp(s_j)"
    color = "tab:blue"
    fused = staticmethod(sdpa_attention)
    fused_dropout = True

    def weights(self, s, mask):
        return causal_softmax(s, mask)
