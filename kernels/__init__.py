"""
Fused causal attention for each attn_norm: never materialises the T×T weights.

attn_impl (a config key):
    reference  the exact PyTorch formulas in model.py (fp32, materialises T×T)
    fused      the paths below; an error where one is not available
    auto       the fastest exact path: fused where available, else the reference (train.py logs which and why)

    softmax    SDPA                                         kernels/__init__.py
    softmax1   flash attention + an exact LSE identity      kernels/softmax1.py
    symax      a Triton kernel (CUDA; CPU only interpreted) kernels/symax.py
    diff       one SDPA call over both maps, λ outside      kernels/diff.py

Every path takes q, k of shape (B, H, T, d), v of shape (B, H, T, d) — for diff (B, H/2, T, 2d) — and returns
what the reference in model.py returns, with the same gradients.
"""

import torch.nn.functional as F

from .diff import diff_attention
from .softmax1 import softmax1_attention

ATTN_IMPLS = ("auto", "fused", "reference")


def softmax_attention(q, k, v, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


FUSED = {
    "softmax": softmax_attention,
    "softmax1": softmax1_attention,
    "diff": diff_attention,
}
try:
    from . import symax
    FUSED["symax"] = symax.symax_attention
except ImportError:  # no triton: symax takes the reference
    symax = None


def unavailable_reason(attn_norm, device_type, dropout_p, attn_impl="fused"):
    """Why the fused path cannot (attn_impl='fused') or should not (attn_impl='auto') run here; None if it can."""
    if attn_norm not in FUSED:
        return f"no fused kernel for attn_norm={attn_norm!r}" + (" (it needs triton)" if attn_norm == "symax" else "")
    if dropout_p > 0 and attn_norm != "softmax":
        return f"the {attn_norm} kernel has no attention dropout (dropout={dropout_p}); the reference applies it"
    if attn_norm == "softmax1" and device_type not in ("cpu", "cuda"):
        return f"softmax1 needs aten's CPU or CUDA flash attention, not {device_type}"
    if attn_norm == "diff" and device_type == "cpu" and attn_impl == "auto":
        return "on CPU the reference is faster for diff fwd+bwd up to T=512 (benchmarks/results/cpu-*.md)"
    if attn_norm == "symax" and symax.INTERPRET and attn_impl == "auto":  # on any device
        return "TRITON_INTERPRET=1 runs the symax kernel in Triton's interpreter, much slower than the reference"
    if attn_norm == "symax" and not symax.INTERPRET and device_type != "cuda":
        return ("the symax Triton kernel needs a CUDA GPU (on CPU: set TRITON_INTERPRET=1 before importing kernels"
                " to run it in the slow interpreter)")
    return None


def use_fused(attn_norm, attn_impl, device_type, dropout_p):
    if attn_impl == "reference":
        return False
    reason = unavailable_reason(attn_norm, device_type, dropout_p, attn_impl)
    if attn_impl == "fused" and reason:
        raise RuntimeError(f"attn_impl='fused' cannot run {attn_norm} attention on {device_type}: {reason}. "
                           "Use attn_impl='auto' (falls back to the reference) or 'reference'.")
    return reason is None


def describe(attn_norm, attn_impl, device_type, dropout_p):
    """One line for the logs: which function attention runs on this device, and why."""
    if use_fused(attn_norm, attn_impl, device_type, dropout_p):
        fn = FUSED[attn_norm]
        return f"fused ({fn.__module__}.{fn.__name__})"
    why = "asked for" if attn_impl == "reference" else unavailable_reason(attn_norm, device_type, dropout_p, attn_impl)
    return f"reference (model.reference_attention: {why})"


def attention(attn_norm, q, k, v, dropout_p=0.0, **norm_args):
    """The fused path; norm_args: eta (H,) for symax, lam (0-dim) for diff. Only softmax takes dropout."""
    reason = unavailable_reason(attn_norm, q.device.type, dropout_p)
    if reason:
        raise RuntimeError(f"no fused {attn_norm} attention here: {reason}")
    if dropout_p:
        norm_args["dropout_p"] = dropout_p
    return FUSED[attn_norm](q, k, v, **norm_args)
