"""Explicit key/value cache for the Chameleon decoder, owned by the caller.

The official model silently caches nothing unless a cache object is passed (spec §10), and
SJD needs to roll the cache back after rejected drafts (spec §8.2), so the cache is a plain
object the generation loop creates, grows, truncates and re-indexes itself.

Layout per layer: keys/values (B, H_kv, capacity, D); the first `length` positions are valid
for every batch row. An optional boolean `key_mask` (B, capacity) marks keys that may be
attended (False = padding / hidden prompt positions); it lets a batched CFG pass left-pad the
short unconditional row once at prefill and never resend the mask.

`StaticKVCache` is the fixed-shape variant used by compiled decoding (pure/engine.py): no
growth, no truncation, writes at slot tensors, one buffer per row group.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention


class KVCache:
    def __init__(
        self,
        batch: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        growable: bool = True,
    ):
        """Preallocate `capacity` positions (0 = allocate lazily on first write). With
        `growable=False` writing past the capacity raises instead of reallocating."""
        self.batch, self.num_layers = batch, num_layers
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        self.growable = growable
        self.length = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.key_mask: torch.Tensor | None = None
        if capacity:
            self._allocate(capacity)

    @classmethod
    def for_model(
        cls, model, batch: int, capacity: int = 0, dtype: torch.dtype | None = None, device=None, growable: bool = True
    ) -> KVCache:
        """A cache shaped for `model` (a ChameleonForCausalLM), in its parameter dtype/device by default."""
        cfg = model.config
        w = model.lm_head.weight
        return cls(
            batch,
            cfg.num_hidden_layers,
            cfg.num_key_value_heads,
            cfg.head_dim,
            capacity,
            dtype or w.dtype,
            device or w.device,
            growable,
        )

    # ----------------------------------------------------------------------------------- storage
    def _allocate(self, capacity: int) -> None:
        shape = (self.batch, self.num_kv_heads, capacity, self.head_dim)
        new_k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        new_v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        for i in range(len(self.keys)):  # keep what is already cached when growing
            new_k[i][:, :, : self.length] = self.keys[i][:, :, : self.length]
            new_v[i][:, :, : self.length] = self.values[i][:, :, : self.length]
        self.keys, self.values = new_k, new_v
        if self.key_mask is not None:
            mask = torch.ones(self.batch, capacity, dtype=torch.bool, device=self.device)
            mask[:, : self.length] = self.key_mask[:, : self.length]
            self.key_mask = mask
        self.capacity = capacity

    def reserve(self, needed: int) -> None:
        """Make room for `needed` total positions (doubling, so growth is amortised)."""
        if needed <= self.capacity:
            return
        if self.capacity and not self.growable:
            raise RuntimeError(f"KVCache full: capacity {self.capacity}, need {needed} (growable=False)")
        self._allocate(max(needed, 2 * self.capacity, 16))

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B, H_kv, T, D) at positions [start, start+T) of `layer` and return views
        of all keys/values [0, start+T). `length` is advanced by the model after all layers."""
        end = start + k.shape[2]
        self.reserve(end)
        self.keys[layer][:, :, start:end] = k.to(self.dtype)
        self.values[layer][:, :, start:end] = v.to(self.dtype)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def set_key_mask(self, start: int, mask: torch.Tensor) -> None:
        """Record which keys at positions [start, start + mask.shape[1]) may be attended."""
        end = start + mask.shape[1]
        self.reserve(end)
        if self.key_mask is None:
            self.key_mask = torch.ones(self.batch, self.capacity, dtype=torch.bool, device=self.device)
        self.key_mask[:, start:end] = mask.to(device=self.device, dtype=torch.bool)

    def keys_valid(self, end: int) -> torch.Tensor | None:
        """(B, end) bool mask of attendable keys, or None when every key is valid."""
        return None if self.key_mask is None else self.key_mask[:, :end]

    # --------------------------------------------------------------------------------- editing
    def truncate(self, n: int) -> KVCache:
        """Forget every position >= n (SJD rollback). Storage is kept for reuse."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate KVCache of length {self.length} to {n}")
        self.length = n
        if self.key_mask is not None:
            self.key_mask[:, n:] = True
        return self

    def select(self, batch_idx: torch.Tensor | list[int]) -> KVCache:
        """Keep/reorder/duplicate batch rows in place (beam reordering, dropping finished rows)."""
        idx = torch.as_tensor(batch_idx, dtype=torch.long, device=self.device)
        self.keys = [k.index_select(0, idx) for k in self.keys]
        self.values = [v.index_select(0, idx) for v in self.values]
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, idx)
        self.batch = int(idx.numel())
        return self

    reorder = select

    def clone(self) -> KVCache:
        """Independent copy (e.g. to branch a generation)."""
        other = KVCache(
            self.batch, self.num_layers, self.num_kv_heads, self.head_dim, 0, self.dtype, self.device, self.growable
        )
        other.keys = [k.clone() for k in self.keys]
        other.values = [v.clone() for v in self.values]
        other.key_mask = None if self.key_mask is None else self.key_mask.clone()
        other.capacity, other.length = self.capacity, self.length
        return other

    def nbytes(self) -> int:
        """Bytes held by the storage (about 0.5 MiB per token for the 7B in bf16, spec §9)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (
            f"KVCache(batch={self.batch}, layers={self.num_layers}, length={self.length}, "
            f"capacity={self.capacity}, dtype={self.dtype}, masked={self.key_mask is not None})"
        )


class StaticKVCache:
    """Fixed-shape K/V buffers for compiled decoding (CUDA-graph friendly), with row groups.

    Rows are split into groups with their own capacity, e.g. PURE's batched CFG keeps the B
    conditional rows (prompt + answer) and the B unconditional rows (only the image so far,
    spec §7.2) in two groups, so the unconditional rows need no copy of the 4k-token prompt.
    One forward feeds all rows together (one weight read); attention runs once per group.

    Nothing is ever reallocated or truncated: the caller says, per row and per new token, which
    slot it goes to (`slots`, a tensor), and a query at slot s attends keys [0, s] of its row.
    Rolling back (SJD) is therefore only moving the caller's slot counter. Slots that are
    negative or past the capacity (tokens a row must not keep, e.g. the text before an image in
    an unconditional row) are written to `scratch` spare slots at the end that no query attends.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        groups: list[tuple[int, int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        scratch: int = 16,
        attention: str = "sdpa",
    ):
        """`groups`: (rows, capacity) per group, in row order. `attention`: "sdpa" reads every
        slot of the buffer under a mask; "flex" (FlexAttention with a block mask) skips the
        128-slot blocks past each row's last slot, so a step reads only the filled part."""
        if attention not in ("sdpa", "flex"):
            raise ValueError(f"attention must be 'sdpa' or 'flex', got {attention!r}")
        self.attention = attention
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.groups, self.scratch = [(int(r), int(c)) for r, c in groups], int(scratch)
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        self.rows = sum(r for r, _ in self.groups)
        bounds = [0]
        for r, _ in self.groups:
            bounds.append(bounds[-1] + r)
        self.row_ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
        # keys[layer][group]: (rows_g, H_kv, size_g, D); size_g >= capacity_g + scratch, rounded up to
        # whole 128-slot blocks (FlexAttention's block; also the fused SDPA kernels' mask alignment).
        self.sizes = [-(-(c + self.scratch) // _BLOCK) * _BLOCK for _, c in self.groups]
        self.keys = [
            [
                torch.zeros(r, num_kv_heads, n, head_dim, dtype=dtype, device=self.device)
                for (r, _), n in zip(self.groups, self.sizes, strict=True)
            ]
            for _ in range(num_layers)
        ]
        self.values = [[torch.zeros_like(k) for k in layer] for layer in self.keys]

    @classmethod
    def for_model(
        cls, model, groups: list[tuple[int, int]], scratch: int = 16, dtype=None, device=None, attention: str = "sdpa"
    ):
        cfg, w = model.config, model.lm_head.weight
        return cls(
            cfg.num_hidden_layers,
            cfg.num_key_value_heads,
            cfg.head_dim,
            groups,
            dtype or w.dtype,
            device or w.device,
            scratch,
            attention,
        )

    def buffers(self) -> list[torch.Tensor]:
        return [t for layer in self.keys + self.values for t in layer]

    def mark_static(self) -> None:
        """Tell torch.compile the buffers never move, so CUDA graphs may mutate them in place."""
        for t in self.buffers():
            torch._dynamo.mark_static_address(t)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def plan(self, slots: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per group: write index (R_g, T) and attention mask (R_g, 1, T, S_g) for query slots
        `slots` (R, T). Out-of-range slots go to scratch slot capacity + t; every query sees its
        own key, so rows with nothing to attend yet stay finite (their outputs are unused)."""
        idx, masks = [], []
        t = torch.arange(slots.shape[1], device=slots.device)
        for (lo, hi), (_, cap), size in zip(self.row_ranges, self.groups, self.sizes, strict=True):
            s = slots[lo:hi]
            w = torch.where((s >= 0) & (s < cap), s, cap + t)
            if self.attention == "flex":
                masks.append(_block_mask(s, w, cap, size))
            else:
                j = torch.arange(size, device=slots.device)
                masks.append(((j <= s[..., None]) | (j == w[..., None]))[:, None])
            idx.append(w)
        return idx, masks

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        write_idx,
        masks,
        prefill_group: int | None = None,
    ) -> torch.Tensor:
        """Store k/v (R, H_kv, T, D) at `write_idx` and attend. With `prefill_group` the rows are
        that group only, written at slots 0..T-1, and attention is plain causal over the new
        tokens (SDPA's flash path); otherwise every group attends its own buffer with its mask."""
        # Everything meets in the buffer dtype: q/k leave CUDA autocast's fp32 QK-norm as fp32, and
        # up-casting the buffers instead would copy each layer's whole K/V buffer on every step.
        q, k, v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
        groups = (
            [(prefill_group, 0, q.shape[0])]
            if prefill_group is not None
            else [(g, lo, hi) for g, (lo, hi) in enumerate(self.row_ranges)]
        )
        outs = []
        for g, lo, hi in groups:
            kb, vb = self.keys[layer][g], self.values[layer][g]
            rows = torch.arange(hi - lo, device=q.device)[:, None]
            if prefill_group is not None:
                pos = torch.arange(k.shape[2], device=q.device)[None].expand(hi - lo, -1)
            else:
                pos = write_idx[g]
            kb[rows, :, pos] = k[lo:hi].transpose(1, 2)
            vb[rows, :, pos] = v[lo:hi].transpose(1, 2)
            if prefill_group is not None:
                kk, vv, mask, causal = k[lo:hi], v[lo:hi], None, True
            else:
                kk, vv, mask, causal = kb, vb, masks[g], False
            rep = q.shape[1] // kk.shape[1]
            if rep > 1:
                kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
            if isinstance(mask, BlockMask):
                outs.append(flex_attention(q[lo:hi], kk, vv, block_mask=mask))
            else:
                outs.append(F.scaled_dot_product_attention(q[lo:hi], kk, vv, attn_mask=mask, is_causal=causal))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


_BLOCK = 128  # slots per FlexAttention KV block


def _block_mask(s: torch.Tensor, w: torch.Tensor, cap: int, size: int):
    """BlockMask equal to the SDPA mask (key j visible iff j <= s or j == w) whose per-row
    block count stops after the row's last slot. Rows with a slot outside [0, cap) (their own
    key sits in scratch at the end) keep every block: those are unconditional rows outside an
    image, whose outputs are unused."""
    rows, n_blocks = s.shape[0], size // _BLOCK
    outside = ((s < 0) | (s >= cap)).any(-1)
    used = torch.where(outside, n_blocks, (s.amax(-1) + _BLOCK) // _BLOCK).clamp(1, n_blocks)
    order = torch.arange(n_blocks, device=s.device, dtype=torch.int32).expand(rows, 1, 1, n_blocks)

    def visible(b, h, q_idx, kv_idx):
        return (kv_idx <= s[b, q_idx]) | (kv_idx == w[b, q_idx])

    return BlockMask.from_kv_blocks(
        used.to(torch.int32).view(rows, 1, 1),
        order.contiguous(),
        BLOCK_SIZE=(_BLOCK, _BLOCK),
        mask_mod=visible,
        seq_lengths=(s.shape[1], size),
    )


class StaticStep(NamedTuple):
    """What one forward over a StaticKVCache needs in every layer (built once per forward)."""

    cache: StaticKVCache
    write_idx: list | None
    masks: list | None
    prefill_group: int | None
