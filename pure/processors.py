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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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

    def advanced(self, tokens: Iterable[int], ids=SpecialIds) -> ImageState:
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


def apply_structure_mask(
    scores: torch.Tensor, kinds: torch.Tensor, image_mask: torch.Tensor, ids=SpecialIds
) -> torch.Tensor:
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

    temperature: float = 0.9  # <= 0 means greedy (argmax of the processed scores)
    cfg: float = 0.8  # g; 1.0 skips the unconditional pass
    text_top_k: int = 1  # top-k outside images
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


def process_scores(
    cond: torch.Tensor,
    states: Sequence[ImageState],
    cfg: SamplingConfig,
    image_mask: torch.Tensor,
    uncond: torch.Tensor | None = None,
    uncond_rows: Sequence[int] | None = None,
    ids=SpecialIds,
    return_k: bool = False,
):
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
    u = torch.rand(
        probs.shape[:-1],
        generator=generator,
        dtype=torch.float64,
        device=generator.device if generator is not None else probs.device,
    ).to(probs.device)
    return sample_with_uniform(probs, u)


def sample_with_uniform(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw with given uniforms u in [0, 1) (shape probs.shape[:-1], float64)."""
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def next_token_probs(cond, states, cfg, image_mask, uncond=None, uncond_rows=None, ids=SpecialIds):
    """The full per-step chain up to the softmax: (N, V) probabilities."""
    return probs_from_scores(process_scores(cond, states, cfg, image_mask, uncond, uncond_rows, ids), cfg)


# ---- tensor form, for compiled decoding (pure/engine.py) -----------------------------------
# The same state machine and chain on (N, ...) tensors, so a CUDA graph can run them without
# reading a value back per token. A state is an int64 (N, >= 6) tensor, one ImageState per row
# in the columns below (the engine appends its own columns after them).
ST_OPEN, ST_HEADER, ST_H, ST_W, ST_COUNT, ST_VALID = range(6)
STATE_COLS = 6


def state_tensor(states: Sequence[ImageState], device=None) -> torch.Tensor:
    return torch.tensor(
        [[int(s.open), s.header, s.h, s.w, s.count, int(s.valid)] for s in states], dtype=torch.long, device=device
    ).view(-1, STATE_COLS)


def advance_t(st: torch.Tensor, tok: torch.Tensor, ids=SpecialIds) -> torch.Tensor:
    """Tensor twin of ImageState.update: (N, 6) state after one more token per row (N,)."""
    o, header, count = st[:, ST_OPEN].bool(), st[:, ST_HEADER], st[:, ST_COUNT]
    start, end = tok == int(ids.IMG_START), tok == int(ids.IMG_END)
    opening, closing = ~o & start, o & end
    in_header = o & ~end & (header < 2)
    body = o & ~end & (header >= 2)
    grid = tok - int(ids.SIZE_BASE)
    bad = in_header & ((grid < 1) | (grid > MAX_GRID))
    h = torch.where(opening, 0, torch.where(in_header & (header == 0), grid, st[:, ST_H]))
    w = torch.where(opening, 0, torch.where(in_header & (header == 1), grid, st[:, ST_W]))
    header = torch.where(opening | closing, 0, header + in_header.long())
    count = torch.where(opening | closing, 0, count + body.long())
    valid = opening | (st[:, ST_VALID].bool() & ~bad)
    return torch.stack([(opening | (o & ~end)).long(), header, h, w, count, valid.long()], 1)


def in_grid_t(st: torch.Tensor) -> torch.Tensor:
    return st[:, ST_OPEN].bool() & (st[:, ST_HEADER] >= 2) & st[:, ST_VALID].bool()


def mask_kind_t(st: torch.Tensor) -> torch.Tensor:
    """Tensor twin of ImageState.mask_kind (N,)."""
    grid = in_grid_t(st)
    w1 = torch.where(grid, st[:, ST_W] * LATENT_PER_GRID + 1, 1)  # never 0: no division by zero
    p = st[:, ST_COUNT] + 1
    kind = torch.where(p % w1 == 0, ROW_END, torch.where(p >= w1 * st[:, ST_H] * LATENT_PER_GRID + 1, IMAGE_END, IMAGE))
    return torch.where(grid, kind, FREE)


def guided_scores_t(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    st: torch.Tensor,
    cfg: SamplingConfig,
    image_mask: torch.Tensor,
    ids=SpecialIds,
) -> torch.Tensor:
    """CFG (rows inside a grid) and structure mask on (N, V); every row has an uncond row."""
    scores = cond.float()
    if uncond is not None and cfg.uses_cfg:
        scores = torch.where(in_grid_t(st)[:, None], cfg_combine(scores, uncond.float(), cfg.cfg), scores)
    kind = mask_kind_t(st)[:, None]
    vocab = torch.arange(scores.shape[-1], device=scores.device)
    allowed = torch.where(kind == IMAGE, image_mask[None], True)
    allowed = torch.where(kind == ROW_END, vocab == int(ids.ROW_END), allowed)
    allowed = torch.where(kind == IMAGE_END, vocab == int(ids.IMG_END), allowed)
    return scores.masked_fill(~allowed, NEG_INF)


def static_k_max(cfg: SamplingConfig, vocab: int) -> int:
    """Largest k the chain can ask for: a fixed top-k width, so no k is read back per step."""
    return min(vocab, max(cfg.text_top_k, ENTROPY_K_MAX if cfg.entropy_top_k else 1))


def top_k_static(scores: torch.Tensor, k: torch.Tensor, k_max: int) -> torch.Tensor:
    """:func:`top_k_filter` with a fixed search width k_max >= every k (no host sync)."""
    kth = torch.topk(scores, k_max, dim=-1).values.gather(-1, (k.clamp(1, k_max) - 1).unsqueeze(-1))
    return scores.masked_fill(scores < kth, NEG_INF)


def process_scores_t(cond, uncond, st, cfg: SamplingConfig, image_mask, ids=SpecialIds) -> torch.Tensor:
    """Tensor twin of :func:`process_scores` (uncond given for every row)."""
    scores = guided_scores_t(cond, uncond, st, cfg, image_mask, ids)
    if cfg.greedy:
        return scores
    k = torch.full_like(st[:, 0], cfg.text_top_k)
    if cfg.entropy_top_k:
        k = torch.where(st[:, ST_OPEN].bool(), entropy_top_k(entropy(scores)), k)
    return top_k_static(scores, k, static_k_max(cfg, scores.shape[-1]))


def select_t(scores: torch.Tensor, cfg: SamplingConfig, u: torch.Tensor) -> torch.Tensor:
    """Temperature + softmax + inverse-CDF draw (greedy: argmax, u unused)."""
    if cfg.greedy:
        return scores.argmax(-1)
    return sample_with_uniform(torch.softmax(scores / cfg.temperature, dim=-1), u)


# ---- counter-based uniforms -----------------------------------------------------------------
# u = F(seed, counter, stream): a per-row seed and the step number fix every draw, so a batch
# of B images reproduces B single runs with the same per-image seeds, no generator state lives
# on the device (CUDA-graph safe), and CPU and CUDA draw the same numbers. 32-bit integer mixing
# inside int64: multipliers < 2^31 times values < 2^32 never overflow.
_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x2C1B3C6D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x297A2D39) & _MASK32
    return x ^ (x >> 16)


def counter_uniform(seed: torch.Tensor, counter: torch.Tensor, stream: torch.Tensor | int) -> torch.Tensor:
    """float64 uniforms in [0, 1) with 53 random bits; arguments broadcast (int64 tensors)."""
    x = _mix32(((seed ^ (seed >> 32)) & _MASK32) ^ 0x5BD1E995)
    x = _mix32(x ^ (counter & _MASK32))
    x = _mix32(x ^ ((stream * 0x3C6EF35F + 0x1B873593) & _MASK32))  # an int stream stays a Python int: no copy
    hi, lo = _mix32(x ^ 0x68E31DA4), _mix32(x ^ 0x2545F491)
    return ((hi >> 5).double() * 2.0**26 + (lo >> 6).double()) / 2.0**53
