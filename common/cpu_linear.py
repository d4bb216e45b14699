"""Linear layers that run CPU inference through oneDNN instead of MKL's sgemm.

Why: on the AMD EPYC (Zen 4) CI/dev machines, PyTorch's CPU `addmm` goes to MKL, whose fp32
kernels reach ~75-90 GFLOP/s on one thread; oneDNN's matmul (`mkldnn::_linear_pointwise`, the op
inductor uses for frozen CPU graphs) reaches ~100 on the same shapes, 10-30% faster from 8 to 2048
rows (bench/cpu_linear.py prints the table), and can fuse the activation that follows (GELU-tanh,
SiLU) into the same pass.  VARSR sampling at d24 is ~65% linear layers on CPU, so this is most of
what separates eager PyTorch from the hardware here.

When: only where nothing can notice the switch -- CPU tensors of one float dtype (fp32/bf16),
no autograd graph being built (sampling, validation), no autocast (its casts happen below this
op's dispatch and would be skipped), not inside torch.compile (inductor picks its own kernels).
Training, GPU runs and compiled graphs keep `F.linear` bit for bit.  Results differ from MKL by
float rounding only (~1e-6 relative); `ARSR_ONEDNN_LINEAR=0` or `enabled(False)` turns it off
(e.g. to compare with another implementation's CPU outputs bit for bit).

`Linear` is an `nn.Linear` (same parameters, names and init), so checkpoints load unchanged.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

_OP = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
if not torch.backends.mkldnn.is_available():  # a build without oneDNN: always F.linear
    _OP = None
_STATE = {"on": os.environ.get("ARSR_ONEDNN_LINEAR", "1") != "0"}
# activation name -> (oneDNN post-op attr, algorithm, eager fallback)
_ACTS = {
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
    "silu": ("swish", "", F.silu),
}


@contextlib.contextmanager
def enabled(on: bool):
    """Turn the oneDNN path on/off inside the block (restored after)."""
    old, _STATE["on"] = _STATE["on"], on
    try:
        yield
    finally:
        _STATE["on"] = old


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x, weight, ...)` takes the oneDNN path (see the module docstring)."""
    return (
        _STATE["on"]
        and _OP is not None
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.dim() == 2
        and x.numel() > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: str | None = None):
    """act(x @ weight.T + bias); act in {None, "gelu_tanh", "silu"}."""
    if not uses_onednn(x, weight) or (bias is not None and bias.dtype != x.dtype):
        y = F.linear(x, weight, bias)
        return y if act is None else _ACTS[act][2](y)
    attr, algo = ("none", "") if act is None else _ACTS[act][:2]
    lead = x.shape[:-1]
    y = _OP(x.reshape(-1, x.shape[-1]), weight, bias, attr, [], algo)
    return y.view(*lead, weight.shape[0])


class Linear(nn.Linear):
    """`nn.Linear` whose CPU inference forward uses oneDNN, optionally with a fused activation."""

    def forward(self, x: torch.Tensor, act: str | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, act)
