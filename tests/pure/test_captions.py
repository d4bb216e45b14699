"""Captioning with a tiny randomly initialised BLIP built and saved locally (no hub access)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pure.captions import HFCaptioner, StubCaptioner, caption_folder, load_captions

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
] + "please describe this image in detail . a cat dog red sky".split()


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """Tiny BLIP whose decoder bias makes greedy decoding say "cat" forever (a known answer)."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    d = tmp_path_factory.mktemp("blip")
    proc = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}, bos_token="[DEC]"),
    )
    text = dict(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        encoder_hidden_size=32,
        bos_token_id=5,
        pad_token_id=0,
        sep_token_id=3,
        eos_token_id=3,
        max_position_embeddings=64,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    bias = model.text_decoder.cls.predictions.decoder.bias
    with torch.no_grad():
        bias[WORDS.index("cat")] += 1e4
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "sub/c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / name)
    (d / "bad.png").write_bytes(b"")  # zero-byte: skipped and counted
    return d


def test_hf_captioner_tiny_blip(tiny_blip, folder, tmp_path):
    cap = HFCaptioner(tiny_blip, device="cpu", max_new_tokens=4)
    out = tmp_path / "captions.jsonl"
    stats = caption_folder(folder, out, cap, batch_size=2)
    caps = load_captions(out)
    assert set(caps) == {"a", "b", "sub/c"} and stats["bad"] == 1
    # greedy decoding of the biased decoder: the prompt prefix is stripped, then "cat" x 4
    assert all(c == "cat cat cat cat" for c in caps.values()), caps


def test_caption_script_resumes_with_stub(folder, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data"))
    import caption_images

    out = tmp_path / "c.jsonl"
    out.write_text(json.dumps({"id": "a", "caption": "kept"}) + "\n")
    stats = caption_images.main(["--images", str(folder), "--out", str(out), "--stub"])
    caps = load_captions(out)
    assert (
        stats["skipped_existing"] == 1
        and caps["a"] == "kept"
        and caps["sub/c"] == StubCaptioner()([None], ["sub/c"])[0]
    )
    out.write_text("{not json}\n")
    with pytest.raises(ValueError, match="c.jsonl:1"):
        load_captions(out)
