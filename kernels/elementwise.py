"""
Attention with an elementwise normalizer, as one Triton kernel family in the style of Triton's fused-attention
tutorial. The weight of key j is a function of its own score s_ij and of at most two row statistics, a shift m_i
and a denominator z_i:

    p_ij = f(s_ij − m_i) / z_i,    z_i = c + Σ_j g(s_ij − m_i)    (z_i = 1 where there is no denominator)

f, g, their derivatives and where m comes from are chosen at compile time by NORM (a tl.constexpr):

    NORM       f                                 g                  c      m_i
    symax      |s|                               |s|                η[h]   —
    sigmoid    σ(s + b)                          —                  —      —
    softpick   ReLU(e^(s−m) − e^(−m))            |e^(s−m) − e^(−m)| ε      max(0, max_j s_ij), found online
    clipped    clip((ζ − γ)·e^(s−m) + γ, 0, 1)   —                  —      LSE_i, from a first flash pass

softpick's shift is the official naive_softpick_attn.py's (m = max_j s_ij, so ε is effectively ε·e^m) clamped at 0:
a row whose max is ≤ 0 has all-zero numerators under either shift, so the weights are the same function, and
e^(−m) cannot overflow for a row of very negative scores.

Forward, per block of BLOCK_M queries, over the causal keys in blocks of BLOCK_N:

    acc += f(S) V      l += rowsum g(S)      O = acc / (c + l)

softpick rescales acc and l by e^(m_old − m_new) whenever its running max grows (as flash attention does); the
others need no rescaling (|s| and σ are bounded by the scores, e^(s − LSE) ≤ 1). z = c + l and softpick's m and
argmax are saved for the backward. With dP = dO Vᵀ and Δ_i = rowsum(dO_i ∘ O_i) the backward is

    dS = f′(S)/z ∘ dP − g′(S)/z ∘ Δ        dV = Pᵀ dO      dQ = dS K · scale      dK = dSᵀ Q · scale
    dc[h] = −Σ_{b,t} Δ/z                   (η's gradient when it is learned)

plus, for softpick, the gradient of ε·e^m through the row max: −Δ·c/z on the argmax key. clipped has no
denominator but its LSE depends on every score: with π = e^(S − LSE) and 1 = [0 < (ζ − γ)π + γ < 1],

    dS = (ζ − γ)·π ∘ (1 ∘ dP − Δ̃),    Δ̃_i = Σ_j π_ij 1_ij dP_ij = rowsum(dO_i ∘ Õ_i),   Õ = (π ∘ 1) V

where Õ is a second accumulator of the forward: the family's form with f′ = (ζ − γ)π1, g′/z = (ζ − γ)π, Δ = Δ̃.
Clipped weights have zero gradient (only their share of the LSE's gradient passes).

A backward program owns one block of keys (accumulating dK, dV over the queries that see it) and then one block of
queries (accumulating dQ over the keys it sees), as in the tutorial. Blocks left of the diagonal need no causal
mask; only the diagonal blocks pay for it. A masked score is replaced by one whose weight and gradient are exactly
0: 0 for symax and softpick (|0| = e^0 − 1 = 0), −inf for sigmoid and clipped (σ(−inf) = e^(−inf) = 0).

fp16/bf16 inputs accumulate in fp32; fp32 inputs use 3xTF32 dots (near-fp32 accuracy on tensor cores: plain
TF32 would not match the fp32 reference, and IEEE dots spill registers badly). head_dim d ≤ 128 is padded to
BLOCK_D (a power of two ≥ 16, as tl.dot needs) with masked loads, and any T works (the ragged last block is
masked). No attention dropout.

On CPU the kernels run only in Triton's interpreter (TRITON_INTERPRET=1): numpy, exact, but slow.
"""

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.softmax1 import backend as flash_backend

# triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when this module is imported: setting it
# later does not make these kernels runnable on CPU.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

NORMS = ("symax", "sigmoid", "softpick", "clipped")
MAX_GRID_YZ = 65535  # CUDA caps a grid's second and third axes there (the first at 2³¹ − 1)
MAX_HEAD_DIM = 128  # BLOCK_D 128: larger tiles would not fit the registers and shared memory of one block


@triton.jit
def _tile(ptr, rows, cols, stride, T, D):
    """Pointers to the (rows, cols) tile of a (T, D) matrix with row stride `stride`, and the mask of the entries
    that exist (rows past a ragged T, columns of head_dim padding)."""
    # int64 row offsets: T·stride passes 2³¹ at long contexts (e.g. T = 65536 rows of a 3·n_embd = 36,864-wide
    # c_attn output).
    return ptr + rows[:, None].to(tl.int64) * stride + cols[None, :], (rows[:, None] < T) & (cols[None, :] < D)


@triton.jit
def _load(ptr, rows, cols, stride, T, D):
    ptrs, mask = _tile(ptr, rows, cols, stride, T, D)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _scores(q, k, offs_m, offs_n, scale, NORM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """S = q kᵀ · scale (fp32) for one tile of queries offs_m and keys offs_n; if CAUSAL, the entries above the
    diagonal hold a score whose weight and gradient are exactly 0."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if CAUSAL:
        visible = offs_m[:, None] >= offs_n[None, :]
        if NORM == "sigmoid" or NORM == "clipped":
            s = tl.where(visible, s, float("-inf"))
        else:
            s = tl.where(visible, s, 0.0)
    return s


@triton.jit
def _fwd_terms(s, m, bias, zeta, gamma, NORM: tl.constexpr):
    """(f, g) of a tile: the unnormalised weights and what each key adds to the row's second accumulator (the
    denominator of symax and softpick; clipped's Õ weights π·1; nothing for sigmoid)."""
    if NORM == "symax":
        f = tl.abs(s)
        g = f
    elif NORM == "sigmoid":
        f = tl.sigmoid(s + bias)
        g = f
    elif NORM == "softpick":
        e = tl.exp(s - m[:, None]) - tl.exp(-m)[:, None]
        f = tl.maximum(e, 0.0)
        g = tl.abs(e)
    else:  # clipped
        pi = tl.exp(s - m[:, None])
        u = (zeta - gamma) * pi + gamma
        f = tl.minimum(tl.maximum(u, 0.0), 1.0)
        g = tl.where((u > 0.0) & (u < 1.0), pi, 0.0)
    return f, g


# ----------------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_inner(acc, acc_clip, l, m, arg, q, K, V, stride_kt, stride_vt, offs_m, lo, hi, T, scale,
               bias, zeta, gamma, NORM: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K, offs_n, offs_d, stride_kt, T, HEAD_DIM)
        v = _load(V, offs_n, offs_d, stride_vt, T, HEAD_DIM)
        s = _scores(q, k, offs_m, offs_n, scale, NORM, CAUSAL, PRECISION)
        if NORM == "softpick":  # online max (≥ 0): rescale what was summed under the old shift
            tile_max = tl.max(s, 1)
            grows = tile_max > m
            arg = tl.where(grows, start_n + tl.argmax(s, 1), arg)
            m_new = tl.where(grows, tile_max, m)
            alpha = tl.exp(m - m_new)
            acc = acc * alpha[:, None]
            l = l * alpha
            m = m_new
        f, g = _fwd_terms(s, m, bias, zeta, gamma, NORM)
        if NORM == "symax" or NORM == "softpick":
            l += tl.sum(g, 1)
        if NORM == "clipped":
            acc_clip = tl.dot(g.to(v.dtype), v, acc_clip, input_precision=PRECISION)
        acc = tl.dot(f.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, acc_clip, l, m, arg


@triton.jit
def _elementwise_fwd(Q, K, V, C, Out, OutClip, Z, M, Arg,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                     stride_vb, stride_vh, stride_vt, H, T, scale, bias, zeta, gamma,
                     NORM: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    h, b = tl.program_id(1), tl.program_id(2).to(tl.int64)  # int64: b·stride_b overflows int32 for large batches
    bh = b * H + h
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    Out += bh * T * HEAD_DIM  # Out, OutClip (B, H, T, d) and Z, M, Arg (B, H, T) are contiguous
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = offs_m < T

    q = _load(Q, offs_m, offs_d, stride_qt, T, HEAD_DIM)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_clip = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # clipped's Õ; dead code for the others
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    arg = tl.zeros([BLOCK_M], dtype=tl.int32) - 1  # softpick's argmax key; -1: the max is the clamp at 0
    if NORM == "clipped":
        m = tl.load(M + bh * T + offs_m, mask=rows, other=0.0)
    else:
        m = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Keys left of this query block, then the diagonal block.
    acc, acc_clip, l, m, arg = _fwd_inner(acc, acc_clip, l, m, arg, q, K, V, stride_kt, stride_vt, offs_m,
                                          0, start_m, T, scale, bias, zeta, gamma,
                                          NORM, HEAD_DIM, BLOCK_N, BLOCK_D, False, PRECISION)
    acc, acc_clip, l, m, arg = _fwd_inner(acc, acc_clip, l, m, arg, q, K, V, stride_kt, stride_vt, offs_m,
                                          start_m, tl.minimum(start_m + BLOCK_M, T), T, scale, bias, zeta, gamma,
                                          NORM, HEAD_DIM, BLOCK_N, BLOCK_D, True, PRECISION)

    if NORM == "symax" or NORM == "softpick":
        z = tl.load(C + h) + l
        acc = acc / z[:, None]
        tl.store(Z + bh * T + offs_m, z, mask=rows)
    if NORM == "softpick":
        tl.store(M + bh * T + offs_m, m, mask=rows)
        tl.store(Arg + bh * T + offs_m, arg, mask=rows)
    ptrs, mask = _tile(Out, offs_m, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, acc.to(Out.dtype.element_ty), mask=mask)
    if NORM == "clipped":
        ptrs, mask = _tile(OutClip + bh * T * HEAD_DIM, offs_m, offs_d, HEAD_DIM, T, HEAD_DIM)
        tl.store(ptrs, acc_clip.to(OutClip.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _bwd_tile(q, k, v, do, z, m, arg, delta, c, offs_m, offs_n, scale, bias, zeta, gamma,
              NORM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """P and dS for one tile of queries offs_m × keys offs_n (module docstring)."""
    s = _scores(q, k, offs_m, offs_n, scale, NORM, CAUSAL, PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    if NORM == "symax":
        inv_z = 1.0 / z[:, None]
        sign = tl.where(s > 0, 1.0, 0.0) - tl.where(s < 0, 1.0, 0.0)
        p = tl.abs(s) * inv_z
        ds = sign * inv_z * (dp - delta[:, None])
    elif NORM == "sigmoid":
        p = tl.sigmoid(s + bias)
        ds = p * (1.0 - p) * dp
    elif NORM == "softpick":
        inv_z = 1.0 / z[:, None]
        e = tl.exp(s - m[:, None])
        p = tl.maximum(e - tl.exp(-m)[:, None], 0.0) * inv_z
        sign = tl.where(s > 0, 1.0, 0.0) - tl.where(s < 0, 1.0, 0.0)
        ds = e * inv_z * (tl.where(s > 0, dp, 0.0) - sign * delta[:, None])
        # ε·e^m: the denominator also depends on the row max
        ds -= tl.where(offs_n[None, :] == arg[:, None], (delta * c)[:, None] * inv_z, 0.0)
    else:  # clipped
        pi = tl.exp(s - m[:, None])
        u = (zeta - gamma) * pi + gamma
        p = tl.minimum(tl.maximum(u, 0.0), 1.0)
        ds = (zeta - gamma) * pi * (tl.where((u > 0.0) & (u < 1.0), dp, 0.0) - delta[:, None])
    return p, ds


@triton.jit
def _row_stats(Z, M, Arg, Delta, offs, T, NORM: tl.constexpr):
    """z, m, argmax and Δ of the query rows offs; rows past T get z = 1, Δ = 0 (no 0/0, no gradient)."""
    rows = offs < T
    z = tl.load(Z + offs, mask=rows, other=1.0) if NORM == "symax" or NORM == "softpick" else 1.0
    m = tl.load(M + offs, mask=rows, other=0.0) if NORM == "softpick" or NORM == "clipped" else 0.0
    arg = tl.load(Arg + offs, mask=rows, other=-1) if NORM == "softpick" else -1
    delta = tl.load(Delta + offs, mask=rows, other=0.0) if NORM != "sigmoid" else 0.0
    return z, m, arg, delta


@triton.jit
def _bwd_dkdv(dk, dv, k, v, Q, DO, Z, M, Arg, Delta, c, stride_qt, stride_dot, offs_n, lo, hi, T, scale,
              bias, zeta, gamma, NORM: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV of the keys offs_n from the query blocks in [lo, hi)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load(Q, offs_m, offs_d, stride_qt, T, HEAD_DIM)
        do = _load(DO, offs_m, offs_d, stride_dot, T, HEAD_DIM)
        z, m, arg, delta = _row_stats(Z, M, Arg, Delta, offs_m, T, NORM)
        p, ds = _bwd_tile(q, k, v, do, z, m, arg, delta, c, offs_m, offs_n, scale, bias, zeta, gamma,
                          NORM, CAUSAL, PRECISION)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dq(dq, q, do, z, m, arg, delta, c, K, V, stride_kt, stride_vt, offs_m, lo, hi, T, scale,
            bias, zeta, gamma, NORM: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of the queries offs_m from the key blocks in [lo, hi)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load(K, offs_n, offs_d, stride_kt, T, HEAD_DIM)
        v = _load(V, offs_n, offs_d, stride_vt, T, HEAD_DIM)
        _, ds = _bwd_tile(q, k, v, do, z, m, arg, delta, c, offs_m, offs_n, scale, bias, zeta, gamma,
                          NORM, CAUSAL, PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _elementwise_bwd(Q, K, V, C, DO, DQ, DK, DV, Z, M, Arg, Delta,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                     stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                     H, T, scale, bias, zeta, gamma,
                     NORM: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
                     BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """Program i owns keys [i·BLOCK_OUT, (i+1)·BLOCK_OUT) for dK, dV and the queries of the same range for dQ;
    its loops step BLOCK_IN at a time over the queries (keys) that see (are seen by) them."""
    start = tl.program_id(0) * BLOCK_OUT
    h, b = tl.program_id(1), tl.program_id(2).to(tl.int64)
    bh = b * H + h
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_dob + h * stride_doh
    DQ += bh * T * HEAD_DIM  # DQ, DK, DV (B, H, T, d) and Z, M, Arg, Delta (B, H, T) are contiguous
    DK += bh * T * HEAD_DIM
    DV += bh * T * HEAD_DIM
    # Unused row statistics are None (a constexpr): offset only the ones this NORM has.
    if NORM == "symax" or NORM == "softpick":
        Z += bh * T
    if NORM == "softpick" or NORM == "clipped":
        M += bh * T
    if NORM == "softpick":
        Arg += bh * T
    if NORM != "sigmoid":
        Delta += bh * T
    c = tl.load(C + h) if NORM == "softpick" else 0.0

    offs = start + tl.arange(0, BLOCK_OUT)
    offs_d = tl.arange(0, BLOCK_D)
    end = tl.minimum(start + BLOCK_OUT, T)

    # dK, dV: the diagonal block of queries, then every query block below it.
    k = _load(K, offs, offs_d, stride_kt, T, HEAD_DIM)
    v = _load(V, offs, offs_d, stride_vt, T, HEAD_DIM)
    dk = tl.zeros([BLOCK_OUT, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_OUT, BLOCK_D], dtype=tl.float32)
    dk, dv = _bwd_dkdv(dk, dv, k, v, Q, DO, Z, M, Arg, Delta, c, stride_qt, stride_dot, offs, start, end, T, scale,
                       bias, zeta, gamma, NORM, HEAD_DIM, BLOCK_IN, BLOCK_D, True, PRECISION)
    dk, dv = _bwd_dkdv(dk, dv, k, v, Q, DO, Z, M, Arg, Delta, c, stride_qt, stride_dot, offs, start + BLOCK_OUT,
                       T, T, scale, bias, zeta, gamma, NORM, HEAD_DIM, BLOCK_IN, BLOCK_D, False, PRECISION)
    ptrs, mask = _tile(DK, offs, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, (dk * scale).to(DK.dtype.element_ty), mask=mask)
    ptrs, mask = _tile(DV, offs, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, dv.to(DV.dtype.element_ty), mask=mask)

    # dQ: every key block left of the diagonal, then the diagonal block.
    q = _load(Q, offs, offs_d, stride_qt, T, HEAD_DIM)
    do = _load(DO, offs, offs_d, stride_dot, T, HEAD_DIM)
    z, m, arg, delta = _row_stats(Z, M, Arg, Delta, offs, T, NORM)
    dq = tl.zeros([BLOCK_OUT, BLOCK_D], dtype=tl.float32)
    dq = _bwd_dq(dq, q, do, z, m, arg, delta, c, K, V, stride_kt, stride_vt, offs, 0, start, T, scale,
                 bias, zeta, gamma, NORM, HEAD_DIM, BLOCK_IN, BLOCK_D, False, PRECISION)
    dq = _bwd_dq(dq, q, do, z, m, arg, delta, c, K, V, stride_kt, stride_vt, offs, start, end, T, scale,
                 bias, zeta, gamma, NORM, HEAD_DIM, BLOCK_IN, BLOCK_D, True, PRECISION)
    ptrs, mask = _tile(DQ, offs, offs_d, HEAD_DIM, T, HEAD_DIM)
    tl.store(ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launch configurations and the autograd.Function


# Shared memory one block may use, bytes, by compute capability (CUDA C++ Programming Guide); 99 KB elsewhere
# (8.6 and 8.9: A10, RTX 3090, L4, L40S, RTX 4090).
SHARED_MEMORY = {(8, 0): 163 * 1024, (8, 7): 163 * 1024, (9, 0): 227 * 1024}


def configs(norm, d, dtype, capability):
    """(forward, backward) launch configs of `norm`'s kernels for head_dim d and dtype on a GPU of this compute
    capability ((major, minor); None: Triton's interpreter). Chosen with benchmarks/kernel_compile.py so that on
    sm_80, sm_86 and sm_90 no fp16/bf16 kernel spills registers and none needs more shared memory than its target has
    (benchmarks/results/cuda-kernels.md): the fused-attention tutorial's shapes with 8 warps wherever the fp32
    accumulators (acc; dK, dV) are large, 64-key backward blocks (32 at d = 64), 32-key forward blocks at d > 64 and half the query
    block for clipped's forward there, which holds a second accumulator. fp32 takes small blocks, as its 3xTF32 dots need three times the
    registers and shared memory (some spilling is its price), and a single stage at d > 64 where shared memory is
    99 KB. In the interpreter every tile op is a numpy call, so small blocks are fast; they are still unequal (and a
    backward block spans two of its inner blocks), so that the tests exercise the same block structure as the GPU."""
    if capability is None:
        return dict(BLOCK_M=32, BLOCK_N=16), dict(BLOCK_OUT=32, BLOCK_IN=16)
    if dtype == torch.float32:
        stages = 1 if d > 64 and SHARED_MEMORY.get(tuple(capability), 99 * 1024) < 112 * 1024 else 2
        return (dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=stages),
                dict(BLOCK_OUT=32, BLOCK_IN=16, num_warps=4, num_stages=2))
    if d <= 32:
        fwd = dict(BLOCK_M=128, BLOCK_N=64, num_warps=4)
    elif d <= 64:
        fwd = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8)
    else:
        fwd = dict(BLOCK_M=64 if norm == "clipped" else 128, BLOCK_N=64 if norm == "clipped" else 32, num_warps=8)
    # At d = 64, 64-key backward blocks spill a few bytes on sm_80 and sm_86 in any warp or stage count tried.
    bwd = dict(BLOCK_OUT=32, BLOCK_IN=32, num_warps=4) if 32 < d <= 64 else dict(BLOCK_OUT=64, BLOCK_IN=32, num_warps=8)
    return fwd | dict(num_stages=3), bwd | dict(num_stages=3)


def capability(device):
    """The compute capability configs() tunes for: the GPU's, or None in Triton's interpreter."""
    return None if INTERPRET else torch.cuda.get_device_capability(device)


def _bht_strides(x):
    """The (batch, head, time) strides of a (B, H, T, d) tensor; head_dim must be its unit-stride axis."""
    return x.stride()[:3]


def causal_lse(q, k, scale):
    """LSE_i = log Σ_{j≤i} e^(s_ij), (B, H, T) fp32, from aten's flash forward (kernels/softmax1.py picks the op for
    the device). Its CUDA ops want head_dim % 8 == 0: zero columns change no score. v is k: only the LSE is used."""
    d = q.size(-1)
    if d % 8:
        q, k = (F.pad(x, (0, -d % 8)) for x in (q, k))
    _, lse, _ = flash_backend(q).forward(q, k, k, scale)
    return lse[..., : q.size(-2)].float().contiguous()  # the memory-efficient kernel pads T to a multiple of 32


def constants(norm, q):
    """The compile-time arguments both kernels take besides their block sizes."""
    d = q.size(-1)
    return dict(NORM=norm, HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
                PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32")  # tf32 is moot for fp16/bf16


def forward_launch(q, k, v, c, norm, bias, zeta, gamma, capability):
    """What the forward kernel is launched with for these inputs on a GPU of this compute capability: (grid,
    arguments, keyword arguments, the tensors the backward needs). benchmarks/kernel_compile.py compiles from the
    same description, with meta tensors."""
    B, H, T, d = q.shape
    fwd, _ = configs(norm, d, q.dtype, capability)
    scale = d**-0.5
    row = lambda dtype=torch.float32: torch.empty(B, H, T, device=q.device, dtype=dtype)  # noqa: E731
    out = torch.empty(B, H, T, d, device=q.device, dtype=v.dtype)
    out_clip = torch.empty_like(out) if norm == "clipped" else None
    z = row() if norm in ("symax", "softpick") else None
    m = causal_lse(q, k, scale) if norm == "clipped" else row() if norm == "softpick" else None
    arg = row(torch.int32) if norm == "softpick" else None
    grid = (triton.cdiv(T, fwd["BLOCK_M"]), H, B)
    args = (q, k, v, c, out, out_clip, z, m, arg, *_bht_strides(q), *_bht_strides(k), *_bht_strides(v), H, T, scale,
            bias, zeta, gamma)
    return grid, args, constants(norm, q) | fwd, (out, out_clip, z, m, arg)


def backward_launch(q, k, v, c, do, out, out_clip, z, m, arg, norm, bias, zeta, gamma, capability):
    """What the backward kernel is launched with: (grid, arguments, keyword arguments, (dq, dk, dv), Δ)."""
    B, H, T, d = q.shape
    _, bwd = configs(norm, d, q.dtype, capability)
    delta_of = out_clip if out_clip is not None else out  # clipped: Δ̃ = rowsum(dO ∘ Õ)
    delta = None if norm == "sigmoid" else (do.float() * delta_of.float()).sum(-1)
    dq, dk, dv = (torch.empty(B, H, T, d, device=q.device, dtype=x.dtype) for x in (q, k, v))
    grid = (triton.cdiv(T, bwd["BLOCK_OUT"]), H, B)
    args = (q, k, v, c, do, dq, dk, dv, z, m, arg, delta, *_bht_strides(q), *_bht_strides(k), *_bht_strides(v),
            *_bht_strides(do), H, T, d**-0.5, bias, zeta, gamma)
    return grid, args, constants(norm, q) | bwd, (dq, dk, dv), delta


class ElementwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, c, norm, bias, zeta, gamma):
        ctx.scalars = (norm, bias, zeta, gamma)
        grid, args, kwargs, saved = forward_launch(q, k, v, c, *ctx.scalars, capability(q.device))
        _elementwise_fwd[grid](*args, **kwargs)
        ctx.save_for_backward(q, k, v, c, *saved)
        return saved[0]

    @staticmethod
    def backward(ctx, do):
        q, k, v, c, out, out_clip, z, m, arg = ctx.saved_tensors
        do = do if do.stride(-1) == 1 else do.contiguous()
        grid, args, kwargs, grads, delta = backward_launch(q, k, v, c, do, out, out_clip, z, m, arg, *ctx.scalars,
                                                           capability(q.device))
        _elementwise_bwd[grid](*args, **kwargs)
        dc = -(delta / z).sum(dim=(0, 2)) if ctx.needs_input_grad[3] else None
        return *grads, dc, None, None, None, None


def elementwise_attention(norm, q, k, v, c=None, bias=0.0, zeta=0.0, gamma=0.0):
    """Causal attention of q, k, v (B, H, T, d ≤ 128) with scale 1/√d and the elementwise normalizer `norm`:
    c (H,) the denominator's constant (η, ε), bias σ's shift, zeta and gamma clipped's stretch."""
    if norm not in NORMS:
        raise ValueError(f"unknown elementwise normalizer {norm!r}; valid: {', '.join(NORMS)}")
    if q.size(-1) > MAX_HEAD_DIM:
        raise ValueError(f"the {norm} kernel supports head_dim <= {MAX_HEAD_DIM}, got {q.size(-1)}")
    if max(q.size(0), q.size(1)) > MAX_GRID_YZ:  # the grid is (query blocks, heads, batch)
        raise ValueError(f"the {norm} kernel supports batch and heads <= {MAX_GRID_YZ} (CUDA's grid), got "
                         f"{q.size(0)} x {q.size(1)}: split the batch")
    if INTERPRET and q.dtype == torch.bfloat16:
        raise TypeError("Triton's interpreter (TRITON_INTERPRET=1) miscomputes bf16 dots: use fp16/fp32, or a GPU "
                        "without TRITON_INTERPRET")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return ElementwiseAttention.apply(q, k, v, c, norm, float(bias), float(zeta), float(gamma))


def symax_attention(q, k, v, eta):
    """symax, p_ij = |s_ij| / (η + Σ_j |s_ij|), η (H,) > 0 (a learned η gets its gradient)."""
    return elementwise_attention("symax", q, k, v, c=eta.float().contiguous())


def sigmoid_attention(q, k, v, bias):
    """sigmoid attention, p_ij = σ(s_ij + b)."""
    return elementwise_attention("sigmoid", q, k, v, bias=bias)


def softpick_attention(q, k, v, eps):
    """softpick, p_ij = ReLU(e^(s−m) − e^(−m)) / (Σ_j |e^(s−m) − e^(−m)| + ε), m = max(0, max_j s_ij)."""
    c = torch.full((q.size(1),), float(eps), device=q.device, dtype=torch.float32)
    return elementwise_attention("softpick", q, k, v, c=c)


def clipped_attention(q, k, v, zeta, gamma):
    """clipped softmax, p_ij = clip((ζ − γ)·softmax(s_i)_j + γ, 0, 1)."""
    return elementwise_attention("clipped", q, k, v, zeta=zeta, gamma=gamma)


def unavailable(norm, device_type, auto):
    """Why the family's kernel cannot (auto=False) or should not (auto=True: the reference is faster) run on this
    device; None if it can."""
    if INTERPRET and auto:  # on any device
        return (f"TRITON_INTERPRET=1 runs the {norm} kernel in Triton's interpreter, much slower than the "
                "reference")
    if not INTERPRET and device_type != "cuda":
        return (f"the {norm} Triton kernel needs a CUDA GPU (on CPU: set TRITON_INTERPRET=1 before importing kernels"
                " to run it in the slow interpreter)")
    return None
