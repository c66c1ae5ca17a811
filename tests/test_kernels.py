"""
The fused attention paths in kernels/ against the exact references of the normalizer specs (normalizers/), plus
the routing rules.

Errors are measured norm-wise, per output and per gradient: max |fused − reference| ≤ rtol·max |reference| + atol.
The references compute in fp32 (at least), so the CPU comparisons run fp32 inputs with RTOL = 1e-4 (seen:
≤ 3e-5, at q·30: scores reach ~300, so fp32 rounding of s alone moves weights by ~3e-5) and ATOL = 1e-6
times the logit scale: flash-style backwards form dS = P ∘ (dP − Δ), which cancels in saturated rows and loses
~eps·|dP|·|q| absolutely (seen: 4e-6 at T = 1 with q·30, where every gradient is tiny; SDPA's own backward
does the same). softmax1 is also checked in float64 against an independent float64 formula to rtol 1e-12, atol
1e-14 times the logit scale (the CPU flash kernel runs fp64), and by gradcheck.

The elementwise Triton kernel family (symax, sigmoid, softpick, clipped) has its own tests in test_elementwise.py;
here only its routing and the whole model. It runs on CPU only in Triton's interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before any import).
CUDA tests (marker `cuda`) compare bf16 on the GPU with the fp32 reference at bf16 tolerances.
"""

import math

import pytest
import torch

import model
import normalizers
from kernels import diff, softmax1
from normalizers import NORMALIZERS, reference_attention

try:
    from kernels import elementwise
except ImportError:  # no triton
    elementwise = None

RTOL, ATOL = 1e-4, 1e-6  # fp32, see above
SHAPES = [  # (B, H, T, d): batch 1 and 2, ragged T, head_dims 8/16/64
    (1, 2, 1, 8),
    (2, 2, 7, 16),
    (1, 4, 33, 64),
    (2, 2, 100, 8),
]

needs_triton = pytest.mark.skipif(elementwise is None, reason="the elementwise kernels need triton")
interpreted = pytest.mark.skipif(elementwise is None or not elementwise.INTERPRET,
                                 reason="Triton kernels run on CPU only with TRITON_INTERPRET=1 set before import")
# the normalizers whose fused path is the elementwise Triton family
ELEMENTWISE = [name for name, spec in NORMALIZERS.items()
               if getattr(spec.fused, "__module__", "") == "kernels.elementwise"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_err(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def randn(*shape, dtype=torch.float32, device="cpu", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def qkv(B, H, T, d, dtype=torch.float32, device="cpu", q_scale=1.0, v_shape=None):
    """Leaf q, k, v; q_scale 30 gives extreme logits (scores in the hundreds)."""
    q = randn(B, H, T, d, dtype=dtype, device=device, scale=q_scale, seed=1)
    k = randn(B, H, T, d, dtype=dtype, device=device, seed=2)
    v = randn(*(v_shape or (B, H, T, d)), dtype=dtype, device=device, seed=3)
    return [x.requires_grad_() for x in (q, k, v)]


def outputs_and_grads(fn, inputs, seed=4):
    """fn(*inputs) and the gradients of <fn(*inputs), dy> for a fixed random dy."""
    y = fn(*inputs)
    dy = randn(*y.shape, dtype=y.dtype, device=y.device, seed=seed)
    return [y, *torch.autograd.grad(y, inputs, dy)]


def assert_matches(fused, reference, inputs, names, rtol=RTOL, atol=ATOL):
    for name, a, b in zip(("out", *names), outputs_and_grads(fused, inputs), outputs_and_grads(reference, inputs)):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err, scale = (a.double() - b.double()).abs().max().item(), b.double().abs().max().item()
        assert err <= rtol * scale + atol, f"{name}: max error {err:.2e} where max |reference| = {scale:.2e}"


# ----------------------------------------------------------------------------------------------------------
# softmax1


def softmax1_f64(q, k, v):
    """softmax1 in float64 with the virtual zero logit as an explicit extra column: independent of model.py."""
    T, d = q.shape[-2:]
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(d)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    s = torch.cat([s, torch.zeros_like(s[..., :1])], dim=-1)
    return torch.softmax(s, dim=-1)[..., :-1] @ v.double()


@pytest.mark.parametrize("q_scale", [1.0, 30.0])
@pytest.mark.parametrize("shape", SHAPES + [(1, 2, 33, 12)])  # d = 12 takes the pad-to-8 path
def test_softmax1_matches_reference(shape, q_scale):
    inputs = qkv(*shape, q_scale=q_scale)
    ref = lambda q, k, v: reference_attention(q, k, v, NORMALIZERS["softmax1"].weights)
    assert_matches(softmax1.softmax1_attention, ref, inputs, ("q", "k", "v"), atol=ATOL * q_scale)


@pytest.mark.parametrize("q_scale", [1.0, 30.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax1_float64(shape, q_scale):
    inputs = qkv(*shape, dtype=torch.float64, q_scale=q_scale)
    assert_matches(softmax1.softmax1_attention, softmax1_f64, inputs, ("q", "k", "v"), rtol=1e-12, atol=1e-14 * q_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax1_extreme_rows(dtype):
    """Rows whose scores are all ≪ 0 attend to nothing (output ~0); rows with scores ≫ 0 are plain softmax."""
    B, H, T, d = 1, 2, 40, 16
    u = torch.ones(d, dtype=dtype)
    k = (u + 0.1 * randn(B, H, T, d, dtype=dtype, seed=2)).requires_grad_()
    sign = torch.where(torch.arange(T) % 2 == 0, -1.0, 1.0).to(dtype)  # even rows negative, odd rows positive
    q = (sign[:, None] * 250 * u + randn(B, H, T, d, dtype=dtype, seed=1)).requires_grad_()  # |s| ≈ 1000
    v = randn(B, H, T, d, dtype=dtype, seed=3).requires_grad_()
    y, *grads = outputs_and_grads(softmax1.softmax1_attention, (q, k, v))
    assert all(g.isfinite().all() for g in (y, *grads))
    assert y[:, :, 0::2].abs().max() < 1e-30
    softmax = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel_err(y[:, :, 1::2], softmax[:, :, 1::2]) < 1e-6
    if dtype == torch.float64:  # the float64 oracle: fp32 would round scores of ~1000 by ~6e-5
        assert_matches(softmax1.softmax1_attention, softmax1_f64, (q, k, v), ("q", "k", "v"), rtol=1e-12, atol=0)
    else:
        ref = lambda q, k, v: reference_attention(q, k, v, NORMALIZERS["softmax1"].weights)
        assert_matches(softmax1.softmax1_attention, ref, (q, k, v), ("q", "k", "v"))


@pytest.mark.parametrize("d", [6, 8])
def test_softmax1_gradcheck(d):
    inputs = qkv(1, 2, 5, d, dtype=torch.float64)
    assert torch.autograd.gradcheck(softmax1.softmax1_attention, inputs, fast_mode=True)


@pytest.mark.parametrize("dtype, d, expected", [
    (torch.bfloat16, 64, softmax1.CUDAFlash),
    (torch.float16, 256, softmax1.CUDAFlash),
    (torch.bfloat16, 512, softmax1.CUDAEfficient),  # beyond flash's head_dim limit
    (torch.float32, 64, softmax1.CUDAEfficient),  # flash has no fp32
])
def test_softmax1_cuda_plumbing(dtype, d, expected):
    """The CUDA branch cannot run here, but aten's meta kernels check its argument plumbing (op schemas, the
    extra outputs handed back to the backward, the efficient kernel's padded LSE) forward and backward."""
    q, k, v = qkv(2, 3, 37, d, dtype=dtype, device="meta")
    assert softmax1.backend(q) is expected  # any non-CPU device takes the CUDA choice
    # with a virtual key as kvbias has it: a logit per query (fp32) and a value per head (fp32)
    logit = torch.zeros(2, 3, 37, device="meta", requires_grad=True)
    value = torch.zeros(3, 1, d, device="meta", requires_grad=True)
    y = softmax1.VirtualKeyAttention.apply(q, k, v, logit, value, d**-0.5, expected)
    assert y.shape == q.shape and y.dtype == dtype
    *grads, dlogit, dvalue = torch.autograd.grad(y, (q, k, v, logit, value), torch.ones_like(y))
    assert all(g.shape == q.shape and g.dtype == dtype for g in grads)
    assert dlogit.shape == logit.shape and dvalue.shape == value.shape and dvalue.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------
# diff


@pytest.mark.parametrize("q_scale", [1.0, 30.0])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diff_matches_reference(shape, q_scale, dtype):
    B, H, T, d = shape
    q, k, v = qkv(B, H, T, d, dtype=dtype, q_scale=q_scale, v_shape=(B, H // 2, T, 2 * d))
    lam = torch.tensor(0.37, requires_grad=True)
    assert_matches(diff.diff_attention, lambda q, k, v, lam: reference_attention(q, k, v, NORMALIZERS["diff"].weights, lam=lam), (q, k, v, lam), ("q", "k", "v", "lam"),
                   atol=ATOL * q_scale)


# ----------------------------------------------------------------------------------------------------------
# The whole model, fused vs reference


def model_losses_and_grads(attn_norm, attn_impl):
    cfg = model.GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=4, n_embd=32, attn_norm=attn_norm,
                          attn_impl=attn_impl, symax_eta=0.7, symax_learn_eta=True)
    torch.manual_seed(0)
    gpt = model.GPT(cfg)
    idx = torch.randint(0, 64, (2, 29), generator=torch.Generator().manual_seed(0))
    _, loss = gpt(idx, idx)
    loss.backward()
    return loss, {name: p.grad for name, p in gpt.named_parameters()}


@pytest.mark.parametrize("attn_norm", ["softmax", "softmax1", "diff",
                                       *(pytest.param(norm, marks=interpreted) for norm in ELEMENTWISE)])
def test_model_fused_matches_reference(attn_norm):
    loss, grads = model_losses_and_grads(attn_norm, "fused")
    ref_loss, ref_grads = model_losses_and_grads(attn_norm, "reference")
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for name, g in grads.items():
        assert rel_err(g, ref_grads[name]) < 1e-4, name


# ----------------------------------------------------------------------------------------------------------
# Routing: auto / fused / reference per device, dropout, and what an impossible fused says


@pytest.fixture(params=[pytest.param(False, marks=needs_triton), pytest.param(True, marks=needs_triton)],
                ids=["compiled", "interpreted"])
def triton_interpret(request, monkeypatch):
    """Both answers of the import-time TRITON_INTERPRET check (the routing does not run a kernel)."""
    monkeypatch.setattr(elementwise, "INTERPRET", request.param)
    return request.param


def test_auto_picks_the_fastest_exact_path(triton_interpret):
    for norm in ("softmax", "softmax1", "diff", *ELEMENTWISE):
        assert normalizers.use_fused(norm, "auto", "cpu", 0.0) == (norm in ("softmax", "softmax1"))  # measured fastest
        assert normalizers.use_fused(norm, "auto", "cuda", 0.0) == (norm not in ELEMENTWISE or not triton_interpret)
        assert not normalizers.use_fused(norm, "reference", "cuda", 0.0)
    why = normalizers.describe("symax", "auto", "cpu", 0.0)
    assert ("Triton's interpreter" if triton_interpret else "needs a CUDA GPU") in why
    assert "reference is faster" in normalizers.describe("diff", "auto", "cpu", 0.0)
    assert normalizers.use_fused("diff", "fused", "cpu", 0.0)  # still there when asked for


def test_fused_symax(triton_interpret):
    assert normalizers.use_fused("symax", "fused", "cuda", 0.0)
    if triton_interpret:
        assert normalizers.use_fused("symax", "fused", "cpu", 0.0)
    else:
        with pytest.raises(RuntimeError, match="needs a CUDA GPU.*TRITON_INTERPRET=1.*attn_impl='auto'"):
            normalizers.use_fused("symax", "fused", "cpu", 0.0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_dropout_falls_back_to_the_reference(device):
    assert normalizers.use_fused("softmax", "fused", device, 0.1)  # SDPA has dropout
    for norm in [norm for norm in NORMALIZERS if norm != "softmax" and NORMALIZERS[norm].fused]:
        assert not normalizers.use_fused(norm, "auto", device, 0.1)
        assert "no attention dropout" in normalizers.describe(norm, "auto", device, 0.1)
        with pytest.raises(RuntimeError, match="no attention dropout.*attn_impl='auto'.*'reference'"):
            normalizers.use_fused(norm, "fused", device, 0.1)
    with pytest.raises(RuntimeError, match="no attention dropout"):
        normalizers.attention("softmax1", *qkv(1, 2, 4, 8), dropout_p=0.1)


@needs_triton
def test_describe_names_the_function():
    assert normalizers.describe("softmax", "auto", "cuda", 0.0) == "fused (normalizers.softmax.sdpa_attention)"
    assert normalizers.describe("softmax1", "auto", "cpu", 0.0) == "fused (kernels.softmax1.softmax1_attention)"
    assert normalizers.describe("diff", "fused", "cuda", 0.0) == "fused (kernels.diff.diff_attention)"
    assert normalizers.describe("symax", "fused", "cuda", 0.0) == "fused (kernels.elementwise.symax_attention)"
    assert normalizers.describe("diff", "reference", "cuda", 0.0) == "reference (normalizers.diff.Diff.reference: asked for)"
    assert normalizers.describe("softmax1", "auto", "cpu", 0.1).startswith("reference (normalizers.softmax1.Softmax1.reference: ")


def test_unavailable_kernels(monkeypatch):
    assert "mps" in normalizers.unavailable_reason("softmax1", "mps", 0.0)
    monkeypatch.setattr(normalizers.elementwise, "kernel", None)  # as without triton
    assert "needs triton" in normalizers.unavailable_reason("symax", "cuda", 0.0)
    assert not normalizers.use_fused("symax", "auto", "cuda", 0.0)


# ----------------------------------------------------------------------------------------------------------
# CUDA: bf16 kernels against the fp32 reference (the reference upcasts the same bf16 inputs)

CUDA_CASES = [(d, T) for d in (64, 128) for T in (128, 1000, 4096)]
BF16_RTOL = {"out": 2e-2, "grad": 5e-2}  # bf16 has 8 bits of mantissa; errors grow mildly with T


def assert_bf16_close(fused, reference, inputs):
    for i, (a, b) in enumerate(zip(outputs_and_grads(fused, inputs), outputs_and_grads(reference, inputs))):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_err(a, b) <= BF16_RTOL["grad" if i else "out"], f"output {i}: {rel_err(a, b):.2e}"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("attn_norm", ["softmax", "softmax1", "diff"])  # the elementwise family: test_elementwise.py
@pytest.mark.parametrize("d, T", CUDA_CASES)
def test_cuda_bf16(attn_norm, d, T):
    B, H = 2, 4
    v_shape = (B, H // 2, T, 2 * d) if attn_norm == "diff" else None
    inputs = qkv(B, H, T, d, dtype=torch.bfloat16, device="cuda", v_shape=v_shape)
    if attn_norm == "diff":
        fused, ref, extra = diff.diff_attention, lambda q, k, v, lam: reference_attention(q, k, v, NORMALIZERS["diff"].weights, lam=lam), [torch.tensor(0.37, device="cuda")]
    else:
        fused = lambda q, k, v: normalizers.attention(attn_norm, q, k, v)
        ref = lambda q, k, v: reference_attention(q, k, v, NORMALIZERS[attn_norm].weights)
        extra = []
    assert_bf16_close(fused, ref, [*inputs, *(x.requires_grad_() for x in extra)])


@pytest.mark.cuda
@needs_cuda
def test_cuda_fp32_is_exact():
    """fp32 takes the memory-efficient kernel: fp32 accuracy (the elementwise family's: test_elementwise.py)."""
    inputs = qkv(2, 4, 300, 64, device="cuda", q_scale=3.0)
    ref = lambda q, k, v: reference_attention(q, k, v, NORMALIZERS["softmax1"].weights)
    assert_matches(softmax1.softmax1_attention, ref, inputs, ("q", "k", "v"), rtol=1e-4)
