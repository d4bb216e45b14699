"""Listing training images: plain folders, LSDIR, FFHQ and CSV/text manifests.

Each `ImageSource` resolves to a sorted list of ``(path, label)``; `HRTrainDataset`
(train_sets.py) mixes several of them.  Listing never opens an image (84,991 LSDIR PNGs would
take minutes): bad files are dealt with when they are read.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from common.data.io import is_image_file

KINDS = ("folder", "lsdir", "ffhq", "manifest", "bundled")
FFHQ10K = 10_000  # "FFHQ10k" = first 10,000 images in sorted order (SeeSR `num_face`).


@dataclass
class ImageSource:
    """One training source.

    root: folder (folder/lsdir/ffhq) or manifest file (manifest: CSV ``path[,label]`` or a text
      list of paths, one per line; basicsr ``meta_info`` lines ``name.png (h,w,c)`` also work).
    kind: "folder" | "lsdir" | "ffhq" | "manifest" | "bundled" (the six scikit-image photos,
      written at 512 into ``root`` or, when root is "", into ``$XDG_CACHE_HOME/arsr/bundled``).
    label: class label of every image (0 positive / HQ, 1 VARSR negative); a manifest's
      ``label`` column overrides it per row.
    ratio: per-epoch sampling weight relative to the source's size: each epoch draws
      round(ratio * len) items (ratio < 1 subsamples without replacement, > 1 repeats).
    limit: keep only the first ``limit`` sorted files (ffhq defaults to 10,000).
    meta: optional list file for lsdir (LSDIR ``train.json`` or a text list); relative
      paths in it are resolved against ``base`` or ``root``.
    resize_shorter_to: per-source override of the dataset's resize size (VARSR negatives: 512).
    base: directory that relative manifest paths are resolved against (default: manifest's folder).
    """

    root: str
    kind: str = "folder"
    label: int = 0
    ratio: float = 1.0
    limit: int | None = None
    meta: str | None = None
    resize_shorter_to: int | None = None
    base: str | None = None
    name: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ImageSource kind must be one of {KINDS}, got {self.kind!r}")
        if self.ratio < 0:
            raise ValueError(f"ImageSource ratio must be >= 0, got {self.ratio}")
        self.name = self.name or f"{self.kind}:{Path(str(self.root)).name}"


def natural_key(s: str):
    """Sort key that orders 'img2' before 'img10' (zero-padded names sort the same either way)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def walk_images(root) -> list[str]:
    """All image files under ``root`` (recursive, symlinks followed), natural-sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames if is_image_file(f) and not f.startswith(".")]
    return sorted(found, key=lambda p: natural_key(os.path.relpath(p, root)))


def _resolve(p: str, base: Path) -> str:
    return p if os.path.isabs(p) else str(base / p)


def _paths_from_json(obj) -> list[str]:
    # LSDIR's train.json is a list of records; accept plain strings or dicts, preferring the
    # HR/GT field (the X2/X3/X4 json files also carry an LR path we must not train on).
    if isinstance(obj, dict):
        for key in ("train", "images", "files", "data"):
            if isinstance(obj.get(key), list):
                return _paths_from_json(obj[key])
        raise ValueError("JSON list file: expected a list or a dict with a 'train'/'images' list")
    out = []
    for rec in obj:
        if isinstance(rec, str):
            out.append(rec)
            continue
        if not isinstance(rec, dict):
            raise ValueError(f"JSON list file: unexpected record {rec!r}")
        keys = sorted(rec, key=lambda k: (not re.search(r"gt|hr", k, re.I), k))
        vals = [rec[k] for k in keys if isinstance(rec[k], str) and is_image_file(rec[k])]
        if not vals:
            raise ValueError(f"JSON list file: no image path in record {rec!r}")
        out.append(vals[0])
    return out


def read_list_file(path) -> list[tuple[str, int | None]]:
    """Parse a list file into ``[(path, label or None)]`` (paths as written, maybe relative).

    ``.json``: list of paths/records. ``.csv``: header with ``path`` and optional ``label``.
    Otherwise text: one path per line; ``#`` comments and blank lines ignored; only the
    first whitespace-separated token is used (basicsr meta_info format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        with open(path) as f:
            try:
                return [(p, None) for p in _paths_from_json(json.load(f))]
            except (json.JSONDecodeError, ValueError) as e:
                raise ValueError(f"{path}: {e}") from None
    if suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"{path}: CSV manifest needs a 'path' column, got {reader.fieldnames}")
            rows = []
            for i, r in enumerate(reader, start=2):
                lab = (r.get("label") or "").strip()
                try:
                    rows.append((r["path"].strip(), int(lab) if lab else None))
                except ValueError:
                    raise ValueError(f"{path}:{i}: label {lab!r} is not an integer") from None
            return rows
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((line.split()[0], None))
    return rows


def _list_lsdir(src: ImageSource) -> list[str]:
    root = Path(src.root)
    meta = Path(src.meta) if src.meta else None
    if meta is None and (root / "train.json").is_file():
        meta = root / "train.json"  # the official list (84,991 HR/train/... entries)
    if meta is not None:
        base = Path(src.base) if src.base else root
        return [_resolve(p, base) for p, _ in read_list_file(meta)]
    # No list: the HR/train/<upper bound>/*.png tree, or any folder of folders.
    tree = root / "HR" / "train"
    return walk_images(tree if tree.is_dir() else root)


def list_source(src: ImageSource) -> list[tuple[str, int]]:
    """``[(absolute-or-root-relative path, label)]`` for one source, sorted and limited."""
    if src.kind == "manifest":
        base = Path(src.base) if src.base else Path(src.root).parent
        items = [(_resolve(p, base), src.label if lab is None else lab) for p, lab in read_list_file(src.root)]
    else:
        if src.kind == "lsdir":
            paths = _list_lsdir(src)
        elif src.kind == "bundled":
            from common.data.bundled import write_bundled_dataset

            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "arsr" / "bundled"
            paths = walk_images(write_bundled_dataset(src.root or cache) / "HR")
        else:  # folder, ffhq
            paths = walk_images(src.root)
        items = [(p, src.label) for p in paths]
    limit = src.limit if src.limit is not None else (FFHQ10K if src.kind == "ffhq" else None)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"image source {src.name} ({src.root}) lists no images")
    return items


def write_manifest(rows, path) -> Path:
    """Write ``[(path, label)]`` as a ``path,label`` CSV manifest (used by the data/ scripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((p, int(lab)) for p, lab in rows)
    return path
