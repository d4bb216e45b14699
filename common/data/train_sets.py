"""HR training crops from several mixed sources, robust to bad files, reproducible per item.

Every random choice of an item (mixing plan aside) comes from a numpy Generator seeded by
``(seed, epoch, index, attempt)``: an item is the same whichever worker loads it and after a
resume, and no global RNG is touched.  The degradation kernels are sampled here too (CPU,
in the worker) with the same Generator; the batched degradation runs later on the device.

Mixing semantics: ``ratio`` is a per-epoch sampling weight. Epoch ``e`` contains
``round(ratio_i * len_i)`` items of source ``i`` (a fresh subset each epoch when ratio < 1,
whole copies plus a random remainder when ratio > 1), shuffled together with a permutation
seeded by ``(seed, e)``. Call `set_epoch` before each epoch, and use ``persistent_workers=False``
(workers then pick up the new plan) or let the sampler shuffle (the plan is still fixed per epoch).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common.data.io import BadImageError, read_image, to_tensor
from common.data.sources import ImageSource, list_source

CROP_MODES = ("random", "resize_center", "resize_random")
VARSR_RESIZE_FACTOR = 1.25  # VARSR positives: shorter side -> round(1.25 * 512) = 640 (LANCZOS)
_MAX_ATTEMPTS = 16
log = logging.getLogger("arsr.data")


def item_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The per-item Generator: a pure function of (seed, epoch, index, attempt)."""
    return np.random.default_rng([int(seed), int(epoch), int(index), int(attempt)])


def resize_shorter(img: np.ndarray, target: int) -> np.ndarray:
    """Resize so that min(H, W) == target with PIL LANCZOS (VARSR's choice), keeping aspect."""
    h, w = img.shape[:2]
    if min(h, w) == target:
        return img
    s = target / min(h, w)
    nw, nh = (target, max(target, round(h * s))) if w <= h else (max(target, round(w * s)), target)
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.LANCZOS))


def crop_image(
    img: np.ndarray, size: int, mode: str, rng: np.random.Generator, resize_to: int | None = None
) -> np.ndarray:
    """Square ``size`` crop of ``img`` (uint8 HWC) by ``mode`` (see CROP_MODES)."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {mode!r}")
    if mode != "random":
        img = resize_shorter(img, resize_to or round(VARSR_RESIZE_FACTOR * size))
    if min(img.shape[:2]) < size:
        img = resize_shorter(img, size)  # let through by min_size: bring it up to the crop
    h, w = img.shape[:2]
    if mode == "resize_center":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[top : top + size, left : left + size]


def mixing_plan(sizes: Sequence[int], ratios: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """(N, 2) int64 array of (source, local index) for one epoch; see module docstring."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x6D6978])  # 'mix'
    parts = []
    for s, (n, r) in enumerate(zip(sizes, ratios)):
        want = int(round(r * n))
        full, rest = divmod(want, n) if n else (0, 0)
        local = [np.arange(n)] * full + [rng.choice(n, size=rest, replace=False)] if n else []
        if local:
            idx = np.concatenate(local).astype(np.int64)
            parts.append(np.stack([np.full_like(idx, s), idx], axis=1))
    plan = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    return plan[rng.permutation(len(plan))]


class HRTrainDataset(Dataset):
    """Items ``{"hr": float32 (3, crop, crop) in [0, 1], "label": int, "path": str,
    "index": int, "kernels": dict (only with a kernel_sampler)}``.

    crop_mode: "random" (random crop at native resolution), "resize_center" (VARSR: shorter
      side -> ``resize_shorter_to`` (default round(1.25*crop)) LANCZOS, centre crop),
      "resize_random" (same resize, random crop).
    min_size: images whose shorter side is below it are skipped and counted (default: crop
      size for "random", 0 for the resize modes, which scale any image to fit).
    kernel_sampler: callable ``(np.random.Generator) -> dict`` (common.degradation.KernelSampler).
    Bad files (unreadable, truncated, zero-byte, non-image, too small) are skipped: another
    index is drawn deterministically and the reason counted in ``bad_counts`` (per process).
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        crop_size: int = 512,
        crop_mode: str = "random",
        resize_shorter_to: int | None = None,
        hflip: bool = True,
        min_size: int | None = None,
        kernel_sampler=None,
        seed: int = 0,
    ):
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
        if not sources:
            raise ValueError("HRTrainDataset needs at least one ImageSource")
        self.sources = list(sources)
        self.items = [list_source(s) for s in self.sources]
        self.crop_size, self.crop_mode, self.hflip = int(crop_size), crop_mode, bool(hflip)
        self.resize_shorter_to = resize_shorter_to
        self.min_size = (self.crop_size if crop_mode == "random" else 0) if min_size is None else int(min_size)
        self.kernel_sampler, self.seed = kernel_sampler, int(seed)
        self.bad_counts: Counter = Counter()
        self._known_bad: set[tuple[int, int]] = set()
        self.set_epoch(0)

    # -- mixing -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._plan = mixing_plan([len(x) for x in self.items], [s.ratio for s in self.sources], self.seed, self.epoch)
        if len(self._plan) == 0:
            raise ValueError("mixing ratios select no images (all ratios round to 0)")

    def __len__(self) -> int:
        return len(self._plan)

    def source_counts(self) -> dict[str, int]:
        """Items per source in the current epoch (what the ratios amount to)."""
        c = np.bincount(self._plan[:, 0], minlength=len(self.sources))
        return {s.name: int(n) for s, n in zip(self.sources, c)}

    # -- loading ------------------------------------------------------------------------------
    def _count_bad(self, path: str, reason: str) -> None:
        self.bad_counts[reason] += 1
        n = sum(self.bad_counts.values())
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: a summary, not one line per file
            log.warning(
                "skipped %d bad training images so far %s; latest: %s (%s)", n, dict(self.bad_counts), path, reason
            )

    def _load(self, src_i: int, local: int, rng: np.random.Generator):
        path, label = self.items[src_i][local]
        img = read_image(path)
        if min(img.shape[:2]) < self.min_size:
            raise BadImageError(path, f"too small {img.shape[1]}x{img.shape[0]} < min_size {self.min_size}")
        src = self.sources[src_i]
        img = crop_image(img, self.crop_size, self.crop_mode, rng, src.resize_shorter_to or self.resize_shorter_to)
        if self.hflip and rng.random() < 0.5:
            img = img[:, ::-1]
        return path, label, img

    def __getitem__(self, index: int) -> dict:
        src_i, local = (int(v) for v in self._plan[index])
        for attempt in range(_MAX_ATTEMPTS):
            rng = item_rng(self.seed, self.epoch, index, attempt)
            if attempt:  # replacement drawn deterministically from the same source
                local = int(rng.integers(0, len(self.items[src_i])))
            if (src_i, local) in self._known_bad:
                continue
            try:
                path, label, img = self._load(src_i, local, rng)
            except BadImageError as e:
                self._known_bad.add((src_i, local))
                self._count_bad(e.path, re.split(r"[(:\d]", e.reason)[0].strip())
                continue
            item = {"hr": to_tensor(np.ascontiguousarray(img)), "label": int(label), "path": path, "index": int(index)}
            if self.kernel_sampler is not None:
                item["kernels"] = self.kernel_sampler(rng)
            return item
        raise RuntimeError(
            f"{_MAX_ATTEMPTS} consecutive bad images drawn from source "
            f"{self.sources[src_i].name}; is its root right? counts: {dict(self.bad_counts)}"
        )


def collate_train(batch: list[dict]) -> dict:
    """Stack ``hr`` (B,3,H,W) and ``label`` Long(B); paths/indices as lists; kernels collated by
    ``common.degradation.collate_kernels`` (imported lazily: only batches with kernels need it)."""
    out = {
        "hr": torch.stack([b["hr"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "path": [b["path"] for b in batch],
        "index": torch.tensor([b.get("index", -1) for b in batch], dtype=torch.long),
    }
    if "kernels" in batch[0]:
        from common.degradation import collate_kernels

        out["kernels"] = collate_kernels([b["kernels"] for b in batch])
    return out
