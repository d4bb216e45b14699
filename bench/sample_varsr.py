"""VARSR sampling at any size: seconds per image and peak memory, one native tile vs a tiled output.

Runs the launcher's per-image path (`varsr.tiling.restore_image`: direct at the model size,
latent tiles + the GroupNorm-exact tiled decoder above it) on a random LR of side output/4.
Default rows: outputs of 1 and 4 native tiles per side -- 512 and 2048 px with the d24 shape on
CUDA (random weights in fp32; the trained model costs the same), 96 and 384 px with the tiny
model on CPU, where 512/2048 would take tens of minutes (ask for them with --outputs 512 2048).
Peak memory: CUDA allocator maximum, or the growth of the process RSS on CPU (common.peakmem).
Prints a Markdown table (and writes it with --out).

    python bench/sample_varsr.py [--device auto] [--size auto|tiny|d24] [--outputs 512 2048]
                                 [--decoder-stats exact|estimate] [--out runs/bench/sample_varsr]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.logging import report_table  # noqa: E402
from common.peakmem import PeakMemory  # noqa: E402
from varsr.evaluate import SampleRunConfig  # noqa: E402
from varsr.model import build_models  # noqa: E402
from varsr.tiling import plan_tiles, restore_image  # noqa: E402


def bench_one(model, vqvae, cfg: SampleRunConfig, side: int, device: torch.device) -> dict:
    lr_side = max(1, side // cfg.scale)
    img = np.random.default_rng(0).integers(0, 256, (lr_side, lr_side, 3), dtype=np.uint8)
    plan = plan_tiles(lr_side, lr_side, model, vqvae, cfg.scale, cfg.tile_overlap, cfg.decoder_tile, cfg.tile_batch)
    tiled = max(plan.out) > model.cfg.image_size
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        out = restore_image(model, vqvae, img, cfg, device, torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sec = time.perf_counter() - t0
    assert out.shape[-2:] == (lr_side * cfg.scale,) * 2
    return {
        "model": "tiny" if model.cfg.depth == 2 else f"d{model.cfg.depth}",
        "device": device.type,
        "output": f"{out.shape[-1]}x{out.shape[-2]}",
        "path": "tiled" if tiled else "direct",
        "latent tiles": plan.n_tiles if tiled else 1,
        "decoder tiles": plan.n_decoder_tiles if tiled else 1,
        "decoder stats": cfg.decoder_stats if tiled and plan.n_decoder_tiles > 1 else "-",
        "s/image": round(sec, 2),
        "peak MiB": round(pm.peak_delta / 2**20, 1),
        "estimate MiB": round(plan.est_bytes / 2**20, 1),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--size", default="auto", help="auto (d24 on CUDA, tiny on CPU) | tiny | d24 | ...")
    ap.add_argument("--outputs", type=int, nargs="*", default=None, help="output sides in px (default 1 and 4 tiles)")
    ap.add_argument("--decoder-stats", default="exact", choices=["exact", "estimate"])
    ap.add_argument("--decoder-tile", type=int, default=None, help="latent cells; default 2 x model grid")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write <out>.md/.csv/.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    size = a.size if a.size != "auto" else ("d24" if device.type == "cuda" else "tiny")
    torch.manual_seed(0)
    model, vqvae = build_models(size)
    model, vqvae = model.to(device).eval(), vqvae.to(device).eval()
    S = model.cfg.image_size
    cfg = SampleRunConfig(
        model=model.cfg,
        ckpt=None,
        vae_ckpt=None,
        lr_dir="-",
        device=device.type,
        decoder_stats=a.decoder_stats,
        decoder_tile=a.decoder_tile,
        max_output_pixels=None,
    )
    if device.type == "cuda":  # warm-up: kernels/autotuning outside the timed rows
        bench_one(model, vqvae, cfg, S, device)
    rows = [bench_one(model, vqvae, cfg, side, device) for side in (a.outputs or [S, 4 * S])]
    return report_table(rows, a.out)


if __name__ == "__main__":
    main()
