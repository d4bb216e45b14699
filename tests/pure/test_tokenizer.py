"""Special ids, image code map, stand-in text tokenizer, image preprocessing and token blocks."""

import json
import random

import numpy as np
import pytest
import torch

from pure.tokenizer import (
    ImageCodeMap,
    SpecialIds,
    TextTokenizer,
    bucket_sizes,
    choose_bucket,
    code_token_name,
    decode_to_uint8,
    image_block,
    image_to_block,
    parse_code_token_name,
    parse_image_block,
    preprocess_image,
)


def test_code_token_names():
    assert code_token_name(0) == "IMGIMGAZ" and code_token_name(123) == "IMGIMGBCDZ"
    assert code_token_name(16383) == "IMGIMGBGDIDZ"
    assert parse_code_token_name("IMGIMGBCDZ") == 123 and parse_code_token_name("<s>") is None
    assert parse_code_token_name("IMGIMGxZ") is None


def test_synthetic_map_keeps_both_ranges(code_map):
    ids = code_map.image_ids
    assert ids.numel() == 16384
    assert torch.equal(ids[:8192], torch.arange(4, 8196)) and torch.equal(ids[8192:], torch.arange(65536, 73728))
    mask = code_map.image_mask()
    assert mask.sum() == 16384 and not mask[[0, 3, 8196, 8197, 8710, 8803, 65535]].any()
    codes = torch.arange(16384)
    assert torch.equal(code_map.to_codes(code_map.to_ids(codes)), codes)
    with pytest.raises(ValueError, match="non-image"):
        code_map.to_codes([8197])


def test_map_from_vocabulary_uses_names_not_arithmetic():
    shuffled = ImageCodeMap.synthetic(shuffle=True, seed=3)
    vocab = {"<s>": 0, "<image>": 8711, **shuffled.to_vocabulary_map()}
    rebuilt = ImageCodeMap.from_vocabulary_map(vocab)
    assert torch.equal(rebuilt.code_to_id, shuffled.code_to_id)
    assert not torch.equal(rebuilt.code_to_id, ImageCodeMap.synthetic().code_to_id)
    del vocab[code_token_name(77)]
    with pytest.raises(ValueError, match="first missing code 77"):
        ImageCodeMap.from_vocabulary_map(vocab)


def test_map_from_config_json(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"vocabulary_map": ImageCodeMap.synthetic().to_vocabulary_map()}))
    assert torch.equal(ImageCodeMap.from_tokenizer_json(cfg).code_to_id, ImageCodeMap.synthetic().code_to_id)


def test_stand_in_tokenizer_ids(test_tokenizer, test_tokenizer_path):
    tok = test_tokenizer
    expect = {
        "<s>": 0,
        "<pad>": 1,
        "</s>": 2,
        "<unk>": 3,
        "<eoss>": 8196,
        "<racm3:break>": 8197,
        "<reserved08706>": 8710,
        "<reserved08799>": 8803,
        "<reserved08816>": 8820,
        code_token_name(0): 4,
        code_token_name(8191): 8195,
        code_token_name(8192): 65536,
        code_token_name(16383): 73727,
    }
    assert {k: tok.token_to_id(k) for k in expect} == expect
    assert tok.token_to_id(SpecialIds.IMAGE_PLACEHOLDER) is not None
    assert torch.equal(tok.code_map.code_to_id, ImageCodeMap.synthetic().code_to_id)
    text = "Medium blur, small noise. The image features a zebra, ünïcode & 123!"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and all(i >= 9004 for i in ids)  # text ids never collide with specials
    assert tok.encode(text, add_bos=True)[0] == SpecialIds.BOS
    assert len(tok.encode("Perceive the degradation level")) < len("Perceive the degradation level")  # merges exist
    assert TextTokenizer.from_file(test_tokenizer_path.parent).vocab_size == tok.vocab_size


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_file(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        TextTokenizer.from_file(bad)
    with pytest.raises(FileNotFoundError, match="local HF cache"):
        TextTokenizer.from_pretrained("nobody/not-a-cached-repo")


def test_image_block_golden(code_map):
    codes = torch.randint(0, 16384, (64, 64), generator=torch.Generator().manual_seed(0))
    block = image_block(codes, code_map)
    assert len(block) == 4164 == 3 + 64 * 65 + 1
    assert block[:3] == [8197, 8820, 8820] and block[-2:] == [8803, 8196]
    assert block[3 + 64] == 8803 and block.count(8803) == 64
    assert torch.equal(parse_image_block(block, code_map), codes)
    assert torch.equal(parse_image_block(torch.tensor(block[1:-1]), code_map), codes)
    small = image_block(torch.zeros(8, 4, dtype=torch.long), code_map)  # 64x32 px: h then w
    assert small[:3] == [8197, 8806, 8805] and len(small) == 3 + 8 * 5 + 1


def test_parse_image_block_errors(code_map):
    block = image_block(torch.zeros(4, 4, dtype=torch.long), code_map)
    with pytest.raises(ValueError, match="needs 20 tokens"):
        parse_image_block(block[:-3] + [8196], code_map)
    broken = list(block)
    broken[3 + 4] = 5  # a code where the row end must be
    with pytest.raises(ValueError, match="row 0"):
        parse_image_block(broken, code_map)
    with pytest.raises(ValueError, match="multiples"):
        image_block(torch.zeros(3, 4, dtype=torch.long), code_map)


def test_buckets():
    sizes = bucket_sizes()
    assert len(sizes) == 49 and sizes[0] == (1024, 256) and sizes[-1] == (256, 1024) and (512, 512) in sizes
    assert all(w % 32 == 0 and h % 32 == 0 and (w // 32) * (h // 32) <= 256 for w, h in sizes)
    assert choose_bucket(100, 100, sizes) == (512, 512)
    assert choose_bucket(2000, 500, sizes) == (1024, 256)


def test_preprocess_lq_upscale_and_alpha():
    lq = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    x = preprocess_image(lq)
    assert x.shape == (3, 512, 512) and -1 <= x.min() and x.max() <= 1
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)  # fully transparent black -> white
    assert torch.allclose(preprocess_image(rgba), torch.ones(3, 512, 512))
    wide = preprocess_image(np.zeros((300, 1000, 3), dtype=np.uint8))
    assert wide.shape[1] % 32 == 0 and wide.shape[2] > wide.shape[1]
    tall = np.random.default_rng(2).integers(0, 256, (700, 512, 3), dtype=np.uint8)
    r1 = preprocess_image(tall, random_crop=True, rng=random.Random(0))
    r2 = preprocess_image(tall, random_crop=True, rng=random.Random(0))
    centre = preprocess_image(tall)
    assert r1.shape == centre.shape and centre.shape[1] > centre.shape[2] and torch.equal(r1, r2)


def test_decode_to_uint8_round_vs_truncate():
    x = torch.full((3, 2, 2), 0.999)  # (x+1)/2*255 = 254.87
    assert decode_to_uint8(x)[0, 0, 0] == 255 and decode_to_uint8(x, truncate=True)[0, 0, 0] == 254
    assert decode_to_uint8(x).shape == (2, 2, 3)


def test_image_to_block_with_tiny_vq(tiny_vq, code_map):
    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    block = image_to_block(img, tiny_vq, code_map, resolution=64)  # 64 px, ds-2 VQ -> 32x32 codes
    assert block[:3] == [8197, 8812, 8812] and len(block) == 3 + 32 * 33 + 1
    assert parse_image_block(block, code_map).max() < 64
