"""
EleutherAI's lm-evaluation-harness over an attnorm checkpoint: the tasks papers report, scored by lm-eval itself.

    python -m analysis.lm_eval OUT_DIR --tasks hellaswag,arc_easy,lambada_openai [--limit N] [--batch_size N]
                               [--device D] [--include_path DIR]

lm-eval (the PyPI package `lm-eval`) is an optional extra: pip install -r requirements-eval.txt. Importing this
module registers AttnormLM in lm-eval's model registry as "attnorm", built from lm-eval's argument string
"checkpoint=OUT_DIR" (lm-eval's own device and batch_size apply), so lm-eval's Python API drives it too:

    import analysis.lm_eval, lm_eval
    lm_eval.simple_evaluate(model="attnorm", model_args="checkpoint=OUT_DIR", tasks=["arc_easy"], device="cuda")

AttnormLM is an lm_eval.api.model.TemplateLM (lm-eval's LM that tokenizes context/continuation pairs itself):
    loglikelihood          the continuation's token log-probabilities given the context, summed, and whether each
                           token was the greedy choice (analysis.perplexity.continuation_logprobs: block_size windows)
    loglikelihood_rolling  a whole text after one prefix token, in the windows analysis.perplexity scores a split in
    generate_until         greedy decoding until a stop string or max_gen_toks tokens (sampling is not offered)
The prefix token (of an empty context and of rolling texts) is GPT-2's <|endoftext|>, or for a char-level model
"\\n" (its vocabulary has no end-of-text token; without "\\n", its first character). A char-level model cannot read a character outside its vocabulary:
such a task is one error line. The datasets come through Hugging Face datasets (cached after the first download).

Writes each task's metrics into OUT_DIR/eval.json as lm_eval_<task>_<metric>[_<filter>] (e.g.
lm_eval_arc_easy_acc_norm, lm_eval_arc_easy_acc_norm_stderr), lm_eval_<task>_samples (documents scored) and
lm_eval_limit, keeping the other keys.
"""

import argparse
import json
from pathlib import Path

import torch

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:
    raise SystemExit("error: analysis.lm_eval needs lm-eval (EleutherAI's lm-evaluation-harness): "
                     "pip install -r requirements-eval.txt") from None

from analysis.perplexity import continuation_logprobs, produced_by, update_json
from provenance import fingerprint

DEFAULT_BATCH_SIZE = 32


@register_model("attnorm")
class AttnormLM(TemplateLM):
    def __init__(self, checkpoint, device=None, batch_size=None, max_batch_size=None, max_gen_toks=256):
        """checkpoint: a run's out_dir or a checkpoint file; batch_size: windows per forward pass (lm-eval passes
        max_batch_size along, which only its batch_size="auto" uses: refused here, so it is ignored)."""
        super().__init__()
        from checkpoint import load_model
        from prepare_data import EOT, load_tokenizer
        if batch_size in (None, ""):
            batch_size = DEFAULT_BATCH_SIZE
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r}: give a number of windows per forward pass (default "
                             f"{DEFAULT_BATCH_SIZE}); lm-eval's 'auto' is not supported")
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, ckpt = load_model(checkpoint, self._device)
        self.model.eval()
        if "meta" not in ckpt:
            raise ValueError(f"{checkpoint}: the checkpoint has no dataset metadata ('meta'), so its tokenizer is "
                             "unknown: evaluate a checkpoint written by train.py")
        self.meta = ckpt["meta"]
        # what produced_by reads, without the weights and optimizer state
        self.checkpoint = {key: ckpt.get(key) for key in ("config", "model_args", "meta", "iter_num")}
        self.encode, self.decode = load_tokenizer(self.meta)
        self.block_size, self.batch_size = ckpt["model_args"]["block_size"], int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        chars = self.meta.get("chars", "")
        self._eot = EOT if self.meta["tokenizer"] == "gpt2" else chars.index("\n") if "\n" in chars else 0

    @property
    def eot_token_id(self):
        return self._eot

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        try:
            return self.encode(string)
        except KeyError as e:
            raise ValueError(f"the task's text holds {e.args[0]!r}, which this char-level model's vocabulary lacks: "
                             f"evaluate a model with the GPT-2 tokenizer") from None

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        scored = continuation_logprobs(self.model, [(context, continuation) for _, context, continuation in requests],
                                       self.block_size, self.batch_size, self._device, progress=not disable_tqdm)
        results = []
        for (key, _, _), (logprobs, greedy) in zip(requests, scored):
            result = (float(logprobs.sum()), bool(greedy.all()))
            self.cache_hook.add_partial("loglikelihood", key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        pairs = [([self.eot_token_id], self.tok_encode(request.args[0])) for request in requests]
        scored = continuation_logprobs(self.model, pairs, self.block_size, self.batch_size, self._device,
                                       progress=not disable_tqdm)
        results = [float(logprobs.sum()) for logprobs, _ in scored]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), result)
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm=False):
        """Greedy continuations, cut at the first stop string; prompts of the same length are decoded as a batch."""
        jobs = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs)
            if gen_kwargs.pop("do_sample", False) or gen_kwargs.pop("temperature", 0.0):
                raise ValueError("the task asks for sampling (do_sample or temperature > 0); AttnormLM decodes "
                                 "greedily only")
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if self.meta["tokenizer"] == "gpt2":
                until.append("<|endoftext|>")
            prompt = self.tok_encode(context) or [self.eot_token_id]
            jobs.append((prompt, until, int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))))
        results = [None] * len(jobs)
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][0]))
        groups = [[order[0]]] if order else []
        for j in order[1:]:
            if len(jobs[j][0]) == len(jobs[groups[-1][0]][0]) and len(groups[-1]) < self.batch_size:
                groups[-1].append(j)
            else:
                groups.append([j])
        vocab_size = self.meta["vocab_size"]  # the embedding may be padded beyond it: never emit a padding id
        for group in groups:
            idx = torch.tensor([jobs[j][0] for j in group], device=self._device)
            start, steps = idx.size(1), max(jobs[j][2] for j in group)
            for _ in range(steps):
                logits = self.model(idx[:, -self.block_size:])[0][:, -1, :vocab_size]
                idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
                texts = [self.decode(idx[r, start:start + jobs[j][2]].tolist()) for r, j in enumerate(group)]
                if all(any(s in text for s in jobs[j][1]) for text, j in zip(texts, group)):
                    break
            for text, j in zip(texts, group):
                for stop in jobs[j][1]:
                    text = text.split(stop)[0]
                results[j] = text
                self.cache_hook.add_partial("generate_until", requests[j].args, text)
        return results


def flatten_results(results):
    """lm-eval's results dict as eval.json keys: {task: {"acc,none": x, "acc_stderr,none": s}} becomes
    lm_eval_<task>_acc, lm_eval_<task>_acc_stderr (a filter other than "none" is appended), plus the documents
    scored per task."""
    values = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"lm_eval_{task}_{metric}" + (f"_{filter_name}" if filter_name not in ("", "none") else "")] = value
    for task, counts in results.get("n-samples", {}).items():
        values[f"lm_eval_{task}_samples"] = counts["effective"]
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a training run's out_dir (holding ckpt.pt)")
    p.add_argument("--tasks", default="hellaswag,arc_easy,lambada_openai", help="lm-eval task names, comma-separated")
    p.add_argument("--limit", type=int, help="score the first N documents of each task only")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num_fewshot", type=int, help="examples in each prompt (default: each task's own, mostly 0)")
    p.add_argument("--bootstrap_iters", type=int, default=100000, help="resamples for the stderr of perplexity-like "
                   "metrics (lm-eval's default); 0: no stderr")
    p.add_argument("--include_path", help="a directory of extra task yamls (lm-eval's --include_path)")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    from lm_eval.tasks import TaskManager
    from checkpoint import CheckpointError
    try:
        # Tasks all found under --include_path spare indexing lm-eval's ~15,000 built-in ones (~10 s).
        task_manager = TaskManager(include_path=args.include_path, include_defaults=False) if args.include_path else None
        if task_manager is None or any(t not in task_manager.all_tasks for t in tasks):
            task_manager = TaskManager(include_path=args.include_path)
        unknown = [t for t in tasks if t not in task_manager.all_tasks]
        if unknown or not tasks:
            raise ValueError(f"--tasks: unknown lm-eval task(s) {', '.join(unknown) or '(none given)'}: name tasks "
                             f"as lm-eval does (e.g. hellaswag,arc_easy,lambada_openai; `lm_eval ls tasks` lists them)")
        model = AttnormLM(args.out_dir, device=args.device, batch_size=args.batch_size)
        results = lm_eval.simple_evaluate(model=model, tasks=tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                                          bootstrap_iters=args.bootstrap_iters, task_manager=task_manager,
                                          log_samples=False)
    except (CheckpointError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    values = flatten_results(results) | {"lm_eval_limit": args.limit}
    # produced_by: this checkpoint, the tasks at the versions lm-eval ran (the data scored) and the settings
    tasks_run = {"fingerprint": fingerprint(results["versions"])}
    update_json(Path(args.out_dir) / "eval.json", values,
                {"lm_eval": produced_by(model.checkpoint, tasks_run, tasks=tasks, limit=args.limit,
                                        num_fewshot=args.num_fewshot)})
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
    main()
