"""Per-image blur-kernel sampling for the Real-ESRGAN pipeline (CPU, numpy, explicit Generator).

Runs in dataset workers: each image gets ``kernel1`` (first-stage blur), ``kernel2`` (second
stage) and ``sinc_kernel`` (final low-pass or identity pulse), all float32 21x21, plus the
scalar parameters that produced them (spec common.md §1.2).  The kernel formulas are public
functions so tests can compare them with basicsr's ``bivariate_*`` / ``circular_lowpass_kernel``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import special

from .presets import DegradationConfig


def _grid(ks: int) -> tuple[np.ndarray, np.ndarray]:
    # x runs along columns, y along rows, both centred on the middle pixel (basicsr's mesh_grid).
    ax = np.arange(-(ks // 2), ks // 2 + 1, dtype=np.float64)
    return np.meshgrid(ax, ax)


def _quad_form(ks: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """d^T Sigma^-1 d on the grid, Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    xx, yy = _grid(ks)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def mixed_kernel(
    family: str, ks: int, sigma_x: float, sigma_y: float, theta: float, beta: float | None = None
) -> np.ndarray:
    """One normalised ks x ks kernel of the given family (isotropic families ignore sigma_y/theta)."""
    if family.endswith("iso") and not family.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    q = _quad_form(ks, sigma_x, sigma_y, theta)
    if family in ("iso", "aniso"):
        k = np.exp(-0.5 * q)
    elif family.startswith("generalized"):
        k = np.exp(-0.5 * np.power(q, beta))
    elif family.startswith("plateau"):
        k = 1.0 / (np.power(q, beta) + 1.0)
    else:
        raise ValueError(f"unknown kernel family {family!r}")
    return k / k.sum()


def sinc_kernel(omega_c: float, ks: int) -> np.ndarray:
    """Circular low-pass (2-D sinc): w J1(w r) / (2 pi r), centre w^2 / (4 pi), sum-normalised."""
    xx, yy = _grid(ks)
    r = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * special.j1(omega_c * r) / (2 * np.pi * r)
    k[ks // 2, ks // 2] = omega_c**2 / (4 * np.pi)  # the r -> 0 limit
    return k / k.sum()


def pad_kernel(k: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a centred odd kernel to size x size."""
    p = (size - k.shape[0]) // 2
    return np.pad(k, ((p, p), (p, p))) if p > 0 else k


def identity_kernel(size: int) -> np.ndarray:
    k = np.zeros((size, size))
    k[size // 2, size // 2] = 1.0
    return k


class KernelSampler:
    """Draws the three kernels of one image: ``sampler(rng) -> dict`` (see module docstring)."""

    def __init__(self, cfg: DegradationConfig):
        self.cfg = cfg

    def _beta(self, rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
        # Half the draws below 1, half above (so beta=1 is a boundary, as in basicsr).
        if rng.uniform() < 0.5:
            return float(rng.uniform(lo_hi[0], 1.0))
        return float(rng.uniform(1.0, lo_hi[1]))

    def _blur(self, rng: np.random.Generator, stage: int) -> tuple[np.ndarray, dict]:
        c = self.cfg
        sfx = "" if stage == 1 else "2"
        ks = int(rng.choice(c.kernel_range))
        p: dict[str, Any] = {
            "family": None,
            "size": ks,
            "sigma_x": None,
            "sigma_y": None,
            "theta": None,
            "beta": None,
            "omega_c": None,
        }
        if rng.uniform() < getattr(c, "sinc_prob" + sfx):
            # Small kernels get a higher minimum cutoff so the sinc does not ring across the whole support.
            lo = math.pi / 3 if ks < 13 else math.pi / 5
            p.update(family="sinc", omega_c=float(rng.uniform(lo, math.pi)))
            return sinc_kernel(p["omega_c"], ks), p
        families = getattr(c, "kernel_list" + sfx)
        probs = np.asarray(getattr(c, "kernel_prob" + sfx), dtype=np.float64)
        fam = str(families[rng.choice(len(families), p=probs / probs.sum())])
        sig = getattr(c, "blur_sigma" + sfx)
        sx = float(rng.uniform(sig[0], sig[1]))
        if "aniso" in fam:
            sy, theta = float(rng.uniform(sig[0], sig[1])), float(rng.uniform(-math.pi, math.pi))
        else:
            sy, theta = sx, 0.0
        beta = None
        if fam.startswith("generalized"):
            beta = self._beta(rng, getattr(c, "betag_range" + sfx))
        elif fam.startswith("plateau"):
            beta = self._beta(rng, getattr(c, "betap_range" + sfx))
        p.update(family=fam, sigma_x=sx, sigma_y=sy, theta=theta, beta=beta)
        return mixed_kernel(fam, ks, sx, sy, theta, beta), p

    def __call__(self, rng: np.random.Generator) -> dict:
        size = self.cfg.kernel_pad_to
        k1, p1 = self._blur(rng, 1)
        k2, p2 = self._blur(rng, 2)
        if rng.uniform() < self.cfg.final_sinc_prob:
            ks = int(rng.choice(self.cfg.kernel_range))
            wc = float(rng.uniform(math.pi / 3, math.pi))
            ps = {"family": "sinc", "size": ks, "omega_c": wc}
            k3 = sinc_kernel(wc, ks)
        else:
            ps = {"family": "identity", "size": 1, "omega_c": None}
            k3 = identity_kernel(size)
        as_t = lambda k: torch.from_numpy(pad_kernel(k, size).astype(np.float32))  # noqa: E731
        return {
            "kernel1": as_t(k1),
            "kernel2": as_t(k2),
            "sinc_kernel": as_t(k3),
            "params": {"kernel1": p1, "kernel2": p2, "sinc": ps},
        }


KERNEL_KEYS = ("kernel1", "kernel2", "sinc_kernel")


def collate_kernels(items: list[dict]) -> dict:
    """Stack per-image kernel dicts: tensors -> (B, 21, 21), ``params`` -> list of dicts."""
    if not items:
        raise ValueError("collate_kernels got an empty list")
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in KERNEL_KEYS}
    out["params"] = [it.get("params", {}) for it in items]
    return out


def sample_kernels(cfg: DegradationConfig, batch: int, rng: np.random.Generator) -> dict:
    """Convenience: draw and collate ``batch`` kernel sets in one call (tests, folder tool, bench)."""
    sampler = KernelSampler(cfg)
    return collate_kernels([sampler(rng) for _ in range(batch)])
