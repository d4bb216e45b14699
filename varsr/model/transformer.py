"""VARSR next-scale transformer (`VAR_RoPE`, spec varsr.md section 3; C2I `ImgVAR_RoPE`, section 7).

LR prefix (1024 tokens from `con_embedding`) + SOS (class embedding), teacher-forced scale
inputs, block-causal mask, AdaLN blocks with L2-normalised q/k, scale-aligned 2-D RoPE, AdaLN
head, and the diffusion refiner `diffloss`.  Parameter and buffer names equal the official
state dict.  With `cfg.lr_prefix=False` the same class is the class-to-image model: no
`con_embedding`, prefix = SOS only, RoPE/levels/mask over the scales only.  Inference helpers
(`prefix`, `embed_scale`, `run_blocks`, `logits`) take an explicit per-layer KV cache (`KVCache`);
`varsr.generate` drives the scale loop.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cpu_linear import Linear, linear

from .config import VARSRModelConfig
from .refiner import DiffLoss
from .rope import RopeCache, apply_rope


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability ``p`` while training.

    The rate is a (non-persistent, so not in the state dict) tensor buffer, not a Python float:
    torch.compile guards on Python attributes, so blocks with different rates would each compile
    their own graph (d24: 24 copies, past dynamo's recompile limit). ``enabled`` is one flag for the
    whole model (rate > 0 anywhere), so block 0 (rate 0) draws too and shares the graph: its mask
    is all ones and x * 1 / 1 == x exactly.
    """

    def __init__(self, p: float, enabled: bool | None = None):
        super().__init__()
        self.p, self.enabled = float(p), bool(p > 0 if enabled is None else enabled)
        self.register_buffer("rate", torch.tensor(self.p), persistent=False)

    def reset(self) -> None:
        self.rate.fill_(self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.training:
            return x
        rate = self.rate.float()
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - rate)
        return x * keep / (1 - rate)


class ConditionEmbedding(nn.Module):
    """Strided CNN turning the 512^2 LR into a 32x32 token grid (ControlNet conditioning layout)."""

    def __init__(self, out_dim: int, channels: tuple[int, ...]):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        blocks = []
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            blocks += [nn.Conv2d(cin, cin, 3, padding=1), nn.Conv2d(cin, cout, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(x))
        for blk in self.blocks:
            h = F.silu(blk(h))
        return self.conv_out(h)


class KVCache:
    """Preallocated per-layer K/V of one generation call (rows, heads, capacity, head_dim).

    Every scale writes its keys/values in place after the previous ones and attends over the
    filled prefix (a strided view, no copy), instead of re-concatenating the whole cache at each
    scale.  `len` is a plain int, so a compiled block specialises on it (static shape per scale).
    """

    def __init__(self, rows: int, heads: int, capacity: int, head_dim: int, dtype, device):
        self.k = torch.empty(rows, heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.len = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, e = self.len, self.len + k.shape[2]
        if e > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {e} > capacity {self.k.shape[2]}")
        self.k[:, :, s:e] = k
        self.v[:, :, s:e] = v
        self.len = e
        return self.k[:, :, :e], self.v[:, :, :e]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        # Learnable per-head logit scale on L2-normalised q/k (init ln 4, capped at ln 100).
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.mat_qkv = Linear(dim, 3 * dim, bias=False)
        self.proj = Linear(dim, dim)

    def forward(self, x, rope, attn_bias=None, cache: KVCache | None = None):
        B, L, C = x.shape
        # The constant buffer follows the parameters' dtype: FSDP2 mixed precision casts parameters only.
        bias = torch.cat((self.q_bias, self.zero_k_bias.to(self.q_bias.dtype), self.v_bias))
        qkv = linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd)
        scale = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q, dim=-1).mul(scale)
        k = F.normalize(k, dim=-1)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = cache.append(k, v)
        # Under autocast SDPA runs in the low-precision dtype anyway; casting a low-precision KV
        # cache up to q's fp32 first would copy the whole cache in every layer at every scale.
        dt = k.dtype if torch.is_autocast_enabled(q.device.type) else q.dtype
        mask = None if attn_bias is None else attn_bias.to(dt)
        out = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, hidden), Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.fc1(x, act="gelu_tanh"))  # GELU fused into fc1 where oneDNN runs it


class AdaLNBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, drop_path: float, eps: float, drop_path_on: bool | None = None
    ):
        super().__init__()
        self.C = dim
        self.attn = SelfAttention(dim, heads)
        self.ffn = FFN(dim, round(dim * mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))
        self.ln_wo_grad = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.drop_path = DropPath(drop_path, drop_path_on)

    def forward(self, x, cond, rope, attn_bias=None, cache=None, pruner=None):
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        attn = lambda h, r: self.attn(h, r, attn_bias, cache)  # noqa: E731
        x = x + self._branch("attn", attn, x, s1, b1, g1, rope, pruner)
        return x + self._branch("ffn", lambda h, r: self.ffn(h), x, s2, b2, g2, rope, pruner)

    def _branch(self, name, fn, x, scale, shift, gamma, rope, pruner):
        """Residual branch output; a FastVAR pruner (varsr.fastvar) may restrict it to pivotal tokens."""
        # gamma is applied out of place: selective activation checkpointing (common.parallel) keeps the
        # projection's output and must find it unmodified when the block is recomputed in backward.
        if pruner is None or not pruner.active:
            out = fn(self.ln_wo_grad(x).mul(scale + 1).add_(shift), rope).mul(gamma)
            if pruner is not None:
                pruner.remember(name, out)
            return self.drop_path(out)
        idx = pruner.select(x)
        xs, rs = pruner.gather(x, idx), pruner.gather_rope(rope, idx)
        out = fn(self.ln_wo_grad(xs).mul(scale + 1).add_(shift), rs).mul(gamma)
        return pruner.restore(name, idx, out)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.C = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(self, x, cond):
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class VARSR(nn.Module):
    def __init__(self, cfg: VARSRModelConfig):
        super().__init__()
        self.cfg = cfg
        C, K = cfg.embed_dim, cfg.num_scales
        self.C, self.patch_nums = C, cfg.patch_nums
        self.first_l = cfg.prefix_len
        # Registration order mirrors the official state_dict order.
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.lr_prefix = cfg.lr_prefix
        if cfg.lr_prefix:  # the C2I model has no LR encoder (and no such keys in its checkpoint)
            self.con_embedding = ConditionEmbedding(C, cfg.con_channels)
        self.word_embed = Linear(cfg.cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes, C)
        self.lvl_embed = nn.Embedding(K, C)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            [
                AdaLNBlock(C, cfg.heads, cfg.mlp_ratio, dpr[i], cfg.norm_eps, cfg.drop_path_rate > 0)
                for i in range(cfg.depth)
            ]
        )
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = Linear(C, cfg.vocab_size)
        self.decoder_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.diffloss = DiffLoss(cfg.cvae, C, cfg.diff_width, cfg.diff_depth, cfg.diff_steps, cfg.diff_sample_steps)
        lvl_1L, mask = self._level_and_mask(None)
        self.register_buffer("lvl_1L", lvl_1L)
        self.register_buffer("attn_bias_for_masking", mask)
        grid = cfg.rope_grid or cfg.patch_nums[-1]
        self.rope = RopeCache(cfg.patch_nums, C // cfg.heads, grid, cfg.rope_theta, cfg.lr_prefix)
        self.init_weights()

    # ------------------------------------------------------------------ init
    def _level_and_mask(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Level of every token (0 for the prefix, si for scale-si inputs) and the block-causal mask."""
        lvl = [0] * self.first_l + [si for si, pn in enumerate(self.patch_nums) if si > 0 for _ in range(pn * pn)]
        lvl_1L = torch.tensor(lvl, device=device).view(1, -1)
        allowed = lvl_1L.view(-1, 1) >= lvl_1L.view(1, -1)  # see own and lower levels only
        mask = torch.where(allowed, 0.0, -torch.inf).reshape(1, 1, len(lvl), len(lvl))
        return lvl_1L, mask

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the constant buffers (after `to_empty` from a meta-device build)."""
        lvl_1L, mask = self._level_and_mask(self.lvl_1L.device)
        self.lvl_1L.copy_(lvl_1L)
        self.attn_bias_for_masking.copy_(mask)
        for blk in self.blocks:
            blk.attn.zero_k_bias.zero_()
            blk.drop_path.reset()

    @torch.no_grad()
    def init_weights(self) -> None:
        """VAR's init (trunc-normal sqrt(1/3C), scaled AdaLN/head), then MAR's refiner init."""
        cfg = self.cfg
        if self.pos_start.is_meta:
            return
        std = cfg.init_std if cfg.init_std >= 0 else math.sqrt(1 / self.C / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_start, std=std)
        self.head.weight.mul_(cfg.init_head)
        nn.init.zeros_(self.head.bias)
        self.head_nm.ada_lin[-1].weight.mul_(cfg.init_adaln)
        nn.init.zeros_(self.head_nm.ada_lin[-1].bias)
        for blk in self.blocks:
            blk.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
            blk.ffn.fc2.weight.div_(math.sqrt(2 * cfg.depth))
            w = blk.ada_lin[-1].weight
            w[2 * self.C :].mul_(cfg.init_adaln)
            w[: 2 * self.C].mul_(cfg.init_adaln_gamma)
            nn.init.zeros_(blk.ada_lin[-1].bias)
            blk.attn.scale_mul_1H11.fill_(math.log(4.0))
            nn.init.zeros_(blk.attn.q_bias)
            nn.init.zeros_(blk.attn.v_bias)
        self.diffloss.net.initialize_weights()

    # ------------------------------------------------------------------ pieces
    def prefix(self, lr: torch.Tensor | None, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix tokens (B, first_l, C) and AdaLN cond (B, C).

        SR: LR in [-1, 1] at the model size -> [LR tokens, SOS].  C2I: lr must be None -> [SOS].
        `label` may have k times the rows of `lr` (CFG branches stacked [all cond; all neg]): the LR
        is then encoded once and its tokens repeated.
        """
        cond = self.class_emb(label)
        if not self.lr_prefix:
            if lr is not None:  # silently ignoring an LR would hide an SR/C2I config mix-up
                raise ValueError("this is a C2I model (lr_prefix=False): pass lr=None")
            return cond[:, None] + self.pos_start + self.lvl_embed.weight[0], cond
        if lr is None:
            raise ValueError("this is an SR model (lr_prefix=True): an LR image is required")
        with torch.autocast(device_type=lr.device.type, enabled=False):  # prefix encoder in fp32
            con = self.con_embedding(lr.float()).flatten(2).transpose(1, 2)
        if con.shape[0] != cond.shape[0]:  # CFG rows share one LR: encode it once, repeat the tokens
            if cond.shape[0] % con.shape[0]:
                raise ValueError(f"{cond.shape[0]} labels for {con.shape[0]} LR images")
            con = con.repeat(cond.shape[0] // con.shape[0], 1, 1)
        x = torch.cat((con.to(cond.dtype), cond[:, None]), dim=1) + self.pos_start
        return x + self.lvl_embed.weight[0], cond

    def embed_scale(self, x_in: torch.Tensor, si: int) -> torch.Tensor:
        """Teacher-forcing / sampled inputs of scale si (B, pn^2, Cvae) -> tokens."""
        return self.word_embed(x_in.to(self.word_embed.weight.dtype)) + self.lvl_embed.weight[si]

    def rope_rows(self, si: int, device) -> torch.Tensor:
        """RoPE rows of inference step si (step 0 = the whole prefix)."""
        tab = self.rope.table(device)
        if si == 0:
            return tab[: self.first_l]
        start = self.first_l + sum(p * p for p in self.patch_nums[1:si])
        return tab[start : start + self.patch_nums[si] ** 2]

    def run_blocks(self, x, cond, rope, attn_bias=None, caches: list | None = None, pruners=None):
        for i, blk in enumerate(self.blocks):
            x = blk(
                x, cond, rope, attn_bias, None if caches is None else caches[i], None if pruners is None else pruners(i)
            )
        return x

    def logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):  # head in fp32
            return self.head(self.head_nm(h.float(), cond.float())).float()

    def refiner_condition(self, h_last: torch.Tensor, tokens_e: torch.Tensor) -> torch.Tensor:
        """z = decoder_norm(h_last + word_embed(e[idx])) (spec 4)."""
        # e in the embedding's dtype (as in embed_scale): under FSDP2 the blocks may hand back
        # low-precision activations while the root's weights are fp32.
        return self.decoder_norm(h_last + self.word_embed(tokens_e.to(self.word_embed.weight.dtype)))

    @property
    def cache_capacity(self) -> int:
        """Tokens an inference KV cache holds: the prefix plus the inputs of scales 1..K-1."""
        return self.first_l + sum(p * p for p in self.patch_nums[1:])

    def new_cache(self, rows: int, dtype: torch.dtype | None = None, device=None) -> list[KVCache]:
        """One preallocated KVCache per block for `rows` sequences (CFG rows included)."""
        w = self.head.weight
        hd = self.C // self.cfg.heads
        return [
            KVCache(rows, self.cfg.heads, self.cache_capacity, hd, dtype or w.dtype, device or w.device)
            for _ in self.blocks
        ]

    # ------------------------------------------------------------------ training forward
    def forward(
        self, lr, label, x_inputs, r_last: torch.Tensor | None = None, codebook: torch.Tensor | None = None
    ) -> Any:
        """Teacher-forced pass -> (logits fp32 (B, L, V), h_last (B, pn_last^2, C)).

        `lr` (B, 3, S, S) in [-1, 1] for SR, None for C2I.  Labels are used as given: the C2I
        label dropout lives in `varsr.losses` (training only), so this pass stays deterministic.

        With `r_last` and `codebook` (the VQVAE embedding weight) also returns the refiner loss,
        computed inside forward so DDP/FSDP wrappers see every parameter use.
        """
        x, cond = self.prefix(lr, label)
        lvl = self.lvl_1L[0, self.first_l :].to(x.device)
        inp = self.word_embed(x_inputs.to(self.word_embed.weight.dtype)) + self.lvl_embed(lvl)
        x = torch.cat((x, inp.to(x.dtype)), dim=1)
        rope = self.rope.table(x.device)[: x.shape[1]]
        bias = self.attn_bias_for_masking[..., : x.shape[1], : x.shape[1]]
        h = self.run_blocks(x, cond, rope, bias)
        n_last = self.patch_nums[-1] ** 2
        h_last = h[:, -n_last:]
        logits = self.logits(h[:, self.first_l - 1 :], cond)
        if r_last is None:
            return logits, h_last
        diff = self.diffusion_loss(logits, h_last, r_last, codebook)
        return logits, h_last, diff

    def diffusion_loss(self, logits, h_last, r_last, codebook) -> torch.Tensor:
        """Refiner target relative to the argmax-predicted last-scale token (official top-k 1)."""
        n_last = h_last.shape[1]
        idx_pred = logits[:, -n_last:].detach().argmax(-1)
        e = F.embedding(idx_pred, codebook.detach()).float()
        target = (r_last.float() - e) / self.cfg.vae_scale
        z = self.refiner_condition(h_last, e)
        mul = self.cfg.diff_batch_mul
        target = target.reshape(-1, target.shape[-1]).repeat(mul, 1)
        z = z.reshape(-1, z.shape[-1]).repeat(mul, 1)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.diffloss(target, z.float())
