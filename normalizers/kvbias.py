"""
kvbias, explicit attention bias (Sun et al. 2024, "Massive Activations in Large Language Models"): a learned key k′_h
and value v′_h per head, seen by every query, with no position:

    out_i = Σ_j p_ij v_j + p′_i v′_h,    (p′_i, p_i0 … p_ii) = softmax(q_i·k′_h/√d, s_i0 … s_ii)

The weights over the real keys are p (weights(), probs()); the virtual entry's p′_i = 1 − Σ_j p_ij is the quiet
mass. k′, v′ (H, d) start at N(0, 0.02) and are not weight-decayed (they are biases of the attention). Fused: with
s′ = q·k′/√d, out = σ(LSE − s′)·O + σ(s′ − LSE)·v′ from one flash pass (kernels/softmax1.py).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.softmax1 import kvbias_attention, virtual_logits

from .sink import virtual_key_weights
from .spec import Normalizer, causal_scores, reference_weights


class KVBias(Normalizer):
    name = "kvbias"
    formula = "out_i = Σ_j p_ij v_j + p′_i v′, (p′_i, p_i·) = softmax(q_i·k′/√d, s_i·), k′, v′ learned per head"
    color = "tab:pink"
    no_weight_decay = ("k_bias", "v_bias")
    fused = staticmethod(kvbias_attention)

    def add_parameters(self, attn, cfg, layer_idx):
        d = cfg.n_embd // cfg.n_head
        attn.k_bias = nn.Parameter(torch.randn(cfg.n_head, d) * 0.02)
        attn.v_bias = nn.Parameter(torch.randn(cfg.n_head, d) * 0.02)

    def args(self, attn, x):
        return {"k_bias": attn.k_bias, "v_bias": attn.v_bias}

    def weights(self, s, mask, virtual_logit):
        """virtual_logit: s′ (B, H, T, 1), from the queries (virtual_logits)."""
        return virtual_key_weights(s, mask, virtual_logit)[0]

    def reference(self, q, k, v, dropout_p=0.0, *, k_bias, v_bias):
        with torch.autocast(q.device.type, enabled=False):
            p, p_virtual = virtual_key_weights(*causal_scores(q, k), virtual_logits(q, k_bias)[..., None])
            p, p_virtual = F.dropout(p, dropout_p), F.dropout(p_virtual, dropout_p)  # the whole row, virtual entry too
            return (p @ v.to(p.dtype) + p_virtual * v_bias.to(p.dtype)[:, None, :]).to(v.dtype)

    def probs(self, q, k, *, k_bias, v_bias):
        return reference_weights(q, k, self.weights, virtual_logit=virtual_logits(q, k_bias)[..., None])

    def fused_unavailable(self, device_type, auto):
        if device_type not in ("cpu", "cuda"):
            return f"kvbias needs aten's CPU or CUDA flash attention, not {device_type}"
        return None
