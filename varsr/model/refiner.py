"""MAR-style diffusion MLP refiner (`diffloss`) for the last-scale quantisation residual.

Spec varsr.md section 4.  Names follow MAR's `DiffLoss` / `SimpleMLPAdaLN` so `diffloss.net.*`
keys load 1:1.  MAR's zero-initialisation of the AdaLN modulations and the output layer is kept
(the official VAR `init_weights` overwrote it; spec section 12.5).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .diffusion import GaussianDiffusion


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """eps || variance-interpolation prediction for one token, conditioned on (t, z)."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, 2 * in_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # Zero-init the modulations and the output so the refiner starts as an identity-ish prior.
        for blk in self.res_blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x, t, c):
        y = self.time_embed(t) + self.cond_embed(c)
        x = self.input_proj(x)
        for blk in self.res_blocks:
            x = blk(x, y)
        return self.final_layer(x, y)


class DiffLoss(nn.Module):
    def __init__(self, target_channels: int, z_channels: int, width: int, depth: int,
                 train_steps: int = 1000, sample_steps: str = "10"):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth)
        self.train_diffusion = GaussianDiffusion(train_steps)
        self.gen_diffusion = GaussianDiffusion(train_steps, sample_steps)

    def forward(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """target (N, Cvae), z (N, C) -> mean hybrid loss (one random timestep per row)."""
        t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device)
        return self.train_diffusion.training_losses(self.net, target, t, z).mean()

    @torch.no_grad()
    def sample(self, z: torch.Tensor, cfg_t: float = 0.0, guided: bool = False, temperature: float = 1.0,
               generator: torch.Generator | None = None, clip: bool = True) -> torch.Tensor:
        """Draw residual tokens for condition rows z.

        guided=True: z is [cond; neg] (2B rows); eps = (1 + t) eps_cond - t eps_neg on the first
        half, copied to both halves; variance channels stay unguided; both halves start from the
        same noise.  Unguided iff not `guided` (t == 0 is just a no-op guidance).  Returns (2B or
        B, Cvae) in units of the scaled target.
        """
        C = self.in_channels
        if guided:
            half = torch.randn(z.shape[0] // 2, C, generator=generator, device=z.device, dtype=z.dtype)
            noise = torch.cat([half, half])

            def fn(x, t):
                h = x[: len(x) // 2]
                out = self.net(torch.cat([h, h]), t, z)
                ec, en = out[:, :C].chunk(2)
                eps = (1 + cfg_t) * ec - cfg_t * en
                return torch.cat([torch.cat([eps, eps]), out[:, C:]], dim=1)
        else:
            noise = torch.randn(z.shape[0], C, generator=generator, device=z.device, dtype=z.dtype)

            def fn(x, t):
                return self.net(x, t, z)
        return self.gen_diffusion.sample_loop(fn, noise, clip=clip, temperature=temperature,
                                              generator=generator)
