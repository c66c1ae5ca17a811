"""The block settings (pos_emb, rope_theta, norm, mlp, qk_norm) against float64 oracles written from their formulas
in tests/helpers.py (RoPE as complex multiplication, RMSNorm, SwiGLU, a whole GPT forward pass with them), gradients
by gradcheck, every normalizer and gate on the reference and fused paths, and the LLaMA-style model's training
and bit-identical resume."""
import dataclasses

import numpy as np
import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import model
import normalizers
from helpers import (REPO, TINY, gpt_logits, read_metrics, rmsnorm, rope, split_and_straight_runs,
                     state_dict_f64, swiglu_mlp, workdir)
from model import GPT, GPTConfig

NORMS = tuple(normalizers.NORMALIZERS)
LLAMA = model.BLOCKS["llama"]


def tiny(attn_norm="softmax", **kw):
    return GPTConfig(**dict(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True,
                            attn_norm=attn_norm) | kw)


def randomize_(module, seed, std=0.3):
    """Non-trivial values for every parameter (norm scales too, so that a scale left out shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
    return module


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# the pieces against their formulas


@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_rope_matches_complex_multiplication(theta):
    """Rotary on (B, heads, T, d) = the oracle's x_2i + i·x_2i+1 times e^(i·t·θ^(-2i/d)), in float64."""
    x = randn(2, 3, 16, 8)
    got = model.Rotary(8, 16, theta)(x)
    expected = rope(x.transpose(1, 2).numpy(), theta).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    assert np.abs(expected - x.numpy()).max() > 0.5  # positions > 0 do turn


def test_rope_scores_depend_only_on_relative_position():
    """One q and one k vector at every position: after the rotation, q_t·k_s = q_{t+o}·k_{s+o} for every offset o
    (the property RoPE is built for), and it does change with t − s."""
    T, d = 24, 8
    rotary = model.Rotary(d, T, 10000.0)
    q, k = (randn(1, 1, 1, d, seed=s).expand(1, 1, T, d) for s in (1, 2))
    s = (rotary(q) @ rotary(k).transpose(-2, -1))[0, 0]
    for o in (1, 5, 17):
        np.testing.assert_allclose(s[o:, o:].numpy(), s[:T - o, :T - o].numpy(), rtol=0, atol=1e-12)
    assert (s[1:, 0] - s[0, 0]).abs().min() > 1e-3  # not a constant: the score does depend on the distance


def test_rope_table_cached_per_device_and_dtype():
    """The (cos, sin) table is computed in float64 and cast once per device and precision: float32 and bf16 q share
    a float32 table (the float64 one rounded, not the cos of a float32 angle), float64 q gets float64; the output
    keeps q's dtype."""
    rotary = model.Rotary(8, 1024, 10000.0)
    t32 = rotary.table(1024, torch.device("cpu"), torch.float32)
    t64 = rotary.table(1024, torch.device("cpu"), torch.float64)
    assert t32.dtype == torch.float32 and t64.dtype == torch.float64
    assert torch.equal(t32, t64.float())
    angles = np.arange(1024.0)[:, None] * 10000.0 ** (-np.arange(0.0, 8.0, 2.0) / 8)
    np.testing.assert_allclose(t64.numpy(), np.stack((np.cos(angles), np.sin(angles)), -1), rtol=0, atol=1e-13)
    assert rotary(randn(1, 1, 4, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert rotary.table(3, torch.device("cpu"), torch.bfloat16).data_ptr() == t32.data_ptr()
    assert len(rotary.tables) == 2


def test_rope_compiled_has_no_complex_ops_and_matches_the_oracle():
    """Under torch.compile the rotation is written in real arithmetic (inductor has no complex kernels): the traced
    graph, forward and backward, holds no complex tensor, and its output and gradient equal the float64 oracle's."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    x = randn(2, 3, 16, 8).requires_grad_()
    rotary = model.Rotary(8, 16, 500.0)
    torch.compiler.reset()
    compiled = torch.compile(rotary, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)
    out = compiled(x)
    expected = rope(x.detach().transpose(1, 2).numpy(), 500.0).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=0, atol=1e-12)
    weights = randn(2, 3, 16, 8, seed=4)
    (out * weights).sum().backward()  # d/dx of Σ w·R(x) = R⁻¹(w): the turn by minus the angles
    inverse = rope(weights.transpose(1, 2).numpy(), 500.0, positions=-np.arange(16.0)).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(x.grad.numpy(), inverse, rtol=0, atol=1e-12)
    assert len(graphs) == 2  # forward and backward
    values = [node.meta.get("val") for gm in graphs for node in gm.graph.nodes]
    assert not [v for v in values if isinstance(v, torch.Tensor) and v.is_complex()]


@pytest.mark.parametrize("bias", [False, True])
def test_rmsnorm_matches_formula(bias):
    """norm='rmsnorm': x / sqrt(mean(x²) + 1e-5) · w, no centring and no bias even with bias=True."""
    norm = randomize_(model.make_norm(tiny(norm="rmsnorm", bias=bias), 32).double(), seed=1)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    x = randn(2, 5, 32) * 3 + 1
    np.testing.assert_allclose(norm(x).detach().numpy(), rmsnorm(x.numpy(), norm.weight.detach().numpy()),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("n_embd, hidden", [(32, 128), (96, 256), (128, 384), (384, 1024), (768, 2048),
                                            (1024, 2752), (4096, 10944)])
def test_swiglu_hidden_width(n_embd, hidden):
    """2/3 · 4 · n_embd rounded up to a multiple of 64 (hand-computed: 2/3·4·1024 = 2730.7 -> 43·64 = 2752)."""
    assert model.swiglu_hidden(n_embd) == hidden


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_matches_formula(bias):
    cfg = tiny(mlp="swiglu", bias=bias)
    mlp = randomize_(model.SwiGLU(cfg).double(), seed=2)
    assert mlp.c_fc.weight.shape == (2 * 128, 32) and mlp.c_proj.weight.shape == (32, 128)
    x = randn(2, 5, 32)
    w = {n: p.detach().numpy() for n, p in mlp.named_parameters()}
    expected = swiglu_mlp(x.numpy(), w["c_fc.weight"], w["c_proj.weight"], w.get("c_fc.bias"), w.get("c_proj.bias"))
    np.testing.assert_allclose(mlp(x).detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_swiglu_keeps_the_gelu_mlp_parameter_count_at_gpt2_width():
    """At n_embd = 768 the rounding is exact: 3 · 768 · 2048 = 2 · 768 · 3072 weights."""
    count = lambda mlp: sum(p.numel() for p in model.MLPS[mlp](GPTConfig(n_embd=768, bias=False)).parameters())
    assert count("swiglu") == count("gelu") == 2 * 768 * 3072


# ----------------------------------------------------------------------------------------------------------
# the whole model against the float64 forward pass, every normalizer in every block

BLOCK_CASES = {
    "rope": {"pos_emb": "rope"},
    "qk_norm": {"qk_norm": True},
    "llama+qk_norm": LLAMA | {"qk_norm": True, "rope_theta": 300.0},
    "nope+rmsnorm+swiglu": {"pos_emb": "none", "norm": "rmsnorm", "mlp": "swiglu"},
}


@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("attn_norm", NORMS)
def test_gpt_logits_match_float64_forward(attn_norm, case):
    """The reference path in float64 against helpers.gpt_logits: q and k normed per head, then turned by position
    (diff's and diff2's every d-wide query/key head; kvbias's k′ never), RMSNorm and SwiGLU from their formulas."""
    block = BLOCK_CASES[case]
    cfg = tiny(attn_norm, attn_impl="reference", **block)  # symax's η = 1: its float32 log is exact
    m = randomize_(GPT(cfg).double(), seed=1).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("norm.weight", "subln.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(1.0)  # scales around 1, so that every one of them matters but none vanishes
    idx = torch.randint(0, 65, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, _ = m(idx, idx)
    expected = gpt_logits(state_dict_f64(m), idx.numpy(), cfg.n_head, attn_norm, block_size=16, **block)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_kvbias_virtual_key_is_not_rotated():
    """kvbias's k′ has no position: its logit is (rotated q_t)·k′/√d, as a key at position 0 would be (R_0 = I),
    the position of the first token it stands in for. The float64 forward pass above holds that; here, the same
    model with k′ turned as if it sat at the query's position (q·k′ unrotated) is different, so that test can tell."""
    cfg = tiny("kvbias", attn_impl="reference", **LLAMA)
    m = randomize_(GPT(cfg).double(), seed=3).eval()
    idx = torch.randint(0, 65, (1, 12), generator=torch.Generator().manual_seed(4))
    sd = state_dict_f64(m)
    with torch.no_grad():
        logits = m(idx, idx)[0].numpy()
    np.testing.assert_allclose(logits, gpt_logits(sd, idx.numpy(), 4, "kvbias", block_size=16, **LLAMA), rtol=1e-9)
    no_rope_logits = gpt_logits(sd, idx.numpy(), 4, "kvbias", block_size=16, **(LLAMA | {"pos_emb": "none"}))
    assert np.abs(logits - no_rope_logits).max() > 1e-3  # positions matter to this model at all


# ----------------------------------------------------------------------------------------------------------
# gradients


def test_gradcheck_rotary_and_swiglu():
    rotary = model.Rotary(6, 8, 10000.0)
    assert torch.autograd.gradcheck(rotary, (randn(1, 2, 5, 6).requires_grad_(),))
    mlp = randomize_(model.SwiGLU(tiny(n_embd=8, n_head=2, mlp="swiglu")).double(), seed=5)
    assert torch.autograd.gradcheck(mlp, (randn(1, 3, 8).requires_grad_(),))


@pytest.mark.parametrize("attn_norm", ["softmax", "diff", "kvbias", "diff2"])
def test_gradcheck_attention_with_qk_norm_and_rope(attn_norm):
    """The attention layer with qk_norm and rope, in float64: the gradients of the input and of the q/k norm scales
    by finite differences (the other parameters' reach the output through the same q and k)."""
    cfg = tiny(attn_norm, n_embd=8, n_head=2, attn_impl="reference", pos_emb="rope", qk_norm=True)
    attn = randomize_(model.CausalSelfAttention(cfg, 1).double(), seed=6)
    fn = lambda x, q_scale, k_scale: torch.func.functional_call(
        attn, {"q_norm.weight": q_scale, "k_norm.weight": k_scale}, (x,), strict=False)
    assert torch.autograd.gradcheck(fn, (randn(1, 5, 8).requires_grad_(), attn.q_norm.weight, attn.k_norm.weight))


# ----------------------------------------------------------------------------------------------------------
# every normalizer and gate, reference and fused, in the LLaMA block with qk_norm


@pytest.mark.parametrize("attn_norm", NORMS)
def test_fused_matches_reference_in_the_llama_block(attn_norm):
    """Fused and reference paths of one model (LLaMA block, qk_norm, a gate: each gate with some normalizers),
    logits and every gradient, fp32. Fused where it runs on this machine (Triton kernels: TRITON_INTERPRET=1)."""
    gate = list(normalizers.gates.GATES)[NORMS.index(attn_norm) % len(normalizers.gates.GATES)]
    if normalizers.unavailable_reason(attn_norm, "cpu", 0.0) is not None:
        pytest.skip(normalizers.unavailable_reason(attn_norm, "cpu", 0.0))
    kw = dict(n_layer=1, n_embd=16, n_head=2, block_size=8, attn_gate=gate, **(LLAMA | {"qk_norm": True}))
    idx = torch.randint(0, 65, (2, 8), generator=torch.Generator().manual_seed(7))
    results = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        m = randomize_(GPT(tiny(attn_norm, attn_impl=impl, **kw)), seed=8)
        _, loss = m(idx, idx)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-6


@pytest.mark.parametrize("attn_norm", NORMS)
def test_llama_block_trains_under_bf16_autocast(attn_norm):
    """Forward and backward under CPU bf16 autocast (q, k, v in bf16, the norms in fp32): a finite loss and a
    non-zero gradient for every parameter."""
    torch.manual_seed(0)
    m = GPT(tiny(attn_norm, **(LLAMA | {"qk_norm": True})))
    idx = torch.randint(0, 65, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = m(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------------------
# configuration, names, old checkpoints


def test_llama_block_parameter_names_and_shapes():
    m = GPT(tiny(**(LLAMA | {"qk_norm": True})))
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert not any("wpe" in n or n.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias")) for n in shapes)
    p = "transformer.h.0."
    assert shapes[p + "mlp.c_fc.weight"] == (2 * 128, 32) and shapes[p + "mlp.c_proj.weight"] == (32, 128)
    assert shapes[p + "attn.q_norm.weight"] == shapes[p + "attn.k_norm.weight"] == (8,)
    assert shapes[p + "ln_1.weight"] == shapes["transformer.ln_f.weight"] == (32,)
    assert m.get_num_params() == m.get_num_params(non_embedding=False)  # no position embedding to leave out


def test_checkpoint_without_block_settings_builds_the_gpt2_block():
    """A checkpoint written before these settings existed has none of them in model_args: from_saved gives the
    defaults, GPT-2's block, whose state dict loads strictly."""
    cfg = tiny()
    old_args = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in model.BLOCKS["gpt2"] | {"rope_theta": 0}}
    restored = GPTConfig.from_saved(old_args)
    assert {k: getattr(restored, k) for k in model.BLOCKS["gpt2"]} == model.BLOCKS["gpt2"]
    GPT(restored).load_state_dict(GPT(cfg).state_dict(), strict=True)
    assert model.block_name(restored) == "gpt2" and model.block_name(tiny(**LLAMA)) == "llama"
    assert model.block_name(tiny(pos_emb="rope", qk_norm=True)) == "rope-qk_norm"


@pytest.mark.parametrize("kw, message", [
    ({"pos_emb": "alibi"}, "pos_emb must be one of learned, rope, none, got 'alibi'"),
    ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm"),
    ({"mlp": "relu"}, "mlp must be one of gelu, swiglu"),
    ({"rope_theta": 0.0}, "rope_theta must be > 0"),
    ({"pos_emb": "rope", "n_embd": 36, "n_head": 4}, "head width n_embd/n_head must be even"),
])
def test_config_errors(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        tiny(**kw)


def test_presets_are_the_llama_block():
    import configurator
    import train
    for path in ("config/llama_style.py", "config/shakespeare_char/llama_style.py"):
        cfg = configurator.load(train.TrainConfig, [str(REPO / path)])
        assert model.block_name(cfg) == "llama" and cfg.bias is False, path


# ----------------------------------------------------------------------------------------------------------
# training


def test_llama_resume_is_bit_identical(tmp_path, char_data_root):
    """The LLaMA-style block (qk_norm on, dropout on) stopped at 6 and resumed to 12 = one straight run: the same
    weights and the same logged losses."""
    wd = workdir(tmp_path, char_data_root)
    args = [*TINY, "--pos_emb=rope", "--norm=rmsnorm", "--mlp=swiglu", "--qk_norm=True", "--dropout=0.1",
            "--eval_interval=6", "--lr_decay_iters=12", "--always_save_checkpoint=True"]
    a, b = split_and_straight_runs(wd, args, 6, 12)
    assert a["iter_num"] == b["iter_num"] == 12 and a["model_args"]["mlp"] == "swiglu"
    losses = lambda d: [(e["iter"], e["loss"]) for e in read_metrics(wd / d) if e["event"] == "train" and e["iter"] > 6]
    assert losses("split") == losses("straight") and len(losses("straight")) == 6


# ----------------------------------------------------------------------------------------------------------
# analysis reads the new modules


def test_stats_cover_swiglu_hidden_units_and_rmsnorm_outputs():
    """model_stats on the LLaMA block: mlp_in / attn_in are the RMSNorms' outputs and mlp_hidden is silu(gate)·up,
    computed here in float64 from the norm's output (captured at c_fc's input) and c_fc's weights."""
    from analysis.stats import model_stats
    torch.manual_seed(0)
    m = GPT(tiny(**LLAMA, block_size=32))
    probe = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(1))
    seen = {}
    hooks = [m.transformer.h[1].mlp.c_fc.register_forward_pre_hook(lambda mod, args: seen.update(mlp_in=args[0])),
             m.transformer.h[1].attn.c_attn.register_forward_pre_hook(lambda mod, args: seen.update(attn_in=args[0]))]
    stats = model_stats(m, probe)
    for h in hooks:
        h.remove()
    x = seen["mlp_in"].detach().double().numpy()
    gate, up = np.split(x @ m.transformer.h[1].mlp.c_fc.weight.detach().double().numpy().T, 2, axis=-1)
    hidden = gate / (1 + np.exp(-gate)) * up
    assert hidden.shape[-1] == 128
    assert stats["act_absmax/h.1.mlp_hidden"] == pytest.approx(np.abs(hidden).max(), rel=1e-5)
    flat = hidden.ravel() - hidden.mean()
    assert stats["act_kurtosis_tensor/h.1.mlp_hidden"] == pytest.approx(
        (flat**4).mean() / (flat**2).mean() ** 2 - 3, rel=1e-4)
    for point in ("mlp_in", "attn_in"):
        assert stats[f"act_absmax/h.1.{point}"] == pytest.approx(seen[point].abs().max().item(), rel=1e-6)


def test_quantization_covers_the_same_linears_in_both_blocks():
    from analysis.quantize import linears
    names = lambda cfg: [name for name, _ in linears(GPT(cfg))]
    assert names(tiny()) == names(tiny(**(LLAMA | {"qk_norm": True}))) == [
        f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ] + ["lm_head"]


# ----------------------------------------------------------------------------------------------------------
# the block as a study axis


def block_axes(overrides=(), study_settings=None, **kw):
    import argparse

    import configurator
    from analysis import study
    from train import TrainConfig
    args = argparse.Namespace(**{"norms": "softmax,sink", "gates": None, "optimizers": None, "blocks": None,
                                 "seeds": None, "sweep": None, "config": "cfg.py", **kw})
    cfg = TrainConfig()
    for override in overrides:
        key, _, value = override[2:].partition("=")
        configurator.set_key(cfg, key, value, "the command line")
    return study.study_axes(args, study_settings or {}, cfg, list(overrides))[0], cfg


def test_study_blocks_axis_names_sets_and_compares():
    """--blocks gpt2,llama: every variant in each block, named <variant>+llama, trained with the block's settings,
    compared with its own block's baseline, and each against itself in the first block (the block's effect)."""
    from analysis import significance, study
    own = {"study_settings": {"softmax": {"learning_rate": 8e-3}, "sink+llama": {"learning_rate": 1e-3}}}
    variants, cfg = block_axes(blocks="gpt2,llama", study_settings=own)
    assert [v.name for v in variants] == ["softmax", "sink", "softmax+llama", "sink+llama"]
    # a tuned setting carries over to the other block unless that block's variant has its own
    assert [dict(v.settings).get("learning_rate") for v in variants] == [8e-3, None, 8e-3, 1e-3]
    run = study.Run(variants[3], 1)
    run_cfg = study.run_config(cfg, run, REPO / "study" / "x" / "runs" / run.label)
    assert {k: getattr(run_cfg, k) for k in LLAMA} == LLAMA and run_cfg.wandb_tags == "block=llama"
    assert run.label == "sink+llama-s1" and model.block_name(run_cfg) == "llama"
    against_baseline, optimizer_effect, block_effect = significance.comparisons(variants)
    assert [(v.name, ref.name) for v, ref in against_baseline] == [("sink", "softmax"), ("sink+llama", "softmax+llama")]
    assert [(v.name, ref.name) for v, ref in block_effect] == [("softmax+llama", "softmax"), ("sink+llama", "sink")]
    assert optimizer_effect == []
    # without --blocks: the config's block, named as train.py names it
    variants, _ = block_axes(overrides=["--pos_emb=rope", "--norm=rmsnorm", "--mlp=swiglu"])
    assert [v.name for v in variants] == ["softmax+llama", "sink+llama"]


@pytest.mark.parametrize("kw, words", [
    ({"blocks": "gpt2,mamba"}, "unknown block 'mamba' in --blocks"),
    ({"blocks": "llama", "overrides": ["--norm=layernorm"]}, "norm both set"),
    ({"sweep": ["mlp=gelu,swiglu"]}, "--blocks"),
])
def test_study_blocks_axis_errors(kw, words):
    from configurator import ConfigError
    with pytest.raises(ConfigError, match=words):
        block_axes(**kw)


def test_read_metrics_names_the_block(tmp_path):
    """A run's variant name carries its block from train.py's start record; a record without one is gpt2's."""
    import json

    from analysis import read_metrics as read_run
    for block, name in (("llama", "sink+muon+llama"), (None, "sink+muon")):
        start = {"iter": 0, "event": "start", "config": {"attn_norm": "sink", "optimizer": "muon", "seed": 3}}
        (tmp_path / "metrics.jsonl").write_text(json.dumps(start | ({"block": block} if block else {})) + "\n")
        assert read_run(tmp_path)["variant"] == name
