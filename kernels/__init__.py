"""
Fused causal attention algorithms: each never materialises the T×T weights. One file per algorithm; the
normalizer specs in normalizers/ say which one each attn_norm runs and where (normalizers.describe).

    softmax1.py   flash attention + an exact LSE identity (CPU and CUDA flash kernels of aten)
    elementwise.py  one Triton kernel family for p = f(s)/(c + Σ g(s)): symax, sigmoid, softpick, and clipped
                  after a flash pass for its LSE (CUDA; CPU only in Triton's interpreter)
    diff.py       one SDPA call over both maps of differential attention, λ outside
"""
