"""Scale-aligned 2-D rotary position embedding of VARSR (spec varsr.md section 3.6).

Every token map (the LR grid, the SOS 1x1 map and each scale's input grid) is mapped onto the
same `grid` x `grid` coordinate frame (t = grid * r / p), so a token of scale p shares its
coordinates with the co-located LR token.  The first head_dim/4 complex slots rotate with the
row coordinate and the next head_dim/4 with the column coordinate; consecutive channel pairs
form the complex numbers.  The table is not a buffer (the checkpoint does not store it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rope_grids(patch_nums: Sequence[int], lr_prefix: bool = True) -> list[int]:
    """Grid list of the training sequence: LR grid (SR only), SOS (1x1), then the inputs of scales 1..K-1.

    Without the LR prefix (C2I) this is just the scale list, since patch_nums[0] is the 1x1 SOS map.
    """
    return [*([patch_nums[-1]] if lr_prefix else []), 1, *patch_nums[1:]]


def build_rope_table(grids: Sequence[int], head_dim: int, grid: int, theta: float = 10000.0) -> torch.Tensor:
    """complex64 table (sum p^2, head_dim/2): rows follow `grids` in order, tokens row-major."""
    nf = head_dim // 4
    freqs = 1.0 / (theta ** (torch.arange(0, nf, dtype=torch.float32) * 4 / head_dim))
    rows = []
    for p in grids:
        t = torch.arange(p, dtype=torch.float32) * (grid / p)
        tr = t[:, None].expand(p, p).reshape(-1)
        tc = t[None, :].expand(p, p).reshape(-1)
        ang = torch.cat([torch.outer(tr, freqs), torch.outer(tc, freqs)], dim=1)
        rows.append(torch.polar(torch.ones_like(ang), ang))
    return torch.cat(rows, dim=0)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D); table (N, D/2) shared by the batch or (B, N, D/2) per sample (FastVAR)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    tab = table[:, None] if table.dim() == 3 else table
    return torch.view_as_real(xc * tab).flatten(-2).type_as(x)


class RopeCache:
    """Lazily builds the table per device (plain attribute, so meta-device models stay cheap)."""

    def __init__(self, patch_nums: Sequence[int], head_dim: int, grid: int, theta: float, lr_prefix: bool = True):
        self.args = (rope_grids(patch_nums, lr_prefix), head_dim, grid, theta)
        self._tables: dict[str, torch.Tensor] = {}

    def table(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = build_rope_table(*self.args).to(device)
        return self._tables[key]
