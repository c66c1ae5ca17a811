"""
Outlier and attention statistics of a GPT: train.py logs model_stats(raw_model, probe) at every eval.

Public repos disagree on what "kurtosis" means, so each definition is logged under its own name. With the
central moments m_k = mean((x - mean(x))^k):

    weight_kurtosis/<matrix>     Fisher excess kurtosis of the whole tensor with biased moments, m4 / m2² - 3:
                                 scipy.stats.kurtosis(w.ravel(), fisher=True, bias=True). A normal tensor: 0.
    act_kurtosis_tensor/<point>  the same over all B·T·C values of an activation. Normal: 0.
    act_kurtosis_sample/<point>  Pearson kurtosis of each sequence's T·C values, m4 / s⁴ with s the unbiased std
                                 (torch.std's default), averaged over the sequences, as in Bondarenko et al. 2023,
                                 "Quantizable Transformers" (whose code adds eps=1e-6 to s⁴). Normal: 3.
    act_kurtosis_token/<point>   Pearson kurtosis of each token's C channels with biased moments, m4 / m2²,
                                 averaged over the tokens, as in Kaul et al. 2025, "From Attention to Activation"
                                 (their outlier-free models score ~3.1). Normal: 3.

A token (or sequence) whose values are all equal has no kurtosis (0/0): clipped softmax lets a head attend to
nothing, so its output can be exactly zero. Such tokens are left out of the means, not averaged in as NaN.

They see different outliers: a few tokens with a huge norm but an ordinary spread over channels ("massive
activations") raise the tensor kurtosis, not the per-token one; a channel that is large in every token (an
"outlier feature") raises the per-token one; sequences of different scales raise the tensor kurtosis, not
the per-sample one.

Matrices: h.<i>.attn.c_attn.{q,k,v} (c_attn's rows computing q, k and v), h.<i>.attn.c_proj, h.<i>.mlp.c_fc, h.<i>.mlp.c_proj,
wte (= the tied lm_head) and wpe. Activation points of block i, captured with forward hooks on the probe batch:

    h.<i>.attn_in       ln_1's output (LayerNorm or RMSNorm): the input of attention, and of attn.c_attn
    h.<i>.attn_out      the heads' outputs, concatenated: the input of attn.c_proj
    h.<i>.attn_branch   what attention adds to the residual stream: the output of attn (after c_proj)
    h.<i>.mlp_in        ln_2's output: the input of the MLP, and of mlp.c_fc
    h.<i>.mlp_hidden    the MLP's hidden units, the input of mlp.c_proj: GELU(x·W_fc), or SwiGLU's silu(gate)·up
    h.<i>.mlp_out       what the MLP adds to the residual stream
    h.<i>.resid         the residual stream after the block

and at each point the magnitudes act_absmax (max |x|, which is also the top-1), act_top10 and act_top100 (the
10th and 100th largest |x|) and act_median (the lower median of |x|).

Attention, per layer (attn_<stat>/h.<i>, the mean over heads) and per head (attn_<stat>_head/h.<i>.head<j>),
from attention_probs(), averaged over the queries 1..T-1 (query 0 can only see token 0, so its row is the same
for every model and says nothing):

    attn_sink      mean weight on the first token, the "attention sink"
    attn_quiet     1 - Σ_j weights: the mass a query does not spend; 0 for softmax, > 0 for softmax1 and symax
                   (exp(0) or η in the denominator), λ for diff (whose signed weights A1 - λ·A2 sum to 1 - λ).
                   For sink and kvbias it is the weight of the virtual key (exp(b_h), or exp(q·k′/√d) in the
                   denominator): the learned "no-op" that competes with the first token as a sink; kvbias spends
                   it on v′_h. For diff2, σ(λ_i) (the signed weights A(q_2i) - σ(λ_i)·A(q_2i+1) sum to 1 - σ(λ_i)).
                   sigmoid: 1 - Σ_j σ(s_j + b), nothing normalises a row, so it is negative once a row's weights sum
                   past 1 (attn_sink is then a weight of its own, not a share). softpick: the mass the ReLU zeroes
                   (scores ≤ 0 count in the denominator, not the numerator); 1 for a row that attends to nothing.
                   clipped: the mass the clip at 0 removes (small softmax weights become exact zeros), less what
                   the clip at 1 and ζ > 1 add; ≥ 0 for ζ = 1.
    attn_entropy   entropy in nats of |weights| renormalised to sum to 1 (for diff |A1 - λ·A2|): where the
                   mass goes, whatever its amount. Rows whose weights all underflow to 0 have none and are left out,
                   as are softpick's and clipped's rows that attend to nothing (exact zeros).

Attention sinks and the tokens that feed them. The probe's first token is BOS when the run's windows start at one
(window_start=bos), else whatever token a window starts with:

    sink_rate        the fraction of all heads (every layer) whose attn_sink exceeds 0.3: Gu et al. 2025, "When
                     Attention Sink Emerges in Language Models", Sink_1^ε with ε = 0.3
    bos_resid_ratio  per layer (bos_resid_ratio/h.<i>): the first token's residual-stream norm after the block over
                     the median norm of the other tokens, averaged over the probe's sequences (extreme tokens grow
                     "massive activations": ratios far above 1)
    bos_value_ratio  per layer and head (bos_value_ratio/h.<i>, bos_value_ratio_head/h.<i>.head<j>): the same for
                     the norm of the value vector (the "value-state drain" of a sink: ratios far below 1)

With the triggers of a Bigram-Backcopy dataset (bigram_backcopy.py), the queries split into active ones (at a
trigger, where the copy must happen) and dormant ones (everywhere else): attn_sink and attn_quiet are also given
per layer and head for each kind (attn_sink_active, attn_sink_dormant, attn_quiet_active, attn_quiet_dormant; the
mass a query puts on the real keys is 1 - attn_quiet), and

    copy_acc         the fraction of trigger positions (the probe's second to second-last) where the model's most
                     likely next token is the token before the trigger, the one the task copies

With an output gate (attn_gate), per layer, over every gate value σ(c_gate(x)) of the probe (per head and token,
or per channel and token):

    gate_mean      the mean gate value (headwise_slice starts at 0.25, the others at 0.5)
    gate_sparsity  the fraction of gate values below 0.1: how often heads (or channels) are switched off, the
                   sparsity the gating papers report
"""

from functools import partial

import numpy as np

import torch


SINK_THRESHOLD = 0.3  # a head is a sink when its mean weight on the first token exceeds this (Gu et al. 2025)


def _exact_dtype(device):
    # The fourth moment of a heavy-tailed tensor loses digits in float32; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _central_moments(x, dim):
    x = x.detach().to(_exact_dtype(x.device))
    d = x - (x.mean() if dim is None else x.mean(dim, keepdim=True))
    d2 = d * d
    return (d2.mean(), (d2 * d2).mean()) if dim is None else (d2.mean(dim), (d2 * d2).mean(dim))


def excess_kurtosis(x, dim=None):
    """Fisher excess kurtosis m4 / m2² - 3 with biased moments, over all of x or along dim (normal: 0)."""
    m2, m4 = _central_moments(x, dim)
    return m4 / m2**2 - 3


def pearson_kurtosis(x, dim=None, unbiased_std=False):
    """Pearson kurtosis m4 / σ⁴ over all of x or along dim (normal: 3); σ² = m2, or m2·n/(n-1) if unbiased_std."""
    m2, m4 = _central_moments(x, dim)
    if unbiased_std:
        n = x.numel() if dim is None else x.size(dim)
        m2 = m2 * n / (n - 1)
    return m4 / m2**2


def weight_stats(model):
    """{"weight_kurtosis/<matrix>": 0-dim tensor} for every matrix and embedding of a GPT."""
    out = {}
    for name, p in model.named_parameters():  # a tied lm_head is the same Parameter as wte: listed once
        if p.dim() < 2:  # biases, norms, λ, η
            continue
        module = name.removesuffix(".weight")
        name = module.removeprefix("transformer.")
        if name.endswith("attn.c_attn"):  # the rows computing q, then k, then v, in the normalizer's widths
            sizes = model.get_submodule(module.removesuffix(".c_attn")).qkv_sizes
            for part, w in zip("qkv", p.split(sizes, dim=0)):
                out[f"weight_kurtosis/{name}.{part}"] = excess_kurtosis(w)
        else:
            out[f"weight_kurtosis/{name}"] = excess_kurtosis(p)
    return out


def activation_stats(x):
    """Kurtosis by the three definitions and outlier magnitudes of one activation x of shape (B, T, C)."""
    a = x.detach().abs().flatten()
    top = a.topk(min(100, a.numel())).values  # descending
    return {
        "act_kurtosis_tensor": excess_kurtosis(x),
        "act_kurtosis_sample": pearson_kurtosis(x.flatten(1), dim=1, unbiased_std=True).nanmean(),
        "act_kurtosis_token": pearson_kurtosis(x, dim=-1).nanmean(),
        "act_absmax": top[0],
        "act_top10": top[min(10, len(top)) - 1],
        "act_top100": top[min(100, len(top)) - 1],
        "act_median": a.median(),
    }


def attention_stats(p, active=None):
    """Per-head {"attn_sink", "attn_quiet", "attn_entropy": (H,) tensors} of weights p of shape (B, H, T, T), and
    with active, a (B, T) bool mask of the queries at triggers, attn_sink and attn_quiet over the active queries and
    over the other (dormant) ones too. A kind with no query in the probe is NaN."""
    rows = p[:, :, 1:].float()  # queries 1..T-1
    mass = rows.abs()
    dist = mass / mass.sum(-1, keepdim=True)  # 0/0 = NaN for an all-zero row, which nanmean leaves out
    entropy = -torch.special.xlogy(dist, dist).sum(-1)
    sink, quiet = rows[..., 0], 1 - rows.sum(-1)
    out = {"attn_sink": sink.mean((0, 2)), "attn_quiet": quiet.mean((0, 2)),
           "attn_entropy": torch.nanmean(entropy, dim=(0, 2))}
    if active is not None:
        for kind, queries in (("active", active[:, 1:]), ("dormant", ~active[:, 1:])):
            w = queries[:, None, :].to(sink.dtype)  # (B, 1, T-1)
            n = w.sum((0, 2))
            out[f"attn_sink_{kind}"] = (sink * w).sum((0, 2)) / n
            out[f"attn_quiet_{kind}"] = (quiet * w).sum((0, 2)) / n
    return out


def first_token_ratio(norms):
    """The first token's norm over the median norm of the others, averaged over sequences: norms (B, ..., T) ->
    (...)."""
    return (norms[..., 0] / norms[..., 1:].flatten(-1).median(-1).values).mean(0)


def copy_accuracy(logits, tokens, triggers):
    """The fraction of trigger positions t (1 <= t <= T-2) of tokens (B, T) whose most likely next token,
    logits[:, t].argmax(), is tokens[:, t-1]; NaN when the probe holds no such position."""
    at = torch.isin(tokens[:, 1:-1], torch.as_tensor(triggers, device=tokens.device))
    hit = logits[:, 1:-1].argmax(-1) == tokens[:, :-2]
    return hit[at].float().mean()


def _store_activation(values, name, from_input, module, args, output):
    x = args[0] if from_input else output
    for stat, v in activation_stats(x).items():
        values[f"{stat}/{name}"] = v


def _store_gate(values, layer, module, args, output):
    gate = torch.sigmoid(output.detach().float())
    values[f"gate_mean/{layer}"] = gate.mean()
    values[f"gate_sparsity/{layer}"] = (gate < 0.1).float().mean()


def _store_attention(values, layer, active, module, args):
    x = args[0]
    per_head = attention_stats(module.attention_probs(x), active)
    per_head["bos_value_ratio"] = first_token_ratio(module.qkv(x)[2].detach().float().norm(dim=-1))
    for stat, heads in per_head.items():
        values[f"{stat}/{layer}"] = heads.mean()
        for j, v in enumerate(heads):
            values[f"{stat}_head/{layer}.head{j}"] = v


def _store_resid_ratio(values, layer, module, args, output):
    values[f"bos_resid_ratio/{layer}"] = first_token_ratio(output.detach().float().norm(dim=-1))


@torch.no_grad()
def probe_batch(val_tokens, block_size, starts=None, n=8):
    """The fixed probe: the first n non-overlapping block_size windows of the val tokens (fewer if short), or with
    starts (the positions windows start at, e.g. every BOS), the windows at the first of them: at least 2048
    tokens, so that statistics over a kind of query (a Bigram-Backcopy trigger) see some hundreds of them."""
    if starts is None:
        n = min(n, (len(val_tokens) - 1) // block_size)
        return torch.from_numpy(np.asarray(val_tokens[: n * block_size], dtype=np.int64).reshape(n, block_size))
    starts = np.asarray(starts[: max(n, 2048 // block_size)])
    return torch.from_numpy(np.asarray(val_tokens[starts[:, None] + np.arange(block_size)], dtype=np.int64))


def model_stats(model, probe, max_tokens=8192, triggers=None):
    """Every statistic above as a flat {name: float}, from the weights and one forward pass over probe; triggers:
    the token ids of a Bigram-Backcopy dataset's triggers (its meta.json), for the statistics that need them.

    model is a GPT itself, not a DDP or torch.compile wrapper (the hooks go on its submodules). probe is a
    (B, T) LongTensor on the model's device; only its first max(1, max_tokens // T) sequences are
    used, which bounds the time and the (B, H, T, T) attention weights that are materialised one layer at a
    time. The model runs in eval mode, and its train/eval mode is restored afterwards.
    """
    probe = probe[: max(1, max_tokens // probe.size(1))]
    values, hooks = {}, []
    active = None if triggers is None else torch.isin(probe, torch.as_tensor(triggers, device=probe.device))
    for i, block in enumerate(model.transformer.h):
        taps = ((block.ln_1, "attn_in", False), (block.attn.c_proj, "attn_out", True), (block.attn, "attn_branch", False),
                (block.ln_2, "mlp_in", False), (block.mlp.c_proj, "mlp_hidden", True), (block.mlp, "mlp_out", False),
                (block, "resid", False))
        for module, point, from_input in taps:
            hooks.append(module.register_forward_hook(partial(_store_activation, values, f"h.{i}.{point}", from_input)))
        hooks.append(block.attn.register_forward_pre_hook(partial(_store_attention, values, f"h.{i}", active)))
        hooks.append(block.register_forward_hook(partial(_store_resid_ratio, values, f"h.{i}")))
        if hasattr(block.attn, "c_gate"):
            hooks.append(block.attn.c_gate.register_forward_hook(partial(_store_gate, values, f"h.{i}")))
    was_training = model.training
    model.eval()
    try:
        values.update(weight_stats(model))
        # with targets (any) the logits of every position, which copy_acc needs (a GPT-2 vocabulary's cost 1.6 GB)
        logits = model(probe, targets=probe if triggers is not None else None)[0]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    sinks = torch.stack([v for k, v in values.items() if k.startswith("attn_sink_head/")])
    values["sink_rate"] = (sinks > SINK_THRESHOLD).float().mean()
    if triggers is not None:
        values["copy_acc"] = copy_accuracy(logits, probe, triggers)
    # One device-to-host copy for everything, instead of a GPU sync per number.
    numbers = torch.stack([v.to(_exact_dtype(probe.device)) for v in values.values()]).tolist()
    return dict(zip(values, numbers))
