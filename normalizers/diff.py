"""
diff, the Differential Transformer (Ye et al. 2024): (softmax(Q₁K₁ᵀ) − λ·softmax(Q₂K₂ᵀ)) V, in the official code's
layout: sub-heads (2i, 2i+1) of q and k are (Q₁, Q₂) and (K₁, K₂) of head i, whose value head is 2d wide; H/2
heads in all, so c_attn/c_proj keep the shapes of softmax attention with H heads.
λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init with λ_init = 0.8 − 0.6·exp(−0.3·layer), and each head's output goes
through RMSNorm (subln) × (1 − λ_init). Fused: one SDPA call over both maps (kernels/diff.py).
"""

import math

import torch
import torch.nn as nn

from kernels.diff import diff_attention

from .softmax import causal_softmax
from .spec import Normalizer, at_least_fp32


class Diff(Normalizer):
    name = "diff"
    formula = "(softmax(Q₁K₁ᵀ) − λ·softmax(Q₂K₂ᵀ)) V, per-head RMSNorm × (1 − λ_init)"
    color = "tab:red"
    attn_flops = 1.5  # QKᵀ over H sub-heads at d, P·V over H/2 heads at 2d: 1 + 0.5
    fused = staticmethod(diff_attention)

    def check(self, cfg):
        if cfg.n_head % 2:
            raise ValueError(f"attn_norm='diff' pairs heads, so n_head must be even (got {cfg.n_head})")

    def split_heads(self, q, k, v, n_head):
        B, T, _ = v.shape
        q, k, _ = super().split_heads(q, k, v, n_head)
        return q, k, v.view(B, T, n_head // 2, -1).transpose(1, 2)  # v: (B, H/2, T, 2d)

    def add_parameters(self, attn, cfg, layer_idx):
        d = cfg.n_embd // cfg.n_head
        attn.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
        attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2 = (
            nn.Parameter(torch.randn(d) * 0.1) for _ in range(4))
        attn.subln = nn.RMSNorm(2 * d, eps=1e-5, elementwise_affine=True)

    def args(self, attn, x):
        lam1 = torch.exp(at_least_fp32(torch.dot(attn.lambda_q1, attn.lambda_k1)))
        lam2 = torch.exp(at_least_fp32(torch.dot(attn.lambda_q2, attn.lambda_k2)))
        return {"lam": lam1 - lam2 + attn.lambda_init}

    def merge_heads(self, attn, y):
        return (attn.subln(at_least_fp32(y)) * (1 - attn.lambda_init)).type_as(y)  # fp32 norm, as under autocast

    def weights(self, s, mask, lam):
        # Interleaved sub-heads (B, H, T, T) -> A1 − λ·A2 (B, H/2, T, T).
        a = causal_softmax(s, mask)
        return a[:, 0::2] - lam * a[:, 1::2]

    def fused_unavailable(self, device_type, auto):
        # (No attention dropout: dropping entries of A1 − λA2 is not dropping A1 and A2 separately.)
        if device_type == "cpu" and auto:
            return "on CPU the reference is faster for diff fwd+bwd up to T=512 (benchmarks/results/cpu-*.md)"
        return None
