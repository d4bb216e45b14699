"""Degrade a folder of HR images into an (HR, LR) pair folder with per-image parameters.

The logic behind ``launch/degrade.py``: every readable image is either trimmed to a multiple of
the scale (default) or randomly cropped (``crop=N``, training style), degraded with the chosen
preset, and written as ``out_dir/HR/<stem>.png`` (the degraded target: USM-sharpened when the
preset says so, as SeeSR's offline pairs store it), ``out_dir/LR/<stem>.png`` (exactly 1/scale)
and one line of ``out_dir/params.jsonl``.  Each image's crop, kernels and random choices come
from (seed, image index) alone, so a file's pair does not depend on batching or on which other
files were readable.  Unreadable and too-small files are skipped and counted.

A pair is complete when HR, LR and its params line all exist: the line is appended after both
images are written, and the lines of pairs about to be redone are dropped before any is, so a killed
run (resumed with ``skip_existing``) never keeps a new HR beside an old LR or an old line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_write_bytes
from common.config import DEVICE, SEED, at_least, checks
from common.data.io import is_image_file, to_tensor, write_image
from common.logging import get_logger, progress
from common.paths import (
    SkipLog,
    check_existing,
    check_settings,
    output_settings,
    prepare_output_dir,
    release_folder_locks,
    require_dir,
)

from .kernels import KernelSampler, collate_kernels
from .pipeline import Degrader
from .presets import DegradationConfig


@checks(
    crop=at_least(1),
    batch_size=at_least(1),
    device=DEVICE,
    limit=at_least(0),
    min_size=at_least(1),
    max_input_pixels=at_least(1),
    seed=SEED,
)
@dataclass
class DegradeConfig:
    """``launch/degrade.py``: HR folder -> HR/LR pair folder."""

    hr_dir: str = "???"  # input folder of HR images (searched recursively, sorted by path)
    out_dir: str = "???"  # output folder: HR/, LR/, params.jsonl
    degradation: DegradationConfig = field(default_factory=DegradationConfig)  # preset (config group)
    seed: int = 0  # with the image index, determines crop, kernels and every random choice
    crop: int | None = None  # None: whole image trimmed to a multiple of scale; N: random N x N crop
    batch_size: int = 8  # images degraded together (only images of equal size are batched)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    limit: int | None = None  # process at most this many files (after sorting)
    min_size: int = 64  # skip images whose shorter side (after trimming) is below this
    max_input_pixels: int | None = 67108864  # inputs declaring more px (file header) are skipped undecoded; null: none
    progress: bool = True  # show a progress bar
    skip_existing: bool = False  # keep pairs already in out_dir (and their params.jsonl lines): resume
    overwrite: bool = False  # replace existing pairs (atomically; wins over skip_existing); neither: refuse


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _prepare(img: np.ndarray, crop: int | None, scale: int, rng: np.random.Generator):
    """Random crop (training style) or trim to a multiple of ``scale``; returns (array, [top, left])."""
    h, w = img.shape[:2]
    if crop is not None:
        if h < crop or w < crop:
            return None, None
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        return img[top : top + crop, left : left + crop], [top, left]
    return img[: h - h % scale, : w - w % scale], [0, 0]


def _output_names(files: list[Path]) -> list[str]:
    """``<stem>.png`` per input; a repeated stem (a.jpg and a.png) gets ``<stem>_<index>.png``."""
    names, used = [], set()
    for idx, path in enumerate(files):
        name = path.stem + ".png"
        if name in used:
            name = f"{path.stem}_{idx}.png"
        used.add(name)
        names.append(name)
    return names


def _old_records(path: Path) -> dict[str, str]:
    """params.jsonl lines of a previous run by output name (kept for the pairs it skips)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            out[json.loads(line)["name"]] = line
        except (ValueError, KeyError, TypeError):
            continue  # a damaged line: that pair is simply redone
    return out


def _write_records(path: Path, lines: list[str], append: bool = False) -> None:
    """params.jsonl: replaced atomically, or ``append``ed and synced (a torn last line is ignored
    by `_old_records`, and the next run's first rewrite drops it)."""
    data = "".join(line + "\n" for line in lines).encode()
    if not append:
        atomic_write_bytes(path, data)
        return
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def degrade_folder(cfg: DegradeConfig) -> dict:
    """Run the folder degradation; returns counts {"written", "bad", "too_small", "existing", "skipped"}.

    ``skipped`` (unreadable inputs) is what the launcher's exit code reports (3 when > 0);
    too-small images are a filter the config asks for (``min_size``), counted but not an error.
    """
    log = get_logger("degrade")
    dcfg = cfg.degradation
    if not isinstance(dcfg, DegradationConfig):
        dcfg = DegradationConfig.from_dict(dcfg)
    dcfg.validate()
    if cfg.crop is not None and cfg.crop % dcfg.scale:
        raise ValueError(f"crop={cfg.crop} must be a multiple of the scale {dcfg.scale}")
    hr_dir = require_dir(cfg.hr_dir, "hr_dir")
    out = prepare_output_dir(cfg.out_dir, "out_dir", {"hr_dir": cfg.hr_dir})  # never write into the inputs
    files = sorted(p for p in hr_dir.rglob("*") if p.is_file() and is_image_file(p))
    if cfg.limit is not None:
        files = files[: cfg.limit]
    names = _output_names(files)
    old = _old_records(out / "params.jsonl")
    try:  # a refused run leaves the folder as it found it, lock included
        pairs = {n: [f"HR/{n}", f"LR/{n}"] for n in names}
        done = check_existing(out, pairs, "out_dir", cfg.skip_existing, cfg.overwrite)
        done &= set(old)  # a pair without its record is redone
        # kept pairs must come from the same preset and seed (batching never changes a pair)
        check_settings(out, output_settings(cfg, frozenset({"batch_size"})), len(done), cfg.overwrite, log)
    except BaseException:
        release_folder_locks()
        raise
    _write_records(out / "params.jsonl", [old[n] for n in names if n in done])  # completion marks: kept pairs only
    device = _resolve_device(cfg.device)
    sampler, degrader = KernelSampler(dcfg), Degrader(dcfg)
    (out / "HR").mkdir(parents=True, exist_ok=True)
    (out / "LR").mkdir(parents=True, exist_ok=True)
    counts = {"written": 0, "bad": 0, "too_small": 0, "existing": len(done)}
    records: dict[str, str] = {n: old[n] for n in done}
    pending: list[dict] = []
    skips = SkipLog("degrade", log, cfg.max_input_pixels)

    def flush() -> None:
        if not pending:
            return
        gt = torch.stack([p["gt"] for p in pending]).to(device)
        kernels = collate_kernels([p["kernels"] for p in pending])
        params = [p["params"] for p in pending]
        if dcfg.per_batch_compat:  # official granularity: one set of batch-level choices
            params = degrader.sample_params(len(pending), pending[0]["gen"], kernels["params"])
        res = degrader.apply(gt, kernels, params)
        new_lines = []
        for i, item in enumerate(pending):
            write_image(out / "HR" / item["name"], res.gt[i].clamp(0, 1).cpu())  # temp name + rename
            write_image(out / "LR" / item["name"], res.lq[i].cpu())
            record = {
                "name": item["name"],
                "source": str(item["path"].relative_to(hr_dir)),
                "crop": item["crop"],
                "hr_size": list(gt.shape[-2:]),
                **res.params[i],
            }
            records[item["name"]] = json.dumps(record)
            new_lines.append(records[item["name"]])
        _write_records(out / "params.jsonl", new_lines, append=True)  # after the images: marks them complete
        counts["written"] += len(pending)
        pending.clear()

    for idx, (path, name) in enumerate(progress(list(zip(files, names)), desc="degrade", disable=not cfg.progress)):
        if name in done:
            continue
        img = skips.read(path)
        if img is None:
            continue
        rng = np.random.default_rng([cfg.seed, idx])
        arr, crop_at = _prepare(img, cfg.crop, dcfg.scale, rng)
        if arr is None or min(arr.shape[:2]) < max(cfg.min_size, dcfg.scale):
            counts["too_small"] += 1
            continue
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        kernels = sampler(rng)
        item = {
            "name": name,
            "path": path,
            "crop": crop_at,
            "gt": to_tensor(arr),
            "kernels": kernels,
            "gen": gen,
            "params": degrader.sample_params(1, gen, [kernels["params"]])[0],
        }
        if pending and (pending[0]["gt"].shape != item["gt"].shape or len(pending) >= cfg.batch_size):
            flush()
        pending.append(item)
    flush()
    lines = [records[n] for n in names if n in records]  # input order, whatever was redone
    _write_records(out / "params.jsonl", lines)
    counts["bad"] = len(skips.skipped)
    summary = skips.finish(
        counts["written"] + counts["existing"],
        gather=False,
        extra=f" into {out} ({counts['written']} new, {counts['existing']} kept, {counts['too_small']} too small)",
    )
    return {**counts, "skipped": summary["skipped"], "skipped_files": summary["skipped_files"]}
