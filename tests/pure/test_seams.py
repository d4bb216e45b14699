"""Seams of the PURE pipeline: which image's codes land in which block, which row in which file.

Inputs are made distinguishable (flat images of different brightness, a stub VQ whose code is the
brightness) so the expected value comes from the input itself, not from the code under test. Bug each
test catches (each planted by hand once; the test failed):

- test_pair_encoder_puts_lq_in_prompt_and_hq_in_answer: the LQ and HQ code grids swapped between the
  prompt block and the answer block (or taken from another image of the batch); a caption or a
  degradation score attached to the wrong image id.
- test_restore_batch_rows_keep_their_image: a batched restoration returning row j's image for input i
  (e.g. results zipped against a reordered prompt list).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from pure.degradation_text import DegradationScores
from pure.pretokenize import PairEncoder
from pure.tokenizer import ImageCodeMap, SpecialIds


class BrightnessVQ(nn.Module):
    """encode: every latent cell of image b gets code round(100 * brightness_b); decode: the inverse."""

    def __init__(self, grid: int = 4):
        super().__init__()
        self.grid = grid
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the encoder a dtype/device

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1]
        level = ((x.float().mean(dim=(1, 2, 3)) + 1) / 2 * 100).round().long()
        return level.view(-1, 1, 1).expand(-1, self.grid, self.grid).clone()

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        b, h, w = codes.shape
        v = codes.float().mean(dim=(1, 2)) / 100 * 2 - 1
        return v.view(b, 1, 1, 1).expand(b, 3, 8 * h, 8 * w).clone()


@dataclass
class _Res:
    gt: torch.Tensor
    lq: torch.Tensor
    lq_up: torch.Tensor
    params: list


class DarkeningDegrader:
    """LQ = 0.25 x GT (so LQ and HQ codes differ), params tagged with the image's own brightness."""

    def __call__(self, hr, kernels, generator=None):
        lq = hr * 0.25
        return _Res(gt=hr, lq=lq, lq_up=lq, params=[{"tag": float(v)} for v in hr.mean(dim=(1, 2, 3))])


class TagEstimator:
    def __call__(self, lq=None, image_id=None, params=None):
        return DegradationScores(blur=params["tag"], noise=1 - params["tag"])


class CharTok:
    code_map = ImageCodeMap.synthetic()

    def encode(self, text):
        return [9004 + ord(c) for c in text]


def _blocks(tokens: list[int]) -> list[list[int]]:
    out, cur = [], None
    for t in tokens:
        if t == SpecialIds.IMG_START:
            cur = []
        elif t == SpecialIds.IMG_END and cur is not None:
            out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(t)
    return out


def test_pair_encoder_puts_lq_in_prompt_and_hq_in_answer():
    tok = CharTok()
    levels = [0.8, 0.4]  # 8-bit exact: 204/255, 102/255
    hr = torch.tensor([round(v * 255) / 255 for v in levels]).view(2, 1, 1, 1).expand(2, 3, 32, 32).contiguous()
    enc = PairEncoder(
        DarkeningDegrader(),
        BrightnessVQ(),
        tok,
        captions={"img_a": "cap A", "img_b": "cap B"},
        estimator=TagEstimator(),
    )
    records = enc(hr, {}, ["img_a", "img_b"])
    assert [r["id"] for r in records] == ["img_a", "img_b"]
    for rec, level, cap in zip(records, levels, ["cap A", "cap B"], strict=True):
        prompt_block, answer_block = _blocks(rec["token"])
        lq_id = int(tok.code_map.code_to_id[round(100 * 0.25 * level)])
        hq_id = int(tok.code_map.code_to_id[round(100 * level)])
        codes = lambda block: {t for t in block[2:] if t != SpecialIds.ROW_END}  # noqa: E731  (after size tokens)
        assert codes(prompt_block) == {lq_id}, "prompt block must hold this image's LQ codes"
        assert codes(answer_block) == {hq_id}, "answer block must hold this image's HQ codes"
        start = rec["token"].index(SpecialIds.IMG_START)
        answer_start = rec["token"].index(SpecialIds.IMG_START, start + 1)
        prompt_end = rec["token"].index(SpecialIds.EOT, start) + 1  # [BOS] instruction [LQ block] [8710]
        assert set(rec["label"][:prompt_end]) == {-100}, "the prompt is never supervised"
        assert rec["label"][answer_start:] == rec["token"][answer_start:], "the HQ block is supervised"
        text = rec["token"][start:answer_start]
        assert tok.encode(cap) == [t for t in text if 9004 <= t][-len(cap) - 1 : -1], "caption of this image"
        assert abs(rec["blur"] - level) < 1e-6 and abs(rec["noise"] - (1 - level)) < 1e-6


def test_restore_batch_rows_keep_their_image(monkeypatch, tiny_model, test_tokenizer):
    """Two LQ images of different brightness restored in one batch: a stub generator echoes each
    row's prompt codes as its answer, so output i must carry input i's brightness."""
    import pure.restore as restore_mod
    from pure.generate import GenerationOutput
    from pure.restore import Restorer

    def echo_generate(model, prompts, sampling, **kw):
        toks = []
        for p in prompts:
            blocks = _blocks(p)
            header = blocks[-1][:2]
            toks.append([SpecialIds.IMG_START, *header, *blocks[-1][2:], SpecialIds.IMG_END])
        return GenerationOutput(tokens=toks, finished=[True] * len(prompts), forwards=1)

    monkeypatch.setattr(restore_mod, "generate", echo_generate)
    vq = BrightnessVQ()
    vq.config = type("C", (), {"downsample": 8, "codebook_size": 101})()
    restorer = Restorer(tiny_model, vq, test_tokenizer, resolution=32, color_fix="none")
    lqs = [np.full((8, 8, 3), v, np.uint8) for v in (230, 51)]
    results = restorer.restore(lqs)
    means = [float(r.image.mean()) for r in results]
    assert abs(means[0] - 0.9) < 0.011 and abs(means[1] - 0.2) < 0.011, means
