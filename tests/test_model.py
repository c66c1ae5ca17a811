"""model.py against independent oracles: float64 formulas (scipy), hand-computed values, explicit loops, a
separately written Differential Transformer (official code layout) and a plain float64 GPT-2 forward pass."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
import normalizers
from helpers import (causal_weights, count_gpt2_params, default_settings, diff_attention_module, diff_heads,
                     diff_lambda, gpt_logits, lambda_init, loop_attention, sigmoid, softmax1_row, softmax_row,
                     state_dict_f64, symax_row, virtual_key_row)
from model import GPT, GPTConfig

NORMS = tuple(normalizers.NORMALIZERS)  # a new normalizer joins every test below (helpers.py: its oracle)
ROW_NORMS = ("softmax", "softmax1", "symax")


def weights(attn_norm, s, mask, eta=None):
    fn = normalizers.NORMALIZERS[attn_norm].weights
    return fn(s, mask, eta=eta) if attn_norm == "symax" else fn(s, mask)


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def tiny(attn_norm="softmax", **kw):
    base = dict(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True,
                attn_norm=attn_norm)
    base.update(kw)
    return GPTConfig(**base)


# ----------------------------------------------------------------------------------------------------------
# normalizers


@pytest.mark.parametrize("attn_norm", ROW_NORMS)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_normalizer_matches_float64_formula(attn_norm, scale):
    g = torch.Generator().manual_seed(0)
    B, H, T = 2, 3, 7
    s = torch.randn(B, H, T, T, generator=g) * scale
    eta = torch.tensor([0.5, 1.0, 3.0])
    w = weights(attn_norm, s, causal(T), eta)
    assert w.shape == (B, H, T, T) and w.dtype == torch.float32
    expected = causal_weights(s.double().numpy(), attn_norm, eta.double().numpy())
    np.testing.assert_allclose(w.numpy(), expected, rtol=2e-5, atol=1e-7)
    assert (w.masked_select(~causal(T)) == 0).all()  # the future weighs exactly 0


def test_softmax1_hand_values():
    s = torch.tensor([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    w = normalizers.NORMALIZERS["softmax1"].weights(s, torch.ones(1, 5, dtype=torch.bool))[0, 0, 0]
    np.testing.assert_allclose(w.numpy(), [0.0116, 0.0315, 0.0858, 0.2331, 0.6337], atol=5e-5)
    assert abs(w.sum().item() - 0.9957) < 5e-5


def test_softmax1_hand_values_huge_negative():
    s = torch.tensor([[[[-1.0, -2.0, -3.2e13, -1.9e11, -1e4]]]])
    w = normalizers.NORMALIZERS["softmax1"].weights(s, torch.ones(1, 5, dtype=torch.bool))[0, 0, 0]
    # (e^-1 + e^-2) / (1 + e^-1 + e^-2) = 0.33476...; the last three are exp(-huge) = 0
    assert abs(w.sum().item() - 0.3348) < 5e-5
    assert w[2:].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(w[:2].numpy(), [math.exp(-1) / (1 + math.exp(-1) + math.exp(-2)),
                                               math.exp(-2) / (1 + math.exp(-1) + math.exp(-2))], rtol=1e-6)


def test_softmax1_is_not_max_shift_plus_one():
    """'Subtract the row max, then add 1' gives weights summing to >= 0.5; true softmax1 of scores all ≪ 0 sums ≈ 0."""
    T = 6
    s = torch.full((1, 1, T, T), -50.0) + torch.randn(1, 1, T, T) * 0.1
    w = normalizers.NORMALIZERS["softmax1"].weights(s, causal(T))
    sums = w.sum(-1)
    assert sums.max().item() < 1e-19  # each row: ≤ 6·e^-49.7
    # the wrong variant, written out, does sum to >= 0.5 on the same input: the test can tell them apart
    z = s.masked_fill(~causal(T), float("-inf"))
    e = torch.exp(z - z.amax(-1, keepdim=True))
    assert (e.sum(-1) / (1 + e.sum(-1))).min().item() >= 0.5


@pytest.mark.parametrize("attn_norm", ROW_NORMS)
def test_normalizers_stable_for_huge_scores_and_inf(attn_norm):
    T = 5
    rows = torch.tensor([
        [1e30, -1e30, 0.0, 5.0, 2.0],
        [-1e30, -1e30, -1e30, 3.0, -1e30],
        [-1e30, 1e29, 1e30, -4.0, 1e30],
        [7.0, float("-inf"), 1.0, float("-inf"), -2.0],
        [-1e30, -1e30, -1e30, -1e30, -1e30],
    ])
    s = rows[None, None].clone()
    mask = torch.ones(T, T, dtype=torch.bool)
    if attn_norm == "symax":  # |-inf| is no score; symax gets huge finite scores instead
        s = torch.nan_to_num(s, neginf=-1e30)
    w = weights(attn_norm, s, mask, torch.ones(1))[0, 0]
    assert not torch.isnan(w).any()
    for i in range(w.shape[0]):
        row = s[0, 0, i].double().numpy()
        expected = {"softmax": softmax_row, "softmax1": softmax1_row, "symax": lambda r: symax_row(r, 1.0)}[attn_norm](row)
        np.testing.assert_allclose(w[i].numpy(), expected, rtol=1e-5, atol=1e-30)
    if attn_norm == "softmax1":
        assert w[4].sum().item() == 0.0  # every score ≪ 0: attends to nothing


def test_softmax1_all_masked_row_is_zero_not_nan():
    """softmax1 of a row that sees only -inf is 0 (the virtual logit takes everything), not 0/0."""
    s = torch.full((1, 1, 3, 3), float("-inf"))
    w = normalizers.NORMALIZERS["softmax1"].weights(s, causal(3))
    assert torch.equal(w, torch.zeros_like(w))


@pytest.mark.parametrize("attn_norm", ROW_NORMS)
def test_masked_positions_weigh_exactly_zero_whatever_the_score(attn_norm):
    """Any finite score at a masked position (up to ±3e38) weighs exactly 0 and changes no visible weight; a
    non-finite one (NaN, ±inf) may poison its row, but only loudly: each row is the clean row or holds a NaN."""
    T = 5
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(1, 2, T, T, generator=g)
    upper = ~causal(T)
    eta = torch.tensor([1.0, 2.5])
    expected = weights(attn_norm, clean, causal(T), eta)
    for garbage, finite in (([1e30, -1e30, 3e38, -3e38, 0.0], True), ([float("nan"), float("inf"), float("-inf")], False)):
        s = clean.clone()
        s[:, :, upper] = torch.tensor([garbage[i % len(garbage)] for i in range(int(upper.sum()))])
        w = weights(attn_norm, s, causal(T), eta)
        for row, clean_row in zip(w.flatten(0, 2), expected.flatten(0, 2)):
            assert torch.equal(row, clean_row) or (not finite and row.isnan().any())


def test_symax_eta_per_head():
    T = 4
    s = torch.tensor([[3.0, 0, 0, 0], [1.0, -1.0, 0, 0], [2.0, 0.0, -2.0, 0], [1.0, 1.0, 1.0, -1.0]])
    s = s.expand(1, 3, T, T).clone()
    eta = torch.tensor([0.5, 1.0, 4.0])
    w = normalizers.NORMALIZERS["symax"].weights(s, causal(T), eta=eta)
    for h, e in enumerate([0.5, 1.0, 4.0]):
        # hand values: row 1 is |1|,|-1| over eta + 2; row 3 is four ones over eta + 4
        assert w[0, h, 0, 0].item() == pytest.approx(3 / (e + 3), rel=1e-6)
        assert w[0, h, 1, :2].tolist() == pytest.approx([1 / (e + 2)] * 2, rel=1e-6)
        assert w[0, h, 2, :3].tolist() == pytest.approx([2 / (e + 4), 0, 2 / (e + 4)], rel=1e-6)
        assert w[0, h, 3].tolist() == pytest.approx([1 / (e + 4)] * 4, rel=1e-6)
    # a zero row (all scores 0) gives zero weights, not NaN
    z = normalizers.NORMALIZERS["symax"].weights(torch.zeros(1, 3, T, T), causal(T), eta=eta)
    assert torch.equal(z, torch.zeros_like(z))


# ----------------------------------------------------------------------------------------------------------
# reference attention


def qkv(B=2, H=3, T=6, d=4, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, T, d, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("attn_norm", ROW_NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_attention_matches_loop(attn_norm, dtype):
    q, k, v = qkv(dtype=dtype, scale=2.0)
    eta = torch.tensor([0.3, 1.0, 2.0], dtype=dtype)
    kw = {"eta": eta} if attn_norm == "symax" else {}
    y = normalizers.NORMALIZERS[attn_norm].reference(q, k, v, **kw)
    assert y.dtype == dtype and y.shape == v.shape
    expected = loop_attention(q.double().numpy(), k.double().numpy(), v.double().numpy(), attn_norm, eta.double().numpy())
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=tol, atol=tol)


def test_reference_attention_bf16_inputs_computed_in_fp32():
    q, k, v = qkv(dtype=torch.bfloat16)
    y = normalizers.NORMALIZERS["softmax1"].reference(q, k, v)
    assert y.dtype == torch.bfloat16
    expected = loop_attention(q.double().numpy(), k.double().numpy(), v.double().numpy(), "softmax1")
    np.testing.assert_allclose(y.double().numpy(), expected, atol=2e-2)  # only the output rounding of bf16


@pytest.mark.parametrize("attn_norm", ROW_NORMS)
def test_reference_attention_gradcheck(attn_norm):
    q, k, v = (t.requires_grad_() for t in qkv(B=1, H=2, T=4, d=3, dtype=torch.float64, seed=3))
    spec = normalizers.NORMALIZERS[attn_norm]
    if attn_norm == "symax":
        eta = torch.tensor([0.7, 1.9], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda q, k, v, eta: spec.reference(q, k, v, eta=eta), (q, k, v, eta))
    else:
        assert torch.autograd.gradcheck(spec.reference, (q, k, v))


def test_reference_diff_attention_gradcheck():
    q, k = (t.requires_grad_() for t in qkv(B=1, H=4, T=4, d=3, dtype=torch.float64, seed=4)[:2])
    v = qkv(B=1, H=2, T=4, d=6, dtype=torch.float64, seed=5)[2].requires_grad_()
    lam = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, lam: normalizers.reference_attention(q, k, v, normalizers.NORMALIZERS["diff"].weights, lam=lam), (q, k, v, lam))


# ----------------------------------------------------------------------------------------------------------
# Differential attention


def test_reference_diff_attention_matches_paper_layout():
    B, H, T, d = 2, 4, 5, 3
    q, k = qkv(B=B, H=H, T=T, d=d, dtype=torch.float64, seed=6, scale=1.5)[:2]
    v = qkv(B=B, H=H // 2, T=T, d=2 * d, dtype=torch.float64, seed=7)[2]
    lam = 0.61
    y = normalizers.reference_attention(q, k, v, normalizers.NORMALIZERS["diff"].weights, lam=torch.tensor(lam, dtype=torch.float64))
    # official layout: (B, T, 2h, d) and (B, T, h, 2d)
    expected = diff_heads(q.transpose(1, 2).numpy(), k.transpose(1, 2).numpy(), v.transpose(1, 2).numpy(), lam)
    np.testing.assert_allclose(y.transpose(1, 2).numpy(), expected, rtol=1e-12, atol=1e-12)


def randomize_(module, seed, std=0.3):
    """Non-trivial values for every parameter (so that biases, λ and subln all matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.mark.parametrize("attn_impl", ["reference", "auto"])
@pytest.mark.parametrize("layer", [0, 3])
def test_diff_attention_module_matches_paper(attn_impl, layer):
    cfg = tiny("diff", n_embd=24, n_head=4, attn_impl=attn_impl)
    attn = randomize_(model.CausalSelfAttention(cfg, layer), seed=layer)
    with torch.no_grad():
        attn.subln.weight.add_(1.0)
    attn.eval()
    x = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        y = attn(x)
    W = {k: v.double().numpy() for k, v in attn.state_dict().items()}
    W["n_head"] = 4
    expected = diff_attention_module(x.double().numpy(), W, layer)
    lam = diff_lambda(W["lambda_q1"], W["lambda_k1"], W["lambda_q2"], W["lambda_k2"], layer)
    assert abs(attn.norm_args()["lam"].item() - lam) < 1e-5 * max(1, abs(lam))
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_diff_lambda_init_per_layer():
    cfg = tiny("diff", n_layer=12)
    m = GPT(cfg)
    # 0.8 - 0.6·exp(-0.3·l), hand-evaluated
    hand = {0: 0.2, 1: 0.355509, 2: 0.470713, 5: 0.666121, 11: 0.777870}
    for layer, value in hand.items():
        assert m.transformer.h[layer].attn.lambda_init == pytest.approx(value, abs=1e-6)
        assert lambda_init(layer) == pytest.approx(value, abs=1e-6)


def test_diff_odd_n_head_is_an_error():
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(n_embd=48, n_head=3, attn_norm="diff")
    GPTConfig(n_embd=48, n_head=3, attn_norm="softmax")  # fine for the others


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts(bias):
    V, T, L, C, H = 65, 16, 3, 48, 4
    counts = {}
    for attn_norm in NORMS:
        m = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, bias=bias, attn_norm=attn_norm))
        counts[attn_norm] = m.get_num_params(), m.get_num_params(non_embedding=False)
    d = C // H
    base = count_gpt2_params(V, T, L, C, bias)
    assert counts["softmax"] == (base, base + T * C)
    assert counts["softmax1"] == counts["softmax"] == counts["symax"]
    assert counts["diff"][0] == base + 4 * d * L + 2 * d * L
    assert counts["diff"][1] == counts["diff"][0] + T * C
    assert counts["sink"][0] == base + H * L  # one logit per head
    assert counts["kvbias"][0] == base + 2 * H * d * L  # k′ and v′ per head
    assert counts["diff2"][0] == base + (C * C + (C if bias else 0) + H * C) * L  # n_embd more q rows, lambda_proj
    for attn_norm in ("sink", "kvbias", "diff2"):
        assert counts[attn_norm][1] == counts[attn_norm][0] + T * C


# ----------------------------------------------------------------------------------------------------------
# the GPT


@pytest.mark.parametrize("attn_impl", ["auto", "reference"])
@pytest.mark.parametrize("attn_norm", NORMS)
def test_gpt_logits_match_float64_forward(attn_norm, attn_impl):
    """The whole model against a plainly written float64 GPT-2 forward pass from its own state dict. fp32 agrees to
    ~4e-7 of the largest logit; 1e-5 still tells exact GELU from the tanh approximation (~2e-4 here)."""
    cfg = tiny(attn_norm, attn_impl=attn_impl, symax_eta=0.7)
    m = randomize_(GPT(cfg), seed=1, std=0.3).eval()
    if attn_norm == "diff":
        with torch.no_grad():
            for block in m.transformer.h:
                block.attn.subln.weight.add_(1.0)
    idx = torch.randint(0, 65, (2, 11), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 65, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, loss = m(idx, targets)
        last, none = m(idx)
    expected = gpt_logits(state_dict_f64(m), idx.numpy(), cfg.n_head, attn_norm, eta=0.7)
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # the loss is the mean cross-entropy, written out in float64
    logp = expected - np.log(np.exp(expected - expected.max(-1, keepdims=True)).sum(-1, keepdims=True)) - expected.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, targets.numpy()[..., None], -1).mean()
    assert loss.item() == pytest.approx(ce, rel=1e-5)
    assert none is None and last.shape == (2, 1, 65)
    np.testing.assert_allclose(last[:, 0].double().numpy(), expected[:, -1], rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("attn_norm", NORMS)
@pytest.mark.parametrize("case", ["fp32", "bf16", "dropout", "batch1", "full_block"])
def test_gpt_forward_backward(attn_norm, case):
    torch.manual_seed(0)
    cfg = tiny(attn_norm, dropout=0.2 if case == "dropout" else 0.0, symax_learn_eta=attn_norm == "symax")
    m = GPT(cfg)
    B = 1 if case == "batch1" else 3
    T = cfg.block_size if case == "full_block" else 9
    idx = torch.randint(0, 65, (B, T))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx:
        logits, loss = m(idx, idx)
    assert logits.shape == (B, T, 65)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("transformer.wpe"):  # positions >= T get no gradient, by design
            assert p.grad.abs().sum() > 0, name
    if case == "bf16":  # close to the fp32 logits: bf16 keeps ~3 significant digits
        with torch.no_grad():
            ref = m(idx, idx)[0]
        assert (logits.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.02
    if case == "dropout":
        with torch.no_grad():
            a, b = m(idx, idx)[1], m(idx, idx)[1]
            m.eval()
            c, e = m(idx, idx)[1], m(idx, idx)[1]
        assert a != b  # dropout active in training
        assert c == e  # and off in eval


@pytest.mark.parametrize("attn_norm", NORMS)
def test_loss_at_init_is_log_vocab(attn_norm):
    """Small init: the logits are ~0, so the loss is ≈ ln(65) = 4.174 (within 0.1), for several seeds."""
    for seed in range(3):
        torch.manual_seed(seed)
        m = GPT(tiny(attn_norm))
        idx = torch.randint(0, 65, (4, 16))
        with torch.no_grad():
            loss = m(idx, torch.roll(idx, -1, 1))[1].item()
        assert abs(loss - math.log(65)) < 0.1, (seed, loss)


def test_sequence_longer_than_block_size_is_an_error():
    m = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    m(torch.zeros(1, 16, dtype=torch.long))  # exactly block_size is fine


def test_config_errors():
    with pytest.raises(ValueError) as e:
        GPTConfig(attn_norm="softmax2")
    for name in NORMS:
        assert name in str(e.value)
    assert "softmax2" in str(e.value)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=50, n_head=4)
    with pytest.raises(ValueError, match="attn_impl"):
        GPTConfig(attn_impl="flash9")


@pytest.mark.parametrize("attn_norm", NORMS)
def test_module_names_and_shapes_match_nanogpt(attn_norm):
    L, C, V, T = 2, 32, 65, 16
    m = GPT(tiny(attn_norm, n_layer=L))
    expected = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C),
                "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (V, C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        expected.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
                         p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
                         p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                         p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                         p + "mlp.c_fc.weight": (4 * C, C), p + "mlp.c_fc.bias": (4 * C,),
                         p + "mlp.c_proj.weight": (C, 4 * C), p + "mlp.c_proj.bias": (C,)})
        if attn_norm == "diff":
            d = C // 4
            expected.update({p + f"attn.lambda_{n}": (d,) for n in ("q1", "k1", "q2", "k2")})
            expected[p + "attn.subln.weight"] = (2 * d,)
        if attn_norm == "sink":
            expected[p + "attn.sink"] = (4,)
        if attn_norm == "kvbias":
            expected.update({p + "attn.k_bias": (4, C // 4), p + "attn.v_bias": (4, C // 4)})
        if attn_norm == "diff2":  # [q (2C) | k | v], as multihead_flashdiffv2.py's q_proj, k_proj, v_proj
            expected.update({p + "attn.c_attn.weight": (4 * C, C), p + "attn.c_attn.bias": (4 * C,),
                             p + "attn.lambda_proj.weight": (4, C)})
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert m.lm_head.weight is m.transformer.wte.weight  # tied


def test_init_statistics():
    L, C = 4, 256
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=L, n_head=4, n_embd=C, bias=True))
    resid_std = 0.02 / math.sqrt(2 * L)
    for name, p in m.named_parameters():
        x = p.detach().double()
        if name.endswith("c_proj.weight"):
            assert x.std().item() == pytest.approx(resid_std, rel=0.02), name  # ≥ 65k samples: ~0.3% noise
            assert abs(x.mean().item()) < 4 * resid_std / math.sqrt(x.numel()), name
        elif p.dim() == 2:
            assert x.std().item() == pytest.approx(0.02, rel=0.02), name
            assert abs(x.mean().item()) < 4 * 0.02 / math.sqrt(x.numel()), name
        elif "ln" in name and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:  # biases
            assert torch.equal(p, torch.zeros_like(p)), name


def greedy_by_hand(m, idx, n):
    for _ in range(n):
        logits = m(idx[:, -m.config.block_size:], idx[:, -m.config.block_size:])[0]  # full logits
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return idx


@pytest.mark.parametrize("attn_norm", NORMS)
def test_generate_top_k_1_is_greedy(attn_norm):
    torch.manual_seed(0)
    m = randomize_(GPT(tiny(attn_norm)), seed=5, std=0.2).eval()
    prompt = torch.randint(0, 65, (2, 12))
    with torch.no_grad():
        out = m.generate(prompt, 10, temperature=0.9, top_k=1)  # runs past block_size=16: cropping
        expected = greedy_by_hand(m, prompt, 10)
    assert out.shape == (2, 22)
    assert torch.equal(out, expected)


def test_generate_samples_softmax_of_logits_over_temperature_and_top_k():
    """Empirical next-token frequencies vs softmax(logits / T) restricted to the top k, in float64 (chi-square)."""
    from scipy.stats import chisquare
    torch.manual_seed(0)
    m = GPT(tiny(vocab_size=6))
    with torch.no_grad():
        m.transformer.ln_f.weight.fill_(10.0)  # logits spread over ~4 units: temperature and top_k matter
    m.eval()
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = m(prompt)[0][0, -1].double().numpy()
    N = 6000
    for temperature, top_k in ((1.0, None), (0.5, None), (2.0, 3)):
        torch.manual_seed(1)
        with torch.no_grad():
            nxt = m.generate(prompt.expand(N, -1), 1, temperature=temperature, top_k=top_k)[:, -1].numpy()
        z = logits / temperature
        if top_k is not None:
            z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        counts = np.bincount(nxt, minlength=6)
        assert (counts[p == 0] == 0).all()
        keep = p > 0
        assert p.max() < 0.9 and keep.sum() >= 3  # not a degenerate, near one-token distribution
        assert chisquare(counts[keep], p[keep] * N).pvalue > 1e-4, (temperature, top_k, counts, p * N)


@pytest.mark.parametrize("attn_norm", NORMS)
def test_estimate_mfu(attn_norm):
    L, H, C, T, V = 2, 4, 64, 32, 65
    m = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, bias=True, attn_norm=attn_norm))
    assert m.estimate_mfu(1000, 0.1, "cpu") is None
    N = count_gpt2_params(V, T, L, C, True, attn_norm, H)  # non-embedding: wpe excluded, tied wte counted
    attn = 12 * L * H * (C // H) * T * {"diff": 1.5, "diff2": 2.0}.get(attn_norm, 1.0)  # diff2: 2H query heads
    tokens_per_iter, dt = 4 * 8 * T, 0.25
    expected = (6 * N + attn) * tokens_per_iter / dt / 989e12  # H100 SXM: 989 TFLOP/s dense bf16
    assert m.estimate_mfu(tokens_per_iter, dt, "NVIDIA H100 80GB HBM3") == pytest.approx(expected, rel=1e-12)
    # softmax, by the numbers: N = 65·64 + 2·(12·64² + 13·64) + 2·64 = 104,256
    if attn_norm == "softmax":
        assert N == 104_256
        assert m.estimate_mfu(1024, 1.0, "NVIDIA H100 80GB HBM3") == pytest.approx(
            (6 * 104_256 + 12 * 2 * 4 * 16 * 32) * 1024 / 989e12, rel=1e-12)


def test_symax_learn_eta_is_a_learned_per_head_parameter():
    torch.manual_seed(0)
    m = GPT(tiny("symax", symax_learn_eta=True, symax_eta=2.0))
    names = dict(m.named_parameters())
    for i in range(2):
        p = names[f"transformer.h.{i}.attn.log_eta"]
        assert p.shape == (4,) and torch.allclose(p.exp(), torch.full((4,), 2.0))
    idx = torch.randint(0, 65, (2, 10))
    m(idx, idx)[1].backward()
    for i in range(2):
        g = names[f"transformer.h.{i}.attn.log_eta"].grad
        assert g is not None and (g != 0).all()  # each head's η gets its own gradient
    assert m.transformer.h[0].attn.log_eta.grad.unique().numel() == 4
    # not learned: a fixed buffer, not a parameter (and not in the optimizer)
    fixed = GPT(tiny("symax"))
    assert not any("eta" in n for n, _ in fixed.named_parameters())


def test_symax_learned_eta_changes_each_head():
    """η is per head: the model's attention weights of head h use exp(log_eta[h])."""
    torch.manual_seed(0)
    m = GPT(tiny("symax", symax_learn_eta=True)).eval()
    attn = m.transformer.h[0].attn
    with torch.no_grad():
        attn.log_eta.copy_(torch.log(torch.tensor([0.25, 1.0, 4.0, 16.0])))
    x = torch.randn(1, 6, 32)
    probs = attn.attention_probs(x)
    q, k, _ = attn.qkv(x)
    s = (q @ k.transpose(-2, -1) / math.sqrt(8)).detach().double().numpy()
    expected = causal_weights(s, "symax", [0.25, 1.0, 4.0, 16.0])
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("attn_norm", NORMS)
def test_attention_probs(attn_norm):
    torch.manual_seed(0)
    m = randomize_(GPT(tiny(attn_norm)), seed=2, std=0.3).eval()
    attn = m.transformer.h[1].attn
    x = torch.randn(2, 8, 32)
    probs = attn.attention_probs(x)
    T = 8
    assert (probs[..., ~causal(T)] == 0).all()
    sums = probs.sum(-1)
    W = {k: v.double().numpy() for k, v in attn.state_dict().items()}
    xd = x.double().numpy()
    qkv_ = xd @ W["c_attn.weight"].T + W["c_attn.bias"]
    q, k = (qkv_[..., i * 32:(i + 1) * 32].reshape(2, T, 4, 8).transpose(0, 2, 1, 3) for i in range(2))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(8)
    if attn_norm in ("sink", "kvbias"):  # weights over the real keys; the virtual key takes the rest
        assert probs.shape == (2, 4, T, T)
        logits = (np.broadcast_to(W["sink"][None, :, None], (2, 4, T)) if attn_norm == "sink"
                  else np.einsum("bhtd,hd->bht", q, W["k_bias"]) / math.sqrt(8))
        expected, quiet = np.zeros((2, 4, T, T)), np.zeros((2, 4, T))
        for b, h, i in np.ndindex(2, 4, T):
            quiet[b, h, i], expected[b, h, i, :i + 1] = virtual_key_row(s[b, h, i, :i + 1], logits[b, h, i])
        np.testing.assert_allclose(1 - sums.numpy(), quiet, rtol=1e-4, atol=1e-6)
    elif attn_norm == "diff2":  # q: 2H heads [q | k | v] = [64 | 32 | 32]; kv head i serves query heads 2i, 2i+1
        q = qkv_[..., :64].reshape(2, T, 8, 8).transpose(0, 2, 1, 3)
        k = qkv_[..., 64:96].reshape(2, T, 4, 8).transpose(0, 2, 1, 3)
        a = causal_weights(q @ np.repeat(k, 2, axis=1).transpose(0, 1, 3, 2) / math.sqrt(8), "softmax")
        gate = sigmoid(xd @ W["lambda_proj.weight"].T).transpose(0, 2, 1)[..., None]  # (2, 4, T, 1)
        expected = a[:, 0::2] - gate * a[:, 1::2]
        np.testing.assert_allclose(sums.numpy(), 1 - gate[..., 0], rtol=1e-5, atol=1e-5)
    elif attn_norm == "diff":
        assert probs.shape == (2, 2, T, T)
        lam = diff_lambda(W["lambda_q1"], W["lambda_k1"], W["lambda_q2"], W["lambda_k2"], 1)
        a = causal_weights(s, "softmax")
        expected = a[:, 0::2] - lam * a[:, 1::2]
        np.testing.assert_allclose(sums.numpy(), np.full((2, 2, T), 1 - lam), rtol=1e-5, atol=1e-5)
    else:
        assert probs.shape == (2, 4, T, T)
        expected = causal_weights(s, attn_norm, np.ones(4), **default_settings(attn_norm, 16))
        if attn_norm == "softmax":
            torch.testing.assert_close(sums, torch.ones_like(sums))
        elif attn_norm in ("softpick", "clipped"):  # exact zeros: a row may attend to nothing, or (clipped) fully
            assert (sums >= 0).all() and (sums <= 1).all()
        elif attn_norm == "sigmoid":  # nothing normalises a row
            assert (sums > 0).all()
        else:
            assert (sums < 1).all() and (sums > 0).all()
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-4, atol=1e-5)
