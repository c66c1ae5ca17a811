"""
The virtual-key family from ordinary flash attention and one exact identity: softmax1, sink and kvbias.

Each adds one virtual key to every query's causal row: logit b_i, value v′ (zero for softmax1 and sink), seen by
every query and by no position. softmax1 is b = 0, sink a learned b_h per head (gpt-oss), kvbias b_i = q_i·k′_h/√d
with a learned value v′_h (Sun et al. 2024). With O and LSE = log Σ_j exp(s_j) from causal softmax attention, the
virtual key rescales each row and adds its value:

    LSE′ = logaddexp(LSE, b)        p′ = exp(b − LSE′) = σ(b − LSE)        O′ = O · σ(LSE − b) + p′ · v′

and P′ = exp(S − LSE′) are the weights over the real keys, so the ordinary flash backward handed (O′, LSE′)
recomputes P′ and returns the exact gradients of q, k, v: it forms dS = P′ ∘ (dP − rowsum(dO ∘ O′)), and
rowsum(dO ∘ O′) is the full row's Δ, virtual entry included. The virtual entry's own gradients are one row each:

    ∂L/∂b_i = p′_i · (dO_i · v′ − Δ_i)        ∂L/∂v′ = Σ_i p′_i dO_i

(b_i's dependence on q or on a per-head parameter is left to autograd). Nothing T×T is materialised.

The forward/backward pairs are aten's own attention ops that expose the LSE: the CPU flash kernel, FlashAttention-2
on CUDA for fp16/bf16 with head_dim ≤ 256 from sm_80 on, and the memory-efficient kernel on CUDA otherwise (fp32,
GPUs before sm_80).
No attention dropout: its mask would have to be replayed in the backward; normalizers.unavailable_reason says so.
"""

import math

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


def flash_runs_on(device):
    """Whether aten's FlashAttention-2 kernels run on this device: on CUDA from sm_80 (A100) on, not on a T4 or V100
    (the memory-efficient kernel runs there)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


def backend(q):
    """The aten pair that computes the LSE for q's device, dtype and head_dim."""
    if q.device.type == "cpu":
        return CPUFlash
    if q.dtype in (torch.float16, torch.bfloat16) and q.size(-1) <= 256 and flash_runs_on(q.device):
        return CUDAFlash
    return CUDAEfficient


class VirtualKeyAttention(torch.autograd.Function):
    """Causal attention of q, k, v (B, H, T, d) plus a virtual key with logit b (broadcastable to (B, H, T); None:
    0) and value v′ (broadcastable to (B, H, T, d); None: 0)."""

    @staticmethod
    def forward(ctx, q, k, v, logit, value, scale, ops):
        out, lse, extra = ops.forward(q, k, v, scale)
        # The LSE is fp32 (fp64 for fp64 inputs) on every backend; everything below runs in it, and only O′ is
        # rounded back to the output dtype. σ and logaddexp are stable for any LSE, ±inf included (F.softplus
        # returns x itself above x = 20, which is off by e^-20: too coarse for fp64). The memory-efficient kernel
        # pads its LSE to a multiple of 32 with +inf: b is padded with 0 there, and logaddexp keeps the +inf.
        T = q.size(-2)
        b = lse.new_zeros(()) if logit is None else logit.to(lse.dtype)
        b = b.expand(lse.shape[:-1] + (T,))
        lse_row = lse[..., :T]
        p_virtual = torch.sigmoid(b - lse_row)[..., None]  # not 1 − σ(LSE − b): that loses a tiny p′'s digits
        out_all = out * torch.sigmoid(lse_row - b)[..., None]
        if value is not None:
            out_all = torch.addcmul(out_all, p_virtual, value.to(lse.dtype))
        out_all = out_all.to(out.dtype)
        lse_all = torch.logaddexp(lse, F.pad(b, (0, lse.size(-1) - T)))
        ctx.save_for_backward(q, k, v, out_all, lse_all, p_virtual, value)
        ctx.scale, ctx.ops, ctx.extra = scale, ops, extra
        ctx.logit_like = None if logit is None else (logit.shape, logit.dtype)
        return out_all

    @staticmethod
    def backward(ctx, do):
        q, k, v, out_all, lse_all, p_virtual, value = ctx.saved_tensors
        do = do if do.stride(-1) == 1 else do.contiguous()  # the CUDA kernels need a unit-stride head_dim
        dq, dk, dv = ctx.ops.backward(do, q, k, v, out_all, lse_all, ctx.extra, ctx.scale)
        dlogit = dvalue = None
        want_logit, want_value = ctx.needs_input_grad[3:5]
        if want_logit or want_value:
            do_acc, p_virtual = do.to(p_virtual.dtype), p_virtual[..., 0]
            if want_logit:
                shape, dtype = ctx.logit_like
                ds = -torch.linalg.vecdot(do_acc, out_all.to(do_acc.dtype))  # −Δ
                if value is not None:
                    ds = ds + torch.linalg.vecdot(do_acc, value.to(do_acc.dtype))
                dlogit = (p_virtual * ds).sum_to_size(shape).to(dtype)
            if want_value:
                dvalue = (p_virtual[..., None] * do_acc).sum_to_size(value.shape).to(value.dtype)
        return dq, dk, dv, dlogit, dvalue, None, None


def virtual_key_attention(q, k, v, logit=None, value=None):
    """Causal attention of q, k, v (B, H, T, d) with scale 1/√d plus one virtual key per query: logit (broadcastable
    to (B, H, T)) and value (broadcastable to (B, H, T, d)), each None for 0."""
    d = q.size(-1)
    # The CUDA kernels' backward wants head_dim % 8 == 0. Zero columns change no score and no output, so pad and
    # slice the padding off again; on every device, although the CPU kernel does not need it, so that the CPU
    # tests cover the padding too.
    if d % 8:
        q, k, v = (F.pad(x, (0, -d % 8)) for x in (q, k, v))
        value = None if value is None else F.pad(value, (0, -d % 8))
    return VirtualKeyAttention.apply(q, k, v, logit, value, d**-0.5, backend(q))[..., :d]


def softmax1_attention(q, k, v):
    """softmax1: the virtual logit fixed at 0, no virtual value."""
    return virtual_key_attention(q, k, v)


def sink_attention(q, k, v, sink):
    """A learned sink logit per head, sink (H,), no virtual value (gpt-oss)."""
    return virtual_key_attention(q, k, v, sink[:, None])


def kvbias_attention(q, k, v, k_bias, v_bias):
    """A learned virtual key k′ and value v′ per head, k_bias and v_bias (H, d), seen by every query."""
    return virtual_key_attention(q, k, v, virtual_logits(q, k_bias), v_bias[:, None, :])


def virtual_logits(q, k_bias):
    """s′ = q·k′/√d (B, H, T) in fp32 (fp64 stays fp64), whatever the autocast dtype: one bf16 rounding of a
    logit moves its weight by up to ~0.4%."""
    dt = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        return torch.linalg.vecdot(q.to(dt), k_bias.to(dt)[:, None, :]) / math.sqrt(q.size(-1))
