"""Gaussian diffusion (iDDPM) used by the MAR-style refiner (spec varsr.md section 4).

Cosine schedule, epsilon prediction, learned-range variance, hybrid loss MSE(eps) + VB with the
mean detached (not rescaled), timestep respacing and ancestral sampling with an optional
x0 clip.  Schedules are float64 numpy arrays, gathered per step and cast to float32, which is
how the reference implementation rounds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)], dtype=np.float64
    )


def respaced_steps(num_steps: int, spacing: str) -> list[int]:
    """Kept original timesteps for a respacing string like "10" or "25,25" (iDDPM rule)."""
    counts = [int(c) for c in spacing.split(",")]
    size, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        sec = size + (1 if i < extra else 0)
        if count > sec:
            raise ValueError(f"cannot take {count} steps from a section of {sec}")
        stride = 1 if count <= 1 else (sec - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride
        start += sec
    return sorted(set(kept))


def _normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def _approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_loglik(x, means, log_scales):
    cx, inv = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = _approx_cdf(inv * (cx + 1 / 255)), _approx_cdf(inv * (cx - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
    return x.mean(dim=list(range(1, x.dim())))


class GaussianDiffusion:
    """Diffusion over the kept timesteps of a `base_steps` cosine schedule.

    The network always receives the *original* timestep index (timestep_map), as in iDDPM's
    respaced wrapper.
    """

    def __init__(self, base_steps: int = 1000, spacing: str | None = None):
        base = cosine_betas(base_steps)
        keep = respaced_steps(base_steps, spacing) if spacing else list(range(base_steps))
        ac_base, last, betas = np.cumprod(1.0 - base), 1.0, []
        for i in keep:
            betas.append(1 - ac_base[i] / last)
            last = ac_base[i]
        self.timestep_map = torch.tensor(keep, dtype=torch.long, device="cpu")
        self.betas = b = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(b)
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        self.sqrt_ac, self.sqrt_1m_ac = np.sqrt(ac), np.sqrt(1.0 - ac)
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1)
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        # log of posterior variance clipped: its value at t=0 is 0, so reuse t=1's.
        self.post_log_var = np.log(np.append(post_var[1], post_var[1:]))
        self.post_c1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        self.post_c2 = (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac)
        self.log_betas = np.log(b)

    @staticmethod
    def _ex(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(arr, device=t.device)[t].float()
        return out.view(-1, *([1] * (like.dim() - 1))).expand_as(like)

    def q_sample(self, x0, t, noise):
        return self._ex(self.sqrt_ac, t, x0) * x0 + self._ex(self.sqrt_1m_ac, t, x0) * noise

    def q_posterior(self, x0, xt, t):
        mean = self._ex(self.post_c1, t, xt) * x0 + self._ex(self.post_c2, t, xt) * xt
        return mean, self._ex(self.post_log_var, t, xt)

    def p_mean_variance(self, out: torch.Tensor, xt, t, clip: bool):
        """Network output (eps || v) -> (posterior mean, log variance) with learned range."""
        C = xt.shape[1]
        eps, v = out[:, :C], out[:, C:]
        min_log, max_log = self._ex(self.post_log_var, t, xt), self._ex(self.log_betas, t, xt)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self._ex(self.sqrt_recip_ac, t, xt) * xt - self._ex(self.sqrt_recipm1_ac, t, xt) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, xt, t)
        return mean, log_var

    def training_losses(self, net: Callable, x0, t, cond, noise=None) -> torch.Tensor:
        """Per-row hybrid loss: MSE(eps) + VB term (bits) computed with eps detached."""
        noise = torch.randn_like(x0) if noise is None else noise
        xt = self.q_sample(x0, t, noise)
        out = net(xt, self.timestep_map.to(t.device)[t], cond)
        C = x0.shape[1]
        frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1)
        true_mean, true_lv = self.q_posterior(x0, xt, t)
        mean, lv = self.p_mean_variance(frozen, xt, t, clip=False)
        kl = _mean_flat(_normal_kl(true_mean, true_lv, mean, lv)) / math.log(2.0)
        nll = -_mean_flat(_discretized_gaussian_loglik(x0, mean, 0.5 * lv)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return _mean_flat((noise - out[:, :C]) ** 2) + vb

    @torch.no_grad()
    def sample_loop(
        self,
        net: Callable,
        noise: torch.Tensor,
        clip: bool = True,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling from x_T = noise.

        `step_noise` (num_timesteps, *noise.shape): the noise added at each step, first row for the
        first (largest-t) step; None draws it from `generator` one step at a time.
        """
        x = noise
        for n, i in enumerate(reversed(range(self.num_timesteps))):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            out = net(x, self.timestep_map.to(x.device)[t])
            mean, lv = self.p_mean_variance(out, x, t, clip=clip)
            if step_noise is None:
                # Noise is drawn at t = 0 too (then masked), matching the reference RNG consumption.
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                z = step_noise[n]
            x = mean + float(i > 0) * torch.exp(0.5 * lv) * z * temperature
        return x
