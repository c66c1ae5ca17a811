"""
symax: p_ij = |s_ij| / (η + Σ_j |s_ij|), η > 0 per head (fixed, or learned in log space so it stays positive).
"""

import math

import torch
import torch.nn as nn

from .elementwise import ElementwiseNormalizer
from .spec import Setting, positive, zero_where_masked


class Symax(ElementwiseNormalizer):
    name = "symax"
    formula = "p_i = |s_i| / (η + Σ_j |s_j|)"
    color = "tab:green"
    settings = {
        "symax_eta": Setting(float, 1.0, "symax's η > 0 (the initial value when learned)", positive),
        "symax_learn_eta": Setting(bool, False, "learn a positive η per head (in log space)"),
    }

    def add_parameters(self, attn, cfg, layer_idx):
        log_eta = torch.full((cfg.n_head,), math.log(cfg.symax_eta))
        if cfg.symax_learn_eta:
            attn.log_eta = nn.Parameter(log_eta)
        else:
            attn.register_buffer("log_eta", log_eta, persistent=False)

    def args(self, attn, x):
        return {"eta": attn.log_eta.exp()}

    def terms(self, s, mask, eta):
        a = zero_where_masked(s, mask).abs()  # masked keys weigh exactly 0
        return a, eta.view(-1, 1, 1) + a.sum(dim=-1, keepdim=True)
