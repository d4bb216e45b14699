"""PURE restoration at any size: seconds per image and peak memory, one native tile vs a tiled output.

Runs `pure.restore.Restorer` with `scale=4` (exactly 4x the LQ; feathered tiles of resolution/4
LQ px above one native tile, `pure.tiling`) in image-only mode on a random LQ of side output/4.
Default rows: outputs of 1 and 4 native tiles per side -- 512 and 2048 px on CUDA with the 7B
shape in bf16 (random weights, as bench/generate_pure.py; fewer layers if it does not fit) and
LlamaGen's VQ-8 shape; the tiny model and tiny VQ at resolution 32 on CPU (32 and 128 px: on two
CPU cores one native 512 tile alone is ~4k tiny-model steps plus a 512^2 VQ round trip of about a
minute).  Random weights decode every image token, so the time is that of a full image.
Peak memory: CUDA allocator maximum, or the growth of the process RSS on CPU (common.peakmem).

    python bench/sample_pure.py [--device auto] [--outputs 512 2048] [--resolution 32] [--tile-batch N]
                                [--out runs/bench/sample_pure]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.logging import report_table  # noqa: E402
from common.peakmem import PeakMemory  # noqa: E402
from pure.model import ChameleonForCausalLM, chameleon_config  # noqa: E402
from pure.model.vq import VQModel, vq_config  # noqa: E402
from pure.processors import SamplingConfig  # noqa: E402
from pure.restore import Restorer  # noqa: E402
from pure.tiling import plan  # noqa: E402
from pure.tokenizer import TextTokenizer, build_test_tokenizer  # noqa: E402


def build(device: torch.device):
    """(name, model, vq): the 7B shape + VQ-8 on CUDA, the tiny pair on CPU (random weights)."""
    torch.manual_seed(0)
    if device.type == "cuda":
        from generate_pure import cuda_model  # the one "largest 7B shape that fits" rule

        name, model = cuda_model(device)
        return name, model, VQModel(vq_config("ds8")).to(device).eval()
    return "tiny", ChameleonForCausalLM(chameleon_config("tiny")).eval(), VQModel(vq_config("tiny")).eval()


def bench_one(restorer: Restorer, side: int, device: torch.device, name: str) -> dict:
    lq_side = max(1, side // 4)
    lq = np.random.default_rng(0).integers(0, 256, (lq_side, lq_side, 3), dtype=np.uint8)
    p = plan(
        lq_side,
        lq_side,
        4,
        restorer.resolution,
        restorer.tile_overlap,
        restorer.kv_bytes_per_image() * restorer.tile_batch,
        restorer.weight_bytes(),
    )
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        (res,) = restorer.restore([lq], torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sec = time.perf_counter() - t0
    assert res.image.shape[-2:] == (4 * lq_side,) * 2
    return {
        "model": name,
        "device": device.type,
        "resolution": restorer.resolution,
        "output": f"{res.image.shape[-1]}x{res.image.shape[-2]}",
        "tiles": res.tiles,
        "tile batch": restorer.tile_batch,
        "image tokens": res.new_tokens,
        "all images ok": res.ok,
        "s/image": round(sec, 2),
        "peak MiB": round(pm.peak_delta / 2**20, 1),
        "estimate MiB": round(p.est_bytes / 2**20, 1),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--resolution", type=int, default=None, help="native side; default 512 on CUDA, 32 on CPU")
    ap.add_argument("--outputs", type=int, nargs="*", default=None, help="output sides (default 1 and 4 tiles)")
    ap.add_argument(
        "--tile-batch",
        type=int,
        default=None,
        help="tiles per AR generation; default 1 on CUDA "
        "(a 7B tile's KV cache is ~6 GB), 25 on CPU (all 5x5 tiles of the tiny run at once)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write <out>.md/.csv/.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    res = a.resolution or (512 if device.type == "cuda" else 32)
    name, model, vq = build(device)
    with tempfile.TemporaryDirectory() as tmp:  # the stand-in tokenizer (ids at PURE's positions)
        tok = TextTokenizer.from_file(build_test_tokenizer(tmp))
        grid_tokens = (res // vq.config.downsample) * (res // vq.config.downsample + 1)
        restorer = Restorer(
            model,
            vq,
            tok,
            SamplingConfig(),
            resolution=res,
            max_new_tokens=grid_tokens + 8,
            image_only=True,
            scale=4,
            tile_batch=a.tile_batch or (1 if device.type == "cuda" else 25),
            autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
        )
        rows = [bench_one(restorer, side, device, name) for side in (a.outputs or [res, 4 * res])]
    return report_table(rows, a.out)


if __name__ == "__main__":
    main()
