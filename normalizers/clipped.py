"""
clipped softmax (Bondarenko et al. 2023, "Quantizable Transformers"; Qualcomm's outlier-free-transformers):
p = clip((ζ − γ)·softmax(s) + γ, 0, 1). With γ < 0 small softmax weights become exact zeros, so a head can do
nothing without pushing its logits to ±inf. ζ = clip_zeta, γ = −clip_alpha / block_size (their OPT setting
γ = −α/T).
Fused: aten's flash forward gives the LSE, then the elementwise kernel family's.
"""

import torch.nn.functional as F

from .elementwise import ElementwiseNormalizer
from .softmax import causal_softmax
from .spec import Setting


def at_least_one(value, cfg):
    return None if value >= 1 else "must be >= 1 (ζ < 1 would cap every weight below 1)"


def non_negative(value, cfg):
    return None if value >= 0 else "must be >= 0 (γ = −clip_alpha/block_size must be ≤ 0)"


class Clipped(ElementwiseNormalizer):
    name = "clipped"
    formula = "p_i = clip((ζ − γ)·softmax(s)_i + γ, 0, 1)"
    color = "tab:olive"
    settings = {
        "clip_zeta": Setting(float, 1.0, "clipped softmax's stretch ζ >= 1", at_least_one),
        "clip_alpha": Setting(float, 12.0, "clipped softmax's α >= 0: γ = −α/block_size", non_negative),
    }

    def add_parameters(self, attn, cfg, layer_idx):
        attn.clip_zeta, attn.clip_gamma = cfg.clip_zeta, -cfg.clip_alpha / cfg.block_size

    def args(self, attn, x):
        return {"zeta": attn.clip_zeta, "gamma": attn.clip_gamma}

    def terms(self, s, mask, zeta, gamma):
        u = causal_softmax(s, mask).mul(zeta - gamma).add_(gamma)
        # clip to [0, 1] (masked: γ ≤ 0 -> exactly 0) with hardtanh: its backward is one fused pass, clamp's four
        return F.hardtanh_(u, 0.0, 1.0), None

    def fused_unavailable(self, device_type, auto):
        if device_type not in ("cpu", "cuda"):
            return f"clipped needs aten's CPU or CUDA flash attention for its LSE, not {device_type}"
        return super().fused_unavailable(device_type, auto)
