"""
symax attention, p_i = |s_i| / (η + Σ_j |s_j|), as a Triton kernel in the style of Triton's fused-attention tutorial.

Forward, per block of BLOCK_M queries, over the causal keys in blocks of BLOCK_N:

    acc += |S| V        z += rowsum |S|        (z starts at η of the head)        O = acc / z

|S| is bounded by the scores themselves, so unlike softmax there is no running max and no rescaling. z
(B, H, T) fp32 is saved for the backward. With P = |S|/z and Δ = rowsum(dO ∘ O):

    dV = Pᵀ dO      dS = sign(S)/z ∘ (dP − Δ),  dP = dO Vᵀ      dQ = dS K · scale      dK = dSᵀ Q · scale
    dη[h] = −Σ_{b,t} Δ/z

A backward program owns one block of keys (accumulating dK, dV over the queries that see it) and then one
block of queries (accumulating dQ over the keys it sees), as in the tutorial. Blocks left of the diagonal need
no causal mask; only the diagonal blocks pay for it. Masking a score to 0 masks everything downstream: its
weight |0|, its sign and so its gradient are all 0.

fp16/bf16 inputs accumulate in fp32; fp32 inputs use 3xTF32 dots (near-fp32 accuracy on tensor cores: plain
TF32 would not match the fp32 reference, and IEEE dots spill registers badly). head_dim d ≤ 128 is padded to
BLOCK_D (a power of two ≥ 16, as tl.dot needs) with masked loads, and any T works (the ragged last block is
masked). No attention dropout.

On CPU the kernels run only in Triton's interpreter (TRITON_INTERPRET=1): numpy, exact, but slow.
"""

import os

import torch
import triton
import triton.language as tl

# triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when this module is imported: setting it
# later does not make these kernels runnable on CPU.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _tile(ptr, rows, cols, stride, T, D):
    """Pointers to the (rows, cols) tile of a (T, D) matrix with row stride `stride`, and the mask of the entries
    that exist (rows past a ragged T, columns of head_dim padding)."""
    return ptr + rows[:, None] * stride + cols[None, :], (rows[:, None] < T) & (cols[None, :] < D)


@triton.jit
def _load(ptr, rows, cols, stride, T, D):
    ptrs, mask = _tile(ptr, rows, cols, stride, T, D)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _scores(q, k, offs_m, offs_n, scale, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """S = q kᵀ · scale (fp32) for one tile of queries offs_m and keys offs_n; 0 above the diagonal if CAUSAL."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if CAUSAL:
        s = tl.where(offs_m[:, None] >= offs_n[None, :], s, 0.0)
    return s


# ----------------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_inner(acc, z, q, K, V, stride_kt, stride_vt, offs_m, lo, hi, T, scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K, offs_n, offs_d, stride_kt, T, HEAD_DIM)
        v = _load(V, offs_n, offs_d, stride_vt, T, HEAD_DIM)
        p = tl.abs(_scores(q, k, offs_m, offs_n, scale, CAUSAL, PRECISION))
        z += tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, z


@triton.jit
def _symax_fwd(Q, K, V, Eta, Out, Z,
               stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
               H, T, scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)  # int64: b·stride_b overflows int32 for large batches
    b, h = bh // H, bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Out += bh * T * HEAD_DIM  # Out (B, H, T, d) and Z (B, H, T) are contiguous
    Z += bh * T

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load(Q, offs_m, offs_d, stride_qt, T, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    z = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Eta + h)
    # Keys left of this query block, then the diagonal block.
    acc, z = _fwd_inner(acc, z, q, K, V, stride_kt, stride_vt, offs_m, 0, start_m, T, scale,
                        HEAD_DIM, BLOCK_N, BLOCK_D, False, PRECISION)
    acc, z = _fwd_inner(acc, z, q, K, V, stride_kt, stride_vt, offs_m, start_m, tl.minimum(start_m + BLOCK_M, T),
                        T, scale, HEAD_DIM, BLOCK_N, BLOCK_D, True, PRECISION)

    ptrs, mask = _tile(Out, offs_m, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, (acc / z[:, None]).to(Out.dtype.element_ty), mask=mask)
    tl.store(Z + offs_m, z, mask=offs_m < T)


# ----------------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _bwd_tile(q, k, v, do, z, delta, offs_m, offs_n, scale, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """P = |S|/z and dS = sign(S)/z ∘ (dP − Δ) with dP = dO Vᵀ, for one tile of queries offs_m × keys offs_n."""
    s = _scores(q, k, offs_m, offs_n, scale, CAUSAL, PRECISION)
    inv_z = 1.0 / z[:, None]
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    sign = tl.where(s > 0, 1.0, 0.0) - tl.where(s < 0, 1.0, 0.0)
    return tl.abs(s) * inv_z, sign * inv_z * (dp - delta[:, None])


@triton.jit
def _bwd_dkdv(dk, dv, k, v, Q, DO, Z, Delta, stride_qt, stride_dot, offs_n, lo, hi, T, scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
              CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV of the keys offs_n from the query blocks in [lo, hi)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load(Q, offs_m, offs_d, stride_qt, T, HEAD_DIM)
        do = _load(DO, offs_m, offs_d, stride_dot, T, HEAD_DIM)
        z = tl.load(Z + offs_m, mask=offs_m < T, other=1.0)  # 1, not 0: rows past T must give 0, not 0/0
        delta = tl.load(Delta + offs_m, mask=offs_m < T, other=0.0)
        p, ds = _bwd_tile(q, k, v, do, z, delta, offs_m, offs_n, scale, CAUSAL, PRECISION)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dq(dq, q, do, z, delta, K, V, stride_kt, stride_vt, offs_m, lo, hi, T, scale,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of the queries offs_m from the key blocks in [lo, hi)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K, offs_n, offs_d, stride_kt, T, HEAD_DIM)
        v = _load(V, offs_n, offs_d, stride_vt, T, HEAD_DIM)
        _, ds = _bwd_tile(q, k, v, do, z, delta, offs_m, offs_n, scale, CAUSAL, PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _symax_bwd(Q, K, V, DO, DQ, DK, DV, Z, Delta,
               stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
               stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
               H, T, scale,
               HEAD_DIM: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_D: tl.constexpr,
               PRECISION: tl.constexpr):
    """Program i owns keys [i·BLOCK_OUT, (i+1)·BLOCK_OUT) for dK, dV and the queries of the same range for dQ;
    its loops step BLOCK_IN at a time over the queries (keys) that see (are seen by) them."""
    start = tl.program_id(0) * BLOCK_OUT
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_dob + h * stride_doh
    DQ += bh * T * HEAD_DIM  # DQ, DK, DV (B, H, T, d) and Z, Delta (B, H, T) are contiguous
    DK += bh * T * HEAD_DIM
    DV += bh * T * HEAD_DIM
    Z += bh * T
    Delta += bh * T

    offs = start + tl.arange(0, BLOCK_OUT)
    offs_d = tl.arange(0, BLOCK_D)
    end = tl.minimum(start + BLOCK_OUT, T)

    # dK, dV: the diagonal block of queries, then every query block below it.
    k = _load(K, offs, offs_d, stride_kt, T, HEAD_DIM)
    v = _load(V, offs, offs_d, stride_vt, T, HEAD_DIM)
    dk = tl.zeros([BLOCK_OUT, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_OUT, BLOCK_D], dtype=tl.float32)
    dk, dv = _bwd_dkdv(dk, dv, k, v, Q, DO, Z, Delta, stride_qt, stride_dot, offs, start, end, T, scale,
                       HEAD_DIM, BLOCK_IN, BLOCK_D, True, PRECISION)
    dk, dv = _bwd_dkdv(dk, dv, k, v, Q, DO, Z, Delta, stride_qt, stride_dot, offs, start + BLOCK_OUT, T, T, scale,
                       HEAD_DIM, BLOCK_IN, BLOCK_D, False, PRECISION)
    ptrs, mask = _tile(DK, offs, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, (dk * scale).to(DK.dtype.element_ty), mask=mask)
    ptrs, mask = _tile(DV, offs, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, dv.to(DV.dtype.element_ty), mask=mask)

    # dQ: every key block left of the diagonal, then the diagonal block.
    q = _load(Q, offs, offs_d, stride_qt, T, HEAD_DIM)
    do = _load(DO, offs, offs_d, stride_dot, T, HEAD_DIM)
    z = tl.load(Z + offs, mask=offs < T, other=1.0)
    delta = tl.load(Delta + offs, mask=offs < T, other=0.0)
    dq = tl.zeros([BLOCK_OUT, BLOCK_D], dtype=tl.float32)
    dq = _bwd_dq(dq, q, do, z, delta, K, V, stride_kt, stride_vt, offs, 0, start, T, scale,
                 HEAD_DIM, BLOCK_IN, BLOCK_D, False, PRECISION)
    dq = _bwd_dq(dq, q, do, z, delta, K, V, stride_kt, stride_vt, offs, start, end, T, scale,
                 HEAD_DIM, BLOCK_IN, BLOCK_D, True, PRECISION)
    ptrs, mask = _tile(DQ, offs, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launch configurations and the autograd.Function


def configs(d, dtype):
    """(forward, backward) launch configs. On GPU: the fused-attention tutorial's H100 shapes, trimmed until
    ptxas (sm_90) reports no register spills for fp16/bf16: 8 warps wherever the fp32 accumulators (acc; dK, dV)
    are large, and 64-key backward blocks at d = 128. fp32 takes small blocks, as its 3xTF32 dots need three
    times the registers and shared memory. In the interpreter every tile op is a numpy call, so small blocks
    are fast; they are still unequal (and a backward block spans two of its inner blocks), so that the tests
    exercise the same block structure as the GPU."""
    if INTERPRET:
        return dict(BLOCK_M=32, BLOCK_N=16), dict(BLOCK_OUT=32, BLOCK_IN=16)
    if dtype == torch.float32:
        return (dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
                dict(BLOCK_OUT=32, BLOCK_IN=16, num_warps=4, num_stages=2))
    return (dict(BLOCK_M=128, BLOCK_N=64, num_warps=4 if d <= 64 else 8, num_stages=3),
            dict(BLOCK_OUT=128 if d <= 64 else 64, BLOCK_IN=32, num_warps=8, num_stages=3))


def _bht_strides(x):
    """The (batch, head, time) strides of a (B, H, T, d) tensor; head_dim must be its unit-stride axis."""
    return x.stride()[:3]


class SymaxAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, eta):
        B, H, T, d = q.shape
        fwd, _ = configs(d, q.dtype)
        shape = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
                     PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32")  # tf32 is moot for fp16/bf16
        out = torch.empty(B, H, T, d, device=q.device, dtype=v.dtype)
        z = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
        grid = (triton.cdiv(T, fwd["BLOCK_M"]), B * H)
        _symax_fwd[grid](q, k, v, eta.float().contiguous(), out, z,
                         *_bht_strides(q), *_bht_strides(k), *_bht_strides(v), H, T, d**-0.5, **shape, **fwd)
        ctx.save_for_backward(q, k, v, out, z)
        ctx.shape, ctx.eta_dtype = shape, eta.dtype
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, z = ctx.saved_tensors
        B, H, T, d = q.shape
        _, bwd = configs(d, q.dtype)
        do = do if do.stride(-1) == 1 else do.contiguous()
        delta = (do.float() * out.float()).sum(-1)  # Δ = rowsum(dO ∘ O), (B, H, T) fp32
        dq, dk, dv = (torch.empty(B, H, T, d, device=q.device, dtype=x.dtype) for x in (q, k, v))
        grid = (triton.cdiv(T, bwd["BLOCK_OUT"]), B * H)
        _symax_bwd[grid](q, k, v, do, dq, dk, dv, z, delta,
                         *_bht_strides(q), *_bht_strides(k), *_bht_strides(v), *_bht_strides(do), H, T, d**-0.5,
                         **ctx.shape, **bwd)
        deta = -(delta / z).sum(dim=(0, 2))
        return dq, dk, dv, deta.to(ctx.eta_dtype)


def symax_attention(q, k, v, eta):
    """Causal symax attention of q, k, v (B, H, T, d ≤ 128) with η (H,) > 0 and scale 1/√d."""
    if q.size(-1) > 128:
        raise ValueError(f"the symax kernel supports head_dim <= 128, got {q.size(-1)}")
    if INTERPRET and q.dtype == torch.bfloat16:
        raise TypeError("Triton's interpreter (TRITON_INTERPRET=1) miscomputes bf16 dots: use fp16/fp32, or a GPU "
                        "without TRITON_INTERPRET")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return SymaxAttention.apply(q, k, v, eta)
