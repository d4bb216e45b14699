"""FastVAR cached token pruning for VARSR inference (spec varsr.md section 11).

Training-free: at the two largest scales only "pivotal" tokens (largest distance from the
per-channel mean of the raw residual stream) go through each attention / FFN branch; the other
positions reuse the area-upsampled branch output cached at the last unpruned scale.  The block
code (`AdaLNBlock._branch` in varsr.model.transformer) asks a per-layer pruner what to do, so
the unpruned path is literally the normal forward: ratio 0 is bit-exact by construction.

Fixes relative to the `VARSR-FAST` fork (spec 11): scores on the raw residual stream, the
side-18 (third-last) outputs serve as cache for both pruned scales, the prefix step is never
pruned (explicit step check), state is per batch, selection is per sample (CFG doubles B).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.config import PROBABILITY, at_least, checks


@checks(second_last_ratio=PROBABILITY, last_ratio=PROBABILITY, later_layer_start=at_least(0), min_keep=at_least(1))
@dataclass
class FastVARConfig:
    enabled: bool = False  # --fastvar
    second_last_ratio: float = 0.4  # drop ratio at the second-last scale (side 24 at 512 px)
    last_ratio: float = 0.3  # drop ratio at the last scale (side 32); 0 = fidelity-safe
    later_layer_start: int = 3  # blocks [0, start) are never pruned
    min_keep: int = 64  # never keep fewer tokens than this


def keep_count(n_tokens: int, ratio: float, min_keep: int) -> int:
    """Tokens kept at a scale with n_tokens: n - floor(n * ratio), at least min_keep (e.g. 346/576)."""
    return min(n_tokens, max(n_tokens - math.floor(n_tokens * ratio), min_keep))


class FastVARState:
    """Pruning state of one generation call (create a fresh one per batch)."""

    def __init__(self, cfg: FastVARConfig, patch_nums: Sequence[int]):
        K = len(patch_nums)
        if K < 4:
            raise ValueError("FastVAR needs >= 4 scales (cache scale + two pruned scales)")
        self.cfg, self.patch_nums = cfg, tuple(patch_nums)
        self.ratios = {K - 2: cfg.second_last_ratio, K - 1: cfg.last_ratio}
        self.cache_si = K - 3  # last unpruned scale: its branch outputs are the restore source
        self.cache: dict[int, dict[str, torch.Tensor]] = {}  # layer -> branch name -> cached output
        self.si = 0
        self.kept: dict[int, int] = {}  # si -> tokens kept (for reports/tests)

    def set_step(self, si: int) -> None:
        self.si = si

    def keep_at(self, si: int) -> int | None:
        """Number of kept tokens at step si, or None when the step is not pruned."""
        if si == 0 or si not in self.ratios:  # step 0 is the 1025-token prefix: never pruned
            return None
        n = self.patch_nums[si] ** 2
        keep = keep_count(n, self.ratios[si], self.cfg.min_keep)
        return keep if keep < n else None

    def __call__(self, layer: int) -> LayerPruner | None:
        if layer < self.cfg.later_layer_start:
            return None
        keep = self.keep_at(self.si)
        if keep is not None:
            self.kept[self.si] = keep
            return LayerPruner(self, layer, keep)
        if self.si == self.cache_si:
            return LayerPruner(self, layer, None)  # full compute, remember the outputs
        return None


class LayerPruner:
    """What one block asks at one step: prune (active) or just record branch outputs."""

    def __init__(self, state: FastVARState, layer: int, keep: int | None):
        self.state, self.layer, self.keep = state, layer, keep
        self.active = keep is not None
        # This layer's own cache, looked up here (outside any compiled block) so compiled code never
        # reads the layer index: blocks then share one graph per scale instead of one per layer.
        self.store = state.cache.setdefault(layer, {})

    def remember(self, name: str, out: torch.Tensor) -> None:
        if self.state.si == self.state.cache_si:
            self.store[name] = out

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Indices (B, keep), ascending, of the tokens farthest from the per-sample DC component."""
        xf = x.float()
        score = (xf - xf.mean(dim=1, keepdim=True)).square().sum(-1)
        return score.topk(self.keep, dim=1).indices.sort(dim=1).values

    @staticmethod
    def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))

    @staticmethod
    def gather_rope(rope: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return rope[idx]  # (B, keep, D/2): each sample's RoPE rows at its kept positions

    def restore(self, name: str, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Area-upsampled cached output with the freshly computed kept tokens scattered in."""
        cached = self.store[name]
        B, nc, C = cached.shape
        sc, side = math.isqrt(nc), self.state.patch_nums[self.state.si]
        grid = cached.transpose(1, 2).reshape(B, C, sc, sc)
        full = F.interpolate(grid.float(), size=(side, side), mode="area").to(out.dtype)
        full = full.flatten(2).transpose(1, 2).contiguous()
        return full.scatter(1, idx[..., None].expand(-1, -1, C), out)


def make_state(fastvar, patch_nums: Sequence[int]) -> FastVARState | None:
    """Accept None, a FastVARConfig, or a dict/DictConfig of its fields."""
    if fastvar is None:
        return None
    if not isinstance(fastvar, FastVARConfig):
        fastvar = FastVARConfig(**dict(fastvar))
    return FastVARState(fastvar, patch_nums) if fastvar.enabled else None
