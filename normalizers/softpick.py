"""
softpick, the rectified softmax (Zuhri et al. 2025, "Softpick: No Attention Sink, No Massive Activations with
Rectified Softmax"): p_ij = ReLU(e^s_ij − 1) / (Σ_j |e^s_ij − 1| + ε). Keys with s ≤ 0 weigh exactly 0, yet count in
the denominator; a row whose every score is ≤ 0 attends to nothing (all-zero weights, no NaN).

Computed max-shifted as the official naive_softpick_attn.py: with m the row max,
ReLU(e^(s−m) − e^(−m)) / (Σ_j |e^(s−m) − e^(−m)| + ε), i.e. ε is effectively ε·e^m (and so is its gradient through
the max). m is clamped at 0: a row whose max is ≤ 0 has all-zero numerators under either shift, so this is the same
function, and e^(−m) cannot overflow for very negative rows.
"""

import torch

from .elementwise import ElementwiseNormalizer
from .spec import Setting, positive, zero_where_masked


class SoftpickTerms(torch.autograd.Function):
    """(s, mask, ε) -> (ReLU(e), Σ_j |e| + ε) with e = e^(s−m) − e^(−m), m = max(0, max_j s), and the backward
    written out: autograd's would keep more T×T tensors and take more passes over them, and on CPU each pass costs.

    With x = e^(s−m): ds = x·(dr·[e > 0] + dz·sign(e)) = dr·ReLU(a) + dz·a for a = sign(e)·x, the one T×T tensor
    saved. The shift cancels between numerator and denominator except in ε·e^m, so the max's own gradient is ε·dz
    on the argmax key, shared by ties, none when m = 0 is the clamp: the argmax keys are those with a = 1 (x = 1 and
    e = 1 − e^(−m) > 0), found as floor(ReLU(a)) = 1 since a ≤ 1. Masked keys have s = 0, hence e = 0 and a = 0: no
    weight and no gradient."""

    @staticmethod
    def forward(ctx, s, mask, eps):
        s = zero_where_masked(s, mask)  # e^0 − 1 = 0: a masked key adds nothing to either sum
        m = s.amax(dim=-1, keepdim=True).clamp_(min=0)
        x = s.sub_(m).exp_()
        e = x - torch.exp(-m)
        f, z = torch.relu(e), e.abs().sum(dim=-1, keepdim=True).add_(eps)
        ctx.save_for_backward(e.sign_().mul_(x))
        ctx.eps = eps
        return f, z

    @staticmethod
    def backward(ctx, dr, dz):
        a, = ctx.saved_tensors
        ds = torch.relu(a)
        argmax = torch.floor(ds)
        ds.mul_(dr).addcmul_(a, dz)
        return ds.addcmul_(argmax, dz * ctx.eps / argmax.sum(dim=-1, keepdim=True).clamp_(min=1)), None, None


class Softpick(ElementwiseNormalizer):
    name = "softpick"
    formula = "p_i = ReLU(e^s_i − 1) / (Σ_j |e^s_j − 1| + ε)"
    color = "tab:purple"
    settings = {
        "softpick_eps": Setting(float, 1e-8, "softpick's ε > 0 in the (max-shifted) denominator", positive),
    }

    def add_parameters(self, attn, cfg, layer_idx):
        attn.softpick_eps = cfg.softpick_eps

    def args(self, attn, x):
        return {"eps": attn.softpick_eps}

    def terms(self, s, mask, eps):
        return SoftpickTerms.apply(s, mask, eps)
