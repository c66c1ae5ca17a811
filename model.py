"""
A GPT-2 language model whose attention normalizer is a config flag (attn_norm).

The architecture is nanoGPT's (pre-LN blocks, learned positions, GELU MLP, tied embeddings) with the same
module names, so checkpoints and tooling map one to one. Only the normalizer inside attention changes:

    softmax   p_i = exp(s_i) / Σ_j exp(s_j)
    softmax1  p_i = exp(s_i) / (1 + Σ_j exp(s_j))        a head may attend to nothing
    symax     p_i = |s_i| / (η + Σ_j |s_j|)               η = 1 by default, optionally learned per head
    diff      (softmax(Q1K1ᵀ) − λ·softmax(Q2K2ᵀ)) V       Differential Transformer (Ye et al. 2024)

with s = q·k/√d over the causal window. Each normalizer is a small function from scores to weights in
ATTN_NORMS: that function is the exact reference (the test oracle and the CPU path); kernels/ holds the
fused paths. A new variant is one function and one registry line.
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

import kernels

# ----------------------------------------------------------------------------------------------------------
# Normalizers: scores s (B, H, T, T) in fp32 and a causal mask (T, T, True = visible) -> weights (B, H, T, T).


def softmax_weights(s, mask):
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)


def softmax1_weights(s, mask):
    # A virtual extra logit fixed at 0: shift by m = max(0, max_j s_j) so that neither exp(s - m) nor the
    # virtual term exp(-m) can overflow. (Shifting by max_j s_j alone and adding 1 is a different function
    # whose weights always sum to >= 0.5.)
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).clamp(min=0)
    e = torch.exp(s - m)
    return e / (torch.exp(-m) + e.sum(dim=-1, keepdim=True))


def symax_weights(s, mask, eta):
    # eta: (H,) positive. Masked positions weigh exactly 0 (|-inf| would be inf, so mask after abs).
    a = s.abs().masked_fill(~mask, 0.0)
    return a / (eta.view(-1, 1, 1) + a.sum(dim=-1, keepdim=True))


def diff_weights(s, mask, lam):
    # Scores of the interleaved sub-heads (B, H, T, T): sub-heads 2i and 2i+1 give the two softmax maps of
    # differential head i, combined as A1 - λ·A2 into (B, H/2, T, T). DiffAttention below does the rest.
    a = softmax_weights(s, mask)
    return a[:, 0::2] - lam * a[:, 1::2]


ATTN_NORMS = {
    "softmax": softmax_weights,
    "softmax1": softmax1_weights,
    "symax": symax_weights,
    "diff": diff_weights,
}


def reference_weights(q, k, weights_fn, **norm_args):
    """The causal attention weights, in fp32 whatever the autocast dtype (float64 stays float64)."""
    T = q.size(-2)
    dt = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        s = (q.to(dt) @ k.to(dt).transpose(-2, -1)) / math.sqrt(q.size(-1))
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return weights_fn(s, mask, **norm_args)


def reference_attention(q, k, v, weights_fn, dropout_p=0.0, **norm_args):
    """Exact causal attention that materialises the T×T weights."""
    p = F.dropout(reference_weights(q, k, weights_fn, **norm_args), dropout_p)
    with torch.autocast(q.device.type, enabled=False):
        return (p @ v.to(p.dtype)).to(v.dtype)


# ----------------------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    attn_norm: str = "softmax"  # one of ATTN_NORMS
    attn_impl: str = "auto"  # auto | fused | reference (see kernels/)
    symax_eta: float = 1.0
    symax_learn_eta: bool = False

    def __post_init__(self):
        if self.attn_norm not in ATTN_NORMS:
            raise ValueError(f"unknown attn_norm {self.attn_norm!r}; valid: {', '.join(ATTN_NORMS)}")
        if self.attn_impl not in kernels.ATTN_IMPLS:
            raise ValueError(f"unknown attn_impl {self.attn_impl!r}; valid: {', '.join(kernels.ATTN_IMPLS)}")
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.attn_norm == "diff" and self.n_head % 2:
            raise ValueError(f"attn_norm='diff' pairs heads, so n_head must be even (got {self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.symax_eta <= 0:
            raise ValueError(f"symax_eta must be > 0, got {self.symax_eta}")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1's nn.LayerNorm(bias=))."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.attn_norm, self.attn_impl = config.attn_norm, config.attn_impl
        if config.attn_norm == "symax":
            # η > 0 per head; learned in log space so it stays positive.
            log_eta = torch.full((config.n_head,), math.log(config.symax_eta))
            if config.symax_learn_eta:
                self.log_eta = nn.Parameter(log_eta)
            else:
                self.register_buffer("log_eta", log_eta, persistent=False)

    def norm_args(self):
        """Extra tensors the normalizer needs, shared by the reference and the fused path."""
        return {"eta": self.log_eta.exp()} if self.attn_norm == "symax" else {}

    def qkv(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        return [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]  # (B, H, T, d)

    def use_fused(self, x, dropout_p):
        return kernels.use_fused(self.attn_norm, self.attn_impl, x.device.type, dropout_p)

    def attend(self, q, k, v, dropout_p):
        if self.use_fused(q, dropout_p):
            return kernels.attention(self.attn_norm, q, k, v, dropout_p, **self.norm_args())
        return reference_attention(q, k, v, ATTN_NORMS[self.attn_norm], dropout_p, **self.norm_args())

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x)
        y = self.attend(q, k, v, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @torch.no_grad()
    def attention_probs(self, x):
        """The (B, H, T, T) attention weights for analysis (for diff: (B, H/2, T, T), the signed A1 - λ·A2)."""
        q, k, _ = self.qkv(x)
        return reference_weights(q, k, ATTN_NORMS[self.attn_norm], **self.norm_args())


class DiffAttention(CausalSelfAttention):
    """Differential attention in the official code's layout: sub-heads (2i, 2i+1) of q and k are (Q1, Q2)
    and (K1, K2) of head i, whose value head is 2d wide; H/2 heads in all, so c_attn/c_proj keep the shapes
    of softmax attention with H heads."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        d = config.n_embd // config.n_head
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(d) * 0.1) for _ in range(4)
        )
        self.subln = nn.RMSNorm(2 * d, eps=1e-5, elementwise_affine=True)

    def norm_args(self):
        lam1 = torch.exp(torch.dot(self.lambda_q1, self.lambda_k1).float())
        lam2 = torch.exp(torch.dot(self.lambda_q2, self.lambda_k2).float())
        return {"lam": lam1 - lam2 + self.lambda_init}

    def qkv(self, x):
        q, k, v = super().qkv(x)
        B, H, T, d = v.shape
        v = v.transpose(1, 2).reshape(B, T, H // 2, 2 * d).transpose(1, 2)  # (B, H/2, T, 2d)
        return q, k, v

    def attend(self, q, k, v, dropout_p):
        y = super().attend(q, k, v, dropout_p)
        return (self.subln(y.float()) * (1 - self.lambda_init)).type_as(y)  # fp32 norm, as under autocast


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        attention = DiffAttention if config.attn_norm == "diff" else CausalSelfAttention
        self.attn = attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# Peak dense bf16 tensor-core FLOP/s by device name (first match wins: specific names first), for MFU.
# No entry (e.g. CPU): MFU is not reported.
PEAK_FLOPS = {"A100": 312e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "L40S": 362e12,
              "A10G": 70e12, "L4": 121e12, "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device_name):
    return next((f for key, f in PEAK_FLOPS.items() if key in device_name), None)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (https://paperswithcode.com/method/weight-tying): one matrix embeds and un-embeds.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: the residual stream sums 2·n_layer of them.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are subtracted by default (token ones are tied to lm_head)."""
        n_params = sum(p.numel() for p in self.parameters())
        return n_params - self.transformer.wpe.weight.numel() if non_embedding else n_params

    def forward(self, idx, targets=None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size {self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: only the last position's logits are needed
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # Decay every matrix (matmul weights, embeddings); not biases, norms, λ or η.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B. diff's value heads
        are 2d wide, so its attention-times-value matmul costs twice softmax's: 1.5x the attention FLOPs."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        attn = 12 * L * H * Q * T * (1.5 if cfg.attn_norm == "diff" else 1.0)
        return 6 * self.get_num_params() + attn

    def estimate_mfu(self, tokens_per_iter, dt, device_name):
        """Model FLOPs utilization: achieved FLOP/s over the device's peak bf16; None if the peak is unknown."""
        peak = peak_flops(device_name)
        return None if peak is None else self.flops_per_token() * tokens_per_iter / dt / peak

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after the (b, t) prompt idx; call model.eval() first."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
