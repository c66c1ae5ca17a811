"""Independent float64 oracles for the tests: written from the formulas (and, for diff, from the layout of
the Differential Transformer's official code), never calling model.py's normalizers or attention."""
import math

import numpy as np
from scipy.special import softmax as sp_softmax

# ----------------------------------------------------------------------------------------------------------
# normalizers on one row of visible scores (a 1-D float64 array)


def softmax_row(s):
    return sp_softmax(np.asarray(s, dtype=np.float64))


def softmax1_row(s):
    """exp(s_i) / (1 + Σ_j exp(s_j)): the softmax over the row plus one extra logit fixed at 0, minus that
    extra entry. scipy's softmax is stable for any finite scores and for -inf."""
    s = np.asarray(s, dtype=np.float64)
    return sp_softmax(np.append(s, 0.0))[:-1]


def symax_row(s, eta):
    a = np.abs(np.asarray(s, dtype=np.float64))
    return a / (eta + a.sum())


def sigmoid_row(s, bias):
    return sigmoid(np.asarray(s, dtype=np.float64) + bias)


def softpick_row(s, eps):
    """Softpick as the official naive_softpick_attn.py computes it: shifted by the row max m (not clamped at 0),
    ReLU(e^(s−m) − e^(−m)) / (Σ |e^(s−m) − e^(−m)| + ε)."""
    s = np.asarray(s, dtype=np.float64)
    e = np.exp(s - s.max()) - np.exp(-s.max())
    return np.maximum(e, 0.0) / (np.abs(e).sum() + eps)


def clipped_row(s, zeta, gamma):
    return np.clip((zeta - gamma) * softmax_row(s) + gamma, 0.0, 1.0)


ROW_FNS = {"softmax": softmax_row, "softmax1": softmax1_row, "symax": symax_row, "sigmoid": sigmoid_row,
           "softpick": softpick_row, "clipped": clipped_row}


def default_settings(attn_norm, block_size):
    """The row functions' settings at GPTConfig's defaults, from the papers: sigmoid b = −ln n, softpick ε = 1e-8,
    clipped ζ = 1 and γ = −α/T with α = 12 (n, T: the context length)."""
    return {"sigmoid": {"bias": -math.log(block_size)}, "softpick": {"eps": 1e-8},
            "clipped": {"zeta": 1.0, "gamma": -12.0 / block_size}}.get(attn_norm, {})


def causal_weights(s, attn_norm, eta=None, **settings):
    """s: (B, H, T, T) scores -> (B, H, T, T) float64 weights, row i over the visible columns 0..i, 0 elsewhere.
    settings: the row function's (bias, eps, zeta, gamma)."""
    s = np.asarray(s, dtype=np.float64)
    B, H, T, _ = s.shape
    w = np.zeros_like(s)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                row = s[b, h, i, : i + 1]
                if attn_norm == "symax":
                    w[b, h, i, : i + 1] = symax_row(row, float(eta[h]))
                else:
                    w[b, h, i, : i + 1] = ROW_FNS[attn_norm](row, **settings)
    return w


def loop_rows_attention(q, k, v, row):
    """Causal attention with explicit loops over batch, head and query position, in float64. q, k, v: (B, H, T, d)
    arrays; row(s, b, h, i) -> (weights of keys 0..i, a vector added to the output: 0 for none), s the visible
    scores of query i."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    B, H, T, d = q.shape
    out = np.zeros((B, H, T, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            for i in range(T):
                s = np.array([q[b, h, i] @ k[b, h, j] for j in range(i + 1)]) / math.sqrt(d)
                w, extra = row(s, b, h, i)
                out[b, h, i] = sum(w[j] * v[b, h, j] for j in range(i + 1)) + extra
    return out


def loop_attention(q, k, v, attn_norm, eta=None, **settings):
    """The row functions' causal attention, float64 loops; eta (H,): symax's η per head."""
    return loop_rows_attention(q, k, v, lambda s, b, h, i: (
        symax_row(s, float(eta[h])) if attn_norm == "symax" else ROW_FNS[attn_norm](s, **settings), 0.0))


# ----------------------------------------------------------------------------------------------------------
# One virtual key per query (sink: logit b_h, no value; kvbias: logit q_i·k′_h/√d, value v′_h): the softmax over
# [virtual logit, s_i0 … s_ii], written out per row.


def virtual_key_row(s, b):
    """(weight of the virtual key, weights of the real keys) of one row of visible scores s and virtual logit b."""
    w = sp_softmax(np.append(float(b), np.asarray(s, dtype=np.float64)))
    return w[0], w[1:]


def virtual_key_loop_attention(q, k, v, logits, values):
    """Causal attention with one virtual key, loops over batch, head and query, float64. q, k, v: (B, H, T, d);
    logits (B, H, T): each query's virtual logit; values (H, d): each head's virtual value."""
    def row(s, b, h, i):
        p_virtual, w = virtual_key_row(s, logits[b, h, i])
        return w, p_virtual * np.asarray(values[h], dtype=np.float64)
    return loop_rows_attention(q, k, v, row)


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def diff2_attention_module(x, W, qk=None):
    """Differential Transformer V2 (multihead_flashdiffv2.py's layout) from its weights, float64. x: (B, T, C); W:
    c_attn.weight (4C, C) computing [q (2C) | k | v], optional c_attn.bias, c_proj.*, lambda_proj.weight (H, C).
    qk(q, k): what the block does to q and k, (B, T, heads, d) each, before the scores (qk_norm, rope)."""
    x = np.asarray(x, dtype=np.float64)
    B, T, C = x.shape
    H = W["lambda_proj.weight"].shape[0]
    d = C // H
    qkv = x @ W["c_attn.weight"].T + W.get("c_attn.bias", 0.0)
    q = qkv[..., :2 * C].reshape(B, T, 2 * H, d)  # flash_attn's GQA: query head j reads kv head j // 2
    k, v = qkv[..., 2 * C:3 * C].reshape(B, T, H, d), qkv[..., 3 * C:].reshape(B, T, H, d)
    q, k = (q, k) if qk is None else qk(q, k)
    lam = x @ W["lambda_proj.weight"].T  # (B, T, H)
    out = np.zeros((B, T, H, d))
    for b in range(B):
        for i in range(H):
            a1 = causal_softmax_2d(q[b, :, 2 * i] @ k[b, :, i].T / math.sqrt(d))
            a2 = causal_softmax_2d(q[b, :, 2 * i + 1] @ k[b, :, i].T / math.sqrt(d))
            out[b, :, i] = a1 @ v[b, :, i] - sigmoid(lam[b, :, i])[:, None] * (a2 @ v[b, :, i])
    return out.reshape(B, T, C) @ W["c_proj.weight"].T + W.get("c_proj.bias", 0.0)


# ----------------------------------------------------------------------------------------------------------
# Differential attention (Ye et al. 2024), following the official multihead_diffattn.py:
#   q, k viewed (B, T, 2·h, d), v viewed (B, T, h, 2d) where h = n_head / 2 heads of the "diff" model;
#   attn_weights.view(B, h, 2, T, T); attn = (A[:, :, 0] - λ A[:, :, 1]) @ v; subln = RMSNorm(2d, eps=1e-5);
#   attn * (1 - λ_init); out_proj.


def lambda_init(layer):
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def diff_lambda(lq1, lk1, lq2, lk2, layer):
    lq1, lk1, lq2, lk2 = (np.asarray(t, dtype=np.float64) for t in (lq1, lk1, lq2, lk2))
    return math.exp(float(np.sum(lq1 * lk1))) - math.exp(float(np.sum(lq2 * lk2))) + lambda_init(layer)


def causal_softmax_2d(s):
    """(T, T) scores -> causal softmax weights, float64."""
    T = s.shape[0]
    w = np.zeros_like(s)
    for i in range(T):
        w[i, : i + 1] = softmax_row(s[i, : i + 1])
    return w


def diff_heads(q, k, v, lam):
    """q, k: (B, T, 2h, d), v: (B, T, h, 2d) in the official layout -> (B, T, h, 2d) before subln."""
    B, T, H2, d = q.shape
    h = H2 // 2
    out = np.zeros((B, T, h, v.shape[-1]))
    for b in range(B):
        for i in range(h):
            q1, q2 = q[b, :, 2 * i], q[b, :, 2 * i + 1]
            k1, k2 = k[b, :, 2 * i], k[b, :, 2 * i + 1]
            a1 = causal_softmax_2d(q1 @ k1.T / math.sqrt(d))
            a2 = causal_softmax_2d(q2 @ k2.T / math.sqrt(d))
            out[b, :, i] = (a1 - lam * a2) @ v[b, :, i]
    return out


def rmsnorm(x, weight, eps=1e-5):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def diff_attention_module(x, W, layer, qk=None):
    """The whole DiffAttention output from its weights. x: (B, T, C); W: numpy float64 dict with c_attn.weight
    (3C, C), optional c_attn.bias, c_proj.weight, optional c_proj.bias, subln.weight (2d,), lambda_q1 ... (d,);
    n_head = the number of (sub-)heads of q and k, as in GPTConfig. qk(q, k): what the block does to q and k,
    (B, T, 2h, d) each, before the scores (the official code rotates every d-wide sub-head)."""
    x = np.asarray(x, dtype=np.float64)
    B, T, C = x.shape
    qkv = x @ W["c_attn.weight"].T + W.get("c_attn.bias", 0.0)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    n_head = W["n_head"]
    d = C // n_head
    q, k = q.reshape(B, T, n_head, d), k.reshape(B, T, n_head, d)
    q, k = (q, k) if qk is None else qk(q, k)
    v = v.reshape(B, T, n_head // 2, 2 * d)
    lam = diff_lambda(W["lambda_q1"], W["lambda_k1"], W["lambda_q2"], W["lambda_k2"], layer)
    o = diff_heads(q, k, v, lam)
    o = rmsnorm(o, W["subln.weight"]) * (1 - lambda_init(layer))
    return o.reshape(B, T, C) @ W["c_proj.weight"].T + W.get("c_proj.bias", 0.0)


# ----------------------------------------------------------------------------------------------------------
# A whole GPT-2 forward pass from a state dict, in float64 (nanoGPT's architecture written out plainly).


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + (0.0 if b is None else b)


def gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def rope(x, theta=10000.0, positions=None):
    """RoPE (RoFormer, eq. 34) as complex multiplication: x (B, T, heads, d), each channel pair (2i, 2i+1) read as
    x_2i + i·x_2i+1 and multiplied by e^(i·t·θ^(-2i/d)) at position t (positions: (T,), default 0..T-1)."""
    x = np.asarray(x, dtype=np.float64)
    T, d = x.shape[1], x.shape[-1]
    t = np.arange(T, dtype=np.float64) if positions is None else np.asarray(positions, dtype=np.float64)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * np.outer(t, theta ** (-np.arange(0, d, 2) / d)))[:, None]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def silu(x):
    return x * sigmoid(x)


def swiglu_mlp(x, w_fc, w_proj, b_fc=None, b_proj=None):
    """LLaMA's MLP: (silu(x·W_gate) ⊙ x·W_up)·W_proj, with c_fc's rows [W_gate | W_up]."""
    h = x @ w_fc.T + (0.0 if b_fc is None else b_fc)
    gate, up = np.split(h, 2, axis=-1)
    return (silu(gate) * up) @ w_proj.T + (0.0 if b_proj is None else b_proj)


def gpt_logits(sd, idx, n_head, attn_norm, eta=1.0, pos_emb="learned", norm="layernorm", mlp="gelu",
               qk_norm=False, rope_theta=10000.0, block_size=None):
    """sd: {name: float64 array} (a GPT state_dict); idx (B, T) ints -> logits (B, T, V) in float64. The block
    settings as GPTConfig's; block_size (default: wpe's rows) for sigmoid's bias."""
    g = lambda name: sd.get(name)
    idx = np.asarray(idx)
    B, T = idx.shape
    x = g("transformer.wte.weight")[idx] + (g("transformer.wpe.weight")[:T] if pos_emb == "learned" else 0.0)
    block_size = block_size or g("transformer.wpe.weight").shape[0]
    C = x.shape[-1]
    d = C // n_head
    norm_fn = (lambda x, w, b: rmsnorm(x, w)) if norm == "rmsnorm" else layer_norm
    layer = 0
    while f"transformer.h.{layer}.ln_1.weight" in sd:
        p = f"transformer.h.{layer}."

        def qk(q, k):  # (B, T, heads, d): per-head RMSNorm, then rotation
            if qk_norm:
                q, k = rmsnorm(q, g(p + "attn.q_norm.weight")), rmsnorm(k, g(p + "attn.k_norm.weight"))
            return (rope(q, rope_theta), rope(k, rope_theta)) if pos_emb == "rope" else (q, k)

        h = norm_fn(x, g(p + "ln_1.weight"), g(p + "ln_1.bias"))
        W = {k[len(p + "attn."):]: v for k, v in sd.items() if k.startswith(p + "attn.")}
        if attn_norm == "diff":
            W["n_head"] = n_head
            x = x + diff_attention_module(h, W, layer, qk)
        elif attn_norm == "diff2":
            x = x + diff2_attention_module(h, W, qk)
        else:
            qkv = h @ g(p + "attn.c_attn.weight").T + (g(p + "attn.c_attn.bias") if g(p + "attn.c_attn.bias") is not None else 0.0)
            q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, n_head, d) for i in range(3))
            q, k = qk(q, k)
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
            etas = np.broadcast_to(np.exp(g(p + "attn.log_eta")) if g(p + "attn.log_eta") is not None else eta, (n_head,))
            if attn_norm == "sink":
                y = virtual_key_loop_attention(q, k, v, np.broadcast_to(W["sink"][:, None], (B, n_head, T)),
                                               np.zeros((n_head, d)))
            elif attn_norm == "kvbias":  # k′ has no position: never rotated, q is
                logits = np.einsum("bhtd,hd->bht", q, W["k_bias"]) / math.sqrt(d)
                y = virtual_key_loop_attention(q, k, v, logits, W["v_bias"])
            else:
                y = loop_attention(q, k, v, attn_norm, etas, **default_settings(attn_norm, block_size))
            y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
            x = x + y @ g(p + "attn.c_proj.weight").T + (g(p + "attn.c_proj.bias") if g(p + "attn.c_proj.bias") is not None else 0.0)
        h = norm_fn(x, g(p + "ln_2.weight"), g(p + "ln_2.bias"))
        if mlp == "swiglu":
            x = x + swiglu_mlp(h, g(p + "mlp.c_fc.weight"), g(p + "mlp.c_proj.weight"), g(p + "mlp.c_fc.bias"),
                               g(p + "mlp.c_proj.bias"))
        else:
            h = gelu(h @ g(p + "mlp.c_fc.weight").T + (g(p + "mlp.c_fc.bias") if g(p + "mlp.c_fc.bias") is not None else 0.0))
            x = x + h @ g(p + "mlp.c_proj.weight").T + (g(p + "mlp.c_proj.bias") if g(p + "mlp.c_proj.bias") is not None else 0.0)
        layer += 1
    x = norm_fn(x, g("transformer.ln_f.weight"), g("transformer.ln_f.bias"))
    return x @ g("lm_head.weight").T


def state_dict_f64(model):
    return {k: v.detach().double().numpy() for k, v in model.state_dict().items()}


def count_gpt2_params(V, T, L, C, bias, attn_norm="softmax", n_head=None, include_wpe=False):
    """nanoGPT's parameter count by hand: per block ln_1, c_attn, c_proj, ln_2, c_fc, mlp.c_proj; wte (tied with
    lm_head), ln_f; wpe only if include_wpe. diff adds 4 λ vectors (d) and the subln weight (2d) per block; sink
    a logit per head; kvbias k′ and v′ (H, d); diff2 n_embd more query rows in c_attn and lambda_proj (H, C)."""
    b = 1 if bias else 0
    ln = C + b * C
    block = ln + (3 * C * C + b * 3 * C) + (C * C + b * C) + ln + (4 * C * C + b * 4 * C) + (4 * C * C + b * C)
    if attn_norm == "diff":
        d = C // n_head
        block += 4 * d + 2 * d
    elif attn_norm == "sink":
        block += n_head
    elif attn_norm == "kvbias":
        block += 2 * C
    elif attn_norm == "diff2":
        block += C * C + b * C + n_head * C
    return V * C + L * block + ln + (T * C if include_wpe else 0)


# ----------------------------------------------------------------------------------------------------------
# wandb's offline run file (run-<id>.wandb), read without wandb's network API: a 7-byte header (":W&B", a
# 2-byte magic, a version byte), then LevelDB's log format in 32 KiB blocks (each record: crc32 (4), length
# (2, little-endian), type (1: full, 2: first, 3: middle, 4: last)), the payloads being wandb Record protobufs.


def read_wandb_records(path):
    import struct

    from wandb.proto import wandb_internal_pb2 as pb
    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B", f"{path} is not a wandb run file"
    block, pos, records, parts = 32768, 7, [], []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end of a block or file
            pos += left
            continue
        data = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            parts = [data]
        else:
            parts.append(data)
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            records.append(rec)
    return records


def wandb_run_contents(path):
    """{'config': {key: value}, 'history': [{key: value}], 'summary': {key: value}, 'run': RunRecord}."""
    import json
    out = {"config": {}, "history": [], "summary": {}, "run": None}
    for rec in read_wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            for item in rec.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":  # wandb.init(config=...) arrives inside the run record
            out["run"] = rec.run
            for item in rec.run.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


# ----------------------------------------------------------------------------------------------------------
# running train.py in-process in a scratch directory

import contextlib  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CPU_PRESET = str(REPO / "config" / "shakespeare_char" / "cpu.py")
# The CPU preset shrunk to a model that runs an iteration in a few ms.
TINY = [CPU_PRESET, "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--eval_iters=2", "--log_interval=1", "--log_stats=False", "--warmup_iters=5"]


def workdir(path, data_root):
    """A directory to run train.py in: its data/ is the shared prepared data."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "data").exists():
        (path / "data").symlink_to(data_root, target_is_directory=True)
    return path


@contextlib.contextmanager
def chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def torch_threads(n):
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_train(wd, argv, threads=1):
    """train.main(argv) with wd as the working directory. One intra-op thread by default: these models are tiny,
    and on a shared or busy 2-core machine two spinning OpenMP threads made an iteration up to 10x slower."""
    import train
    with chdir(wd), torch_threads(threads):
        train.main(list(argv))


def split_and_straight_runs(wd, args, stop, total):
    """Train to total twice: stopped at stop and resumed (out_dir split), and in one go (out_dir straight); assert
    the two final checkpoints hold bit-identical weights, and return them (split's, straight's)."""
    import torch
    run_train(wd, [*args, f"--max_iters={stop}", "--out_dir=split"])
    run_train(wd, [*args, f"--max_iters={total}", "--out_dir=split"])  # init_from=auto resumes
    run_train(wd, [*args, f"--max_iters={total}", "--out_dir=straight"])
    a, b = (torch.load(Path(wd) / d / "ckpt.pt", weights_only=True) for d in ("split", "straight"))
    assert a["model"].keys() == b["model"].keys()
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    return a, b


def read_metrics(out_dir):
    import json
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def subprocess_env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
