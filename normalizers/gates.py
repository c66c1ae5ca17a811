"""
Output gates (attn_gate), orthogonal to attn_norm: each head's output is multiplied, before c_proj, by a sigmoid gate
computed per token from x, the attention input (ln_1's output). The gate's logits come from a module `c_gate` of the
attention layer, (B, T, C) -> (B, T, G), and σ(logits) multiplies the heads' outputs (B, heads, T, width) with one
gate per head (G = heads) or per channel (G = n_embd):

    none            no gate, no parameters
    headwise        Qwen's G1 gate (Qiu et al. 2025, "Gated Attention for Large Language Models"), one per head:
                    c_gate = Linear(n_embd, heads), bias as the config's `bias`, the model's Linear init
    elementwise     the same, one gate per channel: c_gate = Linear(n_embd, n_embd)
    headwise_slice  Qualcomm's conditional per-token gate (Bondarenko et al. 2023, "Quantizable Transformers"): head
                    h's gate is σ(w_h·x_h + b_h) from its own slice x_h of x, as wide as the head; c_gate.weight
                    (heads, width) ~ N(0, 0.02), c_gate.bias (heads,) = logit(0.25), their attn_gate_init

"heads" are the heads that reach c_proj, in the normalizer's own layout (diff: n_head/2 heads 2d wide).
"""

import math

import torch
import torch.nn as nn

from .spec import Setting


def output_heads(spec, cfg):
    """How many heads the normalizer outputs, i.e. its value heads, read off its own split_heads."""
    q, k, v = (torch.empty(1, 1, w, device="meta") for w in spec.qkv_sizes(cfg))
    return spec.split_heads(q, k, v, cfg.n_head)[2].size(1)


class SliceGate(nn.Module):
    """One logit per head from that head's slice of x: (B, T, heads·width) -> (B, T, heads)."""

    def __init__(self, heads, width, init):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(heads, width) * 0.02)
        self.bias = nn.Parameter(torch.full((heads,), math.log(init / (1 - init))))

    def forward(self, x):
        return (x.unflatten(-1, self.weight.shape) * self.weight).sum(-1) + self.bias


class Gate:
    name = "none"
    formula = "no gate"

    def make(self, cfg, heads):
        """The c_gate module, (B, T, n_embd) -> gate logits (B, T, heads or n_embd); None: no gate."""
        return None

    def add_parameters(self, attn, cfg):
        module = self.make(cfg, output_heads(attn.normalizer, cfg))
        if module is not None:
            attn.c_gate = module

    def apply(self, attn, x, y):
        """y (B, heads, T, width) gated by σ(c_gate(x)) (B, T, G), G = heads or heads·width."""
        if not hasattr(attn, "c_gate"):
            return y
        B, heads, T, _ = y.shape
        gate = torch.sigmoid(attn.c_gate(x)).view(B, T, heads, -1).transpose(1, 2)
        return y * gate.to(y.dtype)


class Headwise(Gate):
    name = "headwise"
    formula = "y_h ← y_h · σ(x·W_g + b_g)_h, W_g: n_embd → heads"

    def make(self, cfg, heads):
        return nn.Linear(cfg.n_embd, heads, bias=cfg.bias)


class Elementwise(Gate):
    name = "elementwise"
    formula = "y ← y ⊙ σ(x·W_g + b_g), W_g: n_embd → n_embd"

    def make(self, cfg, heads):
        return nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)


class HeadwiseSlice(Gate):
    name = "headwise_slice"
    formula = "y_h ← y_h · σ(w_h·x_h + b_h), x_h head h's slice of x"

    def make(self, cfg, heads):
        return SliceGate(heads, cfg.n_embd // heads, init=0.25)


GATES = {gate.name: gate for gate in (Gate(), Headwise(), Elementwise(), HeadwiseSlice())}


def check_gate(value, cfg):
    return None if value in GATES else f"must be one of {', '.join(GATES)}"


SETTINGS = {"attn_gate": Setting(str, "none", "output gate per head or channel: " + ", ".join(GATES), check_gate)}


def get(attn_gate):
    return GATES[attn_gate]
