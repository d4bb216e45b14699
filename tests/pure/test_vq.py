"""LlamaGen VQ-8: official key layout (full on meta, tiny materialised) and the quantiser's
behaviour (grid shapes, nearest-code oracle, idempotence, decode shapes)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pure.model.vq import VQModel, vq_config

REF = Path(__file__).resolve().parents[1] / "reference"


def _layout(name):
    path = REF / name
    ref = json.loads(path.read_text())
    return ref, {**ref["params"], **ref["buffers"]}


@pytest.mark.parametrize("size,name", [("ds8", "llamagen_vq_ds8.json"), ("tiny", "llamagen_vq_ds8_tiny.json")])
def test_key_layout(size, name):
    ref, keys = _layout(name)
    with torch.device("meta"):
        vq = VQModel(vq_config(size))
    sd = vq.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == keys
    assert sum(p.numel() for p in vq.parameters()) == ref["num_params"]
    assert [k for k, _ in vq.named_buffers()] == ["quantize.codebook_used"]
    assert sd["quantize.codebook_used"].dtype == torch.float32


def test_full_vq_param_count_closed_form():
    with torch.device("meta"):
        vq = VQModel(vq_config("ds8"))
    assert sum(p.numel() for p in vq.parameters()) == 70_109_835
    assert vq.config.downsample == 8


def test_encode_decode_shapes_and_nearest_code(tiny_vq):
    torch.manual_seed(0)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = tiny_vq.encode_codes(img)
    assert codes.shape == (2, 16, 16) and codes.dtype == torch.long  # tiny VQ downsamples by 2
    # oracle: with l2-normalised z and codebook, nearest code = largest cosine similarity
    with torch.no_grad():
        z = tiny_vq.quant_conv(tiny_vq.encoder(img))
    cos = F.normalize(z.permute(0, 2, 3, 1), dim=-1) @ F.normalize(tiny_vq.quantize.embedding.weight, dim=-1).t()
    assert torch.equal(codes, cos.argmax(-1))
    # the quantiser is idempotent: code vectors map back to their own codes
    with torch.no_grad():
        assert torch.equal(tiny_vq.quantize.codes(tiny_vq.quantize.lookup(codes)), codes)
    out = tiny_vq.decode_codes(codes)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert torch.allclose(tiny_vq.decode_codes(codes[0]), out[:1], atol=1e-5)  # (h, w) input is batched


def test_encode_64x64_grid(tiny_vq):
    """The 64x64 latent grid of a 512 px image (here 128 px through the ds-2 tiny VQ)."""
    codes = tiny_vq.encode_codes(torch.rand(1, 3, 128, 128) * 2 - 1)
    assert codes.shape == (1, 64, 64) and 0 <= codes.min() and codes.max() < 64


@pytest.mark.slow
def test_decode_64x64_grid(tiny_vq):
    codes = torch.randint(0, 64, (1, 64, 64))
    out = tiny_vq.decode_codes(codes)
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all()


def test_encode_rejects_bad_shapes(tiny_vq):
    with pytest.raises(ValueError, match="multiples"):
        tiny_vq.encode_codes(torch.zeros(1, 3, 33, 32))
