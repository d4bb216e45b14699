"""Per-step logit processing for PURE decoding (spec §7.2), batched and per sample.

Order per step: CFG -> structure mask -> entropy top-k -> temperature -> softmax -> sample.

The official processors read `input_ids[0]` and `entropy.item()`, so they only work at batch
size 1, and they learn the image size by watching h and w being generated (a prompt that
already holds `<racm3:break><h><w>` crashes them).  Here every row carries its own
:class:`ImageState`, which is advanced token by token (prompt included), so a batch can hold
samples at different points of their answers and the AR loop and the SJD window (one state per
window position) share the same code.  Everything in this module is a pure function of
(logits, states); no model is needed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from pure.tokenizer import SpecialIds
from pure.tokenizer.image import LATENT_PER_GRID

# Entropy top-k constants from PURE's warper (§7.2 step 3).
ENTROPY_K_MAX = 2000
ENTROPY_CLAMP = 10.0
ENTROPY_CENTER = 5.0
# Largest grid value we accept as a size token; 1024/32 = 32 is the largest official side.
MAX_GRID = 64

NEG_INF = float("-inf")

# Structure-mask kinds for the next prediction.
FREE, IMAGE, ROW_END, IMAGE_END = 0, 1, 2, 3


@dataclass
class ImageState:
    """Where one sample stands relative to an image block.

    `header` counts the grid tokens (h, w) seen since the last image start; `count` the tokens
    generated after `<h><w>`.  `valid` turns false when a size token is out of range (e.g. an
    untrained model writing garbage as h): the image then stays open until an end token, with
    entropy top-k but no CFG or structure mask, instead of crashing like the official warper.
    """

    open: bool = False
    header: int = 0
    h: int = 0
    w: int = 0
    count: int = 0
    valid: bool = True

    def update(self, token: int, ids=SpecialIds) -> None:
        token = int(token)
        if not self.open:
            if token == int(ids.IMG_START):
                self.open, self.header, self.h, self.w, self.count, self.valid = True, 0, 0, 0, 0, True
            return
        if token == int(ids.IMG_END):
            self.open, self.header, self.count = False, 0, 0
            return
        if self.header < 2:
            grid = token - int(ids.SIZE_BASE)
            if not 1 <= grid <= MAX_GRID:
                self.valid = False
            if self.header == 0:
                self.h = grid
            else:
                self.w = grid
            self.header += 1
            return
        self.count += 1

    def advanced(self, tokens: Iterable[int], ids=SpecialIds) -> "ImageState":
        """Copy advanced over `tokens` (the state itself is left untouched)."""
        out = copy.copy(self)
        for t in tokens:
            out.update(t, ids)
        return out

    # ---- what the next prediction needs ------------------------------------------------
    @property
    def in_grid(self) -> bool:
        """Inside an image with h, w known: CFG and the structure mask are active."""
        return self.open and self.header >= 2 and self.valid

    @property
    def h_lat(self) -> int:
        return self.h * LATENT_PER_GRID

    @property
    def w_lat(self) -> int:
        return self.w * LATENT_PER_GRID

    @property
    def block_tokens(self) -> int:
        """Tokens after `<h><w>` up to and including the end token: (w_lat + 1) * h_lat + 1."""
        return (self.w_lat + 1) * self.h_lat + 1

    def mask_kind(self) -> int:
        if not self.in_grid:
            return FREE
        p = self.count + 1  # 1-based position of the token being predicted
        if p % (self.w_lat + 1) == 0:
            return ROW_END
        if p >= self.block_tokens:
            return IMAGE_END
        return IMAGE


def state_from_prompt(prompt: Sequence[int], ids=SpecialIds) -> ImageState:
    """State after reading a whole prompt (a balanced LQ block leaves it closed)."""
    return ImageState().advanced(prompt, ids)


# ---- the individual steps ---------------------------------------------------------------

def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """g * (cond - uncond) + uncond on raw fp32 logits (g = 0.8 blends toward the image prior)."""
    return scale * (cond - uncond) + uncond


def apply_structure_mask(scores: torch.Tensor, kinds: torch.Tensor, image_mask: torch.Tensor,
                         ids=SpecialIds) -> torch.Tensor:
    """Force newline/end tokens and restrict codes to image ids, row by row (kinds: (N,))."""
    kinds = kinds.to(scores.device)
    allowed = torch.ones_like(scores, dtype=torch.bool)
    img_rows = kinds == IMAGE
    allowed[img_rows] = image_mask.to(scores.device)
    for kind, tok in ((ROW_END, int(ids.ROW_END)), (IMAGE_END, int(ids.IMG_END))):
        rows = kinds == kind
        if rows.any():
            allowed[rows] = False
            allowed[rows, tok] = True
    return scores.masked_fill(~allowed, NEG_INF)


def entropy(scores: torch.Tensor) -> torch.Tensor:
    """H = -sum P ln(P + 1e-10) in nats over the full vocabulary (official epsilon)."""
    p = torch.softmax(scores.float(), dim=-1)
    return -(p * torch.log(p + 1e-10)).sum(-1)


def entropy_top_k(h: torch.Tensor) -> torch.Tensor:
    """k = clamp(round(1 + 1999 * sigmoid(clamp(H, 0, 10) - 5)), 1, 2000) as int64.

    Computed in float64 so `torch.round` (half-to-even) agrees with Python's `round`.
    """
    x = h.double().clamp(0.0, ENTROPY_CLAMP) - ENTROPY_CENTER
    k = torch.round(1 + (ENTROPY_K_MAX - 1) * torch.sigmoid(x))
    return k.clamp(1, ENTROPY_K_MAX).long()


def entropy_top_k_scalar(h: float) -> int:
    """Python reference of :func:`entropy_top_k` for one value (used by logging and tests)."""
    x = min(max(h, 0.0), ENTROPY_CLAMP) - ENTROPY_CENTER
    return int(min(max(round(1 + (ENTROPY_K_MAX - 1) / (1 + math.exp(-x))), 1), ENTROPY_K_MAX))


def top_k_filter(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep scores >= the row's k-th largest (ties kept, as `scores < kth` in HF), rest -inf."""
    k = k.to(scores.device).clamp(1, scores.shape[-1])
    kmax = int(k.max())
    top = torch.topk(scores, kmax, dim=-1).values
    kth = top.gather(-1, (k - 1).unsqueeze(-1))
    return scores.masked_fill(scores < kth, NEG_INF)


# ---- the whole chain ----------------------------------------------------------------------

@dataclass
class SamplingConfig:
    """Decoding knobs; defaults are the README's (spec §7.1), not the processor class defaults."""

    temperature: float = 0.9   # <= 0 means greedy (argmax of the processed scores)
    cfg: float = 0.8           # g; 1.0 skips the unconditional pass
    text_top_k: int = 1        # top-k outside images
    entropy_top_k: bool = True  # PURE's adaptive k inside images (False: text_top_k everywhere)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def uses_cfg(self) -> bool:
        return self.cfg != 1.0


def cfg_rows(states: Sequence[ImageState]) -> list[int]:
    """Rows whose next prediction is guided (inside a grid)."""
    return [i for i, s in enumerate(states) if s.in_grid]


def process_scores(cond: torch.Tensor, states: Sequence[ImageState], cfg: SamplingConfig,
                   image_mask: torch.Tensor, uncond: torch.Tensor | None = None,
                   uncond_rows: Sequence[int] | None = None, ids=SpecialIds,
                   return_k: bool = False):
    """CFG -> structure mask -> top-k on (N, V) logits; returns filtered fp32 scores.

    `uncond` holds logits only for `uncond_rows` (default :func:`cfg_rows`), in that order.
    Temperature is not applied here: top-k must see the un-tempered entropy (§7.2).
    """
    scores = cond.float()
    if uncond is not None and cfg.uses_cfg:
        rows = list(cfg_rows(states) if uncond_rows is None else uncond_rows)
        if rows:
            idx = torch.tensor(rows, device=scores.device)
            scores = scores.clone()
            scores[idx] = cfg_combine(scores[idx], uncond.float(), cfg.cfg)
    kinds = torch.tensor([s.mask_kind() for s in states], dtype=torch.long)
    if bool((kinds != FREE).any()):
        scores = apply_structure_mask(scores, kinds, image_mask, ids)
    if cfg.greedy and not return_k:
        return scores  # top-k always keeps the argmax: skip the entropy and the k-th value search
    in_image = torch.tensor([s.open for s in states], device=scores.device)
    k = torch.full((scores.shape[0],), cfg.text_top_k, dtype=torch.long, device=scores.device)
    if cfg.entropy_top_k and bool(in_image.any()):
        k = torch.where(in_image, entropy_top_k(entropy(scores)), k)
    scores = top_k_filter(scores, k)
    return (scores, k) if return_k else scores


def probs_from_scores(scores: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature + softmax; greedy gives the one-hot of the argmax (first index on ties)."""
    if cfg.greedy:
        return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).float()
    return torch.softmax(scores / cfg.temperature, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row -> (N,) or () int64, by inverse CDF in float64.

    One uniform per row (so SJD's draws are cheap and reproducible); `torch.multinomial` costs
    ~60 ms per 16 x 73,728 window on CPU. Zero-probability ids are never returned: the search
    picks the first id whose cumulative mass exceeds u, and the cdf only rises on positive mass."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(cdf.shape[:-1], generator=generator, dtype=torch.float64,
                   device=generator.device if generator is not None else cdf.device).to(cdf.device)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def next_token_probs(cond, states, cfg, image_mask, uncond=None, uncond_rows=None, ids=SpecialIds):
    """The full per-step chain up to the softmax: (N, V) probabilities."""
    return probs_from_scores(process_scores(cond, states, cfg, image_mask, uncond, uncond_rows, ids), cfg)
