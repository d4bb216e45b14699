"""Explicit key/value cache for the Chameleon decoder, owned by the caller.

The official model silently caches nothing unless a cache object is passed (spec §10), and
SJD needs to roll the cache back after rejected drafts (spec §8.2), so the cache is a plain
object the generation loop creates, grows, truncates and re-indexes itself.

Layout per layer: keys/values (B, H_kv, capacity, D); the first `length` positions are valid
for every batch row. An optional boolean `key_mask` (B, capacity) marks keys that may be
attended (False = padding / hidden prompt positions); it lets a batched CFG pass left-pad the
short unconditional row once at prefill and never resend the mask.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch: int, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 growable: bool = True):
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
    def for_model(cls, model, batch: int, capacity: int = 0, dtype: torch.dtype | None = None,
                  device=None, growable: bool = True) -> "KVCache":
        """A cache shaped for `model` (a ChameleonForCausalLM), in its parameter dtype/device by default."""
        cfg = model.config
        w = model.lm_head.weight
        return cls(batch, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, capacity,
                   dtype or w.dtype, device or w.device, growable)

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
    def truncate(self, n: int) -> "KVCache":
        """Forget every position >= n (SJD rollback). Storage is kept for reuse."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate KVCache of length {self.length} to {n}")
        self.length = n
        if self.key_mask is not None:
            self.key_mask[:, n:] = True
        return self

    def select(self, batch_idx: torch.Tensor | list[int]) -> "KVCache":
        """Keep/reorder/duplicate batch rows in place (beam reordering, dropping finished rows)."""
        idx = torch.as_tensor(batch_idx, dtype=torch.long, device=self.device)
        self.keys = [k.index_select(0, idx) for k in self.keys]
        self.values = [v.index_select(0, idx) for v in self.values]
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, idx)
        self.batch = int(idx.numel())
        return self

    reorder = select

    def clone(self) -> "KVCache":
        """Independent copy (e.g. to branch a generation)."""
        other = KVCache(self.batch, self.num_layers, self.num_kv_heads, self.head_dim, 0, self.dtype,
                        self.device, self.growable)
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
        return (f"KVCache(batch={self.batch}, layers={self.num_layers}, length={self.length}, "
                f"capacity={self.capacity}, dtype={self.dtype}, masked={self.key_mask is not None})")
