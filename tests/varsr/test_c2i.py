"""C2I pretraining variant (ImgVAR_RoPE, spec varsr.md 6-7): SOS-only prefix shapes/closed forms,
KV-cached sampling == teacher-forced forward, null-class quadratic CFG ramp, label dropout, loss
falls when overfitting, official C2I layout load and C2I -> SR transfer report."""

import pytest
import torch

from tests.varsr.conftest import lively
from varsr.losses import drop_labels, varsr_loss
from varsr.model import build_models, model_config
from varsr.model.rope import build_rope_table
from varsr.official import CheckpointError, export_official, load_official_c2i, transfer_from_c2i
from varsr.sample import cfg_ramp
from varsr.sample_c2i import generate_c2i_fhat, sample_c2i


@pytest.fixture(scope="module")
def c2i():
    return lively("c2i_tiny")


def _x_inputs(vqvae, logits):
    return vqvae.quantize.teacher_forcing_inputs([lg.argmax(-1) for lg in logits])


def test_c2i_structure_and_forward_shapes(c2i):
    model, vqvae = c2i
    cfg, pns = model.cfg, model.patch_nums
    L = sum(p * p for p in pns)  # 91: no LR tokens, the SOS predicts the 1x1 scale
    assert model.first_l == 1 and model.pos_start.shape == (1, 1, model.C)
    assert not any(k.startswith("con_embedding.") for k in model.state_dict())
    assert model.class_emb.weight.shape[0] == cfg.num_classes == 5 and cfg.null_class == 4
    lvl = [si for si, p in enumerate(pns) for _ in range(p * p)]  # SOS is level 0 like scale 0
    assert model.lvl_1L[0].tolist() == lvl
    m = model.attn_bias_for_masking[0, 0]
    allowed = torch.tensor(lvl)[:, None] >= torch.tensor(lvl)[None, :]
    assert m.shape == (L, L) and torch.equal(m == 0, allowed) and bool((m[~allowed] == -torch.inf).all())
    # RoPE over the scales only: grids = patch_nums, coordinates on the last-scale grid
    assert torch.equal(model.rope.table(torch.device("cpu")), build_rope_table(list(pns), 64, pns[-1]))

    torch.manual_seed(1)
    label = torch.tensor([0, 3])
    x_in = vqvae.encode_for_training(torch.rand(2, 3, 96, 96) * 2 - 1).x_inputs
    with torch.no_grad():
        logits, h_last = model(None, label, x_in)
    assert logits.shape == (2, L, cfg.vocab_size) and logits.dtype == torch.float32
    assert h_last.shape == (2, pns[-1] ** 2, model.C)
    with pytest.raises(ValueError, match="lr=None"):
        model(torch.zeros(2, 3, 96, 96), label, x_in)
    sr, _ = build_models("tiny", "meta")
    with pytest.raises(ValueError, match="LR image is required"):
        sr.prefix(None, label.to("meta"))


def test_full_size_c2i_on_meta():
    sr, _ = build_models("d24", "meta")
    c2i, vqvae = build_models("c2i_d24", "meta")
    C = 1536
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    con = sum(p.numel() for p in sr.con_embedding.parameters())
    # no LR encoder, pos_start 1 row instead of 1025, class_emb 3831 rows, lvl_embed 12 rows
    assert n(c2i) == n(sr) - con - 1024 * C + 3829 * C + 2 * C
    assert c2i.attn_bias_for_masking.shape == (1, 1, 3331, 3331) and c2i.lvl_1L.shape == (1, 3331)
    assert vqvae.quantize.ema_vocab_hit_SV.shape == (12, 4096)


def test_kv_cached_sampling_matches_teacher_forcing(c2i):
    model, vqvae = c2i
    label = torch.tensor([1, 2])
    _, logits = generate_c2i_fhat(
        model, vqvae, label, cfg=0.0, top_k=1, top_p=0.0, generator=torch.Generator().manual_seed(0), return_logits=True
    )
    x_in = _x_inputs(vqvae, logits)
    with torch.no_grad():
        tf, _ = model(None, label, x_in)
        other, _ = model(None, torch.tensor([3, 0]), x_in)
    cached = torch.cat(logits, 1)
    assert (tf - cached).abs().max() < 1e-5
    assert (other - cached).abs().max() > 1e-3  # the class actually conditions the logits


def test_null_class_cfg_ramp_and_refiner_guidance(c2i, monkeypatch):
    model, vqvae = c2i
    K, cfg = len(model.patch_nums), 4.0
    assert [cfg_ramp(cfg, si, K, 2) for si in range(K)] == pytest.approx([cfg * (si / (K - 1)) ** 2 for si in range(K)])
    assert cfg_ramp(4.0, 5, 10, 2) == pytest.approx(4.0 * 25 / 81) and cfg_ramp(4.0, 9, 10, 2) == 4.0
    seen = {}
    real = model.diffloss.sample

    def spy(z, cfg_t=0.0, guided=False, **kw):
        seen.update(cfg_t=cfg_t, guided=guided, rows=z.shape[0])
        return real(z, cfg_t=cfg_t, guided=guided, **kw)

    monkeypatch.setattr(model.diffloss, "sample", spy)
    label = torch.tensor([2])
    _, logits = generate_c2i_fhat(
        model, vqvae, label, cfg=cfg, top_k=1, generator=torch.Generator().manual_seed(0), return_logits=True
    )
    x_in = _x_inputs(vqvae, logits)
    with torch.no_grad():
        lc, _ = model(None, label, x_in)
        ln, _ = model(None, torch.tensor([model.cfg.null_class]), x_in)
    start = 0
    for si, pn in enumerate(model.patch_nums):
        t = cfg * (si / (K - 1)) ** 2
        sl = slice(start, start + pn * pn)
        assert torch.allclose(logits[si], (1 + t) * lc[:, sl] - t * ln[:, sl], atol=1e-4)
        start += pn * pn
    # refiner: guided with the last scale's t (= cfg), both halves (cond, null) conditioned
    assert seen == {"cfg_t": cfg, "guided": True, "rows": 2 * model.patch_nums[-1] ** 2}

    a = sample_c2i(model, vqvae, [0, 3], generator=torch.Generator().manual_seed(1))
    b = sample_c2i(model, vqvae, [0, 3], generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 96, 96) and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    with pytest.raises(ValueError, match="out of range"):
        sample_c2i(model, vqvae, [5])


def test_label_dropout():
    lab = torch.zeros(20000, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    out = drop_labels(lab, 9, 0.1, g)
    assert set(out.unique().tolist()) == {0, 9} and abs((out == 9).float().mean().item() - 0.1) < 0.01
    state = torch.get_rng_state()
    assert drop_labels(lab, 9, 0.0) is lab and torch.equal(torch.get_rng_state(), state)  # p=0: no draws
    assert model_config("c2i_tiny").label_drop_prob == 0.1 and model_config("tiny").label_drop_prob == 0.0
    assert model_config("d16", lr_prefix=False, num_classes=11).label_drop_prob == 0.1
    with pytest.raises(ValueError, match="null class"):
        model_config("tiny", cond_drop_prob=0.1)


def test_c2i_loss_falls_when_overfitting():
    torch.manual_seed(0)
    model, vqvae = build_models("c2i_tiny")
    hr = torch.rand(2, 3, 96, 96) * 2 - 1
    label = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="out of range"):  # the null class is not a training label
        varsr_loss(model, vqvae, hr, None, torch.tensor([0, 4]))
    targets = vqvae.encode_for_training(hr)
    vqvae.encode_for_training = lambda x: targets  # frozen tokenizer: same targets every step (speed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, drops = [], []
    for _ in range(20):
        loss, stats = varsr_loss(model, vqvae, hr, None, label)  # default cond_drop_prob 0.1
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["ce"])
        drops.append(stats["label_drop"])
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0]
    assert all(d in (0.0, 0.5, 1.0) for d in drops)
    _, stats = varsr_loss(model, vqvae, hr, None, label, cond_drop_prob=0.0)
    assert stats["label_drop"] == 0.0


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module


def test_official_c2i_roundtrip_and_transfer_to_sr(tmp_path):
    src, _ = build_models("c2i_tiny")
    _randomise(src, 3)
    export_official(src, None, tmp_path / "c2i.pth")
    dst, _ = build_models("c2i_tiny")
    load_official_c2i(tmp_path / "c2i.pth", dst)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))

    sr, _ = build_models("tiny")
    with pytest.raises(CheckpointError, match="C2I model"):
        load_official_c2i(tmp_path / "c2i.pth", sr)
    export_official(sr, None, tmp_path / "sr.pth")
    with pytest.raises(CheckpointError, match="unexpected"):  # SR weights into a C2I model
        load_official_c2i(tmp_path / "sr.pth", dst)

    before = sr.con_embedding.conv_in.weight.clone()
    rep = transfer_from_c2i(sr, tmp_path / "c2i.pth")
    assert rep["truncated"] == ["class_emb.weight"]
    assert set(rep["dropped"]) == {"pos_start", "lvl_1L", "attn_bias_for_masking"}  # same K: lvl_embed kept
    assert "lvl_embed.weight" in rep["kept"] and "blocks.1.ffn.fc1.weight" in rep["kept"]
    assert {k for k in rep["missing"] if not k.startswith("con_embedding.")} == {
        "pos_start",
        "lvl_1L",
        "attn_bias_for_masking",
    }
    assert "con_embedding.conv_in.weight" in rep["missing"]
    assert torch.equal(sr.class_emb.weight, src.class_emb.weight[:2])
    assert torch.equal(sr.blocks[0].attn.mat_qkv.weight, src.blocks[0].attn.mat_qkv.weight)
    assert torch.equal(sr.con_embedding.conv_in.weight, before)
    assert sr.attn_bias_for_masking.shape == (1, 1, 127, 127)  # SR buffers untouched

    # a C2I schedule with a different scale count also drops lvl_embed (12 vs 10 in the release)
    src7, _ = build_models(model_config("c2i_tiny", patch_nums=(1, 2, 3, 4, 5, 6, 7)), "cpu")
    rep7 = transfer_from_c2i(build_models("tiny")[0], {"trainer": {"var_wo_ddp": src7.state_dict()}})
    assert "lvl_embed.weight" in rep7["dropped"] and rep7["truncated"] == ["class_emb.weight"]
