"""
softmax1 attention, p_i = exp(s_i) / (1 + Σ_j exp(s_j)), from ordinary flash attention and one exact identity.

With O and LSE = log Σ_j exp(s_j) from causal softmax attention, the virtual zero logit only rescales each row:

    O₁ = O · e^LSE / (1 + e^LSE) = O · σ(LSE)        LSE₁ = log(1 + e^LSE) = softplus(LSE)

and P₁ = exp(S − LSE₁) are the softmax1 weights, so the ordinary flash backward handed (O₁, LSE₁) recomputes
P₁ and returns the exact softmax1 gradients (dS = P₁ ∘ (dP − rowsum(dO ∘ O₁))). Nothing T×T is
materialised.

The forward/backward pairs are aten's own attention ops that expose the LSE: the CPU flash kernel, FlashAttention-2
on CUDA for fp16/bf16 with head_dim ≤ 256, and the memory-efficient kernel on CUDA otherwise (fp32).
No attention dropout: its mask would have to be replayed in the backward; kernels.unavailable_reason says so.
"""

import torch
import torch.nn.functional as F

aten = torch.ops.aten


class CPUFlash:
    """LSE (B, H, T) in the accumulation dtype (fp32, or fp64 for fp64 inputs)."""

    @staticmethod
    def forward(q, k, v, scale):
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
        return out, lse, ()

    @staticmethod
    def backward(do, q, k, v, out, lse, extra, scale):
        return aten._scaled_dot_product_flash_attention_for_cpu_backward(do, q, k, v, out, lse, 0.0, True, scale=scale)


class CUDAFlash:
    """FlashAttention-2: fp16/bf16 only, head_dim ≤ 256; LSE (B, H, T) fp32. extra: the varlen and RNG outputs
    its backward takes back (unused without dropout, but part of the signature)."""

    @staticmethod
    def forward(q, k, v, scale):
        out, lse, *extra, _debug_mask = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)
        return out, lse, extra

    @staticmethod
    def backward(do, q, k, v, out, lse, extra, scale):
        cum_q, cum_k, max_q, max_k, rng_state, unused = extra
        return aten._scaled_dot_product_flash_attention_backward(
            do, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, True, rng_state, unused, scale=scale)


class CUDAEfficient:
    """The memory-efficient kernel, which also runs fp32; LSE (B, H, ceil(T/32)·32) fp32, padded with +inf
    (softplus keeps +inf, and σ is only taken over the first T)."""

    @staticmethod
    def forward(q, k, v, scale):
        out, lse, seed, offset = aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, True, scale=scale)
        return out, lse, (seed, offset)

    @staticmethod
    def backward(do, q, k, v, out, lse, extra, scale):
        seed, offset = extra
        dq, dk, dv, _dbias = aten._scaled_dot_product_efficient_attention_backward(
            do, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], True, scale=scale)
        return dq, dk, dv


def backend(q):
    """The aten pair that computes the LSE for q's device, dtype and head_dim."""
    if q.device.type == "cpu":
        return CPUFlash
    if q.dtype in (torch.float16, torch.bfloat16) and q.size(-1) <= 256:
        return CUDAFlash
    return CUDAEfficient


class Softmax1Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, ops):
        out, lse, extra = ops.forward(q, k, v, scale)
        # The LSE is fp32 (fp64 for fp64 inputs) on every backend; out · σ promotes half-precision outputs to it
        # before rounding back. σ and logaddexp(LSE, 0) = softplus(LSE) are stable for any LSE, ±inf included
        # (F.softplus returns x itself above x = 20, which is off by e^-20: too coarse for fp64).
        out1 = (out * torch.sigmoid(lse[..., : q.size(-2), None])).to(out.dtype)
        lse1 = torch.logaddexp(lse, torch.zeros_like(lse))
        ctx.save_for_backward(q, k, v, out1, lse1)
        ctx.scale, ctx.ops, ctx.extra = scale, ops, extra
        return out1

    @staticmethod
    def backward(ctx, do):
        q, k, v, out1, lse1 = ctx.saved_tensors
        do = do if do.stride(-1) == 1 else do.contiguous()  # the CUDA kernels need a unit-stride head_dim
        dq, dk, dv = ctx.ops.backward(do, q, k, v, out1, lse1, ctx.extra, ctx.scale)
        return dq, dk, dv, None, None


def softmax1_attention(q, k, v):
    """Causal softmax1 attention of q, k, v (B, H, T, d) with scale 1/√d."""
    d = q.size(-1)
    # The CUDA kernels' backward wants head_dim % 8 == 0. Zero columns change no score and no output, so pad and
    # slice the padding off again; on every device, although the CPU kernel does not need it, so that the CPU
    # tests cover the padding too.
    if d % 8:
        q, k, v = (F.pad(x, (0, -d % 8)) for x in (q, k, v))
    return Softmax1Attention.apply(q, k, v, d**-0.5, backend(q))[..., :d]
