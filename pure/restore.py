"""One LQ image -> restored image with PURE: the inference pipeline of spec §7.

LQ (uint8 HWC) -> PIL bicubic resize to `resolution`^2 (the README step) -> bucket/crop
(`preprocess_image`, a no-op for square inputs) -> VQ encode -> prompt [BOS, instruction, LQ
block, 8710] -> generate (AR or SJD) -> split text / image block -> VQ decode -> wavelet colour
fix against the resized LQ -> (3, H, W) in [0, 1].

A generation that yields no parsable image (an untrained model, max_new_tokens too small) is
not an exception: the result carries `ok=False` and falls back to the bicubic LQ, so a folder
run counts the failures instead of dying on image 731.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from common.color_fix import apply_color_fix
from pure.generate import GenerationOutput, decode_answer, generate
from pure.jacobi import SJDConfig, speculative_generate
from pure.processors import SamplingConfig
from pure.sequence import build_inference_prompt
from pure.tokenizer import SpecialIds, preprocess_image
from pure.tokenizer.image import LATENT_PER_GRID

# "<Level> blur, <level> noise." opens every answer (spec §4.1); the rest is the caption.
_DEGRADATION_RE = re.compile(r"^\s*([A-Za-z]+ blur, [A-Za-z]+ noise\.)\s*(.*)$", re.S)


def split_text(text: str) -> tuple[str, str]:
    """Answer text -> (degradation sentence, caption); ("", text) when it does not parse."""
    m = _DEGRADATION_RE.match(text or "")
    return (m.group(1), m.group(2).strip()) if m else ("", (text or "").strip())


@dataclass
class RestoreResult:
    image: torch.Tensor            # (3, H, W) in [0, 1], colour-fixed (bicubic LQ when not ok)
    lq: torch.Tensor               # (3, H, W) in [0, 1]: the resized LQ the model saw
    ok: bool                       # an image block was generated and decoded
    text: str = ""                 # full answer text
    degradation: str = ""          # "Medium blur, small noise."
    caption: str = ""
    new_tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0
    raw: torch.Tensor | None = field(default=None, repr=False)  # decoded image before the colour fix

    def record(self) -> dict:
        """JSON-able summary written next to the PNG."""
        return {"ok": self.ok, "degradation": self.degradation, "caption": self.caption, "text": self.text,
                "new_tokens": self.new_tokens, "forwards": self.forwards, "seconds": round(self.seconds, 3)}


class Restorer:
    """Holds the model, VQ, tokenizer and decoding settings; `restore(lq)` runs one or more images.

    `image_only=True` writes `<8197><h><w>` of the LQ grid after the prompt and stops at the
    image end: no degradation/caption text, an output grid equal to the input grid, fewer steps.

    `tokenizer` is a `pure.tokenizer.TextTokenizer` (its `code_map` maps codes <-> ids). Only
    ids of codes the VQ can decode are allowed inside images (all 16,384 for the real VQ)."""

    def __init__(self, model, vq, tokenizer, sampling: SamplingConfig | None = None, sjd: SJDConfig | None = None,
                 resolution: int = 512, max_new_tokens: int = 8192, color_fix: str = "wavelet",
                 autocast_dtype: torch.dtype | None = None, image_only: bool = False):
        self.model, self.vq, self.tok = model, vq, tokenizer
        self.image_only = image_only
        self.sampling, self.sjd = sampling or SamplingConfig(), sjd
        self.resolution, self.max_new_tokens, self.color_fix = resolution, max_new_tokens, color_fix
        self.autocast_dtype = autocast_dtype
        self.device = model.lm_head.weight.device
        self.vq_ds = vq.config.downsample
        n_codes = vq.config.codebook_size
        ids = tokenizer.code_map.code_to_id[:n_codes]
        self.image_mask = torch.zeros(tokenizer.code_map.vocab_size, dtype=torch.bool)
        self.image_mask[ids] = True
        self.image_mask = self.image_mask.to(self.device)

    # --------------------------------------------------------------------------- pieces
    def prepare(self, lq: np.ndarray) -> tuple[torch.Tensor, list[int]]:
        """uint8 HWC LQ -> (LQ in [0, 1] at the model resolution (3, H, W), prompt ids)."""
        if lq.dtype != np.uint8 or lq.ndim != 3 or lq.shape[2] != 3:
            raise ValueError(f"restore expects a uint8 HxWx3 image, got {lq.dtype} {lq.shape}")
        im = Image.fromarray(lq).resize((self.resolution, self.resolution), Image.BICUBIC)
        x = preprocess_image(im, resolution=self.resolution, patch_size=LATENT_PER_GRID * self.vq_ds)
        param = next(self.vq.parameters())
        codes = self.vq.encode_codes(x[None].to(param.device, param.dtype))[0].cpu()
        prompt = build_inference_prompt(codes, self.tok)
        if self.image_only:
            prompt = prompt + self._header(codes.shape)
        return (x + 1) / 2, prompt

    @staticmethod
    def _header(grid) -> list[int]:
        return [SpecialIds.IMG_START] + [SpecialIds.SIZE_BASE + n // LATENT_PER_GRID for n in grid]

    def _generate(self, prompts, generator) -> GenerationOutput:
        kw = dict(image_mask=self.image_mask, max_new_tokens=self.max_new_tokens, generator=generator,
                  eos_id=SpecialIds.IMG_END if self.image_only else SpecialIds.EOT)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None and self.device.type == "cuda"):
            if self.sjd is not None:
                return speculative_generate(self.model, prompts, self.sampling, self.sjd, **kw)
            return generate(self.model, prompts, self.sampling, **kw)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        param = next(self.vq.parameters())
        img = self.vq.decode_codes(codes[None].to(param.device))[0].float()
        return ((img.clamp(-1, 1) + 1) / 2).cpu()

    # ---------------------------------------------------------------------------- public
    @torch.no_grad()
    def restore(self, lqs: list[np.ndarray], generator: torch.Generator | None = None) -> list[RestoreResult]:
        """Restore a batch of LQ images (AR: one batched generation; SJD: one after another)."""
        t0 = time.time()
        prepared = [self.prepare(lq) for lq in lqs]
        out = self._generate([p for _, p in prepared], generator)
        decode_answer(out, self.tok.code_map, self.tok, prompts=[p for _, p in prepared])
        seconds = (time.time() - t0) / len(lqs)
        results = []
        for b, (lq, _) in enumerate(prepared):
            codes = out.images[b]
            ok = codes is not None and bool((codes < self.vq.config.codebook_size).all())
            raw = self._decode(codes) if ok else None
            if raw is not None and raw.shape[-2:] != lq.shape[-2:]:  # the model chose another grid size
                raw = torch.nn.functional.interpolate(raw[None], size=lq.shape[-2:], mode="bicubic",
                                                      align_corners=False)[0].clamp(0, 1)
            image = lq if raw is None else apply_color_fix(raw[None], lq[None], self.color_fix)[0]
            deg, cap = split_text(out.texts[b])
            results.append(RestoreResult(image=image, lq=lq, ok=ok, text=out.texts[b], degradation=deg, caption=cap,
                                         new_tokens=len(out.tokens[b]), forwards=out.forwards, seconds=seconds,
                                         raw=raw))
        return results
