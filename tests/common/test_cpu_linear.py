"""common.cpu_linear: oneDNN linear for CPU inference, F.linear everywhere else.

Reference: `torch.nn.functional.linear` (+ the eager activation), computed by PyTorch's default
CPU kernel.  The seam tests pin *when* the oneDNN op runs (inference yes; autograd, autocast,
the off switch no) by counting calls of the op itself, and that VARSR sampling reaches it while
its training forward does not.
"""

import pytest
import torch
import torch.nn.functional as F

from common import cpu_linear
from common.cpu_linear import Linear, linear

pytestmark = pytest.mark.skipif(cpu_linear._OP is None, reason="this torch build has no oneDNN linear op")

ACTS = {None: lambda y: y, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "silu": F.silu}


@pytest.fixture
def op_calls(monkeypatch):
    calls = []
    real = cpu_linear._OP

    def counted(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setattr(cpu_linear, "_OP", counted)
    return calls


@pytest.mark.parametrize("act", [None, "gelu_tanh", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_f_linear_fp32(act, bias, op_calls):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 48)
    w, b = torch.randn(96, 48) / 7, (torch.randn(96) if bias else None)
    with torch.no_grad():
        out = linear(x, w, b, act)
    assert op_calls == [(14, 48)]  # leading dims flattened into rows, one call
    ref = ACTS[act](F.linear(x, w, b))
    assert out.shape == ref.shape == (2, 7, 96)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_non_contiguous_input_and_bf16(op_calls):
    torch.manual_seed(1)
    x = torch.randn(48, 30).t()  # (30, 48), transposed strides
    w, b = torch.randn(64, 48) / 7, torch.randn(64)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        out = linear(xb, wb, bb, "gelu_tanh")
    assert out.dtype == torch.bfloat16 and len(op_calls) == 2
    ref = F.gelu(F.linear(x, w, b), approximate="tanh")
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_training_autocast_and_switch_keep_f_linear(op_calls):
    torch.manual_seed(2)
    layer = Linear(16, 8)
    x = torch.randn(5, 16)
    # autograd: the exact default kernel, gradients flow
    y = layer(x, act="silu")
    assert torch.equal(y, F.silu(F.linear(x, layer.weight, layer.bias)))
    y.sum().backward()
    assert layer.weight.grad is not None and op_calls == []
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the op has no autocast rule: stay on F.linear
            assert layer(x).dtype == torch.bfloat16
        with cpu_linear.enabled(False):
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        assert op_calls == []
        layer(x)
        layer(x[:0])  # empty batch: default kernel
    assert op_calls == [(5, 16)]


def test_varsr_sampling_uses_it_training_does_not(op_calls):
    from tests.varsr.conftest import lively
    from varsr.generate import generate_fhat

    model, vqvae = lively("tiny")
    torch.manual_seed(3)
    lr = torch.rand(1, 3, 96, 96) * 2 - 1
    f = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(0))
    n = len(op_calls)
    assert n > 0 and f.isfinite().all()
    with cpu_linear.enabled(False):
        g = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(0))
    assert len(op_calls) == n
    torch.testing.assert_close(f, g, atol=1e-4, rtol=1e-4)  # same image up to float rounding
    model.train()
    targets = vqvae.encode_for_training(lr)
    label = torch.zeros(1, dtype=torch.long)
    logits, _ = model(lr, label, targets.x_inputs)
    logits.mean().backward()
    model.eval()
    assert len(op_calls) == n
