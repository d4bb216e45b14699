"""The baselines of the papers' tables over a folder: the body of ``launch/sample_baseline.py``.

``method=realesrgan`` runs Real-ESRGAN x4plus (``common.baseline.weights`` / ``tiled``), ``method=bicubic``
PIL bicubic to exactly ``scale`` x the input. Both follow the folder tools' rules (``common.paths``):
the output folder may not overlap an input folder, unreadable or over-limit images are skipped, named
and counted (exit 3), outputs already there are kept / replaced / refused (``skip_existing`` /
``overwrite``), and the folder is scored like the apps' sampling runs (``metrics``, against ``hr_dir``
when given), so a sweep ``-m method=bicubic,realesrgan`` yields both rows of one table.

`niqe_table` is the behaviour check of the demo report and the tests: Real-ESRGAN against bicubic on
the bundled photos, NIQE per photo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import DEVICE, at_least, checks, one_of

from .tiled import DEFAULT_TILE, DEFAULT_TILE_PAD, SCALE, check_size, plan_line, upscale


@checks(
    method=one_of("realesrgan", "bicubic"),
    scale=at_least(1),
    tile=at_least(0),
    tile_pad=at_least(0),
    max_output_pixels=at_least(1),
    max_input_pixels=at_least(1),
    device=DEVICE,
)
@dataclass
class BaselineConfig:
    """``launch/sample_baseline.py`` (``configs/common/sample_baseline.yaml``): a baseline over a folder."""

    method: str = "realesrgan"  # realesrgan (Real-ESRGAN x4plus) | bicubic (PIL bicubic)
    # RealESRGAN_x4plus.pth (official, params_ema), a .safetensors in that layout, or an ncnn .param (its
    # .bin beside it); None: the ncnn pair `make setup` put into the cache ($ARSR_CACHE or ~/.cache/arsr)
    weights: str | None = None
    lr_dir: str = "???"  # folder of LR images
    hr_dir: str | None = None  # GT folder (same names) -> full-reference metrics
    out_dir: str | None = None  # SR PNGs; None -> <hydra run dir>/sr
    scale: int = 4  # output = scale x LR (bicubic: any; realesrgan: 4, the model's own factor)
    tile: int = DEFAULT_TILE  # realesrgan: LR px per tile core (0 = whole image at once)
    tile_pad: int = DEFAULT_TILE_PAD  # realesrgan: LR px of context around each core (fewer seam errors, slower)
    max_output_pixels: int | None = 67108864  # refuse larger outputs up front (8192^2); null = no limit
    max_input_pixels: int | None = 67108864  # inputs declaring more px (file header) are skipped undecoded; null: none
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # progress bars (per image, and per tile for realesrgan)
    metrics: Any = None  # metric names, or the `metrics` group's {name: spec}; empty/None = no scoring
    metrics_out: str | None = None  # JSON path (+ _per_image.csv, .md beside it); None -> <out_dir>/metrics.json
    skip_existing: bool = True  # keep SR PNGs already in out_dir (resume a killed run)
    overwrite: bool = False  # replace existing SR PNGs (atomically; wins over skip_existing)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="baseline_schema", node=BaselineConfig)


def bicubic(img: np.ndarray, scale: int, max_output_pixels: int | None = None) -> np.ndarray:
    """uint8 HWC -> uint8 (scale h, scale w) HWC, PIL bicubic (what the papers' bicubic rows use)."""
    from PIL import Image

    h, w = img.shape[:2]
    check_size(h, w, max_output_pixels, scale)
    return np.asarray(Image.fromarray(img).resize((w * scale, h * scale), Image.BICUBIC))


class Upscaler:
    """One callable for either method: uint8 HWC in, uint8 HWC out (exactly ``scale`` x)."""

    def __init__(self, cfg: BaselineConfig, device: torch.device | str = "cpu", log=None):
        self.cfg, self.log, self.model = cfg, log, None
        if cfg.method == "realesrgan":
            if cfg.scale != SCALE:
                raise ValueError(f"scale={cfg.scale}: Real-ESRGAN x4plus upscales by exactly {SCALE}")
            from .weights import load_model

            self.model = load_model(cfg.weights, device)

    def __call__(self, img: np.ndarray, show_progress: bool | None = None, tile: int | None = None) -> np.ndarray:
        """``tile``: overrides ``cfg.tile`` for this image (the web page's tiling switch)."""
        cfg = self.cfg
        if self.model is None:
            return bicubic(img, cfg.scale, cfg.max_output_pixels)
        h, w = img.shape[:2]
        tile = cfg.tile if tile is None else tile
        check_size(h, w, cfg.max_output_pixels)
        if self.log is not None:
            self.log.info("realesrgan %s", plan_line(h, w, tile, cfg.tile_pad))
        show = cfg.progress if show_progress is None else show_progress
        out = upscale(self.model, img, tile, cfg.tile_pad, cfg.max_output_pixels, show, torch.uint8)
        return out[0].permute(1, 2, 0).numpy()


def run_baseline(cfg: BaselineConfig, default_out: str | Path = "sr") -> dict:
    """Upscale a folder; returns the metrics summary (when scored) with images / skipped / seconds per image."""
    from common.data.io import write_image
    from common.logging import get_logger, progress
    from common.metrics.select import score_run
    from common.paths import ImageRejected, SkipLog, start_folder_run

    log = get_logger(f"baseline.{cfg.method}")
    weights = {"weights": cfg.weights} if cfg.method == "realesrgan" else {}
    files, out_dir, keep = start_folder_run(cfg, default_out, weights, lambda n: [f"{n}.png"])
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    upscaler = Upscaler(cfg, device, log)
    skips = SkipLog(f"baseline.{cfg.method}", log, cfg.max_input_pixels)
    done, new, t0 = 0, 0, time.time()
    for name in progress(sorted(files), desc=cfg.method, disable=not cfg.progress):
        if name in keep:
            done += 1
            continue
        img = skips.read(files[name])
        if img is None:
            continue
        try:
            sr = upscaler(img)
        except ImageRejected as e:  # over max_output_pixels: this image only
            skips.skip(files[name], str(e))
            continue
        write_image(out_dir / f"{name}.png", sr)  # temp name + rename: never a half PNG
        done, new = done + 1, new + 1
    seconds = (time.time() - t0) / max(new, 1)
    counts = skips.finish(done, gather=False, extra=f", {seconds:.3f} s/image -> {out_dir}")
    result = {
        "images": counts["done"],
        "skipped": counts["skipped"],
        "skipped_files": counts["skipped_files"],
        "seconds_per_image": seconds,
    }
    scores = score_run(cfg, out_dir, counts["skipped"], device) if cfg.metrics else {}
    return {**scores, **result}


def niqe(img: np.ndarray) -> float:
    """basicsr's NIQE of a uint8 RGB image (Y channel, no crop)."""
    from common.compat.basicsr import metrics

    return float(metrics().calculate_niqe(img[..., ::-1].astype(np.float64), 0, input_order="HWC", convert_to="y"))


def niqe_table(work_dir, model, crop: int = 256, limit: int | None = None, seed: int = 0) -> list[dict]:
    """NIQE of Real-ESRGAN vs bicubic on ``crop`` px crops of the bundled photos degraded with the
    ``realesrgan`` preset (``launch/degrade.py``'s folder logic, ``seed``); one row per photo."""
    from common.config import compose_config, to_dataclass
    from common.data.bundled import write_bundled_dataset
    from common.data.io import read_image
    from common.degradation.folder import DegradeConfig, degrade_folder

    work = Path(work_dir)
    photos = write_bundled_dataset(work / "photos", size=512)
    over = [f"hr_dir={photos / 'HR'}", f"out_dir={work / 'degraded'}", "degradation=realesrgan"]
    over += [f"seed={seed}", f"crop={crop}", "overwrite=true", "progress=false", "device=cpu"]
    over += [f"limit={limit}"] if limit else []
    degrade_folder(to_dataclass(DegradeConfig, compose_config("common", "degrade", over)))
    rows = []
    for lr_path in sorted((work / "degraded" / "LR").glob("*.png")):
        lr = read_image(lr_path)
        sr = upscale(model, lr, tile=0, show_progress=False, out_dtype=torch.uint8)[0].permute(1, 2, 0).numpy()
        rows.append({"image": lr_path.stem, "bicubic": niqe(bicubic(lr, SCALE)), "realesrgan": niqe(sr)})
    return rows


__all__ = ["BaselineConfig", "Upscaler", "bicubic", "niqe", "niqe_table", "register_configs", "run_baseline"]
