"""VARSR model: official key lists, closed forms (RoPE, mask, phi map, quantizer identity,
diffusion respacing) and KV-cache == teacher-forced forward, loss falls when overfitting."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.varsr.conftest import lively
from varsr.losses import varsr_loss
from varsr.model import VARSRModelConfig, build_models
from varsr.model.diffusion import GaussianDiffusion, respaced_steps
from varsr.model.quantizer import phi_index_map
from varsr.model.rope import apply_rope, build_rope_table, rope_grids
from varsr.sample import cfg_ramp, generate_fhat

REF = Path(__file__).resolve().parents[1] / "reference"


@pytest.fixture(scope="module")
def tiny():
    return lively("tiny")


def _layout(module):
    sd = module.state_dict()
    params = {k: list(p.shape) for k, p in module.named_parameters()}
    buffers = {k: list(b.shape) for k, b in module.named_buffers() if k in sd}
    return params, buffers


def _cfg_from_reference(c: dict) -> VARSRModelConfig:
    return VARSRModelConfig(
        depth=c["depth"],
        patch_nums=tuple(c["patch_nums"]),
        vocab_size=c["V"],
        cvae=c["Cvae"],
        vae_ch=c["ch"],
        share_quant_resi=c["share_quant_resi"],
        num_classes=c["num_classes"],
    )


@pytest.mark.parametrize("suffix", ["", "_tiny"])
def test_key_lists_match_reference(suffix):
    var_ref = json.loads((REF / f"varsr_var_d24{suffix}.json").read_text())
    vae_ref = json.loads((REF / f"varsr_vqvae{suffix}.json").read_text())
    model, vqvae = build_models(_cfg_from_reference(var_ref["config"]), "meta")
    for mod, ref in ((model, var_ref), (vqvae, vae_ref)):
        params, buffers = _layout(mod)
        assert list(params) == list(ref["params"])  # same names in the same order
        assert params == ref["params"]
        assert buffers == ref["buffers"]
        assert sum(p.numel() for p in mod.parameters()) == ref["num_params"]
    assert not any("freqs_cis" in k for k in model.state_dict())


def test_full_size_counts_on_meta():
    model, vqvae = build_models("d24", "meta")
    assert sum(p.numel() for p in model.parameters()) == 1_101_916_448
    assert sum(p.numel() for p in vqvae.parameters()) == 108_948_355
    assert model.attn_bias_for_masking.shape == (1, 1, 3264, 3264)
    assert model.lvl_1L.shape == (1, 3264)


def test_phi_map_closed_form():
    assert phi_index_map(10) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3][:9]
    assert phi_index_map(6) == [0, 0, 1, 2, 3]  # tiny config exercises all four convs


def test_rope_table_closed_form():
    pns, hd, G = (1, 2, 3, 4, 5, 6), 64, 6
    tab = build_rope_table(rope_grids(pns), hd, G)
    assert tab.shape == (36 + 1 + 90, 32) and tab.dtype == torch.complex64
    rows = []
    for p in [6, 1, 2, 3, 4, 5, 6]:
        for r in range(p):
            for c in range(p):
                w = [10000 ** (-4 * k / hd) for k in range(16)]
                rows.append([G * r / p * wk for wk in w] + [G * c / p * wk for wk in w])
    ang = torch.tensor(rows, dtype=torch.float64)
    ref = torch.polar(torch.ones_like(ang), ang)
    assert torch.allclose(tab.to(torch.complex128), ref, atol=1e-5)
    # apply_rope rotates consecutive pairs (v_2j, v_2j+1) by the table angle
    x = torch.randn(1, 1, tab.shape[0], hd)
    y = apply_rope(x, tab)
    th = ang.float()
    a, b = x[..., 0::2], x[..., 1::2]
    assert torch.allclose(y[..., 0::2], a * th.cos() - b * th.sin(), atol=1e-5)
    assert torch.allclose(y[..., 1::2], a * th.sin() + b * th.cos(), atol=1e-5)


def test_mask_structure(tiny):
    model, _ = tiny
    pns, first = model.patch_nums, model.first_l
    lvl = [0] * first + [si for si, p in enumerate(pns) if si > 0 for _ in range(p * p)]
    m = model.attn_bias_for_masking[0, 0]
    assert m.shape == (len(lvl), len(lvl)) == (127, 127)
    assert model.lvl_1L[0].tolist() == lvl
    for q in range(len(lvl)):
        for k in range(len(lvl)):
            assert (m[q, k] == 0).item() == (lvl[q] >= lvl[k])
            if m[q, k] != 0:
                assert m[q, k] == -math.inf


def test_quantizer_identity_and_targets(tiny):
    _, vqvae = tiny
    q = vqvae.quantize
    torch.manual_seed(1)
    f = torch.randn(2, 8, 6, 6)
    idx, r_last = q.encode(f)
    assert [i.shape[1] for i in idx] == [1, 4, 9, 16, 25, 36]
    acc = sum(q.embed_up(si, idx[si]) for si in range(5))  # phi'd, upsampled scales < K-1
    e_last = q.embedding(idx[-1]).transpose(1, 2).reshape(2, 8, 6, 6)
    r = r_last.transpose(1, 2).reshape(2, 8, 6, 6)
    assert torch.allclose(acc + e_last + (r - e_last), f, atol=1e-5)
    # the last-scale index is the nearest code to r_last (no phi at the last scale)
    d = torch.cdist(r_last.reshape(-1, 8), q.embedding.weight)
    assert torch.equal(d.argmin(1), idx[-1].reshape(-1))
    x_in = q.teacher_forcing_inputs(idx)
    assert x_in.shape == (2, 90, 8)


def test_respacing_and_schedule():
    assert respaced_steps(1000, "10") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    gd = GaussianDiffusion(1000, "10")
    assert gd.timestep_map.tolist() == respaced_steps(1000, "10")
    base = GaussianDiffusion(1000)
    abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert base.betas[10] == pytest.approx(1 - abar(11 / 1000) / abar(10 / 1000))
    # respaced alphas_cumprod equal the base ones at the kept steps
    import numpy as np

    assert np.allclose(np.cumprod(1 - gd.betas), np.cumprod(1 - base.betas)[gd.timestep_map.numpy()])


def _cached_and_teacher_forced(model, vqvae, lr):
    """Greedy KV-cached logits and the teacher-forced (label 0, label 1) logits of the same tokens."""
    _, logits = generate_fhat(
        model, vqvae, lr, cfg=0.0, top_k=1, generator=torch.Generator().manual_seed(0), return_logits=True
    )
    x_in = vqvae.quantize.teacher_forcing_inputs([lg.argmax(-1) for lg in logits])
    with torch.no_grad():
        tf0, _ = model(lr, torch.zeros(2, dtype=torch.long), x_in)
        tf1, _ = model(lr, torch.ones(2, dtype=torch.long), x_in)
    return torch.cat(logits, 1), tf0, tf1


def test_kv_cache_matches_teacher_forcing(tiny, monkeypatch):
    model, vqvae = tiny
    assert all(bool((b.ada_lin[-1].bias.detach()[: 2 * model.C] == 1.0).all()) for b in model.blocks)
    torch.manual_seed(2)
    lr = torch.rand(2, 3, 96, 96) * 2 - 1
    cached, tf0, tf1 = _cached_and_teacher_forced(model, vqvae, lr)
    assert (tf0 - cached).abs().max() < 1e-5
    assert (tf1 - cached).abs().max() > 1e-3  # the label conditions the logits
    # Teeth: the same comparison with the cached path's RoPE rows scrambled (reversed within each
    # step, as a wrong row offset or order would do) must fail clearly, else the test is blind to RoPE.
    real_rows = model.rope_rows
    monkeypatch.setattr(model, "rope_rows", lambda si, device: real_rows(si, device).flip(0))
    bad, tf0_bad, _ = _cached_and_teacher_forced(model, vqvae, lr)
    monkeypatch.undo()
    assert (tf0_bad - bad).abs().max() > 1e-3


def test_cfg_ramp_and_guided_logits(tiny):
    model, vqvae = tiny
    assert [cfg_ramp(6.0, si, 10) for si in (0, 9)] == [0.0, 6.0]
    assert cfg_ramp(6.0, 3, 10) == pytest.approx(2.0)
    torch.manual_seed(3)
    lr = torch.rand(1, 3, 96, 96) * 2 - 1
    _, logits = generate_fhat(model, vqvae, lr, cfg=4.0, generator=torch.Generator().manual_seed(0), return_logits=True)
    x_in = vqvae.quantize.teacher_forcing_inputs([lg.argmax(-1) for lg in logits])
    with torch.no_grad():
        l0, _ = model(lr, torch.zeros(1, dtype=torch.long), x_in)
        l1, _ = model(lr, torch.ones(1, dtype=torch.long), x_in)
    start = 0
    for si, pn in enumerate(model.patch_nums):
        t = 4.0 * si / 5
        ref = (1 + t) * l0[:, start : start + pn * pn] - t * l1[:, start : start + pn * pn]
        assert torch.allclose(logits[si], ref, atol=1e-4)
        start += pn * pn


def test_loss_falls_when_overfitting():
    torch.manual_seed(0)
    model, vqvae = build_models("tiny")
    hr = torch.rand(2, 3, 96, 96) * 2 - 1
    lr = torch.rand(2, 3, 96, 96) * 2 - 1
    label = torch.tensor([0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss, stats = varsr_loss(model, vqvae, hr, lr, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["ce"])
        assert set(stats) >= {"loss", "ce", "diff", "acc"}
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
