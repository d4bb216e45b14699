"""PURE sequence layout (spec pure.md §4.2 / §7.1 / §12.4) and the degradation-level text."""

import json
from pathlib import Path

import pytest
import torch

from pure.degradation_text import (
    ConstantEstimator,
    ParamEstimator,
    ScoreFileEstimator,
    level_name,
    scores_from_params,
    sentence_from_scores,
)
from pure.sequence import (
    IGNORE,
    INSTRUCTION,
    answer_text,
    build_inference_prompt,
    build_training_example,
    image_label_mask,
    pad_batch,
)
from pure.tokenizer import ImageCodeMap

GOLDEN = Path(__file__).parent / "golden_sequence.json"


class CharTok:
    """Independent stand-in tokenizer: one id per character (9004 + code point), synthetic code map."""

    code_map = ImageCodeMap.synthetic()

    def encode(self, text):
        return [9004 + ord(c) for c in text]


def _block(codes, cm):
    """Closed form of spec §3.1: [8197, 8804+h/4, 8804+w/4, rows with 8803, 8196]."""
    h, w = codes.shape
    out = [8197, 8804 + h // 4, 8804 + w // 4]
    for r in range(h):
        out += [int(cm.code_to_id[c]) for c in codes[r]] + [8803]
    return out + [8196]


def _sample():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 16384, (8, 8), generator=g), torch.randint(0, 16384, (8, 8), generator=g)


def test_training_example_layout_token_for_token():
    tok = CharTok()
    lq, hq = _sample()
    tokens, labels = build_training_example(lq, hq, "Medium blur, small noise.", "A cat.", tok)
    prompt = [0] + tok.encode(INSTRUCTION) + _block(lq, tok.code_map) + [8710]
    response = tok.encode("Medium blur, small noise. A cat. ") + _block(hq, tok.code_map) + [8710]
    assert tokens == prompt + response
    assert labels == [IGNORE] * len(prompt) + response
    assert labels[-2:] == [8196, 8710] and labels[0] == IGNORE
    assert len(_block(lq, tok.code_map)) == 76  # h = w = 2 grid: 3 + 8*9 + 1
    # Frozen golden: catches any accidental change of instruction text, order or spacing.
    golden = json.loads(GOLDEN.read_text())
    assert tokens == golden["tokens"] and labels == golden["labels"]


def test_inference_prompt_and_512_block(test_tokenizer):
    lq = torch.randint(0, 16384, (64, 64))
    ids = build_inference_prompt(lq, test_tokenizer)
    assert ids[0] == 0 and ids[-2:] == [8196, 8710]
    block = ids[-4165:-1]
    assert len(block) == 4164 and block[:3] == [8197, 8820, 8820] and block[-2:] == [8803, 8196]
    tokens, labels = build_training_example(
        lq, lq, "Large blur, large noise.", "The image features a cat.", test_tokenizer
    )
    assert tokens[: len(ids)] == ids and all(l == IGNORE for l in labels[: len(ids)])
    ans = tokens[
        len(ids) : len(ids)
        + len(test_tokenizer.encode(answer_text("Large blur, large noise.", "The image features a cat.")))
    ]
    assert test_tokenizer.decode(ans) == "Large blur, large noise. The image features a cat. "


def test_image_label_mask_and_padding():
    tok = CharTok()
    lq, hq = _sample()
    t, l = build_training_example(lq, hq, "Small blur, small noise.", "", tok)
    lab = torch.tensor([l])
    m = image_label_mask(lab)[0]
    n_text = len(tok.encode("Small blur, small noise. ")) + 1  # answer text + final 8710
    assert int(m.sum()) == 76 and int(((lab[0] != IGNORE) & ~m).sum()) == n_text
    ids, labs, n_pad = pad_batch([(t, l), (t[:10], l[:10])], pad_to_multiple=64)
    assert ids.shape[1] % 64 == 0 and labs[1, 10:].eq(IGNORE).all() and ids[1, 10:].eq(0).all()
    assert n_pad == ids.numel() - len(t) - 10


@pytest.mark.parametrize(
    "score,name",
    [(0.0, "small"), (1 / 3 - 1e-6, "small"), (1 / 3, "medium"), (0.5, "medium"), (2 / 3, "large"), (1.0, "large")],
)
def test_level_thresholds(score, name):
    assert level_name(score) == name


def test_level_rejects_out_of_range_and_sentence_case():
    with pytest.raises(ValueError):
        level_name(1.2)
    assert sentence_from_scores(0.5, 0.1) == "Medium blur, small noise."
    assert sentence_from_scores(0.9, 0.9) == "Large blur, large noise."


def test_scores_closed_form():
    # kernel1 iso sigma 2 at HR scale -> 0.5 LQ px; nothing else blurs; noise: stage-2 Gaussian 20.
    p = {
        "kernel1": {"family": "iso", "sigma_x": 2.0, "sigma_y": 2.0},
        "sinc": {"family": "identity", "omega_c": None},
        "stage1": {"resize_scale": 0.25, "noise": "gaussian", "noise_sigma": 0.0, "jpeg_quality": 95.0},
        "stage2": {"blur": False, "resize_scale": 1.0, "noise": "gaussian", "noise_sigma": 20.0},
        "final": {"jpeg_quality": 95.0},
    }
    s = scores_from_params(p)
    assert s.blur_sigma_lq == pytest.approx(0.5) and s.noise_std_255 == pytest.approx(20.0)
    assert s.blur == pytest.approx((0.5 - 0.45) / 1.1) and s.noise == pytest.approx(15 / 23)
    # a 0.5x stage-1 downscale (resolution bottleneck 0.5 of the LQ grid) adds sigma 0.5*sqrt(3)
    s2 = scores_from_params({**p, "stage1": {**p["stage1"], "resize_scale": 0.125}})
    assert s2.blur_sigma_lq == pytest.approx((0.25 + 0.75) ** 0.5)


def test_realesrgan_preset_uses_all_levels():
    import numpy as np

    from common.degradation.kernels import KernelSampler
    from common.degradation.pipeline import Degrader
    from common.degradation.presets import get_preset

    cfg = get_preset("realesrgan")
    ks, rng = KernelSampler(cfg), np.random.default_rng(1)
    params = Degrader(cfg).sample_params(300, torch.Generator().manual_seed(1), [ks(rng)["params"] for _ in range(300)])
    sents = [ParamEstimator()(params=p).sentence() for p in params]
    for lvl in ("Small", "Medium", "Large"):
        assert sum(s.startswith(lvl) for s in sents) > 40
    for lvl in ("small", "medium", "large"):
        assert sum(s.endswith(f"{lvl} noise.") for s in sents) > 40


def test_score_file_estimators(tmp_path):
    j = tmp_path / "s.jsonl"
    j.write_text('{"id": "a", "blur": 0.1, "noise": 0.9}\n')
    assert ScoreFileEstimator(j)(image_id="a").sentence() == "Small blur, large noise."
    c = tmp_path / "s.csv"
    c.write_text("id,blur,noise\nb,0.5,0.5\n")
    assert ScoreFileEstimator(c)(image_id="b").sentence() == "Medium blur, medium noise."
    with pytest.raises(KeyError, match="not in degradation score file"):
        ScoreFileEstimator(c)(image_id="zz")
    assert ConstantEstimator(0.7, 0.0)().sentence() == "Large blur, small noise."
