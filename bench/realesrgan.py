"""Real-ESRGAN x4plus inference (`common.baseline`): time and peak memory, small and large inputs.

Rows: one 96 px output (the `make demo` test images: 24 px LR, one tile) and the tiled x4 of a
2000 x 1500 input (an 8000 x 6000 output, uint8 buffer, default tile 256 / context 32 LR px).
``--max-tiles N`` times only the N tiles of the large plan with the largest windows (interior tiles):
the peak memory is then already the whole run's (the output buffer is allocated in full, one tile is
resident at a time) and the whole image's time is extrapolated from the seconds per window pixel
(column `extrapolated`: true). The real released weights come from the cache (`make setup`).

    python bench/realesrgan.py [--size 2000x1500] [--threads 1] [--max-tiles 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.baseline.tiled import DEFAULT_TILE, DEFAULT_TILE_PAD, tile_grid, upscale  # noqa: E402
from common.baseline.weights import load_model  # noqa: E402
from common.logging import report_table  # noqa: E402
from common.peakmem import PeakMemory  # noqa: E402


def _window_px(grid, idx=None) -> int:
    return sum((y1 - y0) * (x1 - x0) for i, (_, (y0, y1, x0, x1)) in enumerate(grid) if idx is None or i in idx)


def run(model, device, h: int, w: int, tile: int, pad: int, max_tiles: int | None, reps: int = 1) -> dict:
    lr = (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
    grid = tile_grid(h, w, tile, pad)
    n_all = len(grid)
    n = min(max_tiles or n_all, n_all)
    area = [(y1 - y0) * (x1 - x0) for _, (y0, y1, x0, x1) in grid]
    idx = sorted(sorted(range(n_all), key=lambda i: -area[i])[:n])  # the largest windows: the peak tile
    secs = []
    with PeakMemory(device) as pm:
        for _ in range(reps):
            t0 = time.perf_counter()
            upscale(model, lr, tile, pad, show_progress=False, out_dtype=torch.uint8, only_tiles=idx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs.append(time.perf_counter() - t0)
    s = min(secs)
    total = s * _window_px(grid) / _window_px(grid, set(idx))
    return {
        "input": f"{w}x{h}",
        "output": f"{4 * w}x{4 * h}",
        "tiles run": f"{n} of {n_all}",
        "seconds": round(s, 2),
        "seconds, whole image": round(total, 1) if n < n_all else round(s, 2),
        "extrapolated": n < n_all,
        "peak MiB (over start)": round(pm.peak_delta / 2**20),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2000x1500", help="large input, WxH")
    ap.add_argument("--tile", type=int, default=DEFAULT_TILE)
    ap.add_argument("--tile-pad", type=int, default=DEFAULT_TILE_PAD)
    ap.add_argument("--max-tiles", type=int, default=0, help="time only the N largest tiles of the large plan (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="runs/bench/realesrgan", help="table stem (.md/.csv/.json)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model = load_model(None, device)
    w, h = (int(v) for v in a.size.lower().split("x"))
    rows = [run(model, device, 24, 24, a.tile, a.tile_pad, None, reps=3)]  # warms up too
    rows.append(run(model, device, h, w, a.tile, a.tile_pad, a.max_tiles or None))
    title = (
        f"Real-ESRGAN x4plus, {device.type}, {torch.get_num_threads()} thread(s), fp32, tile {a.tile} "
        f"+ {a.tile_pad} px context, torch {torch.__version__}"
    )
    return report_table(rows, a.out, title)


if __name__ == "__main__":
    main()
