"""benchmarks/: each benchmark at a tiny size on CPU writes a table with a row per registered normalizer (and gate
mode) and numbers that make sense. Nothing here asserts a speed."""
import math

import normalizers
from benchmarks import attention, train_throughput


def table_rows(path):
    """The data rows of the markdown table in path, as lists of cell strings."""
    lines = path.read_text().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if line.startswith("| ") and not line.startswith("| attn_norm")]


def number(cell):
    return float(cell.split()[0].rstrip("%").replace(",", ""))


def test_attention_has_a_row_per_normalizer(tmp_path):
    out = tmp_path / "attention.md"
    attention.main(["--T", "32", "--d", "8", "--H", "2", "--reps", "1", "--out", str(out)])
    text = out.read_text()
    assert "python -m benchmarks.attention --T 32" in text and "torch " in text and "dtype float32" in text
    rows = table_rows(out)
    assert {r[0] for r in rows} == set(normalizers.NORMALIZERS)
    for norm in normalizers.NORMALIZERS:  # each impl is measured here or said not to be
        for impl in attention.IMPLS:
            assert [norm, impl] in [r[:2] for r in rows] or f"- {norm} {impl}: " in text
    for norm, impl, T, d, fwd, fwd_bwd, tf, tf_bwd, mem, ratio in rows:
        assert (T, d, mem) == ("32", "8", "n/a")
        assert all(0 < number(x) < math.inf for x in (fwd, fwd_bwd, tf, tf_bwd))
        assert 0 <= number(ratio) < math.inf  # 0.00: Triton's CPU interpreter (symax fused) is that slow
    assert rows[0][:2] == ["softmax", "fused"] and rows[0][-1] == "1.00"


def test_train_throughput_has_a_row_per_normalizer_and_gate(tmp_path):
    out = tmp_path / "train.md"
    train_throughput.main(["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--batch_size=auto",
                           "--vocab_size", "65", "--iters", "1", "--warmup", "0", "--out", str(out)])
    text = out.read_text()
    assert "python -m benchmarks.train_throughput --n_layer=1" in text and "block 8, vocab 65" in text
    rows = table_rows(out)
    gates = list(normalizers.gates.GATES)
    assert [r[:3] for r in rows] == ([[n, gates[0], "gpt2"] for n in normalizers.NORMALIZERS] +
                                     [["softmax", g, "gpt2"] for g in gates[1:]] + [["softmax", "none", "llama"]])
    # non-embedding parameters, by hand: 1 block of 16 wide (c_attn 3·16², c_proj 16², ln_1, ln_2) + ln_f + wte
    # 65·16; GELU's MLP 2·4·16² and LayerNorm weights, or SwiGLU's 3·16·64 (hidden 2/3·64 -> 64) and RMSNorm's
    norm_and_attn = 4 * 16 * 16 + 3 * 16 + 65 * 16
    assert number(rows[0][3]) == norm_and_attn + 8 * 16 * 16 and number(rows[-1][3]) == norm_and_attn + 3 * 16 * 64
    for norm, gate, block, params, path, batch, ms, tokens, mfu, ratio in rows:
        assert batch == "12" and mfu == "n/a"  # the config's micro-batch on CPU; no known peak FLOP/s
        assert math.isclose(number(tokens) * number(ms) / 1000, 12 * 8, rel_tol=0.1)  # ms/iter is rounded
        assert number(ratio) > 0
    assert rows[0][-1] == "1.00"


def test_train_throughput_rounds_report_each_row_once_at_its_median(tmp_path, monkeypatch):
    times = iter([0.3, 0.1, 0.5, 0.2, 0.1, 0.4])  # round 1: rows A, B, C; round 2: A, B, C
    real_measure = train_throughput.measure

    def fake_measure(cfg, vocab_size, iters, warmup):
        return next(times), real_measure(cfg, vocab_size, 1, 0)[1]

    monkeypatch.setattr(train_throughput, "measure", fake_measure)
    out = tmp_path / "train.md"
    train_throughput.main(["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--vocab_size", "65",
                           "--norms", "softmax,symax", "--gates", "none,headwise", "--blocks", "gpt2", "--rounds", "2",
                           "--out", str(out)])
    assert "median of 2 interleaved rounds" in out.read_text()
    rows = table_rows(out)
    assert [r[:2] for r in rows] == [["softmax", "none"], ["symax", "none"], ["softmax", "headwise"]]
    assert [number(r[6]) for r in rows] == [250.0, 100.0, 450.0]  # medians of (0.3, 0.2), (0.1, 0.1), (0.5, 0.4)
    assert [r[-1] for r in rows] == ["1.00", "2.50", "0.56"]


def test_hellaswag_cost_has_a_row_per_config(tmp_path):
    from benchmarks import hellaswag
    out = tmp_path / "hellaswag.md"
    hellaswag.main(["--configs", "config/shakespeare_char/cpu.py", "--items", "2", "--ctx_chars", "30",
                    "--ending_chars", "80", "--out", str(out)])
    text = out.read_text()
    assert "python -m benchmarks.hellaswag --configs" in text and "synthetic: Tiny Shakespeare, a 30-character" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| config/")]
    assert [r[:4] for r in rows] == [["config/shakespeare_char/cpu.py", "4×128, block 64, char", "0.8M", "2"]]
    assert all(0 < number(cell) < math.inf for cell in rows[0][4:6])
