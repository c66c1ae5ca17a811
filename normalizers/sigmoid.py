"""
sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention";
apple/ml-sigmoid-attention): p_ij = σ(s_ij + b), every weight on its own, nothing normalises a row. b = −ln(n)
keeps the early rows' total weight near softmax's 1 (their configs: −ln 2048 = −7.62); here n = block_size.
Fused: the elementwise Triton kernel family (kernels/elementwise.py) on CUDA; on CPU only in Triton's interpreter.
"""

import math

import torch

from .spec import Normalizer, Setting

try:
    from kernels import elementwise as kernel
except ImportError:  # no triton: sigmoid takes the reference
    kernel = None


class Sigmoid(Normalizer):
    name = "sigmoid"
    formula = "p_i = σ(s_i + b)"
    color = "tab:brown"
    settings = {
        "sigmoid_bias": Setting(float, None, "sigmoid attention's bias b; None: −ln(block_size), the paper's −ln n"),
    }
    fused = staticmethod(kernel.sigmoid_attention) if kernel else None
    missing_fused = " (it needs triton)"

    def add_parameters(self, attn, cfg, layer_idx):
        attn.sigmoid_bias = -math.log(cfg.block_size) if cfg.sigmoid_bias is None else cfg.sigmoid_bias

    def args(self, attn, x):
        return {"bias": attn.sigmoid_bias}

    def weights(self, s, mask, bias):
        return torch.sigmoid(s + bias).masked_fill(~mask, 0.0)

    def fused_unavailable(self, device_type, auto):
        return kernel.unavailable(self.name, device_type, auto)
