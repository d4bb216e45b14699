"""Official checkpoint I/O: nested trainer layout through the user path, tolerated buffer,
one-line error + trusted converter for pickles with objects, C2I transfer report, export."""

import argparse

import pytest
import torch

from varsr.model import build_models
from varsr.official import (
    CheckpointError,
    convert,
    export_official,
    load_official_varsr,
    load_official_vqvae,
    transfer_from_c2i,
)


def _random_like(module, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=g) if v.is_floating_point() and "attn_bias" not in k else v.clone())
        for k, v in module.state_dict().items()
    }


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    model, vqvae = build_models("tiny")
    var_sd, vae_sd = _random_like(model, 1), _random_like(vqvae, 2)
    vae_sd["quantize.ema_vocab_hit_SV"] = torch.zeros(3, 64)  # shape mismatch the official loader tolerates
    torch.save({"epoch": 3, "trainer": {"var_wo_ddp": var_sd, "vae_local": vae_sd, "optimizer": {}}}, d / "VARSR.pth")
    torch.save({"trainer": {"vae_local": vae_sd}}, d / "VQVAE.pth")
    return d, var_sd, vae_sd


def test_load_official_nested_layout(official_files):
    d, var_sd, vae_sd = official_files
    model, vqvae = build_models("tiny", "meta")  # the user path: no random init, assign on load
    load_official_varsr(d / "VARSR.pth", model)
    load_official_vqvae(d / "VQVAE.pth", vqvae)
    for k, v in model.state_dict().items():
        assert torch.equal(v, var_sd[k]), k
    for k, v in vqvae.state_dict().items():
        if k != "quantize.ema_vocab_hit_SV":
            assert torch.equal(v, vae_sd[k]), k
    assert vqvae.quantize.ema_vocab_hit_SV.shape == (6, 64) and not vqvae.quantize.ema_vocab_hit_SV.is_meta
    with torch.no_grad():  # the loaded model runs
        logits, _ = model(torch.zeros(1, 3, 96, 96), torch.zeros(1, dtype=torch.long), torch.zeros(1, 90, 8))
    assert logits.shape == (1, 91, 64) and torch.isfinite(logits).all()


def test_strict_mismatch_is_one_line(official_files, tmp_path):
    d, var_sd, _ = official_files
    bad = dict(var_sd)
    bad.pop("head.bias")
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"trainer": {"var_wo_ddp": bad}}, tmp_path / "bad.pth")
    model, _ = build_models("tiny")
    with pytest.raises(CheckpointError) as e:
        load_official_varsr(tmp_path / "bad.pth", model)
    msg = str(e.value)
    assert "\n" not in msg and "head.bias" in msg and "extra.weight" in msg and "bad.pth" in msg


def test_object_pickle_needs_converter(official_files, tmp_path):
    d, var_sd, _ = official_files
    src = tmp_path / "with_args.pth"
    torch.save({"args": argparse.Namespace(depth=2), "trainer": {"var_wo_ddp": var_sd}}, src)
    model, _ = build_models("tiny")
    with pytest.raises(CheckpointError) as e:
        load_official_varsr(src, model)
    assert "python -m varsr.official convert" in str(e.value) and "\n" not in str(e.value)
    dst = convert(src, tmp_path / "with_args.safetensors")
    load_official_varsr(dst, model)
    assert torch.equal(model.head.weight, var_sd["head.weight"])


def test_export_roundtrip(tmp_path):
    torch.manual_seed(0)
    model, vqvae = build_models("tiny")
    for path in (tmp_path / "exp.pth", tmp_path / "exp.safetensors"):
        export_official(model, vqvae, path)
        m2, v2 = build_models("tiny", "meta")
        load_official_varsr(path, m2)
        load_official_vqvae(path, v2)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
        assert all(torch.equal(a, b) for a, b in zip(vqvae.state_dict().values(), v2.state_dict().values()))


def test_transfer_from_c2i_report():
    torch.manual_seed(0)
    model, _ = build_models("tiny")
    src, _ = build_models("tiny")
    sd = _random_like(src, 5)
    C = model.C
    sd["class_emb.weight"] = torch.randn(3831, C)  # 3830 clusters + null class
    sd["pos_start"] = torch.randn(1, 1, C)  # C2I prefix is the SOS only
    sd["lvl_embed.weight"] = torch.randn(12, C)  # 12-scale C2I preset
    sd["lvl_1L"] = torch.zeros(1, 200, dtype=torch.long)
    sd["attn_bias_for_masking"] = torch.zeros(1, 1, 200, 200)
    sd["pos_1LC"] = torch.randn(1, 200, C)  # FoundationVision VAR only
    for k in [k for k in sd if k.startswith("con_embedding.")]:
        sd.pop(k)
    before = model.con_embedding.conv_in.weight.clone()
    rep = transfer_from_c2i(model, {"trainer": {"var_wo_ddp": sd}})
    assert rep["truncated"] == ["class_emb.weight"]
    assert set(rep["dropped"]) == {"pos_start", "lvl_embed.weight", "lvl_1L", "attn_bias_for_masking", "pos_1LC"}
    assert "con_embedding.conv_in.weight" in rep["missing"] and "pos_start" in rep["missing"]
    assert "blocks.0.attn.mat_qkv.weight" in rep["kept"]
    assert torch.equal(model.class_emb.weight, sd["class_emb.weight"][:2])
    assert torch.equal(model.blocks[1].ffn.fc1.weight, sd["blocks.1.ffn.fc1.weight"])
    assert torch.equal(model.con_embedding.conv_in.weight, before)
