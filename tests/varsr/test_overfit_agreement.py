"""Train-then-sample agreement (VARSR): a tiny model overfits one LR/HR pair with the training
objective until greedy sampling from the LR prefix returns exactly the HR's token ids at every
scale. Training (teacher forcing over concatenated scales, `varsr_loss`) and sampling (the
KV-cached scale loop, `generate_fhat`) build their inputs separately; any disagreement between the
two layouts (scale order, token positions, f_hat accumulation, prefix) leaves some scale wrong.
The reference ids come from the VQVAE's multi-scale quantiser of the HR image."""

import pytest
import torch

from varsr.generate import generate_fhat
from varsr.losses import varsr_loss
from varsr.model import build_models
from varsr.model.config import model_config


@pytest.mark.slow
def test_overfit_one_pair_then_greedy_sampling_returns_the_hr_tokens(one_thread):
    torch.manual_seed(0)
    cfg = model_config("tiny", patch_nums=(1, 2, 3, 4), drop_path_rate=0.1)  # the tiny model, fewer scales
    model, vqvae = build_models(cfg)
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    lr = torch.nn.functional.avg_pool2d(hr, 4)  # a degraded view of the same picture, resized back
    lr = torch.nn.functional.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    label = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        want = vqvae.encode_for_training(hr).gt_idx[0]  # (L,) ids of scales 1..K, concatenated
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(400):
        loss, stats = varsr_loss(model, vqvae, hr, lr, label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 50 and step % 25 == 0 and float(stats["acc"]) == 100.0 and float(stats["ce"]) < 0.01:
            break
    model.eval()
    with torch.no_grad():
        _, trace = generate_fhat(model, vqvae, lr, cfg=0.0, top_k=1, return_trace=True, refine=False)
    got = torch.cat([ids.reshape(1, -1) for ids in trace.ids], 1)[0]
    sizes = [p * p for p in cfg.patch_nums]
    assert got.shape == want.shape == (sum(sizes),)
    per_scale = [bool(torch.equal(a, b)) for a, b in zip(got.split(sizes), want.split(sizes))]
    assert all(per_scale), (per_scale, float(stats["ce"]), step)
