"""
softmax1 ("attention is off by one"): p_ij = exp(s_ij) / (1 + Σ_j exp(s_ij)), a virtual logit fixed at 0, so a
head may attend to nothing. Fused: flash attention plus an exact LSE identity (kernels/softmax1.py).
"""

import torch

from kernels.softmax1 import softmax1_attention

from .spec import Normalizer


class Softmax1(Normalizer):
    name = "softmax1"
    formula = "p_i = exp(s_i) / (1 + Σ_j exp(s_j))"
    color = "tab:orange"
    fused = staticmethod(softmax1_attention)

    def weights(self, s, mask):
        # Shift by m = max(0, max_j s_j) so that neither exp(s - m) nor the virtual term exp(-m) can overflow.
        # (Shifting by max_j s_j alone and adding 1 is a different function whose weights sum to >= 0.5.)
        s = s.masked_fill(~mask, float("-inf"))
        m = s.amax(dim=-1, keepdim=True).clamp(min=0)
        e = torch.exp(s - m)
        return e / (torch.exp(-m) + e.sum(dim=-1, keepdim=True))

    def fused_unavailable(self, device_type, auto):
        if device_type not in ("cpu", "cuda"):
            return f"softmax1 needs aten's CPU or CUDA flash attention, not {device_type}"
        return None
