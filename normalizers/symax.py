"""
symax: p_ij = |s_ij| / (η + Σ_j |s_ij|), η > 0 per head (fixed, or learned in log space so it stays positive).
Fused: the elementwise Triton kernel family (kernels/elementwise.py) on CUDA; on CPU only in Triton's interpreter.
"""

import math

import torch
import torch.nn as nn

from .spec import Normalizer, Setting, positive

try:
    from kernels import elementwise as kernel
except ImportError:  # no triton: symax takes the reference
    kernel = None


class Symax(Normalizer):
    name = "symax"
    formula = "p_i = |s_i| / (η + Σ_j |s_j|)"
    color = "tab:green"
    settings = {
        "symax_eta": Setting(float, 1.0, "symax's η > 0 (the initial value when learned)", positive),
        "symax_learn_eta": Setting(bool, False, "learn a positive η per head (in log space)"),
    }
    fused = staticmethod(kernel.symax_attention) if kernel else None
    missing_fused = " (it needs triton)"

    def add_parameters(self, attn, cfg, layer_idx):
        log_eta = torch.full((cfg.n_head,), math.log(cfg.symax_eta))
        if cfg.symax_learn_eta:
            attn.log_eta = nn.Parameter(log_eta)
        else:
            attn.register_buffer("log_eta", log_eta, persistent=False)

    def args(self, attn, x):
        return {"eta": attn.log_eta.exp()}

    def weights(self, s, mask, eta):
        # Masked positions weigh exactly 0 (|-inf| would be inf, so mask after abs).
        a = s.abs().masked_fill(~mask, 0.0)
        return a / (eta.view(-1, 1, 1) + a.sum(dim=-1, keepdim=True))

    def fused_unavailable(self, device_type, auto):
        return kernel.unavailable(self.name, device_type, auto)
