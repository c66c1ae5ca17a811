"""
A GPT-2 language model whose attention normalizer is a config flag (attn_norm).

The architecture is nanoGPT's (pre-LN blocks, learned positions, GELU MLP, tied embeddings) with the same
module names, so checkpoints and tooling map one to one. The block can instead be LLaMA's, by settings (pos_emb,
norm, mlp, qk_norm; config/llama_style.py), so that a finding can be checked on a modern block. Each
normalizer is a spec in normalizers/ (its exact reference, its fused path, its parameters, its head layout and
its settings); this file asks the registry, normalizers.NORMALIZERS, for the one a config names.
"""

import dataclasses
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

import normalizers
from normalizers.spec import at_least_fp32


@dataclass
@normalizers.with_settings  # + every normalizer's own settings (symax_eta, ...), declared in its spec
class GPTConfig:
    # model
    block_size: int = 1024  # context length in tokens
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout of residual branches and embeddings, and of attention weights unless attn_dropout
    attn_dropout: float = None  # dropout of attention weights; None: dropout's. Only softmax's fused path has it
    bias: bool = False  # biases in Linears and LayerNorms; GPT-2 has them, without is a bit better and faster
    attn_norm: str = "softmax"  # a name in normalizers.NORMALIZERS
    attn_impl: str = "auto"  # auto | fused | reference (normalizers/__init__.py)
    # block (defaults: GPT-2's; BLOCKS below names gpt2's and llama's)
    pos_emb: str = "learned"  # positions: learned (GPT-2's wpe), rope (rotary, on each head's q and k) or none
    rope_theta: float = 10000.0  # RoPE's base: pair i of a head turns by position · rope_theta^(-2i/head_dim)
    norm: str = "layernorm"  # the blocks' and the final norm: layernorm, or rmsnorm (no centring, no bias)
    mlp: str = "gelu"  # gelu (4·n_embd hidden), or swiglu (silu(gate)·up, hidden 2/3·4·n_embd rounded up to 64s)
    qk_norm: bool = False  # RMSNorm with a learned scale on each head's q and k, before RoPE and the scores

    def __post_init__(self):
        self.check()

    @classmethod
    def from_saved(cls, model_args):
        """The config of a checkpoint's model_args; settings added since it was saved take their defaults."""
        unknown = set(model_args) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"the checkpoint has model settings this code does not know ({', '.join(sorted(unknown))})"
                             f": it was written by another version of attnorm")
        return cls(**model_args)

    def check(self):
        """Raise ValueError for settings no model can be built from."""
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for key in ("dropout", "attn_dropout"):
            if getattr(self, key) is not None and not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        for key, valid in (("pos_emb", POS_EMBS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"{key} must be one of {', '.join(valid)}, got {getattr(self, key)!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_emb='rope' turns pairs of a head's channels, so the head width n_embd/n_head must be "
                             f"even (got {self.n_embd}/{self.n_head} = {self.n_embd // self.n_head})")
        normalizers.check_config(self)

    @property
    def attention_dropout(self):
        """The dropout probability of the attention weights in training."""
        return self.dropout if self.attn_dropout is None else self.attn_dropout


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1's nn.LayerNorm(bias=))."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def make_norm(config, width):
    """The norm the config names: GPT-2's LayerNorm, or torch's RMSNorm (LLaMA's: no centring, no bias)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=1e-5)
    return LayerNorm(width, bias=config.bias)


class Rotary(nn.Module):
    """RoPE (Su et al. 2021, RoFormer, eq. 34): turns each pair (x_2i, x_2i+1) of a head's q or k by the angle
    t·θ^(-2i/d) of its position t, so that q_t·k_s depends on t − s only. Adjacent channels pair up as in the paper,
    Meta's LLaMA and the Differential Transformer's code (interleaved=True). In eager mode, as in Meta's LLaMA, a pair
    is a complex number and the turn one complex multiplication (one kernel each way, where real arithmetic takes
    several); under torch.compile the same turn is written in real arithmetic, since inductor has no complex kernels
    and would run the multiplication alone between its fused ones. In fp32 at least. No parameters; the table of
    (cos, sin) is computed once in float64 and cached per device and precision (fp32 for fp32/bf16/fp16 q)."""

    def __init__(self, head_dim, block_size, theta):
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # (block_size, d/2)
        self.cos_sin = torch.stack((angles.cos(), angles.sin()), dim=-1)  # (block_size, d/2, 2)
        self.tables = {}

    def table(self, T, device, dtype):
        """The first T positions' (cos, sin) of each pair's angle, (T, d/2, 2), in dtype's precision, at least fp32."""
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if (device, table_dtype) not in self.tables:
            self.tables[device, table_dtype] = self.cos_sin.to(device, table_dtype)
        return self.tables[device, table_dtype][:T]

    def forward(self, x):
        """x (B, heads, T, d) -> each position's pairs turned by its angles, in x's dtype."""
        cos_sin = self.table(x.size(-2), x.device, x.dtype)
        pairs = at_least_fp32(x).unflatten(-1, (-1, 2))
        if torch.compiler.is_compiling():
            (a, b), (cos, sin) = pairs.unbind(-1), cos_sin.unbind(-1)
            turned = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
        else:
            turned = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(cos_sin))
        return turned.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.normalizer = normalizers.get(config.attn_norm)
        self.qkv_sizes = self.normalizer.qkv_sizes(config)
        self.c_attn = nn.Linear(config.n_embd, sum(self.qkv_sizes), bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.attention_dropout
        self.attn_norm, self.attn_impl = config.attn_norm, config.attn_impl
        self.normalizer.add_parameters(self, config, layer_idx)  # η, λ, sink logits, ... (after c_attn, c_proj)
        self.gate = normalizers.gates.get(config.attn_gate)  # last: ungated models initialise as they always did
        self.gate.add_parameters(self, config)
        # Every normalizer's q and k heads are n_embd/n_head wide (diff's sub-heads, diff2's 2H query heads too), so
        # one norm and one rotation serve each layout. A virtual key (kvbias's k′) is neither: it has no position,
        # and its scale is what lets it absorb attention.
        head_dim = config.n_embd // config.n_head
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-5) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-5) if config.qk_norm else None
        self.rotary = Rotary(head_dim, config.block_size, config.rope_theta) if config.pos_emb == "rope" else None

    def qkv(self, x):
        """q, k, v as (B, heads, T, head_dim), in the normalizer's head layout; q and k normed (qk_norm), then
        turned by position (rope)."""
        q, k, v = self.normalizer.split_heads(*self.c_attn(x).split(self.qkv_sizes, dim=2), self.n_head)
        if self.q_norm is not None:  # in fp32 at least, as under autocast the block's norms are
            q, k = self.q_norm(at_least_fp32(q)).type_as(q), self.k_norm(at_least_fp32(k)).type_as(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        return q, k, v

    def norm_args(self, x=None):
        """The tensors the normalizer needs besides q, k, v (η, λ, ...), shared by the reference and fused paths."""
        return self.normalizer.args(self, x)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x)
        dropout_p = self.dropout if self.training else 0.0
        y = normalizers.attention(self.attn_norm, q, k, v, dropout_p, self.attn_impl, **self.norm_args(x))
        y = self.gate.apply(self, x, self.normalizer.merge_heads(self, y)).transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @torch.no_grad()
    def attention_probs(self, x):
        """The attention weights over the real keys for analysis: (B, H, T, T), or the normalizer's own heads
        (diff: (B, H/2, T, T), the signed A1 − λ·A2)."""
        q, k, _ = self.qkv(x)
        return self.normalizer.probs(q, k, **self.norm_args(x))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


def swiglu_hidden(n_embd):
    """SwiGLU's hidden width: 2/3 of GELU's 4·n_embd, so that its three matrices hold about as many weights as
    GELU's two, rounded up to a multiple of 64 as LLaMA does (768 -> 2048, 128 -> 384)."""
    return math.ceil(2 * 4 * n_embd / 3 / 64) * 64


class SwiGLU(nn.Module):
    """LLaMA's MLP (Shazeer 2020, "GLU Variants Improve Transformer"): c_proj(silu(gate) ⊙ up), with c_fc computing
    [gate | up] in one matmul."""

    def __init__(self, config):
        super().__init__()
        hidden = swiglu_hidden(config.n_embd)
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


POS_EMBS = ("learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = {"gelu": MLP, "swiglu": SwiGLU}
# The named blocks: the settings that make GPT-2's block (GPTConfig's defaults) and LLaMA's. Studies take them as
# an axis (--blocks), and run names carry the name of a block other than gpt2.
BLOCKS = {"gpt2": {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False},
          "llama": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False}}


def block_name(cfg):
    """The name in BLOCKS of cfg's block, else its settings that differ from GPT-2's, e.g. 'rope-qk_norm'."""
    for name, settings in BLOCKS.items():
        if all(getattr(cfg, key) == value for key, value in settings.items()):
            return name
    return "-".join(key if type(value) is bool else getattr(cfg, key)
                    for key, value in BLOCKS["gpt2"].items() if getattr(cfg, key) != value)


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLPS[config.mlp](config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# Peak dense bf16 tensor-core FLOP/s by device name (first match wins: specific names first), for MFU.
# No entry (e.g. CPU): MFU is not reported.
PEAK_FLOPS = {"A100": 312e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "L40S": 362e12,
              "A10G": 70e12, "L4": 121e12, "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device_name):
    return next((f for key, f in PEAK_FLOPS.items() if key in device_name), None)


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer: the interface train.py, GradScaler and checkpoints use."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state):
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.pos_emb == "learned" else {}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
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
        """Parameter count; position embeddings (if learned) are subtracted by default (token ones are tied to
        lm_head)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:  # pos_emb='learned' (rope turns q and k inside attention; none has no positions)
            x = x + self.transformer.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: only the last position's logits are needed
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, muon_lr=None):
        """AdamW, or with muon_lr: Muon for the blocks' weight matrices and AdamW for the rest (embeddings, lm_head,
        norms, biases and every normalizer parameter), as one optimizer. A group's lr_scale is its peak lr over
        learning_rate: train.py multiplies the scheduled lr by it."""
        # Decay every matrix (matmul weights, embeddings); not biases, norms, λ, η, nor what the normalizer exempts.
        exempt = normalizers.get(self.config.attn_norm).no_weight_decay
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        matrix = {n: p.dim() >= 2 and n.rsplit(".", 1)[-1] not in exempt for n, p in params}
        muon = [p for n, p in params if muon_lr is not None and matrix[n] and n.startswith("transformer.h.")]
        adamw = [(n, p) for n, p in params if not any(p is m for m in muon)]
        groups = [{"params": [p for n, p in adamw if matrix[n]], "weight_decay": weight_decay},
                  {"params": [p for n, p in adamw if not matrix[n]], "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))
        if not muon:
            return adamw
        # "match_rms_adamw" scales each matrix's orthogonalised update to AdamW's RMS (Moonshot's Muon), so that
        # Muon can take AdamW's learning rate and weight decay.
        muon = torch.optim.Muon([{"params": muon, "lr_scale": muon_lr / learning_rate}], lr=muon_lr,
                                weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        return MuonAdamW(muon, adamw)

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B, with the attention
        term scaled by the normalizer's attn_flops (diff: 1.5, its value heads are 2d wide)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        attn = 12 * L * H * Q * T * normalizers.get(cfg.attn_norm).attn_flops
        return 6 * self.get_num_params() + attn

    def estimate_mfu(self, tokens_per_iter, dt, device_name, world_size=1):
        """Model FLOPs utilization: the FLOP/s achieved on tokens_per_iter tokens per dt seconds by world_size
        devices, over their peak bf16; None if the peak is unknown."""
        peak = peak_flops(device_name)
        return None if peak is None else self.flops_per_token() * tokens_per_iter / dt / (world_size * peak)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, vocab_size=None):
        """Sample max_new_tokens after the (b, t) prompt idx; call model.eval() first. vocab_size: the real
        vocabulary (the embedding may be padded, e.g. GPT-2's 50257 to 50304): padding ids are never sampled."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if vocab_size is not None:
                logits[:, vocab_size:] = -float("Inf")
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
