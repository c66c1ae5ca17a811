"""
Fused causal attention for each attn_norm: never materialises the T×T weights.

attn_impl (a config key):
    reference  the exact PyTorch formulas in model.py (fp32, materialises T×T)
    fused      the paths below; an error where one is not available
    auto       fused where available, else the reference (train.py logs which and why)

Every path takes q, k of shape (B, H, T, d), v of shape (B, H, T, d) — for diff (B, H/2, T, 2d) —
and returns what the reference in model.py returns.
"""

import torch.nn.functional as F

ATTN_IMPLS = ("auto", "fused", "reference")


def softmax_attention(q, k, v, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


FUSED = {
    "softmax": softmax_attention,
}


def unavailable_reason(attn_norm, device_type, dropout_p):
    """Why the fused path cannot run here, or None when it can."""
    if attn_norm not in FUSED:
        return f"no fused kernel for attn_norm={attn_norm!r} yet"
    return None


def use_fused(attn_norm, attn_impl, device_type, dropout_p):
    if attn_impl == "reference":
        return False
    reason = unavailable_reason(attn_norm, device_type, dropout_p)
    if attn_impl == "fused" and reason:
        raise RuntimeError(f"attn_impl='fused' cannot run: {reason}. Use attn_impl=auto or reference.")
    return reason is None


def describe(attn_norm, attn_impl, device_type, dropout_p):
    """One line for the logs: which path attention takes on this device, and why."""
    if attn_impl == "reference":
        return "reference (asked for)"
    reason = unavailable_reason(attn_norm, device_type, dropout_p)
    return f"reference ({reason})" if reason else f"fused ({FUSED[attn_norm].__name__})"


def attention(attn_norm, q, k, v, dropout_p=0.0, **norm_args):
    return FUSED[attn_norm](q, k, v, dropout_p, **norm_args)
