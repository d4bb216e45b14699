"""Evaluation folders: paired LR/HR sets (DIV2K-Val, RealSR, DRealSR, OST-Val) and LR-only
sets (RealLQ250, RealLR200).

Pairing is by file name (stem, so ``x.png`` pairs with ``x.jpg``); the data/ preparation
scripts write identical names into ``<set>/LR`` and ``<set>/HR``. Any missing, duplicate or
extra file is reported by name before a single image is read, because a silently shorter
evaluation set gives numbers that cannot be compared.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from common.data.io import is_image_file, read_image, to_tensor
from common.data.sources import natural_key


class PairingError(ValueError):
    """LR/HR (or SR/HR) folders do not match; the message names the offending files."""


def list_images_by_stem(folder, what: str = "folder", on_duplicate=None) -> dict[str, Path]:
    """``{stem: path}`` of the images directly inside ``folder``; duplicate stems are an error, or,
    with ``on_duplicate(path, reason)`` (a folder run's skip-and-count), the later file is skipped."""
    from common.paths import require_dir

    folder = require_dir(folder, what)  # "does not exist" vs "is a file, not a folder"
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image_file(p.name) and not p.name.startswith("."):
            if p.stem in out and on_duplicate is not None:
                on_duplicate(p, f"same name as {out[p.stem].name} (both would give {p.stem}.png); rename one of them")
                continue
            if p.stem in out:
                raise PairingError(f"{what} {folder} has two files named {p.stem}: {out[p.stem].name}, {p.name}")
            out[p.stem] = p
    if not out:
        raise FileNotFoundError(f"{what} {folder} contains no images")
    return out


def _names(xs, k: int = 5) -> str:
    xs = sorted(xs, key=natural_key)
    return ", ".join(xs[:k]) + (f" ... (+{len(xs) - k} more)" if len(xs) > k else "")


def pair_files(
    a_dir, b_dir, a_what: str = "lr_dir", b_what: str = "hr_dir", allow_extra_b: bool = False
) -> list[tuple[str, Path, Path]]:
    """``[(stem, a_path, b_path)]`` natural-sorted; raises `PairingError` naming the unmatched files.

    allow_extra_b: files only in ``b_dir`` are tolerated (e.g. evaluating a subset of outputs
    against a full GT folder is *not* allowed by default, since it changes the average).
    """
    a = list_images_by_stem(a_dir, a_what)
    b = list_images_by_stem(b_dir, b_what)
    missing = set(a) - set(b)
    if missing:
        raise PairingError(
            f"{len(missing)} file(s) in {a_what} {a_dir} have no counterpart in {b_what} {b_dir}: {_names(missing)}"
        )
    extra = set(b) - set(a)
    if extra and not allow_extra_b:
        raise PairingError(
            f"{len(extra)} file(s) in {b_what} {b_dir} have no counterpart in {a_what} {a_dir}: {_names(extra)}"
        )
    return [(s, a[s], b[s]) for s in sorted(a, key=natural_key)]


class PairedFolder(Dataset):
    """Items ``{"name": stem, "lr": float32 (3,h,w) in [0,1], "hr": (3,H,W) (paired sets only)}``.

    ``hr_dir=None`` gives an LR-only set (RealLQ250, RealLR200). With ``scale`` set, each pair's
    sizes are checked (HR == scale * LR) when it is read, and a mismatch names the file.
    """

    def __init__(self, lr_dir, hr_dir=None, scale: int | None = None):
        self.lr_dir, self.hr_dir, self.scale = Path(lr_dir), (Path(hr_dir) if hr_dir else None), scale
        if self.hr_dir is None:
            lr = list_images_by_stem(self.lr_dir, "lr_dir")
            self.pairs = [(s, lr[s], None) for s in sorted(lr, key=natural_key)]
        else:
            self.pairs = pair_files(self.lr_dir, self.hr_dir)

    @property
    def names(self) -> list[str]:
        return [p[0] for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        name, lr_path, hr_path = self.pairs[i]
        lr = read_image(lr_path)
        item = {"name": name, "lr": to_tensor(lr)}
        if hr_path is not None:
            hr = read_image(hr_path)
            if self.scale is not None and (
                hr.shape[0] != lr.shape[0] * self.scale or hr.shape[1] != lr.shape[1] * self.scale
            ):
                raise PairingError(
                    f"{name}: HR {hr.shape[1]}x{hr.shape[0]} ({hr_path}) is not {self.scale}x "
                    f"LR {lr.shape[1]}x{lr.shape[0]} ({lr_path})"
                )
            item["hr"] = to_tensor(hr)
        return item


def collate_eval(batch: list[dict]) -> dict:
    """Stack same-sized test items (use batch_size=1 for sets with mixed sizes)."""
    out = {"name": [b["name"] for b in batch], "lr": torch.stack([b["lr"] for b in batch])}
    if "hr" in batch[0]:
        out["hr"] = torch.stack([b["hr"] for b in batch])
    return out
