"""
What a normalizer is: one `Normalizer` subclass per attn_norm, in its own file, registered in __init__.py.

A spec says everything the rest of the repo needs to know about a normalizer, so that nothing outside the spec
files compares attn_norm with a literal name:

    weights(s, mask, **args)      the exact reference: scores (B, H, T, T) -> weights over the real keys, fp32 or
                                  fp64; the test oracle's counterpart and the CPU path (it materialises T×T)
    reference(q, k, v, p, **args) exact attention from those weights (override when there is more than P·V;
                                  the elementwise family, normalizers/elementwise.py, derives both from terms())
    fused(q, k, v, **args)        the path that never builds T×T (None: there is none); fused_unavailable() says
                                  where it cannot or should not run (device, interpreter); fused_dropout whether
                                  it takes attention dropout, fused_max_head_dim the largest head_dim it takes
    settings                      its own GPTConfig fields (name -> Setting), with defaults and validation
    add_parameters(attn, cfg, i)  the parameters/buffers it adds to layer i's attention module, with their init
    no_weight_decay               names of its ≥2-D parameters AdamW must not decay (1-D ones never are)
    args(attn, x)                 the tensors its weights need (η, λ, ...) from those parameters
    qkv_sizes / split_heads       its head layout (diff pairs heads, diff2 has twice the query heads)
    merge_heads(attn, y)          what happens to the heads' outputs before c_proj (diff's per-head RMSNorm)
    attn_flops                    its attention FLOPs relative to softmax attention with the same n_head (MFU)
    color, formula                how the reports draw and describe it
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Setting:
    """One normalizer-specific GPTConfig field. check(value, cfg) returns an error message or None.
    A default of None means 'derived from other settings' (say so in help)."""
    type: type
    default: object
    help: str
    check: Optional[Callable] = None


def positive(value, cfg):
    return None if value > 0 else "must be > 0"


def at_least_fp32(x):
    """x in fp32, or in its own dtype where that is wider: fp64 stays fp64 (the float64 oracles' tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def causal_scores(q, k):
    """s = q·kᵀ/√d in fp32 (fp64 stays fp64), with the causal mask (T, T, True = visible)."""
    T = q.size(-2)
    s = (at_least_fp32(q) * q.size(-1) ** -0.5) @ at_least_fp32(k).transpose(-2, -1)  # scaling q: T·d, not T·T
    return s, torch.ones(T, T, dtype=torch.bool, device=q.device).tril()


# Masking (B, H, T, T) by arithmetic with a (T, T) mask is several times faster on CPU than masked_fill or where
# over a broadcast bool mask. It needs the masked scores to be finite (±inf·0 and inf − inf are NaN), which q·k is
# for finite q and k; a non-finite score makes its row non-finite, loudly, never silently wrong.
def zero_where_masked(x, mask):
    return x * mask.to(x.dtype)


def minus_inf_where_masked(x, mask):
    return x + torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))


def reference_weights(q, k, weights_fn, **args):
    """The causal attention weights, in fp32 whatever the autocast dtype (float64 stays float64)."""
    with torch.autocast(q.device.type, enabled=False):
        return weights_fn(*causal_scores(q, k), **args)


def weighted_values(p, v, dropout_p=0.0, z=None):
    """dropout(p)·V, divided row by row by z (B, H, T, 1) when given, in p's dtype; cast back to v's."""
    with torch.autocast(p.device.type, enabled=False):
        y = F.dropout(p, dropout_p) @ v.to(p.dtype)  # dropout scales single weights: it commutes with 1/z
        return (y if z is None else y / z).to(v.dtype)


def reference_attention(q, k, v, weights_fn, dropout_p=0.0, **args):
    """Exact causal attention that materialises the T×T weights."""
    return weighted_values(reference_weights(q, k, weights_fn, **args), v, dropout_p)


class Normalizer:
    name = ""
    formula = ""  # one line, for the docs and the reports
    color = "tab:gray"
    settings = {}
    attn_flops = 1.0
    no_weight_decay = ()
    fused = None
    missing_fused = ""  # why fused is None, for the error message (e.g. " (it needs triton, ...)")
    fused_dropout = False  # whether the fused path takes dropout_p (else dropout runs the reference)
    fused_max_head_dim = None  # the largest head_dim the fused path takes (None: any)

    # ---- configuration ----
    def check(self, cfg):
        """Raise ValueError for an architecture this normalizer cannot build."""

    # ---- the attention layer ----
    def qkv_sizes(self, cfg):
        """Widths of q, k, v in c_attn's output, laid out [q | k | v]."""
        return cfg.n_embd, cfg.n_embd, cfg.n_embd

    def split_heads(self, q, k, v, n_head):
        """(B, T, width) each -> (B, heads, T, head_dim)."""
        B, T, _ = q.shape
        return [t.view(B, T, n_head, -1).transpose(1, 2) for t in (q, k, v)]

    def add_parameters(self, attn, cfg, layer_idx):
        pass

    def args(self, attn, x):
        return {}

    def merge_heads(self, attn, y):
        return y

    # ---- the math ----
    def weights(self, s, mask, **args):
        raise NotImplementedError

    def reference(self, q, k, v, dropout_p=0.0, **args):
        return reference_attention(q, k, v, self.weights, dropout_p, **args)

    def probs(self, q, k, **args):
        """The weights over the real keys, for analysis (the mass a query puts elsewhere is its quiet mass)."""
        return reference_weights(q, k, self.weights, **args)

    def fused_unavailable(self, device_type, auto):
        """Why the fused path cannot (auto=False) or should not (auto=True: the reference is faster) run on this
        device; None if it can."""
        return None
