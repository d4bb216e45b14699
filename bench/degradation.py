"""Throughput of the degradation pipeline at 512 crops: per-image (VARSR way) vs batched.

Rows: (a) the VARSR/SeeSR per-sample CPU class re-enacted with basicsr's own primitives
(kernels from numpy's global RNG, batch of 1 per call); (b) our KernelSampler + batched
Degrader on CPU; (c) the same on CUDA when available.  Kernel sampling is timed in every
row because the VARSR class does it inside the same call.  Prints a Markdown table.

    python bench/degradation.py [--preset varsr_mild] [--rounds 1] [--batches 1 8 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.compat import basicsr as bsr  # noqa: E402
from common.degradation import Degrader, KernelSampler, collate_kernels, get_preset  # noqa: E402
from common.logging import markdown_table  # noqa: E402


def _crops(n: int, size: int = 512) -> torch.Tensor:
    """n GT crops from the bundled photos (content matters only for Poisson's level count)."""
    from common.data.bundled import bundled_photos, fit_square

    photos = [fit_square(img, size) for _, img in bundled_photos()]
    x = torch.stack([torch.from_numpy(photos[i % len(photos)].copy()).permute(2, 0, 1) for i in range(n)])
    return x.float() / 255


class VarsrPerImage:
    """The official per-sample class (batch of 1, numpy/global RNG) built from basicsr parts."""

    def __init__(self, cfg):
        self.c, self.deg, self.ipu = cfg, bsr.degradations(), bsr.img_process_util()
        self.jpeger, self.usm = bsr.DiffJPEG(False), bsr.USMSharp()

    def _kernel(self, sfx: str) -> torch.Tensor:
        c = self.c
        ks = random.choice(c.kernel_range)
        if np.random.uniform() < getattr(c, "sinc_prob" + sfx):
            wc = np.random.uniform(np.pi / 3, np.pi) if ks < 13 else np.random.uniform(np.pi / 5, np.pi)
            k = self.deg.circular_lowpass_kernel(wc, ks, pad_to=False)
        else:
            sig = getattr(c, "blur_sigma" + sfx)
            k = self.deg.random_mixed_kernels(
                getattr(c, "kernel_list" + sfx),
                getattr(c, "kernel_prob" + sfx),
                ks,
                sig,
                sig,
                [-math.pi, math.pi],
                getattr(c, "betag_range" + sfx),
                getattr(c, "betap_range" + sfx),
                noise_range=None,
            )
        p = (21 - ks) // 2
        return torch.FloatTensor(np.pad(k, ((p, p), (p, p))))[None]

    def _noise(self, x, sfx):
        c = self.c
        if np.random.uniform() < getattr(c, "gaussian_noise_prob" + sfx):
            return self.deg.random_add_gaussian_noise_pt(
                x,
                sigma_range=getattr(c, "noise_range" + sfx),
                clip=True,
                rounds=False,
                gray_prob=getattr(c, "gray_noise_prob" + sfx),
            )
        return self.deg.random_add_poisson_noise_pt(
            x,
            scale_range=getattr(c, "poisson_scale_range" + sfx),
            gray_prob=getattr(c, "gray_noise_prob" + sfx),
            clip=True,
            rounds=False,
        )

    def _resize(self, x, sfx, size=None):
        c = self.c
        kind = random.choices(["up", "down", "keep"], getattr(c, "resize_prob" + sfx))[0]
        lo, hi = getattr(c, "resize_range" + sfx)
        s = {"up": lambda: np.random.uniform(1, hi), "down": lambda: np.random.uniform(lo, 1), "keep": lambda: 1}[
            kind
        ]()
        mode = random.choice(["area", "bilinear", "bicubic"])
        if size is None:
            return F.interpolate(x, scale_factor=s, mode=mode)
        return F.interpolate(x, size=(int(size[0] * s), int(size[1] * s)), mode=mode)

    def __call__(self, gt: torch.Tensor) -> torch.Tensor:
        c = self.c
        k1, k2 = self._kernel(""), self._kernel("2")
        if np.random.uniform() < c.final_sinc_prob:
            sk = torch.FloatTensor(
                self.deg.circular_lowpass_kernel(
                    np.random.uniform(np.pi / 3, np.pi), random.choice(c.kernel_range), pad_to=21
                )
            )[None]
        else:
            sk = torch.zeros(1, 21, 21)
            sk[0, 10, 10] = 1
        h, w = gt.shape[-2:]
        lq_size = (h // c.scale, w // c.scale)
        x = self.usm(gt) if c.usm_gt else gt
        x = self._noise(self._resize(self.ipu.filter2D(x, k1), ""), "")
        x = self.jpeger(torch.clamp(x, 0, 1), quality=x.new_zeros(1).uniform_(*c.jpeg_range))
        if np.random.uniform() < c.second_blur_prob:
            x = self.ipu.filter2D(x, k2)
        x = self._noise(self._resize(x, "2", size=(h / c.scale, w / c.scale)), "2")
        mode = random.choice(["area", "bilinear", "bicubic"])
        if np.random.uniform() < 0.5:
            x = self.ipu.filter2D(F.interpolate(x, size=lq_size, mode=mode), sk)
            x = self.jpeger(torch.clamp(x, 0, 1), quality=x.new_zeros(1).uniform_(*c.jpeg_range2))
        else:
            x = self.jpeger(torch.clamp(x, 0, 1), quality=x.new_zeros(1).uniform_(*c.jpeg_range2))
            x = self.ipu.filter2D(F.interpolate(x, size=lq_size, mode=mode), sk)
        if c.resize_back:
            x = F.interpolate(x, size=(h, w), mode=random.choice(["area", "bilinear", "bicubic"]))
        return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def run(preset: str, batches: list[int], devices: list[str], rounds: int = 1, seed: int = 0) -> list[dict]:
    """Images/s per row. Rows are timed in interleaved rounds (each round every row degrades
    max(batches) images) so a machine whose load drifts during the run biases no row."""
    cfg = get_preset(preset)
    n_round = max(batches)
    pool = _crops(n_round)
    random.seed(seed)
    np.random.seed(seed)
    ref, sampler, deg = VarsrPerImage(cfg), KernelSampler(cfg), Degrader(cfg)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def batched(gt):
        return deg(gt, collate_kernels([sampler(rng) for _ in range(gt.shape[0])]), gen).lq

    rows = [
        {
            "path": "per-image, VARSR way (basicsr, batch 1)",
            "device": "cpu",
            "batch": 1,
            "fn": lambda i: ref(pool[i % n_round : i % n_round + 1]),
            "calls": n_round,
            "sec": 0.0,
        }
    ]
    for device in devices:
        gts = {b: pool[:b].to(device) for b in batches}
        for b in batches:
            rows.append(
                {
                    "path": "batched Degrader",
                    "device": device,
                    "batch": b,
                    "fn": (lambda i, g=gts[b]: batched(g)),
                    "calls": math.ceil(n_round / b),
                    "sec": 0.0,
                }
            )
    with torch.no_grad():
        for r in rows:  # warm-up: allocator, oneDNN/cuDNN/cuFFT plans, basicsr import
            r["fn"](0)
        for _ in range(rounds):
            for r in rows:
                sync = torch.cuda.synchronize if r["device"] == "cuda" else (lambda: None)
                sync()
                t = time.perf_counter()
                for i in range(r["calls"]):
                    r["fn"](i)
                sync()
                r["sec"] += time.perf_counter() - t
    out = []
    for r in rows:
        ips = rounds * r["calls"] * r["batch"] / r["sec"]
        out.append({"path": r["path"], "device": r["device"], "batch": r["batch"], "images/s": ips})
    for r in out:
        r["speed-up vs per-image"] = r["images/s"] / out[0]["images/s"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="varsr_mild", help="realesrgan | varsr_mild")
    ap.add_argument(
        "--rounds", type=int, default=1, help="interleaved timing rounds (each: max(batches) images per row)"
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a dataset worker's share; 0 leaves torch's default)",
    )
    ap.add_argument("--no-cuda", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    rows = run(args.preset, args.batches, devices, args.rounds)
    print(f"preset={args.preset}, 512x512 GT, torch threads={torch.get_num_threads()}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
