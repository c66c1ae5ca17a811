"""
Exact perplexity of a checkpoint over a whole split (train.py's val loss is an estimate from random batches).

    python -m analysis.perplexity OUT_DIR [--split val] [--batch_size N] [--stride S] [--device D]
    torchrun --standalone --nproc_per_node=8 -m analysis.perplexity OUT_DIR      (windows sharded over ranks)

Every token of the split but the first is scored exactly once. By default the windows are block_size long
and score all their tokens (the last window is moved back to end at the split's end, and scores only the
tokens not scored yet); with --stride S < block_size they slide by S and score only their last S tokens, so
that every token is predicted with at least block_size - S tokens of context (lower perplexity, more compute).

Writes {split}_loss (mean NLL in nats per token) and {split}_ppl into OUT_DIR/eval.json, keeping the keys other
tools wrote there, and prints them; for the val split also tokens (the number scored), bpc (bits per character of
the scored text: NLL / ln 2 per character; for GPT-2 BPE the characters of the decoded text), split, stride,
block_size and iter (the checkpoint's). eval.json["produced_by"]["perplexity_<split>"] records what produced them
(provenance.py): the run, its iteration, the data's fingerprint and these settings. The data must be the run's own
(the same fingerprint); everything is checked before the scoring starts.
"""

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


def windows(n_tokens, block_size, stride=None):
    """(begins, n_new, T): window i reads tokens[begins[i] : begins[i] + T + 1] and scores its last n_new[i]
    predictions, so that together the windows predict each of tokens[1:] once."""
    T = min(block_size, n_tokens - 1)
    stride = stride or T
    if not 0 < stride <= T:
        raise ValueError(f"stride must be in [1, block_size={T}], got {stride}")
    ends = np.append(np.arange(T, n_tokens - 1, stride), n_tokens - 1)  # end of each window's predictions
    return ends - T, np.diff(ends, prepend=0), T


def bos_windows(starts, n_tokens, block_size):
    """(begins, first, last, T) for windows that start at starts (every BOS, say: prepare_data.bos_starts, whose
    windows fit): window i reads tokens[starts[i] : starts[i] + T + 1] and scores its predictions first[i] (0) to
    last[i] - 1, those of its own document: up to the next start, at most T. What a document holds beyond T
    tokens is not scored: a model trained on windows that start at BOS never saw it."""
    starts = np.asarray(starts, dtype=np.int64)
    gaps = np.diff(starts, append=n_tokens - 1)
    return starts, np.zeros_like(starts), np.minimum(gaps, block_size), block_size


@torch.no_grad()
def evaluate_perplexity(model, tokens, block_size, batch_size, device, stride=None, progress=True, starts=None,
                        triggers=None):
    """Mean NLL (nats/token) and perplexity of model over tokens[1:], each predicted from its window; with starts
    (window_start=bos runs), over the documents' tokens that windows starting at starts score (bos_windows).

    model(x, targets) must return (logits, mean loss over the targets that are not -1), as GPT does; any
    wrapper of it (a fake-quantized model, say) works. tokens is a 1-D integer array (a np.memmap is fine: a
    batch is read at a time). Under torch.distributed the windows are split over the ranks and the sums
    all-reduced, so every rank returns the total. Returns {"loss", "ppl", "tokens", "nll_sum"}, and with the
    triggers of a Bigram-Backcopy dataset, copy_acc (the fraction of predictions after a trigger whose most likely
    token is the one the task copies, the token before the trigger), copy_loss and bigram_loss (the mean NLL of
    the predictions after a trigger, and of the others).
    """
    if starts is None:
        begins, n_new, T = windows(len(tokens), block_size, stride)
        first, last = T - n_new, np.full_like(n_new, T)  # the rest was scored by an earlier window
    else:
        begins, first, last, T = bos_windows(starts, len(tokens), block_size)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    begins, first, last = begins[rank::world], first[rank::world], last[rank::world]
    was_training = model.training
    model.eval()
    # NLL sum, tokens scored; with triggers: copies right, copy NLL sum, copies scored
    sums = torch.zeros(2 if triggers is None else 5, dtype=torch.float64, device=device)
    offsets, positions = np.arange(T + 1), torch.arange(T, device=device)
    bar = tqdm(total=int((last - first).sum()), unit="tok", unit_scale=True, disable=not progress or rank != 0)
    for i in range(0, len(begins), batch_size):
        chunk = torch.from_numpy(tokens[begins[i:i + batch_size, None] + offsets].astype(np.int64)).to(device)
        x, y = chunk[:, :-1], chunk[:, 1:].clone()
        lo, hi = (torch.from_numpy(a[i:i + batch_size]).to(device)[:, None] for a in (first, last))
        y[(positions < lo) | (positions >= hi)] = -1
        count = (y != -1).sum()
        logits, loss = model(x, y)
        batch_sums = [loss.double() * count, count.double()]
        if triggers is not None:
            copy = torch.isin(x, torch.as_tensor(triggers, device=device)) & (y != -1) & (positions >= 1)
            nll = torch.nn.functional.cross_entropy(logits[copy].double(), y[copy], reduction="sum")
            right = (logits.argmax(-1) == x.roll(1, dims=1))[copy].sum()
            batch_sums += [right.double(), nll, copy.sum().double()]
        sums += torch.stack(batch_sums)
        bar.update(int((last - first)[i:i + batch_size].sum()))
    bar.close()
    model.train(was_training)
    if world > 1:
        dist.all_reduce(sums)
    nll_sum, count, *copies = sums.tolist()
    loss = nll_sum / count  # exp overflows past 709: a diverged model's PPL is inf, not an OverflowError
    out = {"loss": loss, "ppl": math.exp(loss) if loss < 709 else math.inf, "tokens": int(count), "nll_sum": nll_sum}
    if copies:
        right, copy_nll, n_copies = copies
        out |= {"copy_acc": right / n_copies, "copy_loss": copy_nll / n_copies,
                "bigram_loss": (nll_sum - copy_nll) / (count - n_copies)}
    return out


@torch.no_grad()
def continuation_logprobs(model, pairs, block_size, batch_size, device, progress=False):
    """The log-probability of every token of each continuation given its context, and whether it was the model's
    greedy (argmax) choice: for (context, continuation) pairs of token-id lists, context non-empty, a list of
    (float64 array, bool array), one entry per continuation token.

    A continuation is scored in pieces of up to block_size tokens, each read with as much of what precedes it as
    fits in one block_size window (the context is cut from the left). A pair (first token, the rest of a text)
    is thus scored in exactly the windows evaluate_perplexity scores the text in. model(x, targets) returns
    (logits, loss) as GPT does; windows are batched batch_size at a time, longest first, padded on the right (a
    causal model's scores do not see the padding)."""
    rows = []  # (tokens of the window, how many of its last predictions are scored, pair index, piece index)
    for i, (context, continuation) in enumerate(pairs):
        if not context:
            raise ValueError("the context must hold at least one token")
        for piece, a in enumerate(range(0, len(continuation), block_size)):
            seen = list(context) + list(continuation[:a + block_size])
            rows.append((seen[-(block_size + 1):], len(continuation[a:a + block_size]), i, piece))
    rows.sort(key=lambda row: -len(row[0]))
    pieces = [{} for _ in pairs]  # piece index -> (log-probabilities, greedy)
    was_training = model.training
    model.eval()
    for b in tqdm(range(0, len(rows), batch_size), unit="batch", disable=not progress):
        batch = rows[b:b + batch_size]
        width = len(batch[0][0])
        chunk = torch.tensor([tokens + [0] * (width - len(tokens)) for tokens, _, _, _ in batch], device=device)
        logits = model(chunk[:, :-1], chunk[:, 1:])[0]
        # every scored prediction of the batch at once: (row, position) pairs, each row's last n positions
        rows_at = np.repeat(np.arange(len(batch)), [n for _, n, _, _ in batch])
        positions = np.concatenate([np.arange(len(tokens) - 1 - n, len(tokens) - 1) for tokens, n, _, _ in batch])
        rows_at, positions = torch.from_numpy(rows_at).to(device), torch.from_numpy(positions).to(device)
        scored = logits[rows_at, positions].double().log_softmax(-1)
        targets = chunk[rows_at, positions + 1]
        logprobs = scored.gather(-1, targets[:, None])[:, 0].cpu().numpy()
        greedy = (scored.argmax(-1) == targets).cpu().numpy()
        ends = np.cumsum([n for _, n, _, _ in batch])
        for (_, _, i, piece), lp, g in zip(batch, np.split(logprobs, ends[:-1]), np.split(greedy, ends[:-1])):
            pieces[i][piece] = (lp, g)
    model.train(was_training)
    return [(np.concatenate([np.zeros(0)] + [p[k][0] for k in sorted(p)]),
             np.concatenate([np.zeros(0, bool)] + [p[k][1] for k in sorted(p)])) for p in pieces]


def bits_per_char(nll_sum, tokens, meta):
    """Bits per character of tokens[1:] (what evaluate_perplexity scores), or None for an unknown tokenizer."""
    if meta["tokenizer"] == "char":
        n_chars = len(tokens) - 1
    elif meta["tokenizer"] == "gpt2":
        from prepare_data import load_tokenizer
        n_chars = len(load_tokenizer(meta)[1](tokens[1:]))
    else:
        return None
    return nll_sum / math.log(2) / n_chars


def scored_tokens(tokens, starts, block_size):
    """tokens, or for windows at starts, one token (whose prediction is not scored) followed by the tokens they score
    (bos_windows): what bits_per_char counts the characters of."""
    if starts is None:
        return tokens
    begins, _, last, _ = bos_windows(starts, len(tokens), block_size)
    return np.concatenate([tokens[:1]] + [tokens[b + 1:b + 1 + n] for b, n in zip(begins, last)])


def read_eval_json(path):
    """The JSON object in a run's eval.json ({} if there is none); a damaged one is a ValueError saying what to do."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        data, error = None, e
    if not isinstance(data, dict):
        why = f"{type(error).__name__}: {error}" if data is None else "not a JSON object"
        raise ValueError(f"{path} is damaged ({why}): move it away; analysis.perplexity and analysis.quantize "
                         f"write it anew")
    return data


def update_json(path, values, produced_by=None):
    """Merge values into the JSON object at path, atomically: readers see the old file or the new one. produced_by:
    {tool: what produced the values (provenance.py)}, merged into the file's "produced_by"."""
    path = Path(path)
    data = read_eval_json(path)
    data.update(values)
    if produced_by:
        data["produced_by"] = {**data.get("produced_by", {}), **produced_by}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return data


def open_run(out_dir, data_dir, device, batch_size):
    """What scoring a run needs, checked before any compute: (the model on the CPU, the checkpoint, its dataset's
    splits and meta, the path of its eval.json). The dataset (data/<the run's dataset>, or data_dir) must be the
    one the run was trained on: the same tokenizer, and the same data unless it was prepared again (its
    fingerprint). eval.json must be readable and its directory writable. Errors: one-line ValueError or
    CheckpointError."""
    from checkpoint import load_model
    from prepare_data import check_same_data, load_prepared, rebuild_command
    from runtime import check_device

    check_device(device)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: give at least 1 window per forward pass, or leave it out for "
                         "the run's batch_size")
    model, ckpt = load_model(out_dir)
    if not ckpt.get("meta"):
        raise ValueError(f"{out_dir}: the checkpoint has no dataset metadata ('meta'), so its tokenizer and data are "
                         "unknown: score a checkpoint written by train.py")
    data_dir = Path(data_dir or Path("data") / ckpt["config"]["dataset"])
    data, meta = load_prepared(data_dir)
    check_same_data(ckpt["meta"], meta, data_dir, f"Point --data_dir at the data the run was trained on, or rebuild "
                    f"it as it was: {rebuild_command(data_dir, ckpt['meta'])}")
    eval_path = (Path(out_dir) if Path(out_dir).is_dir() else Path(out_dir).parent) / "eval.json"
    read_eval_json(eval_path)
    try:
        tempfile.TemporaryFile(dir=eval_path.parent).close()
    except OSError as e:
        raise ValueError(f"cannot write {eval_path} ({e.strerror}): the results would be lost; copy the run "
                         f"directory somewhere writable and score the copy") from None
    return model, ckpt, data, meta, eval_path


def produced_by(ckpt, meta, **settings):
    """What produced an evaluation of the checkpoint ckpt on the data meta describes, with the tool's settings."""
    from provenance import run_id
    from train import TrainConfig
    return {"run": run_id(ckpt, TrainConfig.RESUME_FREE), "iter": ckpt["iter_num"], "data": meta["fingerprint"],
            **settings}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a training run's out_dir (holding ckpt.pt)")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--batch_size", type=int, help="windows per forward pass (default: the run's batch_size)")
    p.add_argument("--stride", type=int, help="slide windows by this many tokens (default: block_size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", help="default: data/<the run's dataset>")
    args = p.parse_args(argv)

    from checkpoint import CheckpointError
    from prepare_data import bos_starts, window_start
    from runtime import setup_distributed
    try:
        # the device is checked before torchrun's process group is set up on it
        model, ckpt, data, meta, eval_path = open_run(args.out_dir, args.data_dir, args.device, args.batch_size)
        block_size = ckpt["model_args"]["block_size"]
        if args.stride is not None and not 1 <= args.stride <= block_size:
            raise ValueError(f"--stride={args.stride} is out of range: it must be in [1, {block_size}] (1 to the "
                             f"checkpoint's block_size); leave it out to slide by block_size")
        tokens = data[args.split]
        starts = None
        if window_start(ckpt["config"].get("window_start"), meta) == "bos":  # scored as trained: windows at BOS
            if args.stride is not None:
                raise ValueError("--stride slides windows off the BOS this run's windows start at: leave it out")
            starts = bos_starts(tokens, meta["bos_id"], block_size)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    # Under torchrun: one process per GPU (or gloo processes on CPU), each scoring a share of the windows.
    dist_ctx = setup_distributed(args.device)
    model = model.to(dist_ctx.device)
    result = evaluate_perplexity(model, tokens, block_size, args.batch_size or ckpt["config"]["batch_size"],
                                 dist_ctx.device, args.stride, starts=starts, triggers=meta.get("triggers"))
    if dist_ctx.master:
        details = {"tokens": result["tokens"],
                   "bpc": bits_per_char(result["nll_sum"], scored_tokens(tokens, starts, block_size), meta),
                   "split": args.split, "stride": args.stride or block_size, "block_size": block_size,
                   "iter": ckpt["iter_num"]}
        details |= {key: result[key] for key in ("copy_acc", "copy_loss", "bigram_loss") if key in result}
        if "bayes_loss_by_position" in meta:  # the task's floor over the same predictions
            by_position = np.cumsum([0.0] + meta["bayes_loss_by_position"])
            last = bos_windows(starts, len(tokens), block_size)[2]
            details["bayes_loss"] = float(by_position[last].sum() / last.sum())
        # The flat keys without a split in their name describe val_ppl (what reports read); the train split's
        # details are kept under produced_by only.
        values = {f"{args.split}_loss": result["loss"], f"{args.split}_ppl": result["ppl"],
                  **(details if args.split == "val" else {})}
        update_json(eval_path, values, {f"perplexity_{args.split}": produced_by(ckpt, meta, **details)})
        print(json.dumps({**values, **details}, indent=2))
    dist_ctx.close()


if __name__ == "__main__":
    main()
