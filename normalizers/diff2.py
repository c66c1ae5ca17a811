"""
diff2, Differential Transformer V2 (microsoft/unilm, Diff-Transformer-V2/multihead_flashdiffv2.py): 2H query heads
and H key/value heads; query heads 2i and 2i+1 share key/value head i, and

    out_i = A(q_2i)·V_i − σ(λ_i)·A(q_2i+1)·V_i,    λ = lambda_proj(x) ∈ ℝ^H per token

with A the causal softmax weights, lambda_proj a Linear n_embd→H without bias (the model's Linear init, so σ(λ)
starts near 1/2) and no per-head norm. c_attn outputs [q (2·n_embd) | k (n_embd) | v (n_embd)]; c_proj stays
n_embd→n_embd. The signed weights A(q_2i) − σ(λ_i)·A(q_2i+1) of each head sum to 1 − σ(λ_i) per query: that is its
quiet mass. Fused: one causal SDPA call with grouped query heads (enable_gqa: k and v are not copied per query head
where the backend supports it), σ(λ) outside, so autograd gives its gradient.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .softmax import causal_softmax
from .spec import Normalizer, reference_attention, reference_weights


def diff2_attention(q, k, v, lam):
    """q (B, 2H, T, d), k, v (B, H, T, d), lam (B, T, H) -> (B, H, T, d)."""
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return y[:, 0::2] - difference_gate(lam).to(y.dtype) * y[:, 1::2]


def difference_gate(lam):
    """σ(λ) (B, T, H) -> (B, H, T, 1), the weight of each head's second map."""
    return torch.sigmoid(lam).transpose(1, 2)[..., None]


def pair_queries(q):
    """(B, 2H, T, d) -> (B, H, 2, T, d): the two query heads of each key/value head side by side."""
    return q.unflatten(1, (-1, 2))


class Diff2(Normalizer):
    name = "diff2"
    formula = "A(q_2i)V_i − σ(λ_i)·A(q_2i+1)V_i, λ = lambda_proj(x) per token, 2H query heads, H kv heads"
    color = "black"
    attn_flops = 2.0  # QKᵀ and P·V over 2H query heads at d
    fused = staticmethod(diff2_attention)

    def qkv_sizes(self, cfg):
        return 2 * cfg.n_embd, cfg.n_embd, cfg.n_embd

    def split_heads(self, q, k, v, n_head):
        B, T, _ = q.shape
        heads = lambda t, n: t.view(B, T, n, -1).transpose(1, 2)
        return heads(q, 2 * n_head), heads(k, n_head), heads(v, n_head)

    def add_parameters(self, attn, cfg, layer_idx):
        attn.lambda_proj = nn.Linear(cfg.n_embd, cfg.n_head, bias=False)

    def args(self, attn, x):
        return {"lam": attn.lambda_proj(x)}

    def weights(self, s, mask, lam):
        """s (B, H, 2, T, T), the scores of both query heads of each kv head -> (B, H, T, T)."""
        a = causal_softmax(s, mask)
        return a[:, :, 0] - difference_gate(lam.to(s.dtype)) * a[:, :, 1]

    def reference(self, q, k, v, dropout_p=0.0, *, lam):
        return reference_attention(pair_queries(q), k[:, :, None], v, self.weights, dropout_p, lam=lam)

    def probs(self, q, k, *, lam):
        return reference_weights(pair_queries(q), k[:, :, None], self.weights, lam=lam)
