"""
softpick, the rectified softmax (Zuhri et al. 2025, "Softpick: No Attention Sink, No Massive Activations with
Rectified Softmax"): p_ij = ReLU(e^s_ij − 1) / (Σ_j |e^s_ij − 1| + ε). Keys with s ≤ 0 weigh exactly 0, yet count in
the denominator; a row whose every score is ≤ 0 attends to nothing (all-zero weights, no NaN).

Computed max-shifted as the official naive_softpick_attn.py: with m the row max,
ReLU(e^(s−m) − e^(−m)) / (Σ_j |e^(s−m) − e^(−m)| + ε), i.e. ε is effectively ε·e^m (and so is its gradient through
the max). m is clamped at 0: a row whose max is ≤ 0 has all-zero numerators under either shift, so this is the same
function, and e^(−m) cannot overflow for very negative rows.
Fused: the elementwise Triton kernel family (kernels/elementwise.py) on CUDA; on CPU only in Triton's interpreter.
"""

import torch

from .spec import Normalizer, Setting, positive

try:
    from kernels import elementwise as kernel
except ImportError:  # no triton: softpick takes the reference
    kernel = None


class Softpick(Normalizer):
    name = "softpick"
    formula = "p_i = ReLU(e^s_i − 1) / (Σ_j |e^s_j − 1| + ε)"
    color = "tab:purple"
    settings = {
        "softpick_eps": Setting(float, 1e-8, "softpick's ε > 0 in the (max-shifted) denominator", positive),
    }
    fused = staticmethod(kernel.softpick_attention) if kernel else None
    missing_fused = " (it needs triton)"

    def add_parameters(self, attn, cfg, layer_idx):
        attn.softpick_eps = cfg.softpick_eps

    def args(self, attn, x):
        return {"eps": attn.softpick_eps}

    def weights(self, s, mask, eps):
        s = s.masked_fill(~mask, 0.0)  # e^0 − 1 = 0: a masked key adds nothing to either sum
        # max().values, not amax(): its backward routes to the argmax alone and is cheaper on CPU
        m = s.max(dim=-1, keepdim=True).values.clamp(min=0)
        e = torch.exp(s - m) - torch.exp(-m)
        return torch.relu(e) / (e.abs().sum(dim=-1, keepdim=True) + eps)

    def fused_unavailable(self, device_type, auto):
        return kernel.unavailable(self.name, device_type, auto)
