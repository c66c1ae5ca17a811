"""torch.compile, as train.py uses it (compile=True is the default): for every registered normalizer a compiled tiny
model trains a few AdamW steps on CPU with the same losses and weights as eager, as one graph (fullgraph=True: a
graph break is an error), so the custom autograd Functions of the fused paths trace. backend="aot_eager" traces
forward and backward as inductor does, without generating code (seconds, not minutes); CPU paths with
attn_impl=fused where a fused path runs on CPU (softmax, softmax1, sink, kvbias, diff, diff2), the reference
elsewhere (the Triton family runs on CPU only in Triton's interpreter, which dynamo does not trace)."""
import pytest
import torch

import normalizers
from model import GPT, GPTConfig

STEPS = 2


def attn_impl(norm):
    """fused where its path runs on CPU outside Triton's interpreter."""
    triton_family = getattr(normalizers.get(norm).fused, "__module__", "") == "kernels.elementwise"
    return "fused" if normalizers.get(norm).fused is not None and not triton_family else "reference"


def train_losses(norm, compile_model):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=13, attn_norm=norm,
                        attn_impl=attn_impl(norm)))
    optimizer = gpt.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    step_model = torch.compile(gpt, backend="aot_eager", fullgraph=True) if compile_model else gpt
    idx = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(STEPS):
        loss = step_model(idx, idx)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses), gpt.state_dict()


@pytest.mark.parametrize("norm", list(normalizers.NORMALIZERS))
def test_compiled_training_matches_eager(norm):
    torch.compiler.reset()
    eager, eager_weights = train_losses(norm, compile_model=False)
    compiled, compiled_weights = train_losses(norm, compile_model=True)
    assert torch.isfinite(eager).all() and eager[-1] < eager[0]  # it trains
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for name, value in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
