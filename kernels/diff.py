"""
Differential attention, (softmax(Q1K1ᵀ) − λ·softmax(Q2K2ᵀ)) V, as one SDPA call and one subtraction.

q, k (B, H, T, d) hold the two maps of head i in sub-heads 2i and 2i+1, and v (B, H/2, T, 2d) the 2d-wide
value head they share. Repeating v per sub-head turns both maps of every head into ordinary causal attention
over H heads, y = softmax(QKᵀ)·v_rep (B, H, T, 2d); λ is applied outside, so autograd gives its gradient.

Value dim 2d ≠ qk dim d is the catch: the flash kernels (CPU and CUDA) need equal head dims, and SDPA on CPU
then falls back to its math path, which materialises T×T. Padding q and k with d zero columns (scale stays
1/√d) keeps every score and lets SDPA pick its flash kernel everywhere. Cost, honestly: the exact FLOPs are
1.5× softmax attention's (QKᵀ at d, P·V at 2d); the padded QKᵀ runs at 2d, so 2× (4/3 of the exact count).
That is faster than the math fallback on CPU, and on CUDA the unpadded call would skip flash for a slower
kernel at 1.5× FLOPs; benchmarks/attention.py measures it (results in benchmarks/results/) and reports the
throughput of the exact FLOPs.
No attention dropout: dropping entries of the combined map A1 − λA2 is not dropping A1 and A2 separately.
"""

import torch.nn.functional as F


def diff_attention(q, k, v, lam):
    d = q.size(-1)
    q, k = F.pad(q, (0, d)), F.pad(k, (0, d))
    y = F.scaled_dot_product_attention(q, k, v.repeat_interleave(2, dim=1), is_causal=True, scale=d**-0.5)
    return y[:, 0::2] - lam * y[:, 1::2]
