"""
sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention";
apple/ml-sigmoid-attention): p_ij = σ(s_ij + b), every weight on its own, nothing normalises a row. b = −ln(n)
keeps the early rows' total weight near softmax's 1 (their configs: −ln 2048 = −7.62); here n = block_size.
"""

import math

from .elementwise import ElementwiseNormalizer
from .spec import Setting, zero_where_masked


class Sigmoid(ElementwiseNormalizer):
    name = "sigmoid"
    formula = "p_i = σ(s_i + b)"
    color = "tab:brown"
    settings = {
        "sigmoid_bias": Setting(float, None, "sigmoid attention's bias b; None: −ln(block_size), the paper's −ln n"),
    }

    def add_parameters(self, attn, cfg, layer_idx):
        attn.sigmoid_bias = -math.log(cfg.block_size) if cfg.sigmoid_bias is None else cfg.sigmoid_bias

    def args(self, attn, x):
        return {"bias": attn.sigmoid_bias}

    def terms(self, s, mask, bias):
        return zero_where_masked((s + bias).sigmoid_(), mask), None  # in place: sigmoid's backward needs only its output
