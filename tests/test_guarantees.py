"""Guarantees whose breakage leaves a run looking healthy: the gradient clipping of each training step (checked on
the step itself, against a float64 gradient and a hand-written AdamW step), and the order of the file-system calls
that make checkpoints and prepared data durable (recorded as they happen)."""
import copy
import math
import os
import stat
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import checkpoint
import prepare_data
import runtime
import train

# ----------------------------------------------------------------------------------------------------------
# gradient clipping: the gradient the optimizer steps with is the accumulated one, scaled to norm grad_clip

VOCAB = 33
ADAMW_EPS = 1e-8  # torch.optim.AdamW's default, which configure_optimizers keeps


def tiny_run(tmp_path, **settings):
    """A fresh tiny model with its optimizer, built by train.build as a run builds them, on CPU in float32."""
    cfg = train.TrainConfig(block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True, dropout=0.0, batch_size=2,
                            learning_rate=1e-3, weight_decay=0.1, device="cpu", dtype="float32", compile=False,
                            **settings)
    cfg.validate()
    dist_ctx = runtime.Distributed(False, 0, 1, "cpu")
    model, optimizer, scaler, state, _ = train.build(cfg, {"vocab_size": VOCAB}, tmp_path, dist_ctx)
    return cfg, dist_ctx, model, optimizer, scaler, state


def clipped_float64_gradient(model, data, state, cfg):
    """The global batch's gradient in float64 (one forward over all gradient_accumulation_steps × batch_size
    sequences: the mean of the micro-batches' mean losses, as they are equal in size), times min(1, c/(‖g‖ + 1e-6))
    (torch.nn.utils.clip_grad_norm_'s definition)."""
    rng = torch.Generator()
    rng.set_state(state.data_rng.get_state())  # the batch the step is about to draw
    offsets = train.sample_offsets(data, cfg.gradient_accumulation_steps * cfg.batch_size, rng, cfg.block_size)
    x, y = train.get_batch(data, offsets, cfg, "cpu")
    model64 = copy.deepcopy(model).double()
    model64(x, y)[1].backward()
    grads = {name: p.grad.numpy() for name, p in model64.named_parameters()}
    norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
    return {name: g * min(1.0, cfg.grad_clip / (norm + 1e-6)) for name, g in grads.items()}, norm


def first_adamw_step(p, g, lr, beta1, beta2, weight_decay):
    """AdamW (Loshchilov & Hutter, decoupled decay) from zero moments, step 1, in float64."""
    m, v = (1 - beta1) * g, (1 - beta2) * g ** 2
    m_hat, v_hat = m / (1 - beta1), v / (1 - beta2)
    return p * (1 - lr * weight_decay) - lr * m_hat / (np.sqrt(v_hat) + ADAMW_EPS)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("accumulation", [1, 3])
def test_the_optimizer_steps_with_the_clipped_accumulated_gradient(tmp_path, optimizer, accumulation):
    """grad_clip far below the gradient's norm, so that an unclipped step is far off. The clipped gradient's
    entries (~1e-8) are of AdamW's ε, so the update depends on its scale, not only on its signs."""
    cfg, dist_ctx, model, opt, scaler, state = tiny_run(tmp_path, optimizer=optimizer, grad_clip=1e-6,
                                                        gradient_accumulation_steps=accumulation)
    data = np.random.default_rng(0).integers(0, VOCAB, 500).astype(np.uint16)
    expected_grads, norm = clipped_float64_gradient(model, data, state, cfg)
    assert norm > 1e3 * cfg.grad_clip  # clipping has to act
    names = {p: n for n, p in model.named_parameters()}
    before = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}

    seen = {}  # the gradients at the moment the optimizer steps
    step = opt.step

    def recording_step():
        seen.update({names[p]: p.grad.double().numpy().copy() for p in model.parameters()})
        step()

    opt.step = recording_step
    _, grad_norm, applied = train.train_step(model, model, opt, scaler, data, state, cfg, nullcontext(), dist_ctx)
    assert applied and seen.keys() == expected_grads.keys()
    assert float(grad_norm) == pytest.approx(norm, rel=1e-4)  # the logged norm: before clipping
    assert math.sqrt(sum((g ** 2).sum() for g in seen.values())) <= cfg.grad_clip * (1 + 1e-5)
    for name, g in expected_grads.items():
        np.testing.assert_allclose(seen[name], g, rtol=0, atol=1e-4 * cfg.grad_clip, err_msg=name)

    # The parameters AdamW steps (all of them, or Muon's complement) moved as the formula says for that gradient.
    muon = {id(p) for p in opt.muon.param_groups[0]["params"]} if optimizer == "muon" else set()
    adamw_groups = opt.adamw.param_groups if optimizer == "muon" else opt.param_groups
    checked = 0
    for group in adamw_groups:
        for p in group["params"]:
            assert id(p) not in muon
            name = names[p]
            expected = first_adamw_step(before[name], expected_grads[name], cfg.learning_rate, cfg.beta1, cfg.beta2,
                                        group["weight_decay"])
            np.testing.assert_allclose(p.detach().double().numpy(), expected, rtol=0, atol=1e-3 * cfg.learning_rate,
                                       err_msg=name)
            checked += 1
    assert checked >= 4  # embeddings, norms, biases (and under adamw the blocks' matrices)


# ----------------------------------------------------------------------------------------------------------
# durability: data fsynced before the rename that publishes it, the directory fsynced after


def record_file_system_calls(monkeypatch):
    """Record os.fsync (what it synced: inode, directory or not, size), os.replace and os.rename, in order."""
    calls = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def recording_fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", (st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode), st.st_size))
        fsync(fd)

    def recording(name, real):
        def call(src, dst, *args, **kwargs):
            calls.append((name, os.fspath(src), os.fspath(dst)))
            return real(src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording("replace", replace))
    monkeypatch.setattr(os, "rename", recording("rename", rename))
    return calls


def identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def index_of_move_onto(calls, final):
    moves = [i for i, c in enumerate(calls) if c[0] in ("replace", "rename") and c[2] == os.fspath(final)]
    assert len(moves) == 1, calls
    return moves[0]


def fsyncs_of(calls, path):
    """Indices of the fsyncs of what is now at path (its inode: the temp name it had then does not matter), with
    the size it had when synced."""
    return [(i, c[3]) for i, c in enumerate(calls) if c[0] == "fsync" and c[1] == identity(path)]


def test_checkpoint_is_fsynced_then_renamed_then_its_directory_fsynced(tmp_path, monkeypatch):
    checkpoint.save_checkpoint({"iter_num": 1, "w": torch.zeros(10)}, tmp_path)
    calls = record_file_system_calls(monkeypatch)
    # over an existing ckpt.pt, which is kept as ckpt-00000001.pt (another replace, not the commit)
    checkpoint.save_checkpoint({"iter_num": 2, "w": torch.arange(1000.0)}, tmp_path, keep_last=2)
    final = tmp_path / checkpoint.CKPT_NAME
    assert checkpoint.checkpoint_iter(final) == 2 and (tmp_path / "ckpt-00000001.pt").exists()
    commit = index_of_move_onto(calls, final)
    assert calls[commit][1] != os.fspath(final)  # written under another name, then moved
    synced = fsyncs_of(calls, final)
    assert any(i < commit and size == final.stat().st_size for i, size in synced), \
        f"the new checkpoint, complete, is not fsynced before it replaces ckpt.pt: {calls}"
    assert any(i > commit for i, _ in fsyncs_of(calls, tmp_path)), \
        f"the directory is not fsynced after the rename (the rename itself is not durable): {calls}"


def test_prepared_data_is_fsynced_then_renamed_then_its_directory_fsynced(tmp_path, monkeypatch):
    building = tmp_path / f"shakespeare_char.tmp-{os.getpid()}"
    meta_exists_at_fsync = []
    calls = record_file_system_calls(monkeypatch)
    fsync = os.fsync  # the recording one

    def noting_fsync(fd):
        meta_exists_at_fsync.append((building / "meta.json").exists())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    final = prepare_data.prepare("shakespeare_char", out_dir=tmp_path)
    commit = index_of_move_onto(calls, final)
    assert calls[commit][1] == os.fspath(building)
    for name in ("train.bin", "val.bin"):
        # synced complete, and before meta.json exists: a build directory holding meta.json is taken as complete
        assert any(i < commit and size == (final / name).stat().st_size and not meta_exists_at_fsync[i]
                   for i, size in fsyncs_of(calls, final / name)), f"{name} is not fsynced before meta.json: {calls}"
    assert any(i < commit and size == (final / "meta.json").stat().st_size
               for i, size in fsyncs_of(calls, final / "meta.json")), f"meta.json is not fsynced: {calls}"
    assert any(i < commit for i, _ in fsyncs_of(calls, final)), f"the build directory is not fsynced: {calls}"
    assert any(i > commit for i, _ in fsyncs_of(calls, tmp_path)), \
        f"{tmp_path} is not fsynced after the rename (the rename itself is not durable): {calls}"
    prepare_data.load_prepared(final)
