"""
The elementwise normalizers (symax, sigmoid, softpick, clipped): their exact references (normalizers/) and the
Triton kernel family (kernels/elementwise.py, in Triton's interpreter on CPU) against float64 oracles written here
from the papers' formulas, with autograd for the gradients, plus their settings and statistics.

softpick's oracle shifts by the row max unclamped, as the official naive_softpick_attn.py does; the code clamps the
shift at 0, which must be the same function. Errors are norm-wise as in test_kernels.py: max |a − oracle| ≤
rtol·max |oracle| + atol; the fp32 paths agree to ~1e-6 (seen), so RTOL 1e-4 leaves room for the scores' own fp32
rounding at |s| ~ 80.
"""

import math
import re

import numpy as np
import pytest
import torch

import configurator
from analysis.stats import attention_stats
from helpers import REPO, ROW_FNS, default_settings
from model import GPT, GPTConfig
from normalizers import NORMALIZERS
from train import TrainConfig

try:
    from kernels import elementwise
except ImportError:  # no triton
    elementwise = None

interpreted = pytest.mark.skipif(elementwise is None or not elementwise.INTERPRET,
                                 reason="the Triton kernels run on CPU only with TRITON_INTERPRET=1 set before import")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RTOL, ATOL = 1e-4, 1e-6
NORMS = ("symax", "sigmoid", "softpick", "clipped")
# Settings away from the defaults, so that each one matters: η per head, a bias that is not −ln T, a large ε (its
# gradient through the row max shows), ζ > 1 (weights clipped at 1) and a γ that zeroes many weights.
SETTINGS = {"symax": {}, "sigmoid": {"bias": -1.3}, "softpick": {"eps": 0.5}, "clipped": {"zeta": 1.1, "gamma": -0.06}}


# ----------------------------------------------------------------------------------------------------------
# float64 oracles, from the formulas


def oracle_weights(norm, s, eta=None, bias=None, eps=None, zeta=None, gamma=None):
    """(B, H, T, T) float64 scores -> causal weights, differentiable, written from the papers' formulas."""
    T = s.size(-1)
    visible = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
    if norm == "symax":
        a = torch.where(visible, s.abs(), 0.0)
        return a / (eta.view(-1, 1, 1) + a.sum(-1, keepdim=True))
    if norm == "sigmoid":
        return torch.where(visible, 1 / (1 + torch.exp(-(s + bias))), 0.0)
    if norm == "softpick":  # naive_softpick_attn.py: m = the max over the visible scores
        s = s.masked_fill(~visible, float("-inf"))
        m = s.max(dim=-1, keepdim=True).values
        e = torch.exp(s - m) - torch.exp(-m)
        return torch.relu(e) / (torch.where(visible, e.abs(), 0.0).sum(-1, keepdim=True) + eps)
    softmax = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)  # clipped
    return torch.where(visible, torch.clamp((zeta - gamma) * softmax + gamma, 0.0, 1.0), 0.0)


def oracle_attention(norm, q, k, v, **settings):
    q, k, v = (x.double() for x in (q, k, v))
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    return oracle_weights(norm, s, **{key: (x.double() if torch.is_tensor(x) else x) for key, x in settings.items()}) @ v


def kernel_args(norm, settings, eta):
    """The kernel's arguments for these settings (symax: η)."""
    return {"symax": lambda: {"eta": eta}, "sigmoid": lambda: {"bias": settings["bias"]},
            "softpick": lambda: {"eps": settings["eps"]},
            "clipped": lambda: {"zeta": settings["zeta"], "gamma": settings["gamma"]}}[norm]()


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def qkv(B, H, T, d, dtype=torch.float32, q_scale=1.0, device="cpu"):
    return [randn(B, H, T, d, dtype=dtype, scale=scale, seed=seed, device=device).requires_grad_()
            for seed, scale in ((1, q_scale), (2, 1.0), (3, 1.0))]


def outputs_and_grads(fn, inputs, seed=4):
    y = fn(*inputs)
    dy = randn(*y.shape, seed=seed, device=y.device).to(y.dtype)
    return [y, *torch.autograd.grad(y, inputs, dy)]


def assert_matches_oracle(norm, path, inputs, settings, rtol=RTOL, atol=ATOL):
    """path(q, k, v, **kernel args) against the float64 oracle: output and the gradients of q, k, v (and log η)."""
    log_eta = torch.linspace(-1.0, 1.0, inputs[0].size(1), device=inputs[0].device).requires_grad_()
    leaves = [*inputs, log_eta] if norm == "symax" else inputs

    def run(fn, *leaves):
        eta = leaves[3].exp() if norm == "symax" else None
        return fn(*leaves[:3], **kernel_args(norm, settings, eta))

    actual = outputs_and_grads(lambda *x: run(path, *x), leaves)
    oracle = outputs_and_grads(lambda *x: run(lambda q, k, v, **a: oracle_attention(norm, q, k, v, **a), *x), leaves)
    for name, a, b in zip(("out", "q", "k", "v", "log_eta"), actual, oracle):
        assert torch.isfinite(a).all(), name
        err, scale = (a.double() - b).abs().max().item(), b.abs().max().item()
        assert err <= rtol * scale + atol, f"{norm} {name}: max error {err:.2e} where max |oracle| = {scale:.2e}"


def fused(norm):
    return getattr(elementwise, f"{norm}_attention")


def reference(norm):
    return lambda q, k, v, **args: NORMALIZERS[norm].reference(q, k, v, **args)


# ----------------------------------------------------------------------------------------------------------
# The exact references (normalizers/*.py)


@pytest.mark.parametrize("norm", ["sigmoid", "softpick", "clipped"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_reference_weights_match_the_row_formulas(norm, scale):
    """Rows of helpers.py's numpy oracles; at scale 30 the scores reach |s| ~ 80 and nothing is inf or NaN."""
    T = 12
    s = randn(2, 3, T, T, seed=5, scale=scale)
    settings = default_settings(norm, 64)
    w = NORMALIZERS[norm].weights(s, torch.ones(T, T, dtype=torch.bool).tril(), **settings)
    assert torch.isfinite(w).all() and s.abs().max() > (60 if scale > 1 else 0)
    for b, h, i in np.ndindex(2, 3, T):
        expected = ROW_FNS[norm](s[b, h, i, : i + 1].double().numpy(), **settings)
        np.testing.assert_allclose(w[b, h, i, : i + 1].double().numpy(), expected, rtol=1e-5, atol=1e-7)
        assert (w[b, h, i, i + 1:] == 0).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape, q_scale", [((1, 2, 1, 8), 1.0), ((2, 2, 9, 16), 1.0), ((1, 2, 9, 16), 30.0)])
def test_reference_attention_matches_oracle(norm, shape, q_scale):
    assert_matches_oracle(norm, reference(norm), qkv(*shape, q_scale=q_scale), SETTINGS[norm], atol=ATOL * q_scale)


def test_softpick_all_negative_row_is_exactly_zero():
    """A row of negative scores attends to nothing: exact zeros, and finite (zero) gradients, even at s = −80
    where the official shift's e^(−m) = e^80 would be near fp32's limit."""
    s = torch.tensor([[[[-80.0, -3.0, -0.5]]]], requires_grad=True)
    w = NORMALIZERS["softpick"].weights(s, torch.ones(1, 3, dtype=torch.bool), eps=1e-8)
    assert torch.equal(w, torch.zeros_like(w))
    w.sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_clipped_hand_values():
    """softmax([0, ln 2, ln 7]) = [0.1, 0.2, 0.7]; ζ = 1.25, γ = −0.25: 1.5·p − 0.25 = [−0.1, 0.05, 0.8]."""
    s = torch.log(torch.tensor([[[[1.0, 2.0, 7.0]]]], dtype=torch.float64))
    w = NORMALIZERS["clipped"].weights(s, torch.ones(1, 3, dtype=torch.bool), zeta=1.25, gamma=-0.25)
    torch.testing.assert_close(w, torch.tensor([[[[0.0, 0.05, 0.8]]]], dtype=torch.float64))
    assert w[0, 0, 0, 0] == 0  # exactly


# ----------------------------------------------------------------------------------------------------------
# The Triton kernel family (interpreter)


@interpreted
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(1, 2, 1, 8), (2, 2, 7, 16), (1, 2, 33, 16), (1, 1, 70, 64)])  # ragged T
def test_kernel_matches_oracle(norm, shape):
    assert_matches_oracle(norm, fused(norm), qkv(*shape), SETTINGS[norm])


@interpreted
@pytest.mark.parametrize("norm", NORMS)
def test_kernel_extreme_scores(norm):
    """q·30: scores up to |s| ~ 80 in fp32; nothing overflows and the result is the oracle's."""
    inputs = qkv(1, 2, 33, 16, q_scale=30.0)
    s = inputs[0] @ inputs[1].transpose(-2, -1) / 4
    assert s.abs().max() > 60
    assert_matches_oracle(norm, fused(norm), inputs, SETTINGS[norm], atol=ATOL * 30)


@interpreted
@pytest.mark.parametrize("norm", NORMS)
def test_kernel_default_settings(norm):
    settings = default_settings(norm, 1024)
    assert_matches_oracle(norm, fused(norm), qkv(1, 2, 20, 16, q_scale=3.0), settings, atol=ATOL * 3)


@interpreted
def test_kernel_softpick_rows_of_negative_scores():
    """Queries whose every visible score is negative (q = −k direction): exact zero outputs, zero gradients for
    them, no NaN anywhere; the other rows still match the oracle."""
    q, k, v = (x.detach() for x in qkv(1, 1, 8, 16))
    k = k.abs() + 0.1
    q = torch.cat([-k[:, :, :4].abs() * 3, q[:, :, 4:]], dim=2)  # queries 0..3 score negative on every key
    inputs = [x.requires_grad_() for x in (q, k, v)]
    y = elementwise.softpick_attention(*inputs, 1e-8)
    assert torch.equal(y[:, :, :4], torch.zeros_like(y[:, :, :4]))
    assert_matches_oracle("softpick", fused("softpick"), inputs, {"eps": 1e-8})


@interpreted
def test_kernel_clipped_exact_zeros_and_ones():
    """ζ = 1.2 and a γ that zeroes small weights: the kernel's exact zeros and ones sit where the oracle's do."""
    inputs = qkv(1, 2, 40, 16, q_scale=4.0)
    settings = {"zeta": 1.2, "gamma": -0.05}
    with torch.no_grad():
        y = elementwise.clipped_attention(*inputs, **settings)
        s = (inputs[0] @ inputs[1].transpose(-2, -1)).double() / 4
        w = oracle_weights("clipped", s, **settings)
    visible = torch.ones(40, 40, dtype=torch.bool).tril()
    assert (w[..., visible] == 0).sum() > 100 and (w == 1).sum() > 3  # both clips are exercised
    torch.testing.assert_close(y.double(), w @ inputs[2].detach().double(), rtol=RTOL, atol=ATOL)
    assert_matches_oracle("clipped", fused("clipped"), inputs, settings, atol=ATOL * 4)


@interpreted
@pytest.mark.parametrize("norm", NORMS)
def test_kernel_fp16(norm):
    """fp16 inputs, fp32 accumulation: within fp16's precision of the float64 oracle."""
    assert_matches_oracle(norm, fused(norm), qkv(1, 2, 33, 16, dtype=torch.float16), SETTINGS[norm], rtol=3e-3)


@interpreted
def test_kernel_interpreter_refuses_bf16():
    with pytest.raises(TypeError, match="miscomputes bf16"):
        elementwise.symax_attention(*qkv(1, 2, 4, 16, dtype=torch.bfloat16), torch.ones(2))


def test_kernel_head_dim_limit():
    if elementwise is None:
        pytest.skip("needs triton")
    with pytest.raises(ValueError, match="head_dim <= 128"):
        elementwise.sigmoid_attention(*qkv(1, 1, 4, 136), -1.0)


@interpreted
@pytest.mark.parametrize("norm", NORMS)
def test_kernel_strided_inputs(norm):
    """q, k, v as the model makes them (views of one (B, T, 3C) tensor) and a transposed dO: the same numbers as
    contiguous inputs."""
    B, H, T, d = 2, 2, 19, 16
    x = randn(B, T, 3 * H * d)
    views = [t.view(B, T, H, d).transpose(1, 2).requires_grad_() for t in x.split(H * d, dim=2)]
    contiguous = [t.detach().contiguous().requires_grad_() for t in views]
    args = kernel_args(norm, SETTINGS[norm], torch.tensor([0.5, 2.0]))
    dy = randn(B, T, H, d, seed=5).transpose(1, 2)
    results = []
    for inputs in (views, contiguous):
        y = fused(norm)(*inputs, **args)
        results.append([y, *torch.autograd.grad(y, inputs, dy)])
    assert not views[0].is_contiguous() and not dy.is_contiguous()
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# Settings, the model and the statistics


@pytest.mark.parametrize("key, value, message", [  # as in docs/troubleshooting.md
    ("softpick_eps", 0.0, "softpick_eps must be > 0, got 0.0"),
    ("clip_zeta", 0.5, "clip_zeta must be >= 1 (ζ < 1 would cap every weight below 1), got 0.5"),
    ("clip_alpha", -1.0, "clip_alpha must be >= 0 (γ = −clip_alpha/block_size must be ≤ 0), got -1.0"),
])
def test_setting_errors(key, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, **{key: value})


@pytest.mark.parametrize("overrides, expected", [
    ({}, {"sigmoid": {"bias": -math.log(256)}, "softpick": {"eps": 1e-8}, "clipped": {"zeta": 1.0, "gamma": -12 / 256}}),
    ({"sigmoid_bias": -7.62, "softpick_eps": 1e-3, "clip_zeta": 1.5, "clip_alpha": 2.0},
     {"sigmoid": {"bias": -7.62}, "softpick": {"eps": 1e-3}, "clipped": {"zeta": 1.5, "gamma": -2 / 256}}),
])
def test_settings_reach_the_normalizer(overrides, expected):
    """b = −ln(block_size) and γ = −α/block_size by default, the settings as given otherwise."""
    for norm, args in expected.items():
        m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=256, vocab_size=8, attn_norm=norm, **overrides))
        got = m.transformer.h[0].attn.norm_args()
        assert got.keys() == args.keys() and all(got[k] == pytest.approx(v, rel=1e-15) for k, v in args.items())


@pytest.mark.parametrize("norm, override, key, value", [("sigmoid", "--sigmoid_bias=-7.62", "sigmoid_bias", -7.62),
                                                         ("softpick", "--softpick_eps=1e-6", "softpick_eps", 1e-6),
                                                         ("clipped", "--clip_alpha=4", "clip_alpha", 4.0)])
def test_config_files_and_overrides(norm, override, key, value):
    for path in (f"config/{norm}.py", f"config/shakespeare_char/{norm}.py"):
        cfg = configurator.load(TrainConfig, [str(REPO / path), override])
        assert cfg.attn_norm == norm and getattr(cfg, key) == value


@pytest.mark.parametrize("norm", ["sigmoid", "softpick", "clipped"])
def test_attention_stats(norm):
    """attn_quiet = 1 − Σ_j p (sigmoid: negative when a row's weights sum past 1), attn_sink = p_i0 and the entropy
    of the renormalised row, against the oracle's weights; a row of all zeros has no entropy and is left out."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=8, attn_norm=norm)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.6 if norm != "sigmoid" else 1.5)
    attn = m.transformer.h[0].attn
    x = torch.randn(3, 16, 16)
    probs = attn.attention_probs(x)
    with torch.no_grad():
        q, k, _ = attn.qkv(x)
    w = oracle_weights(norm, (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(8), **attn.norm_args())
    rows = w[:, :, 1:]
    stats = attention_stats(probs)
    torch.testing.assert_close(stats["attn_quiet"].double(), (1 - rows.sum(-1)).mean((0, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["attn_sink"].double(), rows[..., 0].mean((0, 2)), rtol=1e-5, atol=1e-6)
    dist = rows / rows.sum(-1, keepdim=True)
    entropy = torch.nanmean(-torch.special.xlogy(dist, dist).sum(-1), dim=(0, 2))
    torch.testing.assert_close(stats["attn_entropy"].double(), entropy, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(stats["attn_entropy"]).all()


# ----------------------------------------------------------------------------------------------------------
# CUDA: bf16 kernels against the float64 oracle, fp32 near-exact


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("d, T", [(d, T) for d in (64, 128) for T in (128, 1000, 4096)])
def test_cuda_bf16(norm, d, T):
    assert_matches_oracle(norm, fused(norm), qkv(2, 4, T, d, dtype=torch.bfloat16, device="cuda"),
                          default_settings(norm, T), rtol=5e-2, atol=1e-3)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_fp32_is_exact(norm):
    """fp32 takes 3xTF32 dots: fp32 accuracy."""
    assert_matches_oracle(norm, fused(norm), qkv(2, 4, 300, 64, device="cuda", q_scale=3.0), SETTINGS[norm],
                          atol=ATOL * 3)
