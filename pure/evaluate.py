"""Folder restoration with PURE (+ metrics): the body of `launch/sample_pure.py`.

Every LR image of `lr_dir` is restored by `pure.restore.Restorer`; the list is split across
ranks by index (DiT `sample_ddp` style; a batch is seeded with seed + its first index, so with
batch_size 1 results do not depend on the world size). Each image gives `<out_dir>/<name>.png`
and `<out_dir>/<name>.json` (degradation sentence, caption, token/forward counts). Rank 0 then
writes `<out_dir>/summary.json` and scores the folder with `common.metrics.evaluate_folders`.
`PureSampleConfig` documents every key of configs/pure/sample.yaml (`pure_sample_schema`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.config import DEVICE, SEED, Relation, at_least, between, checks, one_of, relations, square_within
from common.parallel import get_dtype
from pure.jacobi import SJDConfig
from pure.processors import SamplingConfig


def _patch(vq_size: str) -> int:
    """Pixels per size token of the image block: LATENT_PER_GRID latent cells of the VQ."""
    from pure.model.vq import vq_config
    from pure.tokenizer.image import LATENT_PER_GRID

    return LATENT_PER_GRID * vq_config(vq_size).downsample


@checks(
    window=between(2, 64),  # one pending token + drafts; every position scores the whole vocabulary
    active_from=at_least(0),
    active_until=at_least(0),
    scheme=one_of("speculative_jacobi", "jacobi"),
)
@relations(
    Relation(("active_from", "active_until"), lambda c: c.active_from <= c.active_until, "active_from <= active_until")
)
@dataclass
class SJDSection:
    """Speculative Jacobi decoding (spec §8); off = plain AR decoding."""

    enabled: bool = False  # decode with SJD (lossless w.r.t. AR sampling); false = plain AR
    window: int = 16  # tokens per forward (1 committed + up to 15 drafts); 2..64
    active_from: int = 3  # Jacobi only for generated offsets in [active_from, active_until)
    active_until: int = 4150  # official 64*64 + 64 - 10
    scheme: str = "speculative_jacobi"  # or "jacobi" (greedy, lossless w.r.t. greedy AR)
    uncond_compat: bool = False  # official SJD unconditional context (spec §8.3 bug 2)
    mean_k_compat: bool = False  # official one-k-per-window top-k (bug 3)


@checks(
    vq_size=one_of("ds8", "tiny"),
    out_size=at_least(1),
    resolution=at_least(1),
    cfg=at_least(0.0),
    temperature=at_least(0.0),
    top_k=at_least(0),
    max_new_tokens=at_least(1),
    max_text_tokens=at_least(0),
    batch_size=at_least(1),
    color_fix=one_of("wavelet", "adain", "none"),
    device=DEVICE,
    dtype=one_of("bf16", "fp16", "fp32"),
    scale=at_least(0.01),
    tile_overlap=at_least(0),
    tile_batch=at_least(1),
    max_output_pixels=at_least(1),
    max_input_pixels=at_least(1),
    vq_dtype=one_of("fp32", "bf16"),
    seed=SEED,
)
@relations(
    square_within("out_size"),
    square_within("resolution"),  # the native output is a bucket of about resolution^2 px
    Relation(
        ("resolution", "vq_size"),
        lambda c: c.resolution % _patch(c.vq_size) == 0,
        "resolution must be a multiple of one size token (32 px for the ds8 VQ, 8 px for tiny)",
    ),
    Relation(
        ("tile_overlap", "scale", "resolution"),
        lambda c: c.tile_overlap < max(1, round(c.resolution / c.scale)),
        "tile_overlap (LQ px) must be smaller than the tile, round(resolution / scale) LQ px",
    ),
)
@dataclass
class PureSampleConfig:
    model: Any = None  # ChameleonConfig fields (config group `model`); config.json in ckpt_dir wins
    ckpt_dir: str | None = "checkpoints/PURE"  # HF shards + config.json (nonwhy/PURE or our export); None = random
    vq_ckpt: str | None = "checkpoints/vq_ds8_c2i.pt"  # LlamaGen VQ-8; None = seeded random VQ (plumbing only)
    vq_size: str = "ds8"  # ds8 (released) | tiny (tests)
    tokenizer: str | None = None  # tokenizer JSON or dir; None -> ckpt_dir if it has one, else stand-in
    lr_dir: str = "???"  # folder of LQ images
    hr_dir: str | None = None  # GT folder (same names) -> full-reference metrics
    out_dir: str | None = None  # PNG + JSON per image; None -> <hydra run dir>/sr
    out_size: int | None = None  # resize outputs to this square side (e.g. GT size of demo sets)
    resolution: int = 512  # model input/output side (README: LQ resized to 512)
    # output size: null = the native bucket (about resolution^2, the LQ's aspect ratio kept); a number =
    # exactly scale x the LQ, restored in feathered tiles of resolution/scale LQ px when larger (pure.tiling)
    scale: float | None = None
    tile_overlap: int | None = None  # LQ px shared by neighbouring tiles; null = a quarter tile
    tile_batch: int = 1  # tiles per generation, AR or SJD (each holds a KV cache like one image)
    max_output_pixels: int | None = 67108864  # refuse larger outputs (8192^2) before any work; null = no limit
    max_input_pixels: int | None = 67108864  # inputs declaring more px (file header) are skipped undecoded; null: none
    cfg: float = 0.8  # CFG weight g (README 0.8; 1.0 disables the uncond pass)
    temperature: float = 0.9  # README 0.9; 0 = greedy
    top_k: int = 1  # text top-k outside images (README 1)
    entropy_top_k: bool = True  # PURE's entropy-adaptive k inside images
    max_new_tokens: int = 8192  # hard cap of the answer (README value); the KV cache is sized by what the
    #   request needs (pure.generate.tokens_needed): max_text_tokens + one image block of the LQ's grid + end
    max_text_tokens: int | None = 512  # text budget before the image (PURE's answers: ~100); null = the whole
    #   max_new_tokens budget for any answer (21k KV slots = 11 GB for the 7B at 512: beyond a 24 GB card)
    image_only: bool = False  # prefill <8197><h><w>, stop at the image end (no text answer)
    sjd: SJDSection = field(default_factory=SJDSection)
    batch_size: int = 1  # images per generation, AR or SJD (each holds its own KV cache)
    seed: int = 0  # batch starting at index i uses seed + i
    color_fix: str = "wavelet"  # wavelet (official) | adain | none
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "bf16"  # bf16 | fp16 | fp32 weights on CUDA (CPU always fp32)
    vq_dtype: str = "fp32"  # VQ encoder/decoder on CUDA: fp32 | bf16 (bench/gpu_pure.py times both)
    compile: bool | None = None  # torch.compile the decode/SJD steps (CUDA graphs); null = on CUDA only
    skip_existing: bool = True  # keep PNG+JSON already written (resume after preemption)
    overwrite: bool = False  # replace existing outputs (atomically; wins over skip_existing)
    metrics: Any = None  # metric names, or the `metrics` group's {name: spec}; empty/None = no scoring
    metrics_out: str | None = None  # JSON path (+ _per_image.csv, .md beside it); None -> <out_dir>/metrics.json
    dry_run: str | None = None  # h100 | h200 | a100_80 | a100_40 | rtx4090 | <GiB>: simulate one call at full size
    #   on fake tensors, print memory / FLOPs / time and exit (2 when it does not fit; common/dry_run_report.py)
    preflight: bool = True  # on CUDA, refuse (exit 2) a config whose cheap estimate does not fit the GPU


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pure_sample_schema", node=PureSampleConfig)


def sampling_config(cfg: PureSampleConfig) -> SamplingConfig:
    return SamplingConfig(
        temperature=cfg.temperature, cfg=cfg.cfg, text_top_k=cfg.top_k, entropy_top_k=cfg.entropy_top_k
    )


def sjd_config(cfg: PureSampleConfig) -> SJDConfig | None:
    s = cfg.sjd
    if not s.enabled:
        return None
    return SJDConfig(
        window=s.window,
        active_from=s.active_from,
        active_until=s.active_until,
        scheme=s.scheme,
        uncond_compat=s.uncond_compat,
        mean_k_compat=s.mean_k_compat,
    )


def _dtype(cfg: PureSampleConfig, device: torch.device) -> torch.dtype:
    return get_dtype(cfg.dtype) if device.type == "cuda" else torch.float32


def load_components(cfg: PureSampleConfig, device: torch.device):
    """(model, vq, tokenizer) as the config says; weights via pure.official."""
    from common.logging import get_logger
    from common.paths import require_dir, require_file
    from pure.model import ChameleonForCausalLM, chameleon_config, config_from_dict, from_hf_config_json
    from pure.model.vq import VQModel, vq_config
    from pure.official import load_hf_shards, load_llamagen_vq
    from pure.tokenizer import TextTokenizer, build_test_tokenizer

    log = get_logger("pure.sample")
    ckpt = require_dir(cfg.ckpt_dir, "ckpt_dir") if cfg.ckpt_dir else None  # "is a file" != "does not exist"
    if ckpt is not None and (ckpt / "config.json").is_file():
        mcfg = from_hf_config_json(ckpt)
    elif cfg.model is not None:
        mcfg = config_from_dict(cfg.model)
    else:
        mcfg = chameleon_config("7b")
    mcfg.dropout = 0.0
    dtype = _dtype(cfg, device)
    if ckpt is not None:
        with torch.device("meta"):
            model = ChameleonForCausalLM(mcfg)
        load_hf_shards(model, ckpt, dtype=dtype, device=device)
    else:
        log.warning("no ckpt_dir: randomly initialised %d-layer model (plumbing only)", mcfg.num_hidden_layers)
        torch.manual_seed(cfg.seed)
        model = ChameleonForCausalLM(mcfg).to(device, dtype)
    torch.manual_seed(cfg.seed)  # a random VQ must be the same on every rank and every run
    vq = VQModel(vq_config(cfg.vq_size))
    if cfg.vq_ckpt:
        load_llamagen_vq(vq, require_file(cfg.vq_ckpt, "vq_ckpt"))  # a folder given: "is a folder, not a file"
    else:
        log.warning("no vq_ckpt: randomly initialised VQ (plumbing only)")
    tok_path = cfg.tokenizer
    if (
        tok_path is None
        and ckpt is not None
        and any((ckpt / n).is_file() for n in ("tokenizer.json", "text_tokenizer.json"))
    ):
        tok_path = str(ckpt)
    vq_dtype = get_dtype(cfg.vq_dtype) if device.type == "cuda" else torch.float32
    if tok_path is None:
        log.warning("no tokenizer: using the stand-in test tokenizer")
        # built in a temporary folder and read at once: nothing is written beside (or outside) the outputs
        with tempfile.TemporaryDirectory(prefix="arsr_tok_") as tmp:
            tok = TextTokenizer.from_file(build_test_tokenizer(tmp))
    else:
        tok = TextTokenizer.from_file(tok_path)
    return model.eval(), vq.to(device, vq_dtype).eval(), tok


def _record_ok(path: Path) -> bool:
    """Whether a kept output's JSON record says its image was generated (unreadable: redo it)."""
    try:
        return bool(json.loads(path.read_text()).get("ok", True))
    except (OSError, ValueError, AttributeError):
        return False


def _restore_or_skip(restorer, batch: list, generator, skips, path_of) -> list:
    """[(index, RestoreResult)] of a batch [(index, image)]; an image the restorer rejects (below
    the minimum size, over max_output_pixels) is skipped and counted, the rest still run."""
    from common.paths import ImageRejected

    if len(batch) > 1 and restorer.scale is not None:
        # Scaled runs restore image after image anyway (their tiles are what is batched): going one at a
        # time draws the same numbers, and a rejected image no longer discards the ones restored before it.
        return [r for item in batch for r in _restore_or_skip(restorer, [item], generator, skips, path_of)]
    try:
        return list(zip([i for i, _ in batch], restorer.restore([img for _, img in batch], generator)))
    except ImageRejected as e:
        if len(batch) == 1:
            skips.skip(path_of(batch[0][0]), str(e))
            return []
    return [r for item in batch for r in _restore_or_skip(restorer, [item], generator, skips, path_of)]


def build_restorer(cfg: PureSampleConfig, model, vq, tok, log=None):
    """The `pure.restore.Restorer` a sampling config describes (folder runs and the web demo)."""
    from pure.engine import set_default_compile
    from pure.restore import Restorer

    set_default_compile(cfg.compile)  # compiled decode steps: the config's switch, else by device
    return Restorer(
        model,
        vq,
        tok,
        sampling_config(cfg),
        sjd_config(cfg),
        resolution=cfg.resolution,
        max_new_tokens=cfg.max_new_tokens,
        max_text_tokens=cfg.max_text_tokens,
        color_fix=cfg.color_fix,
        image_only=cfg.image_only,
        scale=cfg.scale,
        tile_overlap=cfg.tile_overlap,
        tile_batch=cfg.tile_batch,
        max_output_pixels=cfg.max_output_pixels,
        log=log,
    )


def run_restore(cfg: PureSampleConfig, default_out: str | Path = "sr") -> dict:
    """Restore a folder (distributed under torchrun); returns metrics + summary on rank 0.

    Paths are checked before the model loads (common.paths): the output folder may not overlap
    the inputs, unreadable images are skipped and counted (``skipped`` in the result).
    """
    from common.checkpoint import atomic_write_bytes
    from common.data.io import write_image
    from common.dist import all_gather_object, barrier, get_rank, get_world_size, init_distributed, is_main
    from common.logging import get_logger, progress
    from common.paths import SkipLog, start_folder_run

    log = get_logger("pure.sample")
    skips = SkipLog("pure.sample", log, cfg.max_input_pixels)
    files, out_dir, keep = start_folder_run(
        cfg,
        default_out,
        {"ckpt_dir": cfg.ckpt_dir, "vq_ckpt": cfg.vq_ckpt, "tokenizer": cfg.tokenizer},
        lambda n: [f"{n}.png", f"{n}.json"],
        ignore=frozenset({"compile"}),
        skips=skips,
    )
    # an older version wrote the bicubic LQ for a failed generation (record "ok": false): redo those
    keep = {n for n in keep if _record_ok(out_dir / f"{n}.json")}
    cfg.out_dir = str(out_dir)
    info = init_distributed(None if cfg.device == "auto" else cfg.device)
    device = info.device
    model, vq, tok = load_components(cfg, device)
    restorer = build_restorer(cfg, model, vq, tok, log)
    names = sorted(files)
    rank, world = get_rank(), get_world_size()
    mine = [i for i in range(rank, len(names), world) if names[i] not in keep]
    # The JSON, written after the image, marks a name complete (skip_existing keeps only names with both).
    # Drop the marks of every name this rank redoes before any work, so a run killed part-way through
    # replacing an older folder leaves no new image beside an old record, nor old outputs that a resume
    # with other settings would keep.
    for i in mine:
        (out_dir / f"{names[i]}.json").unlink(missing_ok=True)
    t0, done, failed = time.time(), sum(names[i] in keep for i in range(rank, len(names), world)), 0
    for start in progress(range(0, len(mine), cfg.batch_size), desc="pure restore"):
        batch = [(i, skips.read(files[names[i]])) for i in mine[start : start + cfg.batch_size]]
        batch = [(i, img) for i, img in batch if img is not None]
        if not batch:
            continue
        gen = torch.Generator(device=device).manual_seed(cfg.seed + batch[0][0])
        results = _restore_or_skip(restorer, batch, gen, skips, lambda i: files[names[i]])
        for i, res in results:
            if not res.ok:  # no image block: the bicubic LQ is not a result (it would be scored as one)
                skips.skip(files[names[i]], "no valid image generated (nothing written; retried by the next run)")
                failed += 1
                continue
            done += 1
            img = res.image
            if cfg.out_size:
                img = torch.nn.functional.interpolate(
                    img[None], size=(cfg.out_size, cfg.out_size), mode="bicubic", align_corners=False
                )[0].clamp(0, 1)
            write_image(out_dir / f"{names[i]}.png", img)  # temp name + rename: never a half-written file
            atomic_write_bytes(
                out_dir / f"{names[i]}.json", json.dumps({"name": names[i], **res.record()}, indent=1).encode()
            )
    counts = skips.finish(done, extra=f" in {time.time() - t0:.1f}s -> {out_dir}")
    failed = sum(all_gather_object(failed))  # counted among the skipped (exit code 3), reported apart
    barrier()
    if not is_main():
        return {"skipped": counts["skipped"]}
    records = [json.loads((out_dir / f"{n}.json").read_text()) for n in names if (out_dir / f"{n}.json").is_file()]
    summary = {
        "images": len(records),
        "failed": failed,  # generations of this run that gave no image (also in skipped_files)
        "mean_seconds": sum(r["seconds"] for r in records) / max(1, len(records)),
        "mean_forwards": sum(r["forwards"] for r in records) / max(1, len(records)),
        "mean_new_tokens": sum(r["new_tokens"] for r in records) / max(1, len(records)),
    }
    summary.update(skipped=counts["skipped"], skipped_files=counts["skipped_files"])
    atomic_write_bytes(out_dir / "summary.json", json.dumps(summary, indent=1).encode())
    from common.metrics.select import score_run

    scores = score_run(cfg, out_dir, counts["skipped"], device)  # no HR: no-reference ones (NIQE at least)
    return {"summary": summary, **scores, "skipped": counts["skipped"]}


__all__ = [
    "PureSampleConfig",
    "SJDSection",
    "load_components",
    "register_configs",
    "run_restore",
    "sampling_config",
    "sjd_config",
]
