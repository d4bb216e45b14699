"""Helpers behind the dataset preparation scripts in ``data/`` (no network, local copies only).

- test sets: match differently named HR/LR files (RealSR ``Canon_001_HR.png`` /
  ``Canon_001_LR4.png``, DRealSR ``Canon_10_x1.png`` / ``Canon_10_x4.png``) into
  ``<out>/<set>/{HR,LR}/<same name>.png`` as VARSR's test loader expects (common.md §2.3);
- LR-only sets (RealLQ250, RealLR200) into ``<out>/<set>/LR``;
- VARSR negatives: τ = min(score) + s·max(score), keep score < τ (common.md §2.5);
- one-off resizing (FFHQ 1024 -> 512).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.io import BadImageError, image_size, read_image, write_image
from common.data.sources import natural_key, walk_images

# VARSR `dataloader/localdataset_lpm.py` factors s per IQA dataset (common.md §2.5).
NEGATIVE_S = {
    "spaq": 0.4,
    "koniq10k": 0.6,
    "clive": 0.6,
    "kadid10k": 0.6,
    "flive": 0.6,
    "flive_patches": 0.5,
    "ava": 0.32,
}
_SUFFIX = re.compile(r"[_-](hr|gt|lr\d*|lq|x\d+)$", re.IGNORECASE)


def pair_key(stem: str) -> str:
    """Name shared by an HR/LR pair: the stem without a trailing _HR/_GT/_LR4/_LQ/_x1/_x4."""
    return _SUFFIX.sub("", stem)


def match_pairs(hr_files, lr_files) -> list[tuple[str, Path, Path]]:
    """``[(key, hr, lr)]`` by `pair_key`; unmatched or ambiguous files raise naming them."""

    def index(files, what):
        out: dict[str, Path] = {}
        for f in files:
            k = pair_key(Path(f).stem)
            if k in out:
                raise ValueError(f"{what}: {out[k].name} and {Path(f).name} map to the same pair name {k!r}")
            out[k] = Path(f)
        return out

    hr, lr = index(hr_files, "HR"), index(lr_files, "LR")
    if set(hr) != set(lr):
        only_hr, only_lr = sorted(set(hr) - set(lr)), sorted(set(lr) - set(hr))
        raise ValueError(f"unmatched files: HR only {only_hr[:5]}, LR only {only_lr[:5]}")
    return [(k, hr[k], lr[k]) for k in sorted(hr, key=natural_key)]


def place(src: Path, dst: Path, mode: str = "copy") -> None:
    """Copy / hard-link / symlink ``src`` to ``dst`` (PNG sources keep their bytes; others are
    re-encoded to PNG so every prepared set is lossless from here on)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if src.suffix.lower() != ".png":
        write_image(dst, read_image(src))
    elif mode == "symlink":
        os.symlink(src.resolve(), dst)
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copyfile(src, dst)


def prepare_paired_set(
    hr_dir, lr_dir, out_dir, name: str, scale: int = 4, expected: int | None = None, mode: str = "copy"
) -> int:
    """Write ``out_dir/name/{HR,LR}/<key>.png``; checks HR == scale x LR for every pair."""
    pairs = match_pairs(walk_images(hr_dir), walk_images(lr_dir))
    for key, hr, lr in pairs:
        (hw, hh), (lw, lh) = image_size(hr), image_size(lr)
        if (hw, hh) != (lw * scale, lh * scale):
            raise ValueError(f"{name}/{key}: HR {hw}x{hh} is not {scale}x LR {lw}x{lh} ({hr}, {lr})")
        place(hr, Path(out_dir) / name / "HR" / f"{key}.png", mode)
        place(lr, Path(out_dir) / name / "LR" / f"{key}.png", mode)
    if expected is not None and len(pairs) != expected:
        print(f"warning: {name} has {len(pairs)} pairs, the published set has {expected}")
    return len(pairs)


def prepare_lr_only(src_dir, out_dir, name: str, expected: int | None = None, mode: str = "copy") -> int:
    """Write ``out_dir/name/LR/<stem>.png`` for every readable image under ``src_dir``."""
    files = walk_images(src_dir)
    stems = [Path(f).stem for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise ValueError(f"{name}: duplicate file names {sorted(dup)[:5]}")
    for f in files:
        place(Path(f), Path(out_dir) / name / "LR" / f"{Path(f).stem}.png", mode)
    if expected is not None and len(files) != expected:
        print(f"warning: {name} has {len(files)} images, the published set has {expected}")
    return len(files)


def read_scores(csv_path, path_col: str | None = None, score_col: str | None = None) -> list[tuple[str, float]]:
    """``[(image, score)]`` from an IQA score CSV (default columns: first and last)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{csv_path}: no score rows")
    head = rows[0]
    pi = head.index(path_col) if path_col else 0
    si = head.index(score_col) if score_col else len(head) - 1
    out = []
    for i, r in enumerate(rows[1:], start=2):
        try:
            out.append((r[pi], float(r[si])))
        except (ValueError, IndexError):
            raise ValueError(f"{csv_path}:{i}: cannot read a score from {r!r}") from None
    return out


def select_negatives(scores: list[tuple[str, float]], s: float) -> list[str]:
    """Images with score < τ, τ = min + s·max (VARSR's literal rule, not a min-max interpolation)."""
    vals = np.array([v for _, v in scores], dtype=np.float64)
    tau = vals.min() + s * vals.max()
    return [p for p, v in scores if v < tau]


def resize_folder(src_dir, out_dir, size: int, limit: int | None = None) -> list[str]:
    """Square-resize the first ``limit`` sorted images to ``size`` (LANCZOS) keeping relative names
    (as PNG); unreadable files are skipped and reported. Returns the written relative paths."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    files = walk_images(src_dir)[:limit]
    written, bad = [], 0
    for f in files:
        rel = Path(os.path.relpath(f, src_dir)).with_suffix(".png")
        dst = out_dir / rel
        if not dst.is_file():
            try:
                img = read_image(f)
            except BadImageError as e:
                bad += 1
                print(f"skipped: {e}")
                continue
            write_image(dst, np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS)))
        written.append(str(rel))
    if bad:
        print(f"{bad} unreadable file(s) skipped")
    return written
