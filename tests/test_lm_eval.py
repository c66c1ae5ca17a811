"""analysis.lm_eval: lm-eval's own simple_evaluate over an attnorm checkpoint, on tasks this test defines from local
json files, checked against the model itself: each continuation's log-likelihood is the sum of the token
log-probabilities of one direct forward pass, the rolling log-likelihood of a text is what analysis.perplexity
scores, and greedy generation is an argmax loop. Nothing touches the network (sockets are refused)."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lm_eval
from analysis import lm_eval as attnorm_lm_eval
from analysis.perplexity import main as perplexity_main
from checkpoint import save_checkpoint
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from model import GPT, GPTConfig
from prepare_data import EOT, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
BLOCK_SIZE = 16
META = {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}
ENCODE, DECODE = load_tokenizer(META)
TEXT = ("The king rode north to the castle, where the queen had waited since the winter began. Nobody in the town "
        "knew why the gates were closed, and the guards would not say.")
CLOZE = [{"text": "The cat sat on the", "target": " mat"}, {"text": "Once upon a", "target": " time there was"},
         {"text": TEXT, "target": " Then the bells rang out over the river and the hills."}]  # longer than a window
CHOICE = [{"ctx": "The sun rises in the", "endings": ["east", "west", "sea"], "label": 0},
          {"ctx": "Water freezes when it is", "endings": ["hot", "cold", "blue"], "label": 1},
          {"ctx": "Birds can", "endings": ["fly", "read", "sing loudly at night"], "label": 2}]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny GPT with the GPT-2 tokenizer (its embedding padded to 50304 rows, as train.py pads it), its dataset
    (val.bin: <|endoftext|> then TEXT) and the local tasks."""
    root = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=BLOCK_SIZE, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20)  # log-probabilities far apart: no near-ties between choices
    (root / "run").mkdir()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(cfg), "iter_num": 5, "meta": META,
                     "config": {"dataset": "ignored", "batch_size": 4}}, root / "run")
    data = root / "data"
    data.mkdir()
    val = np.array([EOT] + ENCODE(TEXT), dtype=np.uint16)
    val.tofile(data / "val.bin")
    val.tofile(data / "train.bin")  # analysis.perplexity checks the whole prepared dataset
    (data / "meta.json").write_text(json.dumps({**META, "train_tokens": len(val), "val_tokens": len(val)}))
    tasks = root / "tasks"
    tasks.mkdir()
    files = {"cloze": CLOZE, "choice": CHOICE, "rolling": [{"text": TEXT}]}
    for name, docs in files.items():
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (tasks / "cloze.yaml").write_text("task: attnorm_cloze\n" + common.format(tasks / "cloze.jsonl") +
                                      "output_type: loglikelihood\ndoc_to_text: '{{text}}'\ndoc_to_target: '{{target}}'\n"
                                      "metric_list:\n  - metric: perplexity\n  - metric: acc\n")
    (tasks / "choice.yaml").write_text("task: attnorm_choice\n" + common.format(tasks / "choice.jsonl") +
                                       "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\n"
                                       "doc_to_choice: '{{endings}}'\ndoc_to_target: '{{label}}'\n"
                                       "metric_list:\n  - metric: acc\n")
    (tasks / "rolling.yaml").write_text("task: attnorm_rolling\n" + common.format(tasks / "rolling.jsonl") +
                                        "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
                                        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n")
    return root / "run", model.eval(), data, tasks


def direct_logprobs(model, context, continuation):
    """log p of each continuation token from one forward pass over context + continuation (it fits one window) in
    float64, and whether each is the argmax."""
    seq = torch.tensor([context + continuation])
    assert seq.size(1) <= BLOCK_SIZE + 1
    logp = model(seq[:, :-1], seq[:, 1:])[0][0].double().log_softmax(-1)[len(context) - 1:]
    target = seq[0, len(context):]
    return logp.gather(-1, target[:, None])[:, 0].numpy(), (logp.argmax(-1) == target).numpy()


def evaluate(tasks_dir, task, **kwargs):
    return lm_eval.simple_evaluate(tasks=[task], task_manager=TaskManager(include_path=str(tasks_dir),
                                                                          include_defaults=False),
                                   bootstrap_iters=0, log_samples=True, **kwargs)


def test_loglikelihood_is_the_sum_of_the_models_token_logprobs(run):
    out_dir, model, _, tasks = run
    # Built by lm-eval from its argument string, as its own tooling builds models; lm-eval's batch_size and device.
    results = evaluate(tasks, "attnorm_cloze", model="attnorm", model_args=f"checkpoint={out_dir}", batch_size=2,
                       device="cpu")
    samples = {s["doc"]["text"]: s["resps"][0][0] for s in results["samples"]["attnorm_cloze"]}
    with torch.no_grad():
        for doc in CLOZE[:2]:  # context and continuation fit one window: one forward pass is the oracle
            context = ENCODE(doc["text"])
            logprobs, greedy = direct_logprobs(model, context, ENCODE(doc["text"] + doc["target"])[len(context):])
            assert samples[doc["text"]][0] == pytest.approx(logprobs.sum(), abs=1e-4)
            assert samples[doc["text"]][1] == bool(greedy.all())
        # TEXT's continuation (one piece, <= BLOCK_SIZE tokens): read in the one window that ends with it, so
        # token g is predicted from whole[len(whole) - 1 - BLOCK_SIZE : g], one forward pass per token.
        context, whole = ENCODE(TEXT), ENCODE(TEXT + CLOZE[2]["target"])
        assert len(whole) - len(context) <= BLOCK_SIZE < len(context)
        start = len(whole) - 1 - BLOCK_SIZE
        expected = sum(model(torch.tensor([whole[start:g]]))[0][0, -1].double().log_softmax(-1)[whole[g]].item()
                       for g in range(len(context), len(whole)))
        assert samples[TEXT][0] == pytest.approx(expected, abs=1e-4)


def test_multiple_choice_accuracy_follows_the_models_logprobs(run):
    out_dir, model, _, tasks = run
    lm = attnorm_lm_eval.AttnormLM(str(out_dir), device="cpu", batch_size=4)
    results = evaluate(tasks, "attnorm_choice", model=lm)
    right = 0
    with torch.no_grad():
        for doc in CHOICE:
            context = ENCODE(doc["ctx"])
            sums = [direct_logprobs(model, context, ENCODE(doc["ctx"] + " " + e)[len(context):])[0].sum()
                    for e in doc["endings"]]
            right += int(np.argmax(sums) == doc["label"])
    assert results["results"]["attnorm_choice"]["acc,none"] == pytest.approx(right / 3)


def test_rolling_loglikelihood_agrees_with_analysis_perplexity(run):
    out_dir, _, data, tasks = run
    lm = attnorm_lm_eval.AttnormLM(str(out_dir), device="cpu", batch_size=3)
    results = evaluate(tasks, "attnorm_rolling", model=lm)
    rolling = results["samples"]["attnorm_rolling"][0]["resps"][0][0]
    perplexity_main([str(out_dir), "--data_dir", str(data), "--device", "cpu", "--batch_size", "2"])
    ppl = json.loads((out_dir / "eval.json").read_text())
    (out_dir / "eval.json").unlink()
    assert ppl["tokens"] == len(ENCODE(TEXT)) > 2 * BLOCK_SIZE  # three windows
    assert -rolling == pytest.approx(ppl["val_loss"] * ppl["tokens"], rel=1e-6)


def test_generate_until_is_greedy_and_stops_at_the_stop_string(run):
    out_dir, model, _, _ = run
    lm = attnorm_lm_eval.AttnormLM(str(out_dir), device="cpu", batch_size=2)
    with torch.no_grad():  # the padding rows (never a token) would win every argmax: they must never be emitted
        lm.model.transformer.wte.weight[50257:] = torch.randn(50304 - 50257, 16) * 100
    prompts = ["The king", "The queen", "Once upon a time in the north"]  # two of one length: one batch
    with torch.no_grad():
        def greedy(prompt, n):
            ids = ENCODE(prompt)
            for _ in range(n):
                ids.append(int(model(torch.tensor([ids[-BLOCK_SIZE:]]))[0][0, -1, :50257].argmax()))
            return DECODE(ids[len(ENCODE(prompt)):])
        free = [greedy(p, 6) for p in prompts]
    stop = free[0][len(free[0]) // 2:][:2]  # a stop string inside the first continuation
    assert stop
    requests = [Instance("generate_until", {}, (p, {"until": [stop], "max_gen_toks": 6}), i)
                for i, p in enumerate(prompts)]
    assert lm.generate_until(requests) == [text.split(stop)[0] for text in free]
    sampling = [Instance("generate_until", {}, ("The", {"do_sample": True}), 0)]
    with pytest.raises(ValueError, match="decodes greedily only"):
        lm.generate_until(sampling)


def test_cli_writes_the_metrics_into_eval_json(run):
    out_dir, _, _, tasks = run
    attnorm_lm_eval.main([str(out_dir), "--tasks", "attnorm_cloze", "--include_path", str(tasks), "--device", "cpu",
                          "--limit", "2", "--bootstrap_iters", "0"])
    values = json.loads((out_dir / "eval.json").read_text())
    (out_dir / "eval.json").unlink()
    assert {"lm_eval_attnorm_cloze_acc", "lm_eval_attnorm_cloze_perplexity"} <= set(values)
    assert values["lm_eval_attnorm_cloze_samples"] == 2 and values["lm_eval_limit"] == 2
    by = values["produced_by"]["lm_eval"]
    assert by["iter"] == 5 and by["tasks"] == ["attnorm_cloze"] and by["limit"] == 2 and by["num_fewshot"] is None


def test_unknown_task_is_one_error_line(run, monkeypatch):
    # Without lm-eval's built-in tasks: indexing its ~15,000 yamls takes ~15 s and changes nothing here.
    def local_tasks_only(include_path=None, include_defaults=True):
        return TaskManager(include_path=include_path, include_defaults=False)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", local_tasks_only)
    with pytest.raises(SystemExit) as e:
        attnorm_lm_eval.main([str(run[0]), "--tasks", "attnorm_nosuch", "--include_path", str(run[3]),
                              "--device", "cpu"])
    assert str(e.value).startswith("error: --tasks: unknown lm-eval task(s) attnorm_nosuch: name tasks as lm-eval")


def test_char_outside_the_vocabulary_is_one_error_line(run, tmp_path):
    chars = "".join(sorted(set(TEXT + "".join(d["text"] + d["target"] for d in CLOZE)) - {"q"}))
    cfg = GPTConfig(block_size=BLOCK_SIZE, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)
    meta = {"tokenizer": "char", "vocab_size": len(chars), "chars": chars, "dtype": "uint16"}
    save_checkpoint({"model": GPT(cfg).state_dict(), "model_args": vars(cfg), "iter_num": 1, "meta": meta,
                     "config": {"dataset": "ignored", "batch_size": 4}}, tmp_path)
    with pytest.raises(SystemExit) as e:
        attnorm_lm_eval.main([str(tmp_path), "--tasks", "attnorm_cloze", "--include_path", str(run[3]),
                              "--device", "cpu", "--bootstrap_iters", "0"])
    assert str(e.value) == ("error: the task's text holds 'q', which this char-level model's vocabulary lacks: "
                            "evaluate a model with the GPT-2 tokenizer")


def test_missing_lm_eval_is_one_error_line():
    code = ("import sys, runpy; sys.modules['lm_eval'] = None; "
            "runpy.run_module('analysis.lm_eval', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, "out"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == ["error: analysis.lm_eval needs lm-eval (EleutherAI's lm-evaluation-harness): "
                                     "pip install -r requirements-eval.txt"]
