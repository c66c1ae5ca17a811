"""
The attention-sink family (sink, kvbias, diff2) and the output gates (attn_gate), against independent float64
oracles written from the formulas of issue 11, never from the project's code:

    sink     p_ij = exp(s_ij) / (exp(b_h) + Σ_j exp(s_ij))
    kvbias   out_i = Σ_j p_ij v_j + p′_i v′_h,  (p′_i, p_i·) = softmax(q_i·k′_h/√d, s_i0 … s_ii)
    diff2    out_i = A(q_2i)·V_i − σ(λ_i)·A(q_2i+1)·V_i,  λ = lambda_proj(x)
    gates    y_h ← y_h · σ(x·W_g + b_g)_h (headwise), y ← y ⊙ σ(x·W_g + b_g) (elementwise),
             y_h ← y_h · σ(w_h·x_h + b_h) (headwise_slice)

The oracles append the virtual logit as an explicit extra column and take torch.softmax of it in float64 (the code
under test shifts by max(b, max_j s_j) and, fused, rescales a flash pass by σ(LSE − b)); their gradients are
autograd's through those formulas. The CPU flash kernel runs fp64, so the fused paths must agree to fp64 precision
(norm-wise: max |error| ≤ 1e-12 · max |oracle|), for ragged T, extreme logits (|s| up to 80) and parameters moved
far from their init.
"""

import math

import numpy as np
import pytest
import torch

import model
import normalizers
from analysis.stats import model_stats
from kernels.softmax1 import kvbias_attention, sink_attention, softmax1_attention
from model import GPT, GPTConfig
from normalizers import NORMALIZERS

F64 = torch.float64
SHAPES = [(1, 2, 1, 8), (2, 3, 7, 5), (1, 2, 33, 16), (2, 2, 100, 8)]  # ragged T; d = 5 takes the pad-to-8 path


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def qkv(B, H, T, d, q_scale=1.0, heads_q=None):
    q = randn(B, heads_q or H, T, d, seed=1, scale=q_scale)
    return [t.requires_grad_() for t in (q, randn(B, H, T, d, seed=2), randn(B, H, T, d, seed=3))]


def extreme_qkv(B, H, T, d, magnitude=80.0):
    """Scores of about ±magnitude: k ≈ u, q = ±c·u with alternating signs per query, so half the rows are all ≪ 0
    (they attend to the virtual key only) and half ≫ 0."""
    u = torch.ones(d, dtype=F64)
    k = u + 0.05 * randn(B, H, T, d, seed=2)
    sign = torch.where(torch.arange(T) % 2 == 0, -1.0, 1.0).to(F64)
    q = sign[:, None] * (magnitude / math.sqrt(d)) * u + 0.05 * randn(B, H, T, d, seed=1)
    return [t.requires_grad_() for t in (q, k, randn(B, H, T, d, seed=3))]


def causal_scores_f64(q, k):
    T, d = q.shape[-2], q.shape[-1]
    s = q.double() @ k.double().transpose(-2, -1) / math.sqrt(d)
    return s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))


def virtual_key_oracle(q, k, v, logit, value):
    """Softmax over [virtual logit, s_i0 … s_ii] as an explicit extra column. logit (B, H, T), value (H, d)."""
    s = causal_scores_f64(q, k)
    w = torch.softmax(torch.cat([logit[..., None].double(), s], dim=-1), dim=-1)
    return w[..., 1:] @ v.double() + w[..., :1] * value.double()[:, None, :]


def sink_oracle(q, k, v, sink):
    B, H, T, d = v.shape
    return virtual_key_oracle(q, k, v, sink[:, None].expand(B, H, T), torch.zeros(H, d, dtype=F64))


def kvbias_oracle(q, k, v, k_bias, v_bias):
    return virtual_key_oracle(q, k, v, torch.einsum("bhtd,hd->bht", q, k_bias) / math.sqrt(q.size(-1)), v_bias)


def diff2_oracle(q, k, v, lam):
    """q (B, 2H, T, d), k, v (B, H, T, d), lam (B, T, H): query heads 2i and 2i+1 read kv head i."""
    out = []
    for i in range(k.size(1)):
        a1 = torch.softmax(causal_scores_f64(q[:, 2 * i], k[:, i]), dim=-1)
        a2 = torch.softmax(causal_scores_f64(q[:, 2 * i + 1], k[:, i]), dim=-1)
        gate = torch.sigmoid(lam[:, :, i].double())[..., None]
        out.append(a1 @ v[:, i].double() - gate * (a2 @ v[:, i].double()))
    return torch.stack(out, dim=1)


def outputs_and_grads(fn, inputs, seed=7):
    y = fn(*inputs)
    dy = randn(*y.shape, seed=seed)
    return [y, *torch.autograd.grad(y, inputs, dy)]


def assert_close(fn, oracle, inputs, names, rtol=1e-12, atol=1e-14):
    """atol: for gradients that are exactly 0 (q's at T = 1), where the kernels leave rounding noise of ~1e-16."""
    for name, a, b in zip(("out", *names), outputs_and_grads(fn, inputs), outputs_and_grads(oracle, inputs)):
        assert a.shape == b.shape, name
        err, scale = (a.double() - b.double()).abs().max().item(), b.double().abs().max().item()
        assert err <= rtol * scale + atol, f"{name}: max error {err:.2e} where max |oracle| = {scale:.2e}"


def spec_path(attn_norm, path):
    """The spec's fused function or its reference, called like the model calls them."""
    spec = NORMALIZERS[attn_norm]
    return spec.fused if path == "fused" else lambda q, k, v, *p: spec.reference(q, k, v, 0.0, **dict(zip(
        {"sink": ("sink",), "kvbias": ("k_bias", "v_bias"), "diff2": ("lam",)}[attn_norm], p)))


# ----------------------------------------------------------------------------------------------------------
# sink


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("shape", SHAPES)
def test_sink_matches_float64_oracle(shape, path):
    B, H, T, d = shape
    sink = torch.linspace(-3.0, 4.0, H, dtype=F64).requires_grad_()  # far from the init 0, different per head
    assert_close(spec_path("sink", path), sink_oracle, [*qkv(*shape, q_scale=2.0), sink], ("q", "k", "v", "sink"))


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("sink_value", [-80.0, 0.0, 80.0])
def test_sink_extreme_logits(path, sink_value):
    """|s| ≈ 80 against sinks of -80, 0, 80: rows that attend to nothing, to their keys only, or to the sink only."""
    sink = torch.tensor([sink_value, -sink_value / 2], dtype=F64, requires_grad=True)
    inputs = [*extreme_qkv(1, 2, 40, 16), sink]
    assert_close(spec_path("sink", path), sink_oracle, inputs, ("q", "k", "v", "sink"))
    y = sink_attention(*inputs)
    assert torch.isfinite(y).all()
    if sink_value >= 0:  # head 0's even rows (s ≈ -80 against b ≥ 0) attend to nothing: Σ p ≤ 40·e^-80
        assert y[:, 0, 0::2].abs().max() < 1e-30


def test_sink_lse_identity():
    """The fused output is O·σ(LSE − b) with O, LSE of plain causal softmax attention, computed here separately."""
    q, k, v = qkv(2, 3, 9, 8, q_scale=3.0)
    sink = torch.tensor([-2.0, 0.5, 6.0], dtype=F64)
    s = causal_scores_f64(q, k)
    o, lse = torch.softmax(s, -1) @ v, torch.logsumexp(s, -1, keepdim=True)
    expected = o * torch.sigmoid(lse - sink[:, None, None])
    torch.testing.assert_close(sink_attention(q, k, v, sink), expected, rtol=1e-13, atol=1e-15)


def test_sink_hand_values():
    """One row of scores [1, 2, 3] with b = ln 2: p = e^s / (2 + e + e² + e³)."""
    q = torch.tensor([[[[1.0, 0.0]] * 3]], dtype=F64)  # (1, 1, 3, 2)
    k = torch.tensor([[[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]]], dtype=F64) * math.sqrt(2)
    p = NORMALIZERS["sink"].probs(q, k, sink=torch.tensor([math.log(2.0)], dtype=F64))[0, 0, 2]
    z = 2 + math.e + math.e ** 2 + math.e ** 3
    np.testing.assert_allclose(p.numpy(), [math.e / z, math.e ** 2 / z, math.e ** 3 / z], rtol=1e-14)


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_softmax1_is_sink_with_b_frozen_at_zero(path):
    q, k, v = qkv(2, 2, 11, 8, q_scale=2.0)
    zero = torch.zeros(2, dtype=F64)
    sink_fn, softmax1 = spec_path("sink", path), NORMALIZERS["softmax1"]
    softmax1_fn = softmax1_attention if path == "fused" else lambda q, k, v: softmax1.reference(q, k, v)
    torch.testing.assert_close(softmax1_fn(q, k, v), sink_oracle(q, k, v, zero), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(sink_fn(q, k, v, zero), softmax1_fn(q, k, v), rtol=1e-13, atol=1e-15)
    assert softmax1.fused.__name__ == "softmax1_attention" and softmax1.args(None, None) == {}


def test_sink_gradcheck():
    q, k, v = qkv(1, 2, 5, 3)
    sink = torch.tensor([0.3, -1.2], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(sink_attention, (q, k, v, sink))
    assert torch.autograd.gradcheck(spec_path("sink", "reference"), (q, k, v, sink))


# ----------------------------------------------------------------------------------------------------------
# kvbias


def kvbias_params(H, d, scale=1.0):
    """k′, v′ moved far from their N(0, 0.02) init."""
    return randn(H, d, seed=5, scale=scale).requires_grad_(), randn(H, d, seed=6, scale=scale).requires_grad_()


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kvbias_matches_float64_oracle(shape, path):
    B, H, T, d = shape
    assert_close(spec_path("kvbias", path), kvbias_oracle, [*qkv(*shape, q_scale=2.0), *kvbias_params(H, d, 2.0)],
                 ("q", "k", "v", "k_bias", "v_bias"))


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("k_scale", [-1.0, 0.0, 1.0])
def test_kvbias_extreme_logits(path, k_scale):
    """|s| ≈ 80 and virtual logits q·k′/√d of ≈ ±80 or 0 (k′ = ±u or 0, with q = ±c·u)."""
    q, k, v = extreme_qkv(1, 2, 40, 16)
    k_bias = (k_scale * torch.ones(2, 16, dtype=F64)).requires_grad_()
    v_bias = randn(2, 16, seed=6, scale=3.0).requires_grad_()
    assert_close(spec_path("kvbias", path), kvbias_oracle, [q, k, v, k_bias, v_bias],
                 ("q", "k", "v", "k_bias", "v_bias"))


def test_kvbias_lse_identity():
    """out = σ(LSE − s′)·O + σ(s′ − LSE)·v′, with O and LSE of plain causal softmax attention computed separately."""
    q, k, v = qkv(2, 3, 9, 8, q_scale=3.0)
    k_bias, v_bias = (t.detach() for t in kvbias_params(3, 8, 4.0))
    s = causal_scores_f64(q, k)
    o, lse = torch.softmax(s, -1) @ v, torch.logsumexp(s, -1, keepdim=True)
    s_virtual = torch.einsum("bhtd,hd->bht", q, k_bias)[..., None] / math.sqrt(8)
    expected = torch.sigmoid(lse - s_virtual) * o + torch.sigmoid(s_virtual - lse) * v_bias[:, None, :]
    torch.testing.assert_close(kvbias_attention(q, k, v, k_bias, v_bias), expected, rtol=1e-13, atol=1e-15)


def test_kvbias_probs_are_the_real_keys_and_the_rest_is_quiet():
    q, k, _ = qkv(2, 3, 6, 4, q_scale=2.0)
    k_bias, v_bias = kvbias_params(3, 4, 3.0)
    p = NORMALIZERS["kvbias"].probs(q, k, k_bias=k_bias, v_bias=v_bias)
    s = causal_scores_f64(q, k)
    s_virtual = torch.einsum("bhtd,hd->bht", q, k_bias)[..., None] / math.sqrt(4)
    w = torch.softmax(torch.cat([s_virtual, s], -1), -1)
    torch.testing.assert_close(p, w[..., 1:], rtol=1e-13, atol=1e-16)
    torch.testing.assert_close(1 - p.sum(-1), w[..., 0], rtol=1e-12, atol=1e-15)


def test_kvbias_gradcheck():
    q, k, v = qkv(1, 2, 5, 3)
    k_bias, v_bias = kvbias_params(2, 3)
    assert torch.autograd.gradcheck(kvbias_attention, (q, k, v, k_bias, v_bias))
    assert torch.autograd.gradcheck(spec_path("kvbias", "reference"), (q, k, v, k_bias, v_bias))


# ----------------------------------------------------------------------------------------------------------
# diff2


def diff2_inputs(B, H, T, d, q_scale=1.0, lam_scale=3.0):
    q, k, v = qkv(B, H, T, d, q_scale=q_scale, heads_q=2 * H)
    lam = randn(B, T, H, seed=8, scale=lam_scale).requires_grad_()  # σ(λ) spread over (0.05, 0.95) and beyond
    return [q, k, v, lam]


@pytest.mark.parametrize("path", ["fused", "reference"])
@pytest.mark.parametrize("shape", SHAPES)
def test_diff2_matches_float64_oracle(shape, path):
    assert_close(spec_path("diff2", path), diff2_oracle, diff2_inputs(*shape, q_scale=2.0), ("q", "k", "v", "lam"))


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_diff2_extreme_logits(path):
    q, k, v = extreme_qkv(1, 4, 40, 16)  # query heads 0..3 over kv heads 0..1
    lam = randn(1, 40, 2, seed=8, scale=10.0).requires_grad_()
    assert_close(spec_path("diff2", path), diff2_oracle, [q, k[:, :2], v[:, :2], lam], ("q", "k", "v", "lam"),
                 rtol=1e-11)  # the ≈ 80-wide scores cost a few bits in both softmaxes


def test_diff2_gradcheck():
    inputs = diff2_inputs(1, 2, 5, 3)
    assert torch.autograd.gradcheck(spec_path("diff2", "fused"), inputs)
    assert torch.autograd.gradcheck(spec_path("diff2", "reference"), inputs)


def test_diff2_probs_sum_to_one_minus_the_gate():
    q, k, _, lam = diff2_inputs(2, 3, 7, 4)
    p = NORMALIZERS["diff2"].probs(q, k, lam=lam)
    assert p.shape == (2, 3, 7, 7)
    torch.testing.assert_close(p.sum(-1), 1 - torch.sigmoid(lam).transpose(1, 2), rtol=1e-13, atol=1e-14)


def test_diff2_module_layout():
    """c_attn is [q (2C) | k (C) | v (C)], λ = lambda_proj(x) (H, C) per token, no bias; c_proj C → C."""
    m = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=4, n_embd=16, attn_norm="diff2"))
    attn = m.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (64, 16) and attn.c_proj.weight.shape == (16, 16)
    assert attn.lambda_proj.weight.shape == (4, 16) and attn.lambda_proj.bias is None
    q, k, v = attn.qkv(torch.randn(2, 8, 16))
    assert q.shape == (2, 8, 8, 4) and k.shape == v.shape == (2, 4, 8, 4)


# ----------------------------------------------------------------------------------------------------------
# the parameters in the model


def tiny(attn_norm, **kw):
    return GPTConfig(**{**dict(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, bias=True,
                               attn_norm=attn_norm), **kw})


def test_parameter_inits_and_weight_decay():
    torch.manual_seed(0)
    sink = GPT(tiny("sink", n_layer=1))
    assert torch.equal(sink.transformer.h[0].attn.sink, torch.zeros(4))  # starts at softmax1
    kv = GPT(tiny("kvbias", n_layer=8, n_head=8, n_embd=256))  # 8·2·8·32 = 4096 values: the std is ±2%
    values = torch.cat([torch.cat([b.attn.k_bias.flatten(), b.attn.v_bias.flatten()]) for b in kv.transformer.h])
    assert values.std().item() == pytest.approx(0.02, rel=0.05) and abs(values.mean().item()) < 0.002
    # none of the new parameters is weight-decayed (sink is 1-D; k′, v′ are declared by the spec)
    for m, names in ((sink, {"sink"}), (kv, {"k_bias", "v_bias"})):
        opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        new = [p for n, p in m.named_parameters() if n.rsplit(".", 1)[-1] in names]
        assert new and not any(id(p) in decayed for p in new)


@pytest.mark.parametrize("attn_norm", ["sink", "kvbias", "diff2"])
def test_new_parameters_learn(attn_norm):
    """Each new parameter gets a nonzero gradient through the fused path, and the reference path's is the same."""
    torch.manual_seed(0)
    m = GPT(tiny(attn_norm, attn_impl="fused"))
    ref = GPT(tiny(attn_norm, attn_impl="reference"))
    ref.load_state_dict(m.state_dict())
    idx = torch.randint(0, 65, (2, 12))
    grads = []
    for net in (m, ref):
        net(idx, idx)[1].backward()
        grads.append({n: p.grad for n, p in net.named_parameters()
                      if n.endswith(("attn.sink", "attn.k_bias", "attn.v_bias", "attn.lambda_proj.weight"))})
    assert grads[0]
    for name, g in grads[0].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, grads[1][name], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# output gates


def heads_f64(attn, x):
    """The heads' outputs (B, heads, T, width) of softmax, diff (H/2 heads of 2d, after subln) and diff2, by the
    formulas, from the module's weights."""
    W = {k: v.detach().double() for k, v in attn.state_dict().items()}
    x = x.double()
    B, T, C = x.shape
    H = attn.n_head
    d = C // H
    qkv_ = x @ W["c_attn.weight"].T + W.get("c_attn.bias", 0.0)
    if attn.attn_norm == "diff2":
        q = qkv_[..., :2 * C].view(B, T, 2 * H, d).transpose(1, 2)
        k, v = (qkv_[..., i * C:(i + 1) * C].view(B, T, H, d).transpose(1, 2) for i in (2, 3))
        return diff2_oracle(q, k, v, x @ W["lambda_proj.weight"].T)
    q, k, v = (qkv_[..., i * C:(i + 1) * C].view(B, T, H, d).transpose(1, 2) for i in range(3))
    a = torch.softmax(causal_scores_f64(q, k), -1)
    if attn.attn_norm == "softmax":
        return a @ v
    lam = (math.exp(W["lambda_q1"] @ W["lambda_k1"]) - math.exp(W["lambda_q2"] @ W["lambda_k2"]) + attn.lambda_init)
    v_pairs = qkv_[..., 2 * C:].view(B, T, H // 2, 2 * d).transpose(1, 2)  # diff: H/2 value heads 2d wide
    y = (a[:, 0::2] - lam * a[:, 1::2]) @ v_pairs
    y = y / torch.sqrt((y * y).mean(-1, keepdim=True) + 1e-5) * W["subln.weight"]
    return y * (1 - attn.lambda_init)


def gate_f64(attn_gate, W, x, heads):
    """σ of the gate logits (B, T, G) by each paper's formula."""
    x = x.double()
    if attn_gate == "headwise_slice":
        B, T, C = x.shape
        xs = x.view(B, T, heads, C // heads)
        return torch.sigmoid((xs * W["c_gate.weight"]).sum(-1) + W["c_gate.bias"])
    return torch.sigmoid(x @ W["c_gate.weight"].T + W.get("c_gate.bias", 0.0))


@pytest.mark.parametrize("attn_gate", ["headwise", "elementwise", "headwise_slice"])
@pytest.mark.parametrize("attn_norm", ["softmax", "diff", "diff2"])
def test_gate_matches_float64_oracle(attn_norm, attn_gate):
    torch.manual_seed(0)
    cfg = tiny(attn_norm, attn_gate=attn_gate, n_embd=32, n_head=4)
    attn = model.CausalSelfAttention(cfg, 1).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.4)
        if attn_norm == "diff":
            attn.subln.weight.add_(1.0)
    x = torch.randn(2, 9, 32, generator=g, dtype=F64)
    W = {k: v.detach() for k, v in attn.state_dict().items()}
    y = heads_f64(attn, x)  # (B, heads, T, width)
    B, heads, T, width = y.shape
    gate = gate_f64(attn_gate, W, x, heads)  # (B, T, heads or C)
    gated = y * gate.view(B, T, heads, -1).transpose(1, 2)
    expected = gated.transpose(1, 2).reshape(B, T, 32) @ W["c_proj.weight"].T + W["c_proj.bias"]
    with torch.no_grad():
        out = attn(x)
    torch.testing.assert_close(out, expected, rtol=1e-11, atol=1e-11 * expected.abs().max().item())
    expected_shape = {"headwise": (heads, 32), "elementwise": (32, 32), "headwise_slice": (heads, 32 // heads)}
    assert tuple(attn.c_gate.weight.shape) == expected_shape[attn_gate]
    assert heads == (2 if attn_norm == "diff" else 4)  # diff gates its H/2 heads


@pytest.mark.parametrize("attn_norm", list(NORMALIZERS))
def test_every_normalizer_takes_every_gate(attn_norm):
    for attn_gate in normalizers.gates.GATES:
        torch.manual_seed(0)
        m = GPT(tiny(attn_norm, attn_gate=attn_gate, n_layer=1))
        idx = torch.randint(0, 65, (2, 10))
        loss = m(idx, idx)[1]
        loss.backward()
        assert torch.isfinite(loss)
        gate = getattr(m.transformer.h[0].attn, "c_gate", None)
        assert (gate is None) == (attn_gate == "none")
        if gate is not None:
            assert gate.weight.grad.abs().sum() > 0


def test_gate_inits():
    torch.manual_seed(0)
    slice_gate = GPT(tiny("softmax", attn_gate="headwise_slice")).transformer.h[0].attn.c_gate
    torch.testing.assert_close(torch.sigmoid(slice_gate.bias), torch.full((4,), 0.25))  # Qualcomm's attn_gate_init
    assert slice_gate.weight.std().item() == pytest.approx(0.02, rel=0.5)
    for attn_gate, bias in (("headwise", True), ("elementwise", False)):
        gate = GPT(tiny("softmax", attn_gate=attn_gate, bias=bias)).transformer.h[0].attn.c_gate
        assert isinstance(gate, torch.nn.Linear) and (gate.bias is not None) == bias


def test_ungated_models_are_unchanged():
    """attn_gate=none adds nothing, so every existing model initialises bit-identically: the same parameters from
    the same seed as a model whose config predates the setting (attn_gate at its default)."""
    torch.manual_seed(0)
    a = GPT(tiny("softmax1"))
    torch.manual_seed(0)
    b = GPT(tiny("softmax1", attn_gate="none"))
    assert not any("gate" in n for n in a.state_dict())
    assert all(torch.equal(a.state_dict()[n], t) for n, t in b.state_dict().items())
    assert GPTConfig.from_saved({"attn_norm": "softmax"}).attn_gate == "none"  # old checkpoints load ungated


def test_bad_attn_gate_is_an_error():
    with pytest.raises(ValueError, match="attn_gate must be one of none, headwise, elementwise, headwise_slice"):
        GPTConfig(attn_gate="perhead")


def test_gate_statistics():
    """gate_mean and gate_sparsity per layer, by hand: a headwise_slice gate with zero weights and biases set to
    logit(0.05), logit(0.5), logit(0.09), logit(0.9) gives those four values at every token."""
    torch.manual_seed(0)
    m = GPT(tiny("softmax", attn_gate="headwise_slice"))
    values = torch.tensor([0.05, 0.5, 0.09, 0.9])
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.c_gate.weight.zero_()
            block.attn.c_gate.bias.copy_(torch.log(values / (1 - values)))
    stats = model_stats(m, torch.randint(0, 65, (2, 16)))
    for i in range(2):
        assert stats[f"gate_mean/h.{i}"] == pytest.approx(values.double().mean().item(), rel=1e-6)
        assert stats[f"gate_sparsity/h.{i}"] == 0.5
    assert not any(k.startswith("gate_") for k in model_stats(GPT(tiny("softmax")), torch.zeros(1, 8, dtype=torch.long)))


def test_sink_quiet_mass_statistic():
    """With q = 0 every score is 0, so at query i the sink takes e^b / (e^b + i + 1): attn_quiet is its mean over
    queries 1..T-1, per head."""
    from analysis.stats import attention_stats
    m = GPT(tiny("sink", n_layer=1)).eval()
    attn = m.transformer.h[0].attn
    b = torch.tensor([-1.0, 0.0, 2.0, 5.0])
    with torch.no_grad():
        attn.c_attn.weight[:32].zero_()
        attn.c_attn.bias.zero_()
        attn.sink.copy_(b)
    T = 12
    quiet = attention_stats(attn.attention_probs(torch.randn(3, T, 32)))["attn_quiet"]
    i = torch.arange(1, T, dtype=F64)
    expected = torch.stack([(math.exp(h) / (math.exp(h) + i + 1)).mean() for h in b.tolist()])
    torch.testing.assert_close(quiet.double(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# routing and low precision


def test_cpu_routing():
    """On CPU, auto takes the fused paths of sink and kvbias (a flash pass) and diff2 (one SDPA call); no device
    but CPU and CUDA has aten's LSE-returning kernels."""
    for attn_norm in ("sink", "kvbias", "diff2"):
        assert normalizers.use_fused(attn_norm, "auto", "cpu", 0.0)
        assert normalizers.describe(attn_norm, "auto", "cpu", 0.1).startswith("reference")  # dropout: the reference
    for attn_norm in ("sink", "kvbias"):
        assert "mps" in normalizers.unavailable_reason(attn_norm, "mps", 0.0)


@pytest.mark.parametrize("attn_norm", ["sink", "kvbias", "diff2"])
def test_bf16_autocast_close_to_fp32(attn_norm):
    torch.manual_seed(0)
    m = GPT(tiny(attn_norm))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        ref = m(idx, idx)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(idx, idx)[0]
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.02
