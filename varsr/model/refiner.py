"""MAR-style diffusion MLP refiner (`diffloss`) for the last-scale quantisation residual.

Spec varsr.md section 4.  Names follow MAR's `DiffLoss` / `SimpleMLPAdaLN` so `diffloss.net.*`
keys load 1:1.  MAR's zero-initialisation of the AdaLN modulations and the output layer is kept
(the official VAR `init_weights` overwrote it; spec section 12.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cpu_linear import Linear

from .diffusion import GaussianDiffusion

# One generator for all rows, one per image (rows split evenly), or None (torch's default).
Generators = torch.Generator | Sequence[torch.Generator] | None


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, width), nn.SiLU(), Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(Linear(width, width), nn.SiLU(), Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 3 * width))

    def forward(self, x, y, y_act=None):
        # y_act = SiLU(y), when the caller computed it once for all blocks (the modulation's first op)
        mod = self.adaLN_modulation(y) if y_act is None else self.adaLN_modulation[1](y_act)
        shift, scale, gate = mod.chunk(3, dim=-1)
        fc1, fc2 = self.mlp[0], self.mlp[2]  # SiLU fused into fc1 where oneDNN runs it
        return x + gate * fc2(fc1(_modulate(self.in_ln(x), shift, scale), act="silu"))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 2 * width))

    def forward(self, x, y, y_act=None):
        mod = self.adaLN_modulation(y) if y_act is None else self.adaLN_modulation[1](y_act)
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """eps || variance-interpolation prediction for one token, conditioned on (t, z)."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = Linear(z_channels, width)
        self.input_proj = Linear(in_channels, width)
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
        return self.trunk(x, self.time_embed(t) + self.cond_embed(c))

    def trunk(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Everything after the (t, z) embedding: y (N or 1, width) is the summed condition."""
        x, y_act = self.input_proj(x), F.silu(y)  # SiLU(y) feeds every modulation: computed once
        for blk in self.res_blocks:
            x = blk(x, y, y_act)
        return self.final_layer(x, y, y_act)

    def sampler(self, c: torch.Tensor, trunk: Callable | None = None) -> Callable:
        """fn(x, t) for a sampling loop over fixed conditions c.

        The condition embedding is computed once, not at every step, and the timestep embedding
        on one row (all rows share t).  `trunk` replaces `self.trunk` (e.g. a compiled version).
        """
        c_emb, trunk = self.cond_embed(c), trunk or self.trunk

        def fn(x, t):
            return trunk(x, self.time_embed(t[:1]) + c_emb)

        return fn


class DiffLoss(nn.Module):
    def __init__(
        self,
        target_channels: int,
        z_channels: int,
        width: int,
        depth: int,
        train_steps: int = 1000,
        sample_steps: str = "10",
    ):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth)
        self.train_diffusion = GaussianDiffusion(train_steps)
        self.gen_diffusion = GaussianDiffusion(train_steps, sample_steps)

    def forward(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """target (N, Cvae), z (N, C) -> mean hybrid loss (one random timestep per row)."""
        t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device)
        return self.train_diffusion.training_losses(self.net, target, t, z).mean()

    def draw_noise(
        self, n: int, guided: bool, generator: Generators = None, device=None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Sampling noise (steps + 1, n, Cvae) for n condition rows: x_T, then one row per step.

        Draw order of the reference sampler: x_T for the n condition rows (the guidance rows share
        it), then at every step noise for every row it denoises (2n when guided) of which only the
        condition rows matter.  A list of generators splits the rows evenly, one image each, and
        each generator draws exactly what a run of that image alone would.  None = torch's
        default generator (as torch.randn).
        """
        C, T = self.in_channels, self.gen_diffusion.num_timesteps
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if n % len(gens):
            raise ValueError(f"{n} refiner rows do not split over {len(gens)} generators")
        m, rows = n // len(gens), (2 if guided else 1) * (n // len(gens))
        per_image = []
        for g in gens:
            first = torch.randn(m, C, generator=g, device=device, dtype=dtype)
            steps = [torch.randn(rows, C, generator=g, device=device, dtype=dtype)[:m] for _ in range(T)]
            per_image.append(torch.stack([first, *steps]))
        return torch.cat(per_image, dim=1)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        cfg_t: float = 0.0,
        guided: bool = False,
        temperature: float = 1.0,
        generator: Generators = None,
        clip: bool = True,
        noise: torch.Tensor | None = None,
        trunk: Callable | None = None,
    ) -> torch.Tensor:
        """Draw one residual token per condition row -> (n, Cvae) in units of the scaled target.

        guided=True: z is [cond; neg] (2n rows); eps = (1 + t) eps_cond - t eps_neg, variance
        channels unguided; only the n condition rows are denoised (the guidance rows would just
        mirror them).  Unguided iff not `guided` (t == 0 is just a no-op guidance).  All rows and
        steps are batched: one network call per step.  Noise: `noise` (steps + 1, n, Cvae) as
        given, else `draw_noise(generator)`.
        """
        C = self.in_channels
        n = z.shape[0] // 2 if guided else z.shape[0]
        if noise is None:
            noise = self.draw_noise(n, guided, generator, z.device, z.dtype)
        if noise.shape != (self.gen_diffusion.num_timesteps + 1, n, C):
            raise ValueError(
                f"refiner noise must be {(self.gen_diffusion.num_timesteps + 1, n, C)}, got {tuple(noise.shape)}"
            )
        body = self.net.sampler(z, trunk)
        if guided:

            def fn(x, t):
                out = body(torch.cat([x, x]), t)  # t: one shared timestep per step
                ec, en = out[:, :C].chunk(2)
                return torch.cat([(1 + cfg_t) * ec - cfg_t * en, out[:n, C:]], dim=1)
        else:
            fn = body
        return self.gen_diffusion.sample_loop(fn, noise[0], clip=clip, temperature=temperature, step_noise=noise[1:])
