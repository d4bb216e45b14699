"""LlamaGen VQ-8 image tokenizer (`vq_ds8_c2i.pt`), as PURE uses it (spec pure.md §3).

Module/parameter names mirror LlamaGen's so the official `{"model": state_dict}` loads with
strict=True (reference/llamagen_vq_ds8.json, 300 keys, 70,109,835 params, including the
`quantize.codebook_used` (65536,) buffer). PURE keeps the VQ frozen (codes in, codes out);
`forward_train` exists only for tokenizer fine-tuning (pure/vq_finetune.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VQConfig:
    codebook_size: int = 16384  # number of codes (8,192 + 8,192 token slots in Chameleon's vocab)
    codebook_embed_dim: int = 8  # code vector size (quant_conv output channels)
    codebook_l2_norm: bool = True  # cosine-style lookup: normalise z and codebook rows
    z_channels: int = 256  # encoder output / decoder input channels
    ch: int = 128  # base channels (LlamaGen's fixed Encoder/Decoder default)
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4)  # 3 downsamplings -> ds 8
    decoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2  # per encoder level; decoder levels use one more
    dropout: float = 0.0
    usage_buffer_len: int = 65536  # length of quantize.codebook_used (fixed in LlamaGen, not codebook_size)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


def vq_config(size: str = "ds8") -> VQConfig:
    """ "ds8": the released VQ-8; "tiny": reference/llamagen_vq_ds8_tiny.json (ds 2, 64 codes)."""
    if size == "ds8":
        return VQConfig()
    if size == "tiny":
        return VQConfig(codebook_size=64, z_channels=32, ch=32, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2))
    raise ValueError(f"unknown VQ size {size!r}; choose 'ds8' or 'tiny'")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv projections."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(qk^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as in taming/LlamaGen


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        # nearest x2 in fp32 (LlamaGen upcasts because bf16 nearest was unsupported/inexact)
        return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))


class _Level(nn.Module):
    """One resolution level: `res` blocks, optional `attn` blocks, optional resampler."""

    def __init__(self, cin, cout, n, attn, resample, dropout):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, dropout) for i in range(n))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n)) if attn else nn.ModuleList()
        if resample == "down":
            self.downsample = Downsample(cout)
        elif resample == "up":
            self.upsample = Upsample(cout)

    def forward(self, x):
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _mid(c: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c, dropout), AttnBlock(c), ResnetBlock(c, c, dropout)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        mult, ch, n = cfg.encoder_ch_mult, cfg.ch, len(cfg.encoder_ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        ins = (1,) + tuple(mult)
        # attention only at the lowest resolution; no downsample after the last level
        self.conv_blocks = nn.ModuleList(
            _Level(
                ch * ins[i], ch * mult[i], cfg.num_res_blocks, i == n - 1, "down" if i < n - 1 else None, cfg.dropout
            )
            for i in range(n)
        )
        c = ch * mult[-1]
        self.mid = _mid(c, cfg.dropout)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        mult, ch, n = cfg.decoder_ch_mult, cfg.ch, len(cfg.decoder_ch_mult)
        c = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, cfg.dropout)
        levels = []
        for i in range(n):  # from the lowest resolution up; attention there only
            cout = ch * mult[n - 1 - i]
            levels.append(_Level(c, cout, cfg.num_res_blocks + 1, i == 0, "up" if i < n - 1 else None, cfg.dropout))
            c = cout
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.l2_norm = cfg.codebook_l2_norm
        self.embedding = nn.Embedding(
            cfg.codebook_size, cfg.codebook_embed_dim, _weight=torch.empty(cfg.codebook_size, cfg.codebook_embed_dim)
        )
        if not self.embedding.weight.is_meta:  # init on meta is a slow no-op
            nn.init.uniform_(self.embedding.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        # usage statistics kept by LlamaGen during training; only needed for the strict load
        self.register_buffer("codebook_used", torch.zeros(cfg.usage_buffer_len))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> Long (B, h, w) nearest-code indices (squared L2 distance)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        if self.l2_norm:
            flat = F.normalize(flat, dim=-1)
        book = self.codebook().float()
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Long (B, h, w) -> (B, D, h, w) (normalised) code vectors."""
        return self.codebook()[codes].permute(0, 3, 1, 2)

    def forward_train(self, z: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LlamaGen's training quantisation: (z_q with a straight-through gradient, commitment,
        codebook) with commitment = beta * ||z - sg(z_q)||^2 and codebook = ||z_q - sg(z)||^2,
        both on l2-normalised vectors when `l2_norm` (as LlamaGen; entropy loss off there too)."""
        z = z.float()
        if self.l2_norm:
            z = F.normalize(z, dim=1)
        codes = self.codes(z.detach())  # normalising twice is a no-op
        z_q = self.lookup(codes).float()
        commit = beta * F.mse_loss(z, z_q.detach())
        codebook = F.mse_loss(z_q, z.detach())
        return z + (z_q - z).detach(), commit, codebook


class VQModel(nn.Module):
    """encode_codes: image in [-1, 1] (B, 3, H, W) -> Long (B, H/ds, W/ds); decode_codes: inverse."""

    def __init__(self, cfg: VQConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or VQConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    @torch.no_grad()
    def encode_codes(self, img: torch.Tensor) -> torch.Tensor:
        ds = self.config.downsample
        if img.dim() != 4 or img.shape[1] != 3 or img.shape[2] % ds or img.shape[3] % ds:
            raise ValueError(f"encode_codes expects (B, 3, H, W) with H, W multiples of {ds}; got {tuple(img.shape)}")
        return self.quantize.codes(self.quant_conv(self.encoder(img)))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() == 2:
            codes = codes[None]
        z = self.quantize.lookup(codes.long()).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the quantiser (codes -> decode)."""
        return self.decode_codes(self.encode_codes(img))

    def forward_train(self, img: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Tokenizer training forward: image in [-1, 1] -> (reconstruction, losses)."""
        z_q, commit, codebook = self.quantize.forward_train(self.quant_conv(self.encoder(img)), beta)
        return self.decoder(self.post_quant_conv(z_q)), {"commit": commit, "codebook": codebook}
