"""What the first GPU run would hit, checked without a GPU: the dispatch rules and settings a CUDA run depends on
(head_dim limits, attention dropout, bf16, the current device, MFU across processes, torch.optim.Muon), the launch
geometry of the Triton kernels (int64 offsets, CUDA's grid limits) and DDP evaluation on CPU (gloo).
The kernels compiled for real CUDA targets: test_kernel_compile.py."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import model
import normalizers
import runtime
import train
from configurator import ConfigError
from helpers import REPO, TINY, read_metrics, run_train, subprocess_env, workdir
from kernels import softmax1

try:
    from kernels import elementwise
except ImportError:  # no triton
    elementwise = None

needs_triton = pytest.mark.skipif(elementwise is None, reason="the elementwise kernels need triton")
interpreted = pytest.mark.skipif(elementwise is None or not elementwise.INTERPRET,
                                 reason="runs the kernels' launch code on CPU tensors, in Triton's interpreter")
ELEMENTWISE = [n for n, spec in normalizers.NORMALIZERS.items()
               if getattr(spec.fused, "__module__", "") == "kernels.elementwise"]


@pytest.fixture
def compiled_triton(monkeypatch):
    """The dispatch as on a GPU machine, where the Triton kernels run compiled (no TRITON_INTERPRET)."""
    if elementwise is not None:
        monkeypatch.setattr(elementwise, "INTERPRET", False)


@pytest.fixture
def cuda_visible(monkeypatch):
    """torch as on a machine with a CUDA GPU, for the settings' validation (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# ---- attn_impl=auto with a head_dim the Triton kernels do not take ----

@needs_triton
@pytest.mark.parametrize("attn_norm", ELEMENTWISE)
def test_auto_falls_back_beyond_the_kernels_head_dim(attn_norm, compiled_triton):
    assert normalizers.use_fused(attn_norm, "auto", "cuda", 0.0, head_dim=128)
    assert not normalizers.use_fused(attn_norm, "auto", "cuda", 0.0, head_dim=192)
    assert "head_dim <= 128, not 192" in normalizers.describe(attn_norm, "auto", "cuda", 0.0, head_dim=192)
    with pytest.raises(RuntimeError, match="head_dim <= 128, not 192"):
        normalizers.use_fused(attn_norm, "fused", "cuda", 0.0, head_dim=192)


@needs_triton
def test_attention_with_large_heads_takes_the_reference(compiled_triton, monkeypatch):
    """normalizers.attention passes q's head_dim: 192 > 128 never reaches the kernel (which would raise)."""
    monkeypatch.setattr(elementwise, "unavailable", lambda norm, device_type, auto: None)  # as on CUDA
    q, k, v = (torch.randn(1, 2, 5, 192) for _ in range(3))
    spec = normalizers.NORMALIZERS["symax"]
    eta = torch.ones(2)
    torch.testing.assert_close(normalizers.attention("symax", q, k, v, attn_impl="auto", eta=eta),
                               spec.reference(q, k, v, eta=eta), rtol=0, atol=0)


@needs_triton
def test_validation_says_what_fused_cannot_do(cuda_visible, compiled_triton):
    cfg = train.TrainConfig(device="cuda", dtype="bfloat16", attn_norm="symax", attn_impl="fused", n_embd=384, n_head=2)
    with pytest.raises(ConfigError, match="attn_impl=fused cannot run attn_norm=symax.*head_dim <= 128, not 192"):
        cfg.validate()
    cfg.attn_impl = "auto"
    cfg.validate()  # the reference


# ---- attention dropout: its own setting; the GPU configs leave it at 0 ----

GPU_CONFIGS = sorted(p for p in (REPO / "config").rglob("*.py")
                     if p.name not in ("cpu.py", "study_cpu.py", "study_cpu_full.py", "__init__.py"))


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "config")))
def test_gpu_configs_run_every_normalizer_fused(config, compiled_triton):
    """Every shipped GPU config, for every attn_norm, picks the fused path on CUDA (attention dropout would send all
    but softmax to the fp32 T×T reference)."""
    from analysis.study import load_settings  # study configs add study_* settings
    cfg, _ = load_settings(str(config), [])
    for norm in normalizers.NORMALIZERS:
        reason = normalizers.unavailable_reason(norm, "cuda", cfg.attention_dropout, "auto", cfg.n_embd // cfg.n_head)
        assert reason is None or "needs triton" in reason, f"{config.name}, {norm}: {reason}"


def test_attn_dropout_defaults_to_dropout_bit_identically():
    """attn_dropout=None (the default, and what a checkpoint saved before the setting loads as) is dropout's value:
    the same training forward, bit for bit, as the explicit setting."""
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=0.3)
    saved = {k: v for k, v in vars(model.GPTConfig(**args)).items() if k != "attn_dropout"}  # an older checkpoint
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    outputs = []
    for config in (model.GPTConfig.from_saved(saved), model.GPTConfig(**args, attn_dropout=0.3),
                   model.GPTConfig(**args, attn_dropout=0.0)):
        torch.manual_seed(0)
        gpt = model.GPT(config).train()
        torch.manual_seed(1)
        outputs.append(gpt(idx, idx)[1])
    assert model.GPTConfig.from_saved(saved).attention_dropout == 0.3
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_attn_dropout_is_validated():
    with pytest.raises(ValueError, match=r"attn_dropout must be in \[0, 1\), got 1.5"):
        model.GPTConfig(attn_dropout=1.5)


# ---- settings a CUDA machine needs ----

def test_muon_needs_torch_optim_muon(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(ConfigError, match=r"optimizer=muon needs torch.optim.Muon \(torch >= 2.9\).*optimizer=adamw"):
        train.TrainConfig(device="cpu", optimizer="muon").validate()


def test_mfu_divides_by_every_device():
    """8 processes share the global tokens of an iteration: MFU is against 8 devices' peak (hand-computed)."""
    gpt = model.GPT(model.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    flops = gpt.flops_per_token() * 1000 / 0.5  # 1000 tokens per 0.5 s
    assert gpt.estimate_mfu(1000, 0.5, "NVIDIA H100 80GB HBM3", world_size=8) == pytest.approx(flops / (8 * 989e12))
    assert gpt.estimate_mfu(1000, 0.5, "NVIDIA H100 80GB HBM3") == pytest.approx(flops / 989e12)


def test_device_cuda_n_becomes_the_current_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("RANK", raising=False)
    assert runtime.setup_distributed("cuda:1").device == "cuda:1"
    assert chosen == ["cuda:1"]
    runtime.setup_distributed("cpu")
    assert chosen == ["cuda:1"]


@pytest.mark.parametrize("native, dtype", [(True, "bfloat16"), (False, "float16")])
def test_default_dtype_needs_native_bf16(native, dtype, monkeypatch):
    """T4/V100: is_bf16_supported() is True through emulation; the default is float16 there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert train.default_dtype() == dtype


@pytest.mark.parametrize("capability, flash", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_flash_attention_only_from_sm80(capability, flash, monkeypatch):
    """aten's FlashAttention-2 kernels need sm_80; before it, the virtual-key family takes the memory-efficient one."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert softmax1.flash_runs_on(torch.device("cuda", 0)) is flash
    assert softmax1.flash_runs_on(torch.device("cpu"))


# ---- the Triton kernels' launch geometry ----

@interpreted
@pytest.mark.parametrize("kernel, launch", [("_elementwise_fwd", "forward"), ("_elementwise_bwd", "backward")])
def test_grid_stays_within_cuda_limits(kernel, launch, monkeypatch):
    """CUDA grids: x < 2³¹, y and z ≤ 65,535. 70,000 (batch × head) pairs must not land on one capped axis."""
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    for name in ("_elementwise_fwd", "_elementwise_bwd"):  # no kernel runs (70,000 programs in the interpreter)
        monkeypatch.setattr(elementwise, name, Recorder())
    B, H, T, d = 35000, 2, 3, 8  # B·H = 70,000
    q, k, v = (torch.zeros(B, H, T, d, dtype=torch.float16, requires_grad=True) for _ in range(3))
    out = elementwise.sigmoid_attention(q, k, v, 0.0)
    if launch == "backward":
        out.sum().backward()
    grid = grids[-1]  # the last launch: the forward's, or the backward's
    assert grid[0] < 2**31 and all(n <= 65535 for n in grid[1:]) and grid[0] * grid[1] * grid[2] >= B * H
    with pytest.raises(ValueError, match="batch and heads <= 65535.*split the batch"):
        elementwise.sigmoid_attention(*(torch.zeros(70000, 1, 1, 8, dtype=torch.float16) for _ in range(3)), 0.0)


LARGE_OFFSETS = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {repo!r})
    from kernels import elementwise
    from normalizers import NORMALIZERS
    # q, k, v (1, 1, 3, 16) rows 2^30 elements apart in a sparse file: row 2 starts at element 2^31, past int32.
    n, stride = 2**31 + 16, 2**30
    with open({path!r}, "wb") as f:
        f.truncate(4 * n)
    storage = torch.from_file({path!r}, shared=True, size=n, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.as_strided(storage, (1, 1, 3, 16), (0, 0, stride, 1))
    x.copy_(torch.randn(1, 1, 3, 16, generator=g))
    dense = x.clone().requires_grad_()
    view = x.detach().requires_grad_()
    eta = torch.ones(1)
    out = elementwise.symax_attention(view, view, view, eta)
    ref = NORMALIZERS["symax"].reference(dense, dense, dense, eta=eta)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(view.grad, dense.grad, rtol=1e-4, atol=1e-6)
    print("ok")
""")


@interpreted
def test_row_offsets_past_int32(tmp_path):
    """T × row stride ≥ 2³¹ (here 3 rows 2³⁰ apart, a sparse file): int32 row offsets would wrap to a wrong address
    (a crash or wrong values); the kernel matches the reference on a dense copy. A subprocess, as a wild read may
    crash it."""
    script = LARGE_OFFSETS.format(repo=str(REPO), path=str(tmp_path / "sparse"))
    r = subprocess.run([sys.executable, "-c", script], env=subprocess_env(TRITON_INTERPRET="1"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-2000:]


# ---- the training step ----

def test_train_step_syncs_with_the_host_once(tmp_path, char_data_root, monkeypatch):
    """The non-finite check reads one boolean back per step (each read is a host synchronisation on a GPU)."""
    from helpers import chdir
    wd = workdir(tmp_path, char_data_root)
    cfg = train.load_config([*TINY, "--max_iters=1"])
    dist_ctx = runtime.Distributed(False, 0, 1, "cpu")
    with chdir(wd):
        data, meta = train.load_dataset(cfg)
    gpt, optimizer, scaler, state, _ = train.build(cfg, meta, tmp_path / "out", dist_ctx)
    reads = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(t.dtype) or original(t))
    train.train_step(gpt, gpt, optimizer, scaler, data["train"], state, cfg, runtime.autocast("cpu", cfg.dtype),
                     dist_ctx)
    assert reads.count(torch.bool) == 1


def test_ddp_evaluation_with_fewer_batches_than_processes(tmp_path, char_data_root):
    """eval_iters=1 < 2 processes: rank 1 evaluates no batch, and must still join every collective (gloo, CPU).
    symax's η is a buffer, which DDP's forward broadcasts: evaluating through DDP hung here."""
    wd = workdir(tmp_path, char_data_root)
    args = [*TINY, "--attn_norm=symax", "--gradient_accumulation_steps=2", "--eval_iters=1", "--max_iters=2",
            "--eval_interval=2"]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(REPO / "train.py"), *args, "--out_dir=ddp"], cwd=wd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: nothing is left running
        output, _ = proc.communicate()
        pytest.fail("DDP evaluation hung:\n" + output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    assert "iter 2: train loss" in output


def test_checkpoint_from_before_attn_dropout_resumes(tmp_path, char_data_root, tiny_char_run):
    """A checkpoint without attn_dropout (saved before the setting) resumes under a config that sets it to the
    value it took then (the CPU preset: attn_dropout 0 = dropout 0)."""
    wd = workdir(tmp_path, char_data_root)
    shutil.copytree(tiny_char_run, wd / "out")
    ckpt = torch.load(wd / "out" / "ckpt.pt", weights_only=False)
    del ckpt["model_args"]["attn_dropout"], ckpt["config"]["attn_dropout"]
    torch.save(ckpt, wd / "out" / "ckpt.pt")
    run_train(wd, [*TINY, "--max_iters=31", "--eval_interval=31", "--out_dir=out"])
    assert [e["iter"] for e in read_metrics(wd / "out") if e["event"] == "resume"] == [30]


# ---- aten's CUDA attention ops on meta tensors, at the model's shapes ----

MODEL_SHAPES = [(768, 12, 1024), (384, 6, 256)]  # (n_embd, n_head, block_size): GPT-2 124M, GPU Shakespeare
CUDA_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# kvbias's virtual logits switch autocast off, which meta tensors do not have; its per-query logit and value go
# through the same ops in test_kernels.py::test_softmax1_cuda_plumbing.
VIRTUAL_KEY = [n for n, spec in normalizers.NORMALIZERS.items()
               if getattr(spec.fused, "__module__", "") == "kernels.softmax1" and n != "kvbias"]


@pytest.mark.parametrize("n_embd, n_head, T", MODEL_SHAPES)
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("attn_norm", VIRTUAL_KEY)
def test_virtual_key_layers_on_cuda_ops(attn_norm, dtype, n_embd, n_head, T):
    """A layer's fused path, forward and backward, on meta tensors: kernels/softmax1.py takes aten's CUDA ops for
    any non-CPU device, so a change in their schemas or outputs fails here."""
    cfg = model.GPTConfig(n_layer=1, n_head=n_head, n_embd=n_embd, block_size=T, attn_norm=attn_norm)
    with torch.device("meta"):
        attn = model.CausalSelfAttention(cfg, 0).to(dtype)
        x = torch.empty(2, T, n_embd, dtype=dtype, requires_grad=True)
    q, k, v = attn.qkv(x)
    assert softmax1.backend(q) is (softmax1.CUDAEfficient if dtype == torch.float32 else softmax1.CUDAFlash)
    y = normalizers.get(attn_norm).fused(q, k, v, **attn.norm_args(x))
    assert y.shape == q.shape and y.dtype == dtype
    params = [p for p in attn.parameters()]
    grads = torch.autograd.grad(y, [x, *params], torch.ones_like(y), allow_unused=True)
    assert grads[0].shape == x.shape and all(g is None or g.shape == p.shape for g, p in zip(grads[1:], params))


@pytest.mark.parametrize("n_embd, n_head, T", MODEL_SHAPES)
@pytest.mark.parametrize("dtype", CUDA_DTYPES[:2], ids=str)
@pytest.mark.parametrize("attn_norm", ["diff", "diff2"])
def test_diff_shapes_on_cuda_flash_ops(attn_norm, dtype, n_embd, n_head, T):
    """The shapes diff's and diff2's SDPA calls hand FlashAttention-2 (fp16/bf16) on CUDA, through aten's flash
    forward and backward on meta tensors: diff's q, k padded to v's 2d; diff2's 2H query heads over H kv heads."""
    B, d = 2, n_embd // n_head
    if attn_norm == "diff":  # H sub-heads at d padded to 2d, value heads 2d wide repeated per sub-head
        q_shape, kv_shape = (B, n_head, T, 2 * d), (B, n_head, T, 2 * d)
    else:
        q_shape, kv_shape = (B, 2 * n_head, T, d), (B, n_head, T, d)
    q = torch.empty(q_shape, device="meta", dtype=dtype)
    k, v = (torch.empty(kv_shape, device="meta", dtype=dtype) for _ in range(2))
    aten = torch.ops.aten
    out, lse, cum_q, cum_k, max_q, max_k, rng, unused, _ = aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, True, False, scale=d**-0.5)
    assert out.shape == q_shape[:3] + (kv_shape[-1],) and lse.shape == q_shape[:3]
    dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
        out, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, True, rng, unused, scale=d**-0.5)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


def test_study_workers_share_compile_threads_on_a_gpu(monkeypatch):
    """./run_study.sh with study_jobs=15 on one 16-core GPU machine: each run gets 1 OpenMP thread and 1 compile
    worker, not 16 of each."""
    from analysis import launch
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    envs = launch.worker_envs("cuda", 15, n_runs=30)
    assert len(envs) == 15 and all(e["CUDA_VISIBLE_DEVICES"] == "0" for e in envs)
    assert {(e["OMP_NUM_THREADS"], e["TORCHINDUCTOR_COMPILE_THREADS"]) for e in envs} == {("1", "1")}
    assert {e["TORCHINDUCTOR_COMPILE_THREADS"] for e in launch.worker_envs("cuda", 2, n_runs=30)} == {"8"}
