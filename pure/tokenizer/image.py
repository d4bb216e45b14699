"""Image <-> pixels <-> token block (spec pure.md §3 and §3.1).

Preprocessing follows Lumina-mGPT/PURE: pick the aspect-ratio bucket (256 patches of 32 px,
ratio <= 4) that best preserves the image, box-halve while >= 2x the bucket, bicubic resize to
cover it, then crop. The official "center" crop is really a random crop; we crop at the centre
by default and keep `random_crop=True` for parity.
Block layout: [8197, 8804 + H/32, 8804 + W/32, row_1 + [8803], ..., row_{H/8} + [8803], 8196].
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .special import ImageCodeMap, SpecialIds

LATENT_PER_GRID = 4  # one size token counts 32 px = 4 latent cells of the ds-8 VQ


def bucket_sizes(num_patches: int = 256, patch_size: int = 32, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Candidate (width, height) crops: walk wp down from num_patches while raising hp as far
    as wp*hp <= num_patches allows (Lumina-mGPT's enumeration); 49 sizes for 512 px."""
    sizes, wp, hp = [], num_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * patch_size, hp * patch_size))
        if (hp + 1) * wp <= num_patches:
            hp += 1
        else:
            wp -= 1
    return sizes


def choose_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The size keeping most of the image ("rem_percent" = min/max of the two scale factors);
    ties go to the larger (w, h), as the official reverse-sorted top-1 does."""
    rem = [min(cw / width, ch / height) / max(cw / width, ch / height) for cw, ch in sizes]
    return max(zip(rem, sizes))[1]


def _to_rgb_pil(image) -> Image.Image:
    """PIL image from a PIL image, a path, or a uint8 HxWx{1,3,4} array; alpha is composited on white."""
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def preprocess_image(
    image,
    resolution: int = 512,
    patch_size: int = 32,
    max_ratio: float = 4.0,
    random_crop: bool = False,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Bucket, resize and crop to a multiple of 32 px; return float (3, H, W) in [-1, 1]."""
    img = _to_rgb_pil(image)
    sizes = bucket_sizes((resolution // patch_size) ** 2, patch_size, max_ratio)
    cw, ch = choose_bucket(*img.size, sizes)
    while min(img.size) >= 2 * max(cw, ch):
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    scale = max(cw / img.size[0], ch / img.size[1])
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
    if random_crop:
        rng = rng or random.Random()
        left, top = rng.randint(0, img.size[0] - cw), rng.randint(0, img.size[1] - ch)
    else:
        left, top = (img.size[0] - cw) // 2, (img.size[1] - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return x / 255.0 * 2.0 - 1.0


def decode_to_uint8(x: torch.Tensor, truncate: bool = False) -> np.ndarray:
    """(3, H, W) or (B, 3, H, W) in [-1, 1] -> uint8 HWC / BHWC. Rounds by default; the
    official cast truncates (`truncate=True` for parity)."""
    y = (x.detach().float().clamp(-1, 1) + 1) / 2 * 255
    y = y.floor() if truncate else y.round()
    return y.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def image_block(codes, code_map: ImageCodeMap) -> list[int]:
    """(h, w) latent code grid -> token block; h and w must be multiples of 4 (32 px)."""
    codes = torch.as_tensor(codes, dtype=torch.long)
    if codes.dim() != 2 or codes.shape[0] % LATENT_PER_GRID or codes.shape[1] % LATENT_PER_GRID:
        raise ValueError(f"code grid must be (h, w) with h, w multiples of {LATENT_PER_GRID}; got {tuple(codes.shape)}")
    h, w = codes.shape
    ids = code_map.to_ids(codes.cpu())
    rows = torch.cat([ids, torch.full((h, 1), SpecialIds.ROW_END, dtype=torch.long)], dim=1)
    head = [
        SpecialIds.IMG_START,
        SpecialIds.SIZE_BASE + h // LATENT_PER_GRID,
        SpecialIds.SIZE_BASE + w // LATENT_PER_GRID,
    ]
    return head + rows.flatten().tolist() + [SpecialIds.IMG_END]


def parse_image_block(ids, code_map: ImageCodeMap) -> torch.Tensor:
    """Token block (with or without the 8197/8196 delimiters) -> Long (h, w) code grid.
    Raises ValueError naming what is wrong (size tokens, length, row ends, non-image ids)."""
    ids = [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
    if ids and ids[0] == SpecialIds.IMG_START:
        ids = ids[1:]
    if ids and ids[-1] == SpecialIds.IMG_END:
        ids = ids[:-1]
    if len(ids) < 2:
        raise ValueError("image block too short: missing the two size tokens")
    gh, gw = ids[0] - SpecialIds.SIZE_BASE, ids[1] - SpecialIds.SIZE_BASE
    if gh < 1 or gw < 1:
        raise ValueError(
            f"image block size tokens {ids[:2]} are not <reserved0880n> ids (>= {SpecialIds.SIZE_BASE + 1})"
        )
    h, w = gh * LATENT_PER_GRID, gw * LATENT_PER_GRID
    body = torch.tensor(ids[2:], dtype=torch.long)
    if body.numel() != h * (w + 1):
        raise ValueError(f"image block of grid {gh}x{gw} needs {h * (w + 1)} tokens after the size, got {body.numel()}")
    body = body.view(h, w + 1)
    if (body[:, -1] != SpecialIds.ROW_END).any():
        bad = int((body[:, -1] != SpecialIds.ROW_END).nonzero()[0])
        raise ValueError(f"image block row {bad} does not end with {SpecialIds.ROW_END}")
    return code_map.to_codes(body[:, :-1])


block_to_codes = parse_image_block


@torch.no_grad()
def image_to_block(image, vq, code_map: ImageCodeMap, **preprocess_kwargs) -> list[int]:
    """Preprocess an image, VQ-encode it and return its token block."""
    x = preprocess_image(image, **preprocess_kwargs)
    param = next(vq.parameters())
    codes = vq.encode_codes(x[None].to(param.device, param.dtype))[0]
    return image_block(codes, code_map)


@torch.no_grad()
def block_to_image(ids, vq, code_map: ImageCodeMap) -> torch.Tensor:
    """Token block -> decoded image (3, H, W) in [-1, 1]."""
    codes = parse_image_block(ids, code_map)
    param = next(vq.parameters())
    return vq.decode_codes(codes[None].to(param.device))[0].float()
