"""MFU arithmetic against PyTorch's FLOP counter: what PURE's trainer and benches divide by the peak.

`pure.optim.flops_per_token` is a closed form (6N + attention, lm_head only on the rows PureLoss
sends through it); FlopCounterMode counts the matmuls and attention kernels one real training
step executes. The two must agree, so an MFU that counts lm_head on unsupervised rows (or
misses a layer) fails here.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pure.losses import PureLoss, supervised_positions
from pure.model import ChameleonForCausalLM, chameleon_config
from pure.optim import flops_per_token


@pytest.mark.parametrize("supervised", [1.0, 0.5, 0.125])
def test_flops_per_token_matches_counted_training_step(supervised, one_thread):
    torch.manual_seed(0)
    cfg = chameleon_config("tiny", dropout=0.0)
    lm = ChameleonForCausalLM(cfg)
    root = PureLoss(lm, chunk=10**6)  # one CE chunk: no checkpoint recomputation in the count
    B, T = 2, 64
    ids = torch.randint(4, cfg.vocab_size, (B, T))
    labels = ids.clone()
    labels[:, : T - int(T * supervised)] = -100  # the prompt part is not supervised
    own, nxt = supervised_positions(labels)
    head_rows = int((own | nxt).sum())
    # The math SDPA kernel runs attention as counted matmuls (the fused CPU kernel is not counted);
    # it computes the full T x T scores like the PaLM formula's 12*L*C*T term assumes.
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        loss, _ = root(ids, labels)
        loss.backward()
    counted = fc.get_total_flops()
    predicted = flops_per_token(cfg, T, head_fraction=head_rows / (B * T)) * B * T
    assert predicted == pytest.approx(counted, rel=0.005), (predicted, counted)
    if supervised < 1:  # counting lm_head on every token would overstate the step
        overstated = flops_per_token(cfg, T) * B * T
        assert abs(overstated - counted) / counted > 0.02
