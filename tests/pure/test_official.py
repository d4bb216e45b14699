"""Checkpoint I/O in the official layouts: HF Chameleon shards and LlamaGen's {"model": sd}."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pure.model import ChameleonForCausalLM, chameleon_config, from_hf_config_json
from pure.model.vq import VQModel, vq_config
from pure.official import load_hf_shards, load_llamagen_vq, parse_size, save_hf_shards
from pure.tokenizer import ImageCodeMap


def _meta_tiny():
    with torch.device("meta"):
        return ChameleonForCausalLM(chameleon_config("tiny"))


def test_sharded_round_trip_into_meta_model(tiny_model, tmp_path):
    vocab = {"<s>": 0, "<image>": 8711, **ImageCodeMap.synthetic().to_vocabulary_map()}
    index = save_hf_shards(
        tiny_model, tmp_path, max_shard_size=8_000_000, config=tiny_model.config, vocabulary_map=vocab, dtype=None
    )
    weight_map = json.loads(index.read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
    assert len(files) >= 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert set(weight_map) == set(tiny_model.state_dict())
    for name in files:  # HF's loader requires the "pt" format tag
        with safe_open(str(tmp_path / name), "pt") as f:
            assert f.metadata()["format"] == "pt"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "chameleon" and config["vocabulary_map"]["<image>"] == 8711
    assert from_hf_config_json(tmp_path) == tiny_model.config

    model = _meta_tiny()
    report = load_hf_shards(model, tmp_path)
    assert len(report.loaded) == 29 and not report.missing and not any(p.is_meta for p in model.parameters())
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    ids = torch.randint(0, 73728, (1, 5))
    assert torch.equal(model.eval()(ids), tiny_model(ids))


def test_bf16_export_keeps_dtype_and_ignores_vqmodel(tiny_model, tmp_path):
    save_hf_shards(tiny_model, tmp_path, max_shard_size="10MB")  # bf16 by default
    extra = tmp_path / "model-00009-of-00009.safetensors"
    save_file({"model.vqmodel.encoder.conv_in.weight": torch.zeros(2)}, str(extra), metadata={"format": "pt"})
    index = tmp_path / "model.safetensors.index.json"
    meta = json.loads(index.read_text())
    meta["weight_map"]["model.vqmodel.encoder.conv_in.weight"] = extra.name
    index.write_text(json.dumps(meta))
    model = _meta_tiny()
    report = load_hf_shards(model, tmp_path)
    assert report.skipped == ["model.vqmodel.encoder.conv_in.weight"]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # no fp32 copy made
    assert torch.equal(model.lm_head.weight, tiny_model.lm_head.weight.to(torch.bfloat16))
    materialised = ChameleonForCausalLM(chameleon_config("tiny"))  # fp32 target: cast per tensor
    load_hf_shards(materialised, tmp_path)
    assert materialised.lm_head.weight.dtype == torch.float32


def test_strict_errors_name_the_problem(tiny_model, tmp_path):
    sd = {k: v for k, v in tiny_model.state_dict().items() if k != "lm_head.weight"}
    sd["model.extra.weight"] = torch.zeros(1)
    save_hf_shards(sd, tmp_path, dtype=None)
    with pytest.raises(ValueError, match="missing 1 .*lm_head.weight.*unexpected 1"):
        load_hf_shards(_meta_tiny(), tmp_path)
    report = load_hf_shards(_meta_tiny(), tmp_path, strict=False)
    assert report.missing == ["lm_head.weight"] and report.unexpected == ["model.extra.weight"]
    with pytest.raises(FileNotFoundError, match="model.safetensors.index.json"):
        load_hf_shards(_meta_tiny(), tmp_path / "nowhere")


def test_shape_mismatch_and_stale_shards(tiny_model, tmp_path):
    save_hf_shards(tiny_model, tmp_path, max_shard_size=8_000_000, dtype=None)
    n_before = len(list(tmp_path.glob("model-*.safetensors")))
    save_hf_shards(tiny_model, tmp_path, max_shard_size="1GB", dtype=None)
    assert n_before >= 2 and [p.name for p in tmp_path.glob("model-*.safetensors")] == [
        "model-00001-of-00001.safetensors"
    ]
    sd = dict(tiny_model.state_dict())
    sd["model.norm.weight"] = torch.ones(65)
    save_hf_shards(sd, tmp_path, dtype=None)
    with pytest.raises(ValueError, match="model.norm.weight has shape"):
        load_hf_shards(_meta_tiny(), tmp_path)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("lots")


def test_llamagen_vq_file_loads(tiny_vq, tmp_path):
    path = tmp_path / "vq_ds8_c2i.pt"
    torch.save({"model": tiny_vq.state_dict(), "optimizer": {}, "steps": 3}, path)
    with torch.device("meta"):
        vq = VQModel(vq_config("tiny"))
    load_llamagen_vq(vq, path)
    for (k, a), b in zip(tiny_vq.state_dict().items(), vq.state_dict().values()):
        assert torch.equal(a, b), k
    bad = tmp_path / "flat.pt"
    torch.save(tiny_vq.state_dict(), bad)
    with pytest.raises(ValueError, match="'model'"):
        load_llamagen_vq(VQModel(vq_config("tiny")), bad)
    broken = {"model": {k: v for k, v in tiny_vq.state_dict().items() if k != "quantize.codebook_used"}}
    torch.save(broken, bad)
    with pytest.raises(ValueError, match="codebook_used"):
        load_llamagen_vq(VQModel(vq_config("tiny")), bad)
