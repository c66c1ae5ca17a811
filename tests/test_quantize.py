"""analysis/quantize.py: the two quantizers against hand-computed grids, the fake-quantized model against the fp
one, the activation ladder's widths and min_act_bits against planted PPLs, and the CLI's eval.json."""
import json

import numpy as np
import pytest
import torch

from analysis import quantize
from analysis.quantize import percentile_range, quantize_asymmetric, quantize_symmetric
from analysis.run_steps import pending_steps
from checkpoint import save_checkpoint
from model import GPT, GPTConfig
from normalizers import NORMALIZERS


def test_symmetric_per_tensor_int8_by_hand():
    # max|w| = 1, so scale = 1/127 and each value becomes round(w * 127) / 127:
    # -1 -> -127, -0.5 -> -63.5 -> -64 (a tie, to even), 0.26 -> 33.02 -> 33, 1 -> 127.
    w = torch.tensor([-1.0, -0.5, 0.26, 1.0])
    expected = torch.tensor([-127.0, -64.0, 33.0, 127.0]) / 127
    torch.testing.assert_close(quantize_symmetric(w, 8), expected)


def test_per_channel_takes_each_rows_scale():
    w = torch.tensor([[-1.0, 0.5], [0.02, -0.013]])
    # Row 0's scale is 1/127 either way (0.5 -> 63.5 -> 64, a tie, to even). Row 1 alone has scale 0.02/127, so
    # -0.013 -> -82.55 -> -83 steps; with the tensor's scale 1/127 it keeps only round(2.54) = 3 and
    # round(-1.651) = -2 steps.
    torch.testing.assert_close(quantize_symmetric(w, 8, axis=0),
                               torch.tensor([[-1.0, 64 / 127], [0.02, -83 * 0.02 / 127]]))
    torch.testing.assert_close(quantize_symmetric(w, 8), torch.tensor([[-1.0, 64 / 127], [3 / 127, -2 / 127]]))
    # axis=1 gives each column its own scale: column 1's max|w| is 0.5, so -0.013 -> -3.30 -> -3 steps.
    torch.testing.assert_close(quantize_symmetric(w, 8, axis=1)[:, 1], torch.tensor([0.5, -3 * 0.5 / 127]))


def test_int4_has_seven_levels_each_side():
    w = torch.linspace(-1, 1, 101)
    levels = torch.unique(quantize_symmetric(w, 4))
    torch.testing.assert_close(levels, torch.arange(-7, 8) / 7)


def test_all_zero_row_stays_zero():
    w = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert torch.equal(quantize_symmetric(w, 8, axis=0)[0], torch.zeros(2))


# 999 values evenly over [-1, 1] and one planted outlier at 100.
OUTLIER = torch.cat([torch.linspace(-1, 1, 999), torch.tensor([100.0])])


def test_minmax_range_spans_the_outlier_and_collapses_small_values():
    # [lo, hi] = [-1, 100]: scale = 101/255 = 0.39608, zero point round(1 / 0.39608) = round(2.525) = 3. The 999
    # small values round to -3..3 steps: 7 levels for a range the other 248 levels never touch.
    y = quantize_asymmetric(OUTLIER, -1.0, 100.0, 8)
    scale = 101 / 255
    assert len(torch.unique(y[:-1])) == 7
    torch.testing.assert_close(torch.unique(y[:-1]), torch.arange(-3, 4) * scale)
    torch.testing.assert_close(y[-1], torch.tensor(252 * scale))  # round(100 / scale) = 252 steps


def test_percentile_clips_the_outlier():
    # n = 1000, p = 99.9: rank round(0.999 * 999) = 998 (0-based) from each end, so hi is the second largest value
    # (1.0) and lo the second smallest (-1 + 2/998): the outlier is out of range.
    lo, hi = percentile_range(OUTLIER, 99.9)
    assert hi == 1.0 and lo == pytest.approx(-1 + 2 / 998)
    y = quantize_asymmetric(OUTLIER, lo, hi, 8)
    # scale = (1 + 0.997996) / 255 = 0.0078353, zero point round(0.997996 / scale) = round(127.37) = 127: the
    # small values keep 255 levels (error <= scale / 2, -1 clipped to lo) and the outlier is clipped to the top
    # level, (255 - 127) * scale = 1.00292.
    scale = (1 + 0.997996) / 255
    assert len(torch.unique(y[:-1])) > 200
    assert (y[1:-1] - OUTLIER[1:-1]).abs().max() <= scale / 2 + 1e-6
    assert y[-1].item() == pytest.approx(128 * scale, rel=1e-4)
    assert percentile_range(OUTLIER, 100) == (-1.0, 100.0)  # p = 100: min-max


def test_asymmetric_range_is_widened_to_hold_zero():
    x = torch.tensor([0.0, 0.5, 1.0])
    y = quantize_asymmetric(x, 0.5, 1.0, 8)  # treated as [0, 1]: 0 stays exact
    assert y[0] == 0 and y[2] == pytest.approx(1.0)


def test_asymmetric_4_bit_by_hand():
    # [lo, hi] = [-1, 2.75]: 15 steps of scale 3.75 / 15 = 0.25 (exact in binary), zero point round(1 / 0.25) = 4,
    # so the 16 levels are (0..15 - 4) * 0.25 = -1 .. 2.75. x / scale + 4 for each x:
    #   -1.5 -> -2 -> clipped to 0 -> -1;  -0.375 -> 2.5 -> 2 (a tie, to even) -> -0.5;  0.1 -> 4.4 -> 4 -> 0;
    #   0.3 -> 5.2 -> 5 -> 0.25;  0.625 -> 6.5 -> 6 (tie) -> 0.5;  2.75 -> 15 -> 2.75;  3.0 -> 16 -> clipped to 15.
    x = torch.tensor([-1.5, -0.375, 0.1, 0.3, 0.625, 2.75, 3.0])
    expected = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 2.75, 2.75])
    torch.testing.assert_close(quantize_asymmetric(x, -1.0, 2.75, 4), expected, rtol=0, atol=0)
    levels = torch.unique(quantize_asymmetric(torch.linspace(-2, 4, 1001), -1.0, 2.75, 4))
    torch.testing.assert_close(levels, torch.arange(-4, 12) * 0.25, rtol=0, atol=0)


def test_asymmetric_4_bit_zero_point_is_rounded():
    # [lo, hi] = [-0.3, 3.45]: scale 3.75 / 15 = 0.25, zero point round(0.3 / 0.25) = round(1.2) = 1: the grid is
    # (0..15 - 1) * 0.25 = -0.25 .. 3.5, shifted so that 0 is a level. lo itself is clipped to -0.25, and hi
    # rounds up to 3.5 (13.8 -> 14 steps, level 15).
    y = quantize_asymmetric(torch.tensor([-0.3, 0.0, 3.45, 9.0]), -0.3, 3.45, 4)
    torch.testing.assert_close(y, torch.tensor([-0.25, 0.0, 3.5, 3.5]), rtol=0, atol=0)


def test_asymmetric_6_bit_by_hand():
    # [lo, hi] = [-0.5, 15.25]: 63 steps of 15.75 / 63 = 0.25, zero point round(0.5 / 0.25) = 2, 64 levels
    # -0.5 .. 15.25. -1 -> -4 + 2 -> clipped to 0 -> -0.5;  0.125 -> 0.5 + 2 = 2.5 -> 2 (tie) -> 0;
    # 0.375 -> 3.5 -> 4 (tie, to even) -> 0.5;  7.4 -> 31.6 -> 32 -> 7.5;  20 -> 82 -> clipped to 63 -> 15.25.
    x = torch.tensor([-1.0, 0.125, 0.375, 7.4, 20.0])
    torch.testing.assert_close(quantize_asymmetric(x, -0.5, 15.25, 6), torch.tensor([-0.5, 0.0, 0.5, 7.5, 15.25]),
                               rtol=0, atol=0)
    assert len(torch.unique(quantize_asymmetric(torch.linspace(-1, 16, 5001), -0.5, 15.25, 6))) == 64


@pytest.mark.parametrize("ppl_by_bits, tolerance, expected", [
    ({8: 10.0, 6: 10.05, 5: 10.2, 4: 11.0}, 0.01, 6),   # 5 bits costs 2% > 1%
    ({8: 10.0, 6: 10.05, 5: 10.2, 4: 11.0}, 0.025, 5),  # ... < 2.5%; 4 bits costs 10%
    ({8: 10.0, 6: 10.05, 5: 10.2, 4: 11.0}, 0.2, 4),    # every rung within 20%
    ({8: 10.1, 6: 10.1, 5: 10.1, 4: 10.1}, 0.01, 4),    # exactly at the tolerance still passes
    ({8: 10.0, 6: 10.5, 5: 10.0, 4: 10.0}, 0.01, 8),    # 5 and 4 pass by noise after 6 failed: not reached
    ({8: 10.5, 6: 10.0, 5: 10.0, 4: 10.0}, 0.01, None),  # even 8 bits exceeds it
])
def test_min_act_bits_on_planted_ppl(ppl_by_bits, tolerance, expected):
    # ppl_fp = 10 throughout, so the tolerance is (1 + tolerance) * 10. Insertion order must not matter.
    assert quantize.min_act_bits(ppl_by_bits, 10.0, tolerance) == expected
    assert quantize.min_act_bits(dict(reversed(ppl_by_bits.items())), 10.0, tolerance) == expected


def test_quantization_eval_scores_each_rung_at_its_width(monkeypatch):
    # Stubs stand in for the quantized model and its scoring: a stub model is the activation width it was built
    # with, and its planted PPL says which rung it is. fp: 10; the ladder: 8 -> 10.05, 6 -> 10.09, 5 -> 10.3,
    # 4 -> 12 (W8 and W4, without activations: 10.01).
    planted = {8: 10.05, 6: 10.09, 5: 10.3, 4: 12.0, None: 10.01}
    model = tiny_gpt("softmax")
    monkeypatch.setattr(quantize, "quantized_copy",
                        lambda model, w_bits, w_axis, act_ranges=None, a_bits=8: a_bits if act_ranges else None)
    monkeypatch.setattr(quantize, "evaluate_perplexity",
                        lambda m, *args, **kw: {"ppl": 10.0 if m is model else planted[m]})
    x = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    out = quantize.quantization_eval(model, None, [x], 16, 2, "cpu")
    assert out["ppl_fp"] == 10.0 and out["quant_tolerance"] == 0.01
    assert [out[f"ppl_w8a{bits}"] for bits in (6, 5, 4)] == [10.09, 10.3, 12.0]
    assert out["ppl_w8a8_channel_minmax"] == out["ppl_w8a8_tensor_percentile"] == 10.05
    assert out["delta_ppl_w8a4"] == pytest.approx(2.0)
    assert out["min_act_bits"] == 6  # 5 bits costs 3% > 1%
    assert quantize.quantization_eval(model, None, [x], 16, 2, "cpu", tolerance=0.05)["min_act_bits"] == 5


@pytest.mark.parametrize("a_bits", [4, 6])
def test_activations_reach_the_linears_at_their_width(a_bits):
    # What each quantized Linear receives takes at most 2^a_bits values: a hook registered after
    # quantized_copy's sees the input after fake quantization. With the fp input it would be hundreds.
    model = tiny_gpt("softmax")
    x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(1))
    ranges = {k: r["minmax"] for k, r in quantize.calibrate(model, [x], 99.99).items()}
    q = quantize.quantized_copy(model, 8, 0, ranges, a_bits=a_bits)
    distinct = {}
    for name, m in quantize.linears(q):
        m.register_forward_pre_hook(lambda mod, args, name=name: distinct.update({name: len(torch.unique(args[0]))}))
    q(x, x)
    assert len(distinct) == 4 * 2 + 1
    assert all(2 ** (a_bits - 1) < n <= 2 ** a_bits for n in distinct.values()), distinct


def tiny_gpt(attn_norm, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, attn_norm=attn_norm)).eval()


@pytest.mark.parametrize("attn_norm", NORMALIZERS)
def test_16_bit_fake_quantized_model_matches_fp(attn_norm):
    model = tiny_gpt(attn_norm)
    x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(1))
    ranges = quantize.calibrate(model, [x], 99.99)
    assert set(ranges) == {name for name, _ in quantize.linears(model)}  # 4 per block and lm_head
    assert len(ranges) == 4 * 2 + 1
    fp = model(x, x)[0]
    q16 = quantize.quantized_copy(model, 16, 0, {k: r["minmax"] for k, r in ranges.items()}, a_bits=16)
    torch.testing.assert_close(q16(x, x)[0], fp, atol=2e-3, rtol=2e-3)
    q8 = quantize.quantized_copy(model, 8, 0, {k: r["minmax"] for k, r in ranges.items()})
    assert not torch.equal(q8(x, x)[0], fp)
    # The copy keeps the tie (one quantized matrix embeds and un-embeds); the original is untouched.
    assert q8.transformer.wte.weight is q8.lm_head.weight
    assert torch.equal(q8.lm_head.weight, quantize_symmetric(model.lm_head.weight, 8, 0))
    assert model.transformer.wte.weight is model.lm_head.weight and torch.equal(model(x, x)[0], fp)


def test_cli_merges_all_keys_into_eval_json(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 4000), ("val", 1000)):
        rng.integers(0, 65, n).astype(np.uint16).tofile(data_dir / f"{split}.bin")
    meta = {"tokenizer": "char", "vocab_size": 65, "chars": "".join(map(chr, range(48, 113))),
            "train_tokens": 4000, "val_tokens": 1000, "dtype": "uint16"}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    model = tiny_gpt("softmax1")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(model.config), "iter_num": 7, "meta": meta,
                     "config": {"dataset": "ignored", "batch_size": 4}}, run)
    (run / "eval.json").write_text(json.dumps({"val_ppl": 12.5}))  # written by another tool: must survive

    quantize.main([str(run), "--data_dir", str(data_dir), "--device", "cpu", "--max_tokens", "200",
                   "--calib_batches", "2"])
    ev = json.loads((run / "eval.json").read_text())
    assert ev["val_ppl"] == 12.5
    assert set(quantize.EVAL_KEYS) <= set(ev)
    assert ev["quant_tokens"] == 199 and ev["quant_iter"] == 7
    for name in quantize.VARIANTS:
        assert ev[f"delta_ppl_{name}"] == pytest.approx(ev[f"ppl_{name}"] - ev["ppl_fp"])
    assert 1 < ev["ppl_fp"] < 200 and abs(ev["delta_ppl_w8"]) < 0.05 * ev["ppl_fp"]
    assert ev["ppl_w8a4"] != ev["ppl_w8a8_channel_minmax"]  # the width reaches the CLI's evaluation
    assert ev["quant_tolerance"] == 0.01 and ev["min_act_bits"] in (None, 8, 6, 5, 4)
    (run / "metrics.jsonl").write_text("")  # a study reads the run's log too; quantization needs nothing of it
    assert "quantize" not in pending_steps(run, 7, False, {"max_tokens": 200, "calib_batches": 2})

    quantize.main([str(run), "--data_dir", str(data_dir), "--device", "cpu", "--max_tokens", "200",
                   "--calib_batches", "2", "--tolerance", "1e9"])  # every rung passes
    ev = json.loads((run / "eval.json").read_text())
    assert ev["quant_tolerance"] == 1e9 and ev["min_act_bits"] == 4
    # a study would redo it at its own tolerance
    assert "quantize" in pending_steps(run, 7, False, {"max_tokens": 200, "calib_batches": 2})


@pytest.mark.parametrize("tolerance", ["-0.01", "nan"])
def test_negative_tolerance_is_one_error_line(tolerance):
    with pytest.raises(SystemExit) as exit_info:  # before the run directory is even looked at
        quantize.main(["no-such-run", "--tolerance", tolerance])
    message = str(exit_info.value)
    assert message.startswith(f"error: --tolerance={float(tolerance)} ") and "e.g. 0.01" in message
    assert "\n" not in message
