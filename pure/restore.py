"""One LQ image -> restored image with PURE: the inference pipeline of spec §7.

LQ (uint8 HWC) -> aspect-preserving fit into the closest aspect-ratio bucket (PIL bicubic, the
README step; `pure.tiling.fit_to_bucket`, for square inputs exactly the resize to
`resolution`^2) -> VQ encode -> prompt [BOS, instruction, LQ block, 8710] -> generate (AR or
SJD) -> split text / image block -> VQ decode -> crop the content box -> wavelet colour fix
against the fitted LQ -> (3, h', w') in [0, 1] with the input's aspect ratio.  With `scale`
set, the output is exactly scale x the LQ size, restored in feathered tiles when it is larger
than one native tile (`pure.tiling.restore_scaled`).

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

from common.color_fix import apply_color_fix
from pure.generate import GenerationOutput, decode_answer, generate
from pure.jacobi import SJDConfig, speculative_generate
from pure.processors import SamplingConfig
from pure.sequence import build_inference_prompt
from pure.tiling import fit_to_bucket, restore_scaled
from pure.tokenizer import SpecialIds
from pure.tokenizer.image import LATENT_PER_GRID

# "<Level> blur, <level> noise." opens every answer (spec §4.1); the rest is the caption.
_DEGRADATION_RE = re.compile(r"^\s*([A-Za-z]+ blur, [A-Za-z]+ noise\.)\s*(.*)$", re.S)


def split_text(text: str) -> tuple[str, str]:
    """Answer text -> (degradation sentence, caption); ("", text) when it does not parse."""
    m = _DEGRADATION_RE.match(text or "")
    return (m.group(1), m.group(2).strip()) if m else ("", (text or "").strip())


@dataclass
class RestoreResult:
    image: torch.Tensor  # (3, H, W) in [0, 1], colour-fixed (bicubic LQ when not ok)
    lq: torch.Tensor  # (3, H, W) in [0, 1]: the resized LQ the model saw
    ok: bool  # an image block was generated and decoded
    text: str = ""  # full answer text
    degradation: str = ""  # "Medium blur, small noise."
    caption: str = ""
    new_tokens: int = 0
    forwards: int = 0  # forwards of the generation that made it (one batch shares them)
    seconds: float = 0.0
    raw: torch.Tensor | None = field(default=None, repr=False)  # decoded image before the colour fix
    tiles: int = 1  # tiles restored for this image (text fields: the first tile's)

    def record(self) -> dict:
        """JSON-able summary written next to the PNG."""
        return {
            "ok": self.ok,
            "degradation": self.degradation,
            "caption": self.caption,
            "text": self.text,
            "new_tokens": self.new_tokens,
            "forwards": self.forwards,
            "seconds": round(self.seconds, 3),
            "tiles": self.tiles,
        }


class Restorer:
    """Holds the model, VQ, tokenizer and decoding settings; `restore(lq)` runs one or more images.

    `image_only=True` writes `<8197><h><w>` of the LQ grid after the prompt and stops at the
    image end: no degradation/caption text, an output grid equal to the input grid, fewer steps.

    `tokenizer` is a `pure.tokenizer.TextTokenizer` (its `code_map` maps codes <-> ids). Only
    ids of codes the VQ can decode are allowed inside images (all 16,384 for the real VQ).

    `scale` None: the output is the restored bucket content (native resolution, aspect kept);
    a number: exactly scale x the LQ size, tiled above one native tile (see `pure.tiling`), with
    `tile_overlap` (LQ px, None = a quarter tile), `tile_batch` tiles per generation and a
    `max_output_pixels` refusal."""

    def __init__(
        self,
        model,
        vq,
        tokenizer,
        sampling: SamplingConfig | None = None,
        sjd: SJDConfig | None = None,
        resolution: int = 512,
        max_new_tokens: int = 8192,
        color_fix: str = "wavelet",
        autocast_dtype: torch.dtype | None = None,
        image_only: bool = False,
        scale: float | None = None,
        tile_overlap: int | None = None,
        tile_batch: int = 1,
        max_output_pixels: int | None = None,
        log=None,
        max_text_tokens: int | None = None,
    ):
        self.model, self.vq, self.tok = model, vq, tokenizer
        self.scale, self.tile_overlap, self.tile_batch = scale, tile_overlap, tile_batch
        self.max_output_pixels, self.log = max_output_pixels, log
        self.image_only = image_only
        self.sampling, self.sjd = sampling or SamplingConfig(), sjd
        self.resolution, self.max_new_tokens, self.color_fix = resolution, max_new_tokens, color_fix
        self.max_text_tokens = max_text_tokens  # text budget of the answer: sizes the KV cache (pure.generate)
        self.autocast_dtype = autocast_dtype
        self.device = model.lm_head.weight.device
        self.vq_ds = vq.config.downsample
        n_codes = vq.config.codebook_size
        ids = tokenizer.code_map.code_to_id[:n_codes]
        self.image_mask = torch.zeros(tokenizer.code_map.vocab_size, dtype=torch.bool)
        self.image_mask[ids] = True
        self.image_mask = self.image_mask.to(self.device)

    # --------------------------------------------------------------------------- pieces
    def prepare(self, lq: np.ndarray) -> tuple[torch.Tensor, list[int], tuple[int, int]]:
        """uint8 HWC LQ -> (fitted LQ in [0, 1] (3, bh, bw) bucket incl. padding, prompt ids,
        content size (h', w') at the top-left of the bucket)."""
        if lq.dtype != np.uint8 or lq.ndim != 3 or lq.shape[2] != 3:
            raise ValueError(f"restore expects a uint8 HxWx3 image, got {lq.dtype} {lq.shape}")
        x, box = fit_to_bucket(lq, self.resolution, LATENT_PER_GRID * self.vq_ds)
        param = next(self.vq.parameters())
        codes = self.vq.encode_codes((x[None] * 2 - 1).to(param.device, param.dtype))[0].cpu()
        prompt = build_inference_prompt(codes, self.tok)
        if self.image_only:
            prompt = prompt + self._header(codes.shape)
        return x, prompt, box

    def kv_bytes_per_image(self) -> int:
        """KV cache of one restoration (prompt + answer ~ 2 native blocks, doubled for CFG), in bytes."""
        c = self.model.config
        blocks = 2 * (self.resolution // self.vq_ds) * (self.resolution // self.vq_ds + 1)
        rows = 2 if self.sampling.cfg != 1.0 else 1
        return 2 * c.num_hidden_layers * c.hidden_size * blocks * rows * self.model.lm_head.weight.element_size()

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in (self.model, self.vq) for p in m.parameters())

    @staticmethod
    def _header(grid) -> list[int]:
        return [SpecialIds.IMG_START] + [SpecialIds.SIZE_BASE + n // LATENT_PER_GRID for n in grid]

    def _generate(self, prompts, generator) -> GenerationOutput:
        kw = dict(
            image_mask=self.image_mask,
            max_new_tokens=self.max_new_tokens,
            max_text_tokens=self.max_text_tokens,
            generator=generator,
            eos_id=SpecialIds.IMG_END if self.image_only else SpecialIds.EOT,
        )
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None and self.device.type == "cuda",
        ):
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
        """Restore a batch of LQ images: native size (scale None) or exactly scale x LQ (tiled)."""
        if self.scale is None:
            return self.restore_native(lqs, generator)
        return [
            restore_scaled(
                self, lq, self.scale, generator, self.tile_overlap, self.tile_batch, self.max_output_pixels, self.log
            )
            for lq in lqs
        ]

    @torch.no_grad()
    def restore_native(self, lqs: list[np.ndarray], generator: torch.Generator | None = None) -> list[RestoreResult]:
        """All images at their native bucket in one batched generation (AR or SJD)."""
        t0 = time.time()
        prepared = [self.prepare(lq) for lq in lqs]
        out = self._generate([p for _, p, _ in prepared], generator)
        decode_answer(out, self.tok.code_map, self.tok, prompts=[p for _, p, _ in prepared])
        results = []
        for b, (x, _, (hh, ww)) in enumerate(prepared):
            codes = out.images[b]
            ok = codes is not None and bool((codes < self.vq.config.codebook_size).all())
            raw = self._decode(codes) if ok else None
            if raw is not None and raw.shape[-2:] != x.shape[-2:]:  # the model chose another grid size
                raw = torch.nn.functional.interpolate(
                    raw[None], size=x.shape[-2:], mode="bicubic", align_corners=False
                )[0].clamp(0, 1)
            lq, raw = x[:, :hh, :ww], None if raw is None else raw[:, :hh, :ww]  # content only, padding dropped
            image = lq if raw is None else apply_color_fix(raw[None], lq[None], self.color_fix)[0]
            deg, cap = split_text(out.texts[b])
            results.append(
                RestoreResult(
                    image=image,
                    lq=lq,
                    ok=ok,
                    text=out.texts[b],
                    degradation=deg,
                    caption=cap,
                    new_tokens=len(out.tokens[b]),
                    forwards=out.forwards,
                    raw=raw,
                )
            )
        seconds = (time.time() - t0) / len(lqs)  # the batch's wall time per image, VQ decode and colour fix included
        for r in results:
            r.seconds = seconds
        return results
