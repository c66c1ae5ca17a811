"""
Post-training quantization of a checkpoint, simulated ("fake-quantized"): tensors are rounded to an integer grid
and scaled back to float, so the model computes in fp32 exactly what an integer kernel would see.

    python -m analysis.quantize OUT_DIR [--calib_batches 8] [--percentile 99.99] [--max_tokens 65536] [--device D]
                                [--tolerance 0.01]

What is quantized:
    weights      GPT-2's Linears: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj and lm_head, the same set in the
                 LLaMA-style block (SwiGLU's c_fc computes gate and up, its c_proj reads silu(gate)·up). Symmetric,
                 one scale per tensor or per output row (channel). lm_head is tied to wte, so the one shared matrix is
                 quantized and the token embedding reads the quantized rows too, as a model stored once in int8
                 would (per-channel scales of lm_head are per-token scales of the embedding).
    activations  the input of every one of those Linears (lm_head's is ln_f's output): asymmetric, per tensor, 8
                 bits or fewer, with a static range calibrated on training batches by min-max or by a percentile.
Kept in fp32: wpe, LayerNorm/RMSNorm (qk_norm's too), biases (int32 in integer kernels), RoPE's rotation, what a
normalizer or gate adds (diff's λ, symax's η, diff2's λ projection, the gates' c_gate), so that every model has the
same matrices quantized, and everything between the Linears: the attention scores, the normalizer and the
weights-times-values product.

Variants, each scored by analysis.perplexity.evaluate_perplexity on the first --max_tokens tokens of the val split
and merged into OUT_DIR/eval.json (other keys are kept) as ppl_<variant>, with delta_ppl_<variant> = ppl - ppl_fp,
and what produced them (the run, its iteration, the data's fingerprint, these settings) as
eval.json["produced_by"]["quantize"]. The data must be the run's own; everything is checked before any compute:

    fp                               the checkpoint as trained
    w8a8_{tensor,channel}_{minmax,percentile}   int8 weights per tensor or per channel, int8 activations
    w8a6, w8a5, w8a4                 int8 weights per channel, 6-, 5- and 4-bit activations calibrated by min-max
    w8                               int8 weights per channel, fp32 activations
    w4                               int4 weights per channel (7 levels each side of 0), fp32 activations

The activation ladder, 8 (w8a8_channel_minmax), 6, 5, 4 bits, changes nothing but the activations' bit width, so
that its rungs differ only there. At 8 bits every small model loses next to nothing; below it the models part.
The ladder is calibrated by min-max because min-max is the static range with no knob to tune, and the one where a
model's outliers cost it resolution: exactly what the normalizers are compared on. Percentile calibration clips
the outliers instead, so its result would depend on the percentile chosen; the w8a8 percentile variants show it.
Widths below 4 bits are left out: at 3 bits the quick study's models lose far more than any tolerance worth
stating, so a rung there would only cost time.

min_act_bits, also in eval.json, is the smallest width the ladder reaches, walking down from 8 bits, before a rung
costs more than --tolerance of the fp PPL: PPL_quantized <= (1 + tolerance) * PPL_fp, so a relative loss that
compares models of different PPL alike (1% of PPL is ≈ 0.01 nats of loss). A rung after the first failure does not
count even if it passes by noise. It is null when even W8A8 exceeds the tolerance; quant_tolerance records it.
"""

import argparse
import copy
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from analysis.perplexity import evaluate_perplexity, open_run, produced_by, update_json

# name: (weight bits, weight scale axis: None = per tensor, 0 = per output row; activation calibration or None,
# activation bits)
VARIANTS = {
    "w8a8_tensor_minmax": (8, None, "minmax", 8),
    "w8a8_tensor_percentile": (8, None, "percentile", 8),
    "w8a8_channel_minmax": (8, 0, "minmax", 8),
    "w8a8_channel_percentile": (8, 0, "percentile", 8),
    "w8a6": (8, 0, "minmax", 6),
    "w8a5": (8, 0, "minmax", 5),
    "w8a4": (8, 0, "minmax", 4),
    "w8": (8, 0, None, None),
    "w4": (4, 0, None, None),
}
# The activation ladder min_act_bits walks down: {activation bits: variant}, every rung W8 per channel, min-max.
ACT_LADDER = {8: "w8a8_channel_minmax", 6: "w8a6", 5: "w8a5", 4: "w8a4"}
TOLERANCE = 0.01  # default of --tolerance: the PPL a rung may lose, relative to fp
EVAL_KEYS = (["ppl_fp"] + [f"{prefix}_{name}" for name in VARIANTS for prefix in ("ppl", "delta_ppl")]
             + ["min_act_bits", "quant_tolerance"])


def quantize_symmetric(w, bits, axis=None):
    """Round w to the grid {-q..q}·scale, q = 2^(bits-1) - 1, scale = max|w| / q over the whole tensor
    (axis=None) or separately for each index along axis (axis=0 of a Linear weight: each output row).
    The grid is symmetric (no -2^(bits-1)) so that 0 is exact and w and -w round alike. Ties round to even."""
    q = 2 ** (bits - 1) - 1
    dims = [d for d in range(w.dim()) if d != axis] if axis is not None else list(range(w.dim()))
    absmax = w.abs().amax(dim=dims, keepdim=True) if dims else w.abs()
    scale = absmax.clamp(min=torch.finfo(w.dtype).tiny) / q  # an all-zero row stays 0 instead of 0/0
    return torch.round(w / scale).clamp(-q, q) * scale


def quantize_asymmetric(x, lo, hi, bits):
    """Round x to 2^bits levels spread evenly over [lo, hi] (widened to hold 0, so that 0 is exact), clipping
    values outside: scale = (hi - lo) / (2^bits - 1), zero point z = round(-lo / scale),
    x -> (clamp(round(x / scale) + z, 0, 2^bits - 1) - z) · scale."""
    levels = 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / levels
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale


def percentile_range(x, p):
    """(lo, hi): the (100 - p)th and pth percentiles of all values of x, nearest rank on the (n - 1) grid (as
    numpy's method="nearest"). kthvalue, because torch.quantile refuses tensors above 16M values."""
    x = x.detach().flatten().float()
    k = round(p / 100 * (x.numel() - 1))  # 0-based rank of hi; lo is the same rank from the other end
    return x.kthvalue(x.numel() - k).values.item(), x.kthvalue(k + 1).values.item()


QUANTIZED = ("c_attn", "c_proj", "c_fc", "lm_head")  # GPT-2's Linears, by nanoGPT's names (model.py keeps them)


def linears(model):
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in QUANTIZED]


@torch.no_grad()
def calibrate(model, batches, percentile):
    """{linear name: {"minmax": (lo, hi), "percentile": (lo, hi)}} of each Linear's input over the batches, on
    the model as given (fp weights, as static PTQ usually calibrates): min-max takes the extremes over all batches;
    the percentile range is averaged over batches (one batch's percentiles are cheap, and a tail that rare is
    noisy per batch anyway)."""
    seen = {name: [] for name, _ in linears(model)}

    def record(name, module, args):
        x = args[0]
        seen[name].append((x.min().item(), x.max().item(), *percentile_range(x, percentile)))

    hooks = [m.register_forward_pre_hook(partial(record, name)) for name, m in linears(model)]
    model.eval()
    try:
        for x in batches:
            model(x, targets=x)  # with targets (any) the model runs lm_head on every position, as scoring does
    finally:
        for h in hooks:
            h.remove()
    ranges = {}
    for name, rows in seen.items():
        lo, hi, plo, phi = np.array(rows).T
        ranges[name] = {"minmax": (float(lo.min()), float(hi.max())),
                        "percentile": (float(plo.mean()), float(phi.mean()))}
    return ranges


@torch.no_grad()
def quantized_copy(model, w_bits, w_axis=None, act_ranges=None, a_bits=8):
    """A copy of model whose Linear weights are fake-quantized to w_bits (scales per tensor, or per index along
    w_axis), and, given act_ranges {linear name: (lo, hi)}, whose Linear inputs are fake-quantized to a_bits
    by forward pre-hooks. The original model is untouched."""
    model = copy.deepcopy(model)  # deepcopy keeps the tie: wte and lm_head stay one Parameter
    for name, m in linears(model):
        m.weight.copy_(quantize_symmetric(m.weight, w_bits, w_axis))
        if act_ranges is not None:
            lo, hi = act_ranges[name]
            m.register_forward_pre_hook(lambda mod, args, lo=lo, hi=hi: quantize_asymmetric(args[0], lo, hi, a_bits))
    return model


def min_act_bits(ppl_by_bits, ppl_fp, tolerance):
    """The smallest activation width reached walking down the ladder {bits: PPL} from its widest rung while
    PPL <= (1 + tolerance) * ppl_fp; None when the widest rung already exceeds it."""
    reached = None
    for bits in sorted(ppl_by_bits, reverse=True):
        if ppl_by_bits[bits] > (1 + tolerance) * ppl_fp:
            break
        reached = bits
    return reached


def quantization_eval(model, val_tokens, calib_batches, block_size, batch_size, device, percentile=99.99,
                      tolerance=TOLERANCE):
    """{"ppl_fp", "ppl_<variant>", "delta_ppl_<variant>", "min_act_bits", "quant_tolerance"} for every variant in
    VARIANTS."""
    ranges = calibrate(model, calib_batches, percentile)
    ppl = lambda m: evaluate_perplexity(m, val_tokens, block_size, batch_size, device, progress=False)["ppl"]
    out = {"ppl_fp": ppl(model)}
    for name, (w_bits, w_axis, calib, a_bits) in VARIANTS.items():
        acts = {k: r[calib] for k, r in ranges.items()} if calib else None
        out[f"ppl_{name}"] = ppl(quantized_copy(model, w_bits, w_axis, acts, a_bits))
        out[f"delta_ppl_{name}"] = out[f"ppl_{name}"] - out["ppl_fp"]
        print(f"  {name:24s} ppl {out[f'ppl_{name}']:9.4f} ({out[f'delta_ppl_{name}']:+.4f} vs fp {out['ppl_fp']:.4f})")
    out["min_act_bits"] = min_act_bits({bits: out[f"ppl_{name}"] for bits, name in ACT_LADDER.items()},
                                       out["ppl_fp"], tolerance)
    out["quant_tolerance"] = tolerance
    print(f"  smallest activation width within {tolerance:.1%} of fp PPL: {out['min_act_bits']} bits")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a training run's out_dir (holding ckpt.pt)")
    p.add_argument("--calib_batches", type=int, default=8, help="training batches (of the run's batch_size) to "
                   "calibrate the activation ranges on")
    p.add_argument("--percentile", type=float, default=99.99, help="percentile calibration clips to [100-P, P]")
    p.add_argument("--max_tokens", type=int, default=65536, help="score only the first N tokens of val, for speed")
    p.add_argument("--batch_size", type=int, help="windows per forward pass (default: the run's batch_size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", help="default: data/<the run's dataset>")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration batches' positions")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="min_act_bits: the PPL a rung of the "
                   "activation ladder may lose, as a fraction of the fp PPL")
    args = p.parse_args(argv)
    if args.calib_batches < 1 or args.max_tokens < 2 or not 50 < args.percentile <= 100:
        p.error("need --calib_batches >= 1, --max_tokens >= 2 and 50 < --percentile <= 100")
    if not args.tolerance >= 0:  # NaN too
        raise SystemExit(f"error: --tolerance={args.tolerance} is not a fraction >= 0: give the PPL a rung may lose "
                         f"relative to fp, e.g. 0.01 for 1%")

    from checkpoint import CheckpointError
    try:
        if not 0 <= args.seed < 2**63:
            raise ValueError(f"--seed={args.seed} is out of range: the seed of the calibration batches must be in "
                             "[0, 2**63)")
        model, ckpt, data, meta, eval_path = open_run(args.out_dir, args.data_dir, args.device, args.batch_size)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    model = model.to(args.device)
    block_size, batch_size = ckpt["model_args"]["block_size"], args.batch_size or ckpt["config"]["batch_size"]

    # Calibration reads training text, never the val tokens that are scored.
    train = data["train"]
    rng = np.random.default_rng(args.seed)
    offsets = rng.integers(0, len(train) - block_size, size=(args.calib_batches, batch_size))
    calib = [torch.from_numpy(train[o[:, None] + np.arange(block_size)].astype(np.int64)).to(args.device)
             for o in offsets]
    val = data["val"][: args.max_tokens]

    print(f"quantizing {args.out_dir} (iter {ckpt['iter_num']}): {len(val):,} val tokens, "
          f"{args.calib_batches}x{batch_size} calibration sequences, percentile {args.percentile}")
    values = quantization_eval(model, val, calib, block_size, batch_size, args.device, args.percentile,
                               args.tolerance)
    values.update(quant_tokens=len(val) - 1, quant_calib_batches=args.calib_batches,
                  quant_percentile=args.percentile, quant_iter=ckpt["iter_num"])
    settings = {"max_tokens": args.max_tokens, "calib_batches": args.calib_batches, "percentile": args.percentile,
                "batch_size": batch_size, "seed": args.seed, "tolerance": args.tolerance}
    update_json(eval_path, values, {"quantize": produced_by(ckpt, meta, **settings)})
    print(f"wrote {len(values)} keys to {eval_path}")


if __name__ == "__main__":
    main()
