"""Chameleon decoder (PURE's backbone, spec pure.md §1.2-1.3), written as a plain nn.Module.

State-dict keys are exactly HF Chameleon's (`model.layers.{i}.self_attn.q_proj.weight`, ...)
minus the unused `model.vqmodel`, so released shards load strictly. No distributed code and no
checkpoint I/O here: wrapping lives in pure/parallelize.py, loading in pure/official.py.

Differences from the official class that are deliberate:
- every parameter is initialised in `init_weights` (the official no-op `reset_parameters`
  leaves q/k-norm γ/β uninitialised after meta-init, giving NaN losses, spec §10);
- the rotary table is computed on the fly from `position_ids` (no buffer), so `to_empty()`
  after meta construction leaves nothing stale;
- the KV cache is an explicit caller-owned `KVCache` (pure/model/kv_cache.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ChameleonConfig
from .kv_cache import KVCache, StaticKVCache, StaticStep


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32; the weight is applied after casting back (HF/Llama order)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class HeadLayerNorm(nn.Module):
    """Chameleon's QK-norm: LayerNorm over head_dim without affine, then a γ/β of shape
    (model_parallel_size, head_dim) repeat-interleaved over heads, so with the released
    model_parallel_size = 1 all heads of a layer share one γ/β."""

    def __init__(self, model_parallel_size: int, head_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(model_parallel_size, head_dim))
        self.bias = nn.Parameter(torch.zeros(model_parallel_size, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, heads, D)
        heads, mp = x.shape[-2], self.weight.shape[0]
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        w = self.weight.repeat_interleave(heads // mp, dim=0)
        b = self.bias.repeat_interleave(heads // mp, dim=0)
        return x * w + b


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape (B or 1, 1, T, D) for integer positions, rotate-half (NeoX) layout:
    inv_freq_j = theta^(-2j/D), frequencies duplicated over both halves. Computed in fp32."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class ChameleonAttention(nn.Module):
    def __init__(self, cfg: ChameleonConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.attention_dropout = cfg.attention_dropout
        c, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(c, c, bias=False)
        self.k_proj = nn.Linear(c, kv, bias=False)
        self.v_proj = nn.Linear(c, kv, bias=False)
        self.o_proj = nn.Linear(c, c, bias=False)
        self.q_norm = HeadLayerNorm(cfg.model_parallel_size, cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = HeadLayerNorm(cfg.model_parallel_size, cfg.head_dim, cfg.rms_norm_eps)
        self.impl = "sdpa"  # "sdpa" | "eager" (reference path for tests); set via set_attention_impl

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache: KVCache | None = None, past: int = 0):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # norm before RoPE (spec §1.2)
        if isinstance(cache, StaticStep):  # compiled decoding over fixed buffers (pure/engine.py)
            out = cache.cache.attend(self.layer_idx, q, k, v, cache.write_idx, cache.masks, cache.prefill_group)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        if cache is not None:
            k, v = cache.write(self.layer_idx, past, k, v)
            # Attention runs in the cache dtype. CUDA autocast keeps layer norms in fp32, so q comes out
            # fp32 there: casting q down is exact w.r.t. autocast's bf16 SDPA, up-casting the cache
            # would copy every cached key and value each step.
            q = q.to(k.dtype)
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        p = self.attention_dropout if self.training else 0.0
        if self.impl == "eager":
            out = _eager_attention(q, k, v, mask, is_causal, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def _eager_attention(q, k, v, mask, is_causal, dropout_p):
    """Plain softmax attention, the reference the SDPA path is tested against."""
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    if is_causal:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(-1), dropout_p).to(v.dtype)
    return probs @ v


class ChameleonMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: ChameleonConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ChameleonDecoderLayer(nn.Module):
    """Pre-norm block: x += Drop(Attn(RMSNorm(x))); x += Drop(MLP(RMSNorm(x)))."""

    def __init__(self, cfg: ChameleonConfig, layer_idx: int):
        super().__init__()
        self.self_attn = ChameleonAttention(cfg, layer_idx)
        self.mlp = ChameleonMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None, past=0):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache, past))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


def build_attention_mask(
    batch: int, t: int, past: int, device, key_valid: torch.Tensor | None = None, mask4d: torch.Tensor | None = None
):
    """Return (mask, is_causal) for queries at positions [past, past+t) over keys [0, past+t).

    Causal is bottom-right aligned, which is what multi-token windows on top of a cache (SJD)
    need. Without padding/custom masks the cheap forms are used: `is_causal=True` for a prefill,
    no mask at all for a single new token. Rows with no attendable key (padding queries) are
    opened fully so SDPA returns finite garbage instead of NaN, which would leak through 0*NaN."""
    s = past + t
    if key_valid is None and mask4d is None:
        if past == 0 and t > 1:
            return None, True
        if t == 1:
            return None, False
    q_pos = torch.arange(past, s, device=device)
    mask = (torch.arange(s, device=device)[None, :] <= q_pos[:, None])[None, None]  # (1,1,t,s)
    if key_valid is not None:
        mask = mask & key_valid.to(device=device, dtype=torch.bool)[:, None, None, :]
    if mask4d is not None:
        mask = mask & mask4d.to(device=device, dtype=torch.bool)
    mask = mask.expand(batch, -1, -1, -1) if mask.shape[0] == 1 else mask
    return mask | ~mask.any(-1, keepdim=True), False


class ChameleonModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's `model.*` prefix)."""

    def __init__(self, cfg: ChameleonConfig):
        super().__init__()
        self.config = cfg
        # `_weight` skips nn.Embedding's own init: init_weights() does it, and normal_ on `meta`
        # goes through a slow decomposition path (seconds) for no effect.
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(ChameleonDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, position_ids=None, cache: KVCache | None = None, attention_mask=None):
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        device = input_ids.device
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=device)
        key_valid, mask4d = None, None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask4d = attention_mask
        elif attention_mask is not None:
            if attention_mask.shape[-1] not in (t, past + t):
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[-1]} columns; expected {t} "
                    f"(new tokens) or {past + t} (cached + new)"
                )
            new_part = attention_mask[:, -t:]
            if cache is not None:
                if attention_mask.shape[-1] == past + t and past:
                    cache.set_key_mask(0, attention_mask[:, :past])
                cache.set_key_mask(past, new_part)
            else:
                key_valid = attention_mask.bool()
        if cache is not None:
            key_valid = cache.keys_valid(past + t)
        mask, is_causal = build_attention_mask(b, t, past, device, key_valid, mask4d)
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, is_causal, cache, past)
        if cache is not None:
            cache.length = past + t
        return self.norm(x)


class ChameleonForCausalLM(nn.Module):
    """Decoder + untied lm_head. `model.model.layers` is the per-layer wrapping unit."""

    def __init__(self, cfg: ChameleonConfig):
        super().__init__()
        self.config = cfg
        self.model = ChameleonModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, initializer_range) for Linear/Embedding, ones for norms, β = 0 for QK-norm.
        Safe on `meta` (no allocation); call again after `to_empty()` if not loading weights."""
        if any(p.is_meta for p in self.parameters()):
            return  # nothing to fill yet; call again after to_empty()
        for m in self.modules():
            self.init_module(m)

    @torch.no_grad()
    def init_module(self, m: nn.Module) -> None:
        """`init_weights` for one submodule (its own parameters), in `modules()` order the same draws.

        Normal draws are made in fp32 and then cast, so a model built directly in bf16 (ZeRO-3's
        partitioned construction) gets the values of an fp32 build cast to bf16."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            w = m.weight
            if w.dtype == torch.float32:
                w.normal_(0.0, self.config.initializer_range)
            else:
                w.copy_(torch.empty(w.shape, device=w.device).normal_(0.0, self.config.initializer_range))
        elif isinstance(m, RMSNorm):
            m.weight.fill_(1.0)
        elif isinstance(m, HeadLayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()

    def set_attention_impl(self, impl: str) -> None:
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attention impl must be 'sdpa' or 'eager', got {impl!r}")
        for layer in self.model.layers:
            layer.self_attn.impl = impl

    def forward_hidden(self, input_ids, position_ids=None, cache: KVCache | None = None, attention_mask=None):
        """Final-norm hidden states (B, T, C) in the model dtype (for chunked losses).

        input_ids (B, T); position_ids (B, T) or (T,), default cache.length + arange(T);
        attention_mask: (B, T) or (B, cache.length + T) key mask (1 = attend; with a cache
        it is remembered for later steps), or a (B|1, 1|H, T, S) bool mask ANDed with causal."""
        return self.model(input_ids, position_ids, cache, attention_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def forward(
        self,
        input_ids,
        position_ids=None,
        cache: KVCache | None = None,
        attention_mask=None,
        logits_slice: slice | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """fp32 logits (B, T', V); `logits_slice` picks time positions before the lm_head, e.g.
        slice(-1, None) at prefill to avoid a (T, 73,728) fp32 tensor (spec §9)."""
        h = self.forward_hidden(input_ids, position_ids, cache, attention_mask)
        if logits_slice is not None:
            h = h[:, logits_slice]
        return self.logits(h)

    def forward_static(
        self,
        input_ids: torch.Tensor,
        slots: torch.Tensor,
        cache: StaticKVCache,
        prefill_group: int | None = None,
        last_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """fp32 logits over a StaticKVCache: the fixed-shape decode path (pure/engine.py).

        input_ids, slots: (R, T). A token's RoPE position is its slot (clamped at 0; each row
        group numbers its own context from 0). Without `prefill_group` the R rows are all the
        cache's rows and query (r, t) attends its row's keys at slots <= slots[r, t]. With
        `prefill_group` the rows are that group's, the window is written at slots 0..T-1 and
        attention is plain causal (flash SDPA). `last_index` (R,) keeps one time step per row
        before the lm_head (the last real prompt token of a right-padded prefill)."""
        if prefill_group is None:
            write_idx, masks = cache.plan(slots)
        else:
            write_idx = masks = None
        step = StaticStep(cache, write_idx, masks, prefill_group)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(slots.clamp_min(0), self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache=step)
        if last_index is not None:
            x = x.gather(1, last_index.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))
        return self.logits(self.model.norm(x))

    def new_cache(self, batch: int, capacity: int = 0, **kwargs) -> KVCache:
        return KVCache.for_model(self, batch, capacity, **kwargs)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
