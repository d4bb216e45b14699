"""Folder SR with VARSR (+ optional metrics): the body of `launch/sample_varsr.py`.

Reads every LR image of `lr_dir` (LR-only or paired with `hr_dir` by file name), splits the
list across ranks by index (DiT `sample_ddp` style, each image seeded by seed + its index so
results do not depend on the world size), writes `<out_dir>/<name>.png`, and on rank 0 scores
the folder with `common.metrics.evaluate_folders`.  `SampleRunConfig` documents every key of
`configs/varsr/sample.yaml` and is registered in Hydra's ConfigStore as `varsr_sample_schema`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import (
    DEVICE,
    PROBABILITY,
    SEED,
    Relation,
    at_least,
    checks,
    one_of,
    relations,
    square_within,
)

from .fastvar import FastVARConfig
from .model import build_models
from .model.config import VARSRModelConfig, config_from_dict, model_config
from .official import load_official_varsr, load_official_vqvae
from .sample import resize_bicubic
from .tiling import restore_image


@checks(
    scale=at_least(1),
    out_size=at_least(1),
    cfg=at_least(0.0),
    top_k=at_least(0),
    top_p=PROBABILITY,
    temperature=at_least(0.0),
    tile_cfg=at_least(0.0),
    seed=SEED,
    refiner_temperature=at_least(0.0),
    color_fix=one_of("adain", "wavelet", "none"),
    intermediate_max=at_least(0),
    device=DEVICE,
    tile=one_of("auto", "on", "off"),
    decoder_tile=at_least(0),
    decoder_stats=one_of("exact", "estimate"),
    max_output_pixels=at_least(1),
    max_input_pixels=at_least(1),
    tile_overlap=at_least(0),
    tile_batch=at_least(1),
    dtype=one_of("fp32", "fp16", "bf16"),
)
@relations(
    square_within("out_size"),
    Relation(
        ("tile_overlap", "model.patch_nums"),
        lambda c: c.tile_overlap < c.model.patch_nums[-1],
        "tile_overlap (tokens) must be smaller than the tile, the model's last patch_num",
    ),
)
@dataclass
class SampleRunConfig:
    model: VARSRModelConfig = field(default_factory=lambda: model_config("d24"))  # config group `model`
    ckpt: str | None = "checkpoints/VARSR.pth"  # transformer weights (official layout or our export)
    vae_ckpt: str | None = "checkpoints/VQVAE.pth"  # VQVAE weights
    lr_dir: str = "???"  # folder of LR images
    hr_dir: str | None = None  # GT folder (same names) -> full-reference metrics
    out_dir: str | None = None  # SR PNGs; None -> <hydra run dir>/sr
    scale: int = 4  # output = scale x LR size (unless out_size)
    out_size: int | None = None  # force a square output side (e.g. demo sets)
    cfg: float = 6.0  # CFG weight at the last scale (official 6.0)
    top_k: int = 1  # 1 = greedy (official)
    top_p: float = 0.0  # nucleus; 0 disables
    temperature: float = 1.0  # token sampling temperature
    refiner_temperature: float = 1.0  # diffusion refiner noise scale
    seed: int = 0  # image i uses seed + i
    color_fix: str = "adain"  # adain | wavelet | none
    tile: str = "auto"  # auto (tile when scale x LR > model size) | on | off
    tile_cfg: float = 7.0  # CFG used for tiles (upstream test_tile.py)
    tile_overlap: int | None = None  # tokens; None -> tile / 4 (8)
    decoder_tile: int | None = None  # decoder tile, latent cells; None: 2 x model grid; 0: one shot
    decoder_stats: str = "exact"  # tiled-decoder GroupNorm statistics: exact | estimate (1 pass)
    tile_batch: int | None = 4  # latent tiles generated together (KV cache each); null = a row
    max_output_pixels: int | None = 67108864  # refuse larger outputs (8192^2) up front; null = no limit
    max_input_pixels: int | None = 67108864  # inputs declaring more px (file header) are skipped undecoded; null: none
    fastvar: FastVARConfig = field(default_factory=FastVARConfig)  # cached token pruning (spec 11)
    export_intermediate: bool = False  # decode f_hat after each scale -> <name>_scales/
    intermediate_max: int = 10  # ... for the first N images only
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (autocast on CUDA)
    metrics: Any = None  # metric names, or the `metrics` group's {name: spec}; empty/None = no scoring
    metrics_out: str | None = None  # JSON path (+ _per_image.csv, .md beside it); None -> <out_dir>/metrics.json
    skip_existing: bool = True  # keep SR PNGs already in out_dir (resume a killed run)
    overwrite: bool = False  # replace existing SR PNGs (atomically; wins over skip)
    dry_run: str | None = None  # h100 | h200 | a100_80 | a100_40 | rtx4090 | <GiB>: simulate one image at full
    #   size on fake tensors, print memory / FLOPs / time and exit (2 when it does not fit; common/dry_run_report.py)
    preflight: bool = True  # on CUDA, refuse (exit 2) a config whose cheap estimate does not fit the GPU


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="varsr_sample_schema", node=SampleRunConfig)


def load_models(cfg: SampleRunConfig, device: torch.device):
    mcfg = cfg.model if isinstance(cfg.model, VARSRModelConfig) else config_from_dict(cfg.model)
    use_meta = bool(cfg.ckpt and cfg.vae_ckpt)  # real weights: skip random init entirely
    model, vqvae = build_models(mcfg, "meta" if use_meta else None)
    if cfg.ckpt:
        load_official_varsr(cfg.ckpt, model)
    if cfg.vae_ckpt:
        load_official_vqvae(cfg.vae_ckpt, vqvae)
    return model.to(device).eval(), vqvae.to(device).eval()


def sr_one(model, vqvae, img: np.ndarray, cfg: SampleRunConfig, device, generator, on_scale=None) -> torch.Tensor:
    """One LR image (uint8 HWC) -> SR (1, 3, scale*h, scale*w) in [0, 1] (any size, see varsr.tiling)."""
    from common.logging import get_logger

    out = restore_image(model, vqvae, img, cfg, device, generator, on_scale, log=get_logger("varsr.sample"))
    if cfg.out_size:
        out = resize_bicubic(out, (cfg.out_size, cfg.out_size))
    return out


def run_sampling(cfg: SampleRunConfig, default_out: str | Path = "sr") -> dict:
    """Sample a folder (distributed when under torchrun).

    Paths are checked before the models load (common.paths): the output folder may not overlap
    the inputs, unreadable images are skipped and counted. Returns the metrics summary (rank 0,
    when scored) with ``skipped`` / ``skipped_files`` / ``images`` added.
    """
    from common.data.io import write_image
    from common.dist import barrier, get_rank, get_world_size, init_distributed, is_main
    from common.logging import get_logger, progress
    from common.parallel import get_dtype
    from common.paths import ImageRejected, SkipLog, start_folder_run

    log = get_logger("varsr.sample")
    skips = SkipLog("varsr.sample", log, cfg.max_input_pixels)
    files, out_dir, keep = start_folder_run(
        cfg,
        default_out,
        {"ckpt": cfg.ckpt, "vae_ckpt": cfg.vae_ckpt},
        lambda n: [f"{n}.png"],
        ignore=frozenset({"export_intermediate", "intermediate_max"}),
        skips=skips,
    )
    names = sorted(files)
    info = init_distributed(None if cfg.device == "auto" else cfg.device)
    device = info.device
    model, vqvae = load_models(cfg, device)
    rank, world = get_rank(), get_world_size()
    amp = None if cfg.dtype == "fp32" else get_dtype(cfg.dtype)  # fp32: autocast off
    t0, done = time.time(), 0
    for i in progress(range(rank, len(names), world), desc="varsr sr"):
        name = names[i]
        if name in keep:
            done += 1
            continue
        img = skips.read(files[name])
        if img is None:
            continue
        gen = torch.Generator(device=device).manual_seed(cfg.seed + i)  # by index: unreadable files shift nothing
        on_scale = None
        if cfg.export_intermediate and i < cfg.intermediate_max:

            def on_scale(si, f_hat, name=name):
                pn = model.patch_nums[si]
                x = (vqvae.decode_fhat(f_hat[:1]).float() + 1) / 2
                write_image(out_dir / f"{name}_scales" / f"side{pn}.png", x[0])

        on_cuda_amp = amp is not None and device.type == "cuda"
        try:
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=on_cuda_amp):
                sr = sr_one(model, vqvae, img, cfg, device, gen, on_scale)
        except ImageRejected as e:  # below the minimum / over max_output_pixels: this image only
            skips.skip(files[name], str(e))
            continue
        write_image(out_dir / f"{name}.png", sr[0].float().cpu())  # temp name + rename: never a half PNG
        done += 1
    counts = skips.finish(done, extra=f" in {time.time() - t0:.1f}s -> {out_dir}")
    barrier()
    result = {"images": counts["done"], "skipped": counts["skipped"], "skipped_files": counts["skipped_files"]}
    if not (is_main() and cfg.metrics):  # a dict from the config group gives its keys below
        return result
    from common.metrics.select import score_run

    # skipped inputs have no output: score what was produced, the skips are already counted
    scores = score_run(cfg, out_dir, counts["skipped"], device)  # no HR: the no-reference ones (NIQE at least)
    return {**scores, **result}


__all__ = ["SampleRunConfig", "register_configs", "run_sampling", "sr_one", "load_models"]
