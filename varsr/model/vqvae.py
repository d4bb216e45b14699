"""VAR's convolutional VQVAE with the multi-scale quantizer (spec varsr.md section 2.1).

Parameter names follow the official `models/vqvae.py` / `basic_vae.py` so `VQVAE.pth` loads as
an identity map.  Images are in [-1, 1]; total down-sampling is 16 (512^2 -> 32x32x32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VARSRModelConfig
from .quantizer import MultiScaleQuantizer


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout is 0 in VARSR
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over channels, fused 1x1 qkv conv (VAR layout)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        # (B, 1, HW, C) single head; SDPA's default scale C^-1/2 equals the official w_ratio.
        h = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )
        return x + self.proj_out(h[:, 0].transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad as in taming/VAR


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block`, `attn` and optional `downsample`/`upsample` (official names)."""

    def __init__(self, cin: int, cout: int, n_blocks: int, attn: bool, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout) for i in range(n_blocks)])
        self.attn = nn.ModuleList([AttnBlock(cout) for _ in range(n_blocks)] if attn else [])
        if resample == "down":
            self.downsample = Downsample(cout)
        elif resample == "up":
            self.upsample = Upsample(cout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList(
            [
                _Level(
                    ch * mult[i],
                    ch * ch_mult[i],
                    num_res_blocks,
                    attn=(i == n - 1),
                    resample="down" if i != n - 1 else None,
                )
                for i in range(n)
            ]
        )
        c = ch * ch_mult[-1]
        self.mid = _Mid(c)
        self.norm_out, self.conv_out = _norm(c), nn.Conv2d(c, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl in self.down:
            h = lvl(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int):
        super().__init__()
        n = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = _Mid(c)
        # `up[i]` is level i (built top-down officially, then inserted at the front).
        cins = [ch * ch_mult[i + 1] if i + 1 < n else c for i in range(n)]
        self.up = nn.ModuleList(
            [
                _Level(
                    cins[i], ch * ch_mult[i], num_res_blocks + 1, attn=(i == n - 1), resample="up" if i != 0 else None
                )
                for i in range(n)
            ]
        )
        self.norm_out, self.conv_out = _norm(ch * ch_mult[0]), nn.Conv2d(ch * ch_mult[0], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for lvl in reversed(self.up):
            h = lvl(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class TrainTargets:
    gt_idx: torch.Tensor  # Long (B, L): concatenated per-scale indices
    x_inputs: torch.Tensor  # (B, L - 1, Cvae): teacher-forcing inputs (scales 1..K-1)
    r_last: torch.Tensor  # (B, pn_last^2, Cvae): continuous remainder before the last token


class VQVAE(nn.Module):
    def __init__(self, cfg: VARSRModelConfig):
        super().__init__()
        self.cfg = cfg
        args = (cfg.vae_ch, cfg.vae_ch_mult, cfg.vae_num_res_blocks, cfg.cvae)
        self.encoder, self.decoder = Encoder(*args), Decoder(*args)
        self.quantize = MultiScaleQuantizer(
            cfg.vocab_size, cfg.cvae, cfg.patch_nums, cfg.share_quant_resi, cfg.quant_resi
        )
        self.quant_conv = nn.Conv2d(cfg.cvae, cfg.cvae, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.cvae, cfg.cvae, 3, 1, 1)

    def img_to_f(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> continuous latent f (B, Cvae, H/16, W/16)."""
        return self.quant_conv(self.encoder(x))

    @torch.no_grad()
    def encode_for_training(self, hr: torch.Tensor) -> TrainTargets:
        """HR in [-1, 1] at the model size -> GT indices, teacher-forcing inputs and r_last (fp32)."""
        with torch.autocast(device_type=hr.device.type, enabled=False):
            f = self.img_to_f(hr.float())
            idx_list, r_last = self.quantize.encode(f)
            x_inputs = self.quantize.teacher_forcing_inputs(idx_list)
        return TrainTargets(torch.cat(idx_list, 1), x_inputs, r_last)

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Accumulated latent -> image in [-1, 1]."""
        if f_hat.device.type == "cpu":
            # oneDNN's CPU convolutions run ~10-17% faster on NHWC activations (a 512 decode: 19.5 ->
            # 17.5 s on one Zen 4 thread); the returned image is plain contiguous again (no-op elsewhere).
            f_hat = f_hat.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1).contiguous()

    def forward_train(self, x: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Tokenizer training forward: image in [-1, 1] -> (unclamped reconstruction, losses).

        Unclamped so pixels outside [-1, 1] still get a gradient; the losses are the
        commitment and codebook terms of `MultiScaleQuantizer.forward_train`.
        """
        f_ste, commit, codebook = self.quantize.forward_train(self.img_to_f(x.float()), beta)
        recon = self.decoder(self.post_quant_conv(f_ste))
        return recon, {"commit": commit, "codebook": codebook}
