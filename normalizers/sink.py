"""
sink, a learned sink logit per head (as in OpenAI's gpt-oss): p_ij = exp(s_ij) / (exp(b_h) + Σ_j exp(s_ij)).

A virtual key with logit b_h and no value, seen by every query: the weight it takes, σ(b_h − LSE_i), is the quiet
mass of query i, which attends to nothing with it. b starts at 0, i.e. at softmax1 (which is this with b frozen at
0, normalizers/softmax1.py), and is not weight-decayed (a 1-D parameter). Fused: flash attention plus an exact LSE
identity, O·σ(LSE − b), with the gradient for b (kernels/softmax1.py, shared with softmax1 and kvbias).
"""

import torch
import torch.nn as nn

from kernels.softmax1 import sink_attention

from .spec import Normalizer


def virtual_key_weights(s, mask, b):
    """The softmax over each causal row of s plus one virtual logit b (broadcastable to (..., T, 1)), split into
    (weights over the real keys (..., T, T), weight of the virtual key (..., T, 1)). Shifting by
    m = max(b, max_j s_j) keeps both exp(s - m) and exp(b - m) from overflowing, for any b, and a row whose scores
    are all -inf gives the virtual key everything instead of 0/0."""
    s = s.masked_fill(~mask, float("-inf"))
    m = torch.maximum(s.amax(dim=-1, keepdim=True), b).detach()  # any m is exact; no gradient through the shift
    e, e_virtual = torch.exp(s - m), torch.exp(b - m)
    z = e_virtual + e.sum(dim=-1, keepdim=True)
    return e / z, e_virtual / z


class Sink(Normalizer):
    name = "sink"
    formula = "p_i = exp(s_i) / (exp(b_h) + Σ_j exp(s_j)), b_h learned per head"
    color = "tab:cyan"
    fused = staticmethod(sink_attention)

    def add_parameters(self, attn, cfg, layer_idx):
        attn.sink = nn.Parameter(torch.zeros(cfg.n_head))

    def args(self, attn, x):
        return {"sink": attn.sink}

    def weights(self, s, mask, sink=None):
        b = s.new_zeros(()) if sink is None else sink.to(s.dtype).view(-1, 1, 1)
        return virtual_key_weights(s, mask, b)[0]

    def fused_unavailable(self, device_type, auto):
        if device_type not in ("cpu", "cuda"):
            return f"{self.name} needs aten's CPU or CUDA flash attention, not {device_type}"
        return None
